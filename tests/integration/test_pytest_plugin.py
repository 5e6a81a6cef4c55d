"""The pytest plugin as a user meets it: a separate pytest run, with no conftest of ours, in a subprocess.

What a user checks:
  - examples/pytest passes when run from its own directory with only the installed package and pytest:
    the fixtures come from the `pytest11` entry point, and the repository's tests/conftest.py is never loaded
    (pytest's own --trace-config list of plugins shows it);
  - a test that fails with a paused node (and, where iptables can be used, a partition) is reported with
    its cluster's nodes and logs, and its teardown stops every node and removes the iptables chain before
    the next test runs.
The child loads the entry point as pip installs it from this checkout's pyproject.toml (a dist-info on its
path): so the test holds whether or not the virtualenv's synapse-ng was installed before the entry point
existed, and pyproject.toml's declaration is what is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from cluster.faults import network_capability
from node.errors import ClusterError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLE = REPOSITORY / "examples" / "pytest"
CHILD_TIMEOUT_S = 200


def installed_entry_point(site: Path) -> Path:
    """A dist-info under `site` declaring pyproject.toml's pytest11 entry points, as pip would install them."""
    entry_points = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    assert entry_points == {"synapse": "cluster.pytest_plugin"}
    dist_info = site / "synapse_ng_entry_points-0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: synapse-ng-entry-points\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text("[pytest11]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
    return site


def run_pytest(project: Path, tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m pytest` in `project` (its own pytest.ini, so its own rootdir), as a user runs it."""
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("PYTEST_", "PYTHONPATH"))}        # no addopts, xdist or autoload switches of ours
    site = installed_entry_point(tmp_path / "site")
    environment["PYTHONPATH"] = os.pathsep.join([str(site), str(REPOSITORY)])  # the package, as an install provides it
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'basetemp'}",
                           *arguments], cwd=project, env=environment, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def test_the_example_passes_with_only_the_installed_package_and_pytest(tmp_path):
    result = run_pytest(EXAMPLE, tmp_path, "--trace-config")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "1 passed" in result.stdout
    assert f"rootdir: {EXAMPLE}" in result.stdout and "configfile: pytest.ini" in result.stdout
    plugins = [line for line in result.stdout.splitlines() if line.strip().startswith(("synapse", "conftest")) or "conftest" in line]
    assert any(line.split(":")[0].strip() == "synapse" and "pytest_plugin.py" in line for line in plugins), plugins
    assert not any("conftest" in line for line in plugins), f"a conftest was loaded: {plugins}"


FAILING_TESTS = '''
import json
from pathlib import Path

from cluster.faults import chain_name, synapse_chains

RECORD = Path(__file__).with_name("record.json")


def test_fails_with_a_paused_node(synapse_cluster):
    network = synapse_cluster(nodes=3, validators=1)
    network.pause("node-2")
    chain = None
    if PARTITION:
        network.partition(["node-1"], ["node-2", "node-3"])
        chain = chain_name(network.nodes[0].url.split("//")[1].rsplit(".", 1)[0])
        assert chain in synapse_chains()
    RECORD.write_text(json.dumps({"pids": [node.handle.pid for node in network.nodes], "chain": chain}))
    assert network.state_of("node-2") == "up", "the test's own failure"


def test_the_failed_test_left_no_node_and_no_rule():
    record = json.loads(RECORD.read_text())
    running = [pid for pid in record["pids"] if Path(f"/proc/{pid}").exists()]
    assert running == [], f"node processes still running: {running}"
    assert record["chain"] is None or record["chain"] not in synapse_chains()
'''


def test_a_failing_test_is_reported_with_its_cluster_and_torn_down_before_the_next(tmp_path):
    partition = network_capability().available          # root and iptables: the partition's teardown is covered too
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_failing.py").write_text(f"PARTITION = {partition}\n" + textwrap.dedent(FAILING_TESTS))
    result = run_pytest(project, tmp_path, "-q")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-6000:]
    assert "1 failed, 1 passed" in result.stdout, output[-6000:]
    assert "the test's own failure" in result.stdout
    assert "synapse cluster " in result.stdout and "--- node-2 (paused, http://127." in result.stdout, result.stdout[-6000:]
    record = json.loads((project / "record.json").read_text())
    assert len(record["pids"]) == 3 and (record["chain"] is not None) == partition


def test_a_wait_that_cannot_succeed_says_where_each_node_is(synapse_cluster, package_server):
    network = synapse_cluster(nodes=3, validators=1, governance={"voting_period_ms": 60_000})
    package = package_server.add_file(REPOSITORY / "examples" / "wat" / "feature_flag.wat")
    undecided = network.propose(package, version="1.2.0", node="node-3")
    network.vote(undecided, "approval", by=["node-2"])              # 100 of 300: not decided before the deadline
    with pytest.raises(AssertionError) as timed_out:
        network.wait_executed(undecided, timeout_s=2)
    assert "timed out after 2 s waiting for executed (pending: node-1, node-2, node-3)" in str(timed_out.value)
    assert "  node-2: voting (provisional outcome voting)" in str(timed_out.value)

    rejected = network.propose(package, version="1.3.0", title="another, to be rejected")
    network.vote(rejected, "rejection")
    with pytest.raises(AssertionError, match=r"is not executed on every node: rejected \(approval 0, rejection [23]00 of 300\)"):
        network.wait_executed(rejected)
    with pytest.raises(ClusterError, match="no node 'node-4' in this cluster"):
        network.vote(rejected, "approval", by="node-4")
