"""`synapse demo`, the README's main command: run as a user runs it, and made to fail on purpose.

What a user checks: exit status 0, and the narration of every step (cluster up, Raft leader, proposal,
votes, ratification, execution on every node with the new field, the network-wide rollback back to
the very state hash of before); the temp data dir is gone afterwards. When something does not happen
(here: a package that traps), the demo exits 1, says what did not happen, and keeps the node logs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster import demo as demo_module
from cluster.cli import main

REPOSITORY = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 180
HASH = r"sha256:[0-9a-f]{64}"


def run_synapse_demo(tmp_path: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "TMPDIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", "from cluster.cli import main; main()", "demo"], cwd=REPOSITORY, env=environment,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_synapse_demo_upgrades_and_rolls_back_every_node_and_says_so(tmp_path):
    result = run_synapse_demo(tmp_path)
    output = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{output}\n{result.stderr}"
    for narrated in ("build    examples/wat/feature_flag.wat", "5 node processes healthy (3 validators)",
                     "validators elected a leader: node-", "proposes 'Upgrade to v1.2.0: Add Feature Flag'",
                     "approval 300 of 500 reputation -> approved", "validators closed voting through Raft: 3 votes counted",
                     "validators ratified through Raft: upgrade sequence 1",
                     "executed on 5/5 nodes", "every node on 1.2.0, one new state hash",
                     "proposes a network-wide rollback to 1.0.0", "validators ratified through Raft: upgrade sequence 2",
                     "every node back on 1.0.0 with the state hash it had before the upgrade", "stopped 5 nodes",
                     "Demo complete in"):
        assert narrated in output, f"{narrated!r} not narrated:\n{output}"
    genesis = re.findall(rf"node-\d  version 1\.0\.0  ({HASH})  new_feature_enabled: 0/5 members", output)
    upgraded = re.findall(rf"node-\d  version 1\.2\.0  ({HASH})  new_feature_enabled: 5/5 members", output)
    assert len(upgraded) == 5 and len(set(upgraded)) == 1, output
    assert len(genesis) == 10 and len(set(genesis)) == 1, output       # 5 nodes before, the same 5 after the rollback
    assert set(genesis) != set(upgraded), output
    assert float(re.search(r"Demo complete in ([\d.]+) s", output).group(1)) < 60
    assert not list(tmp_path.glob("synapse-demo-*")), "the temp data dir is removed after a successful demo"


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_the_demo_says_what_did_not_happen_and_keeps_the_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "PACKAGE_SOURCE", REPOSITORY / "tests" / "packages" / "panic.wat")
    lines: list[str] = []
    status = demo_module.run_demo(nodes=5, validators=3, data_dir=tmp_path / "demo", keep_data=False, echo=lines.append)
    output = "\n".join(lines)
    assert status == 1, output
    failure = next(line for line in lines if line.startswith("FAILED"))
    assert "the upgrade failed on node-" in failure and "WasmTrap" in failure, output
    assert "Demo complete" not in output
    assert f"their data and logs stay in {tmp_path / 'demo'}" in output
    assert (tmp_path / "demo" / "cluster" / "node-1" / "node.log").stat().st_size > 0


def test_the_demo_refuses_impossible_options_before_starting_anything(tmp_path):
    runner = CliRunner()
    more_validators = runner.invoke(main, ["demo", "--nodes", "2", "--validators", "3"])
    assert more_validators.exit_code == 2 and "3 validators for 2 nodes" in more_validators.output
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    not_empty = runner.invoke(main, ["demo", "--data-dir", str(tmp_path / "used")])
    assert not_empty.exit_code == 2 and "is not empty" in not_empty.output
