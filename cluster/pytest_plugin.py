"""pytest fixtures for people who test their own Synapse-NG networks: `synapse_cluster`, `package_server`, `wait_until`.

    def test_an_upgrade_runs_everywhere(synapse_cluster, package_server):
        network = synapse_cluster(nodes=5, validators=3, governance={"voting_period_ms": 60_000})
        proposal_id = network.propose(package_server.add_file("feature_flag.wat"), version="1.2.0")
        network.vote(proposal_id, "approval")
        network.wait_executed(proposal_id)
        network.assert_safe()

Why it works as it does:
- Installed with the package: the `pytest11` entry point "synapse" (pyproject.toml) makes pytest load
  this module in any project where synapse-ng is installed; `-p no:synapse` turns it off. Our own
  tests/conftest.py registers it under the same name only when the entry point has not (an install
  that predates it), since pytest refuses a module registered twice.
- pytest loads every installed plugin at start-up, for any test run: the testbed (aiohttp, wasmtime,
  the cluster code) is imported inside the fixtures, so runs that use none of them pay nothing.
- `synapse_cluster` is a factory (a test may need two networks, or options only it knows). Each cluster
  takes its own loopback block 127.A.B.0/24 and its own data dir under the test's tmp dir, so
  `pytest -n auto` runs clusters side by side. Every cluster started by a test is closed by the fixture's
  teardown, which runs whether the test passed, failed or raised; an ExitStack closes the others even
  when closing one fails. Nodes also die with the pytest process (LocalCluster's parent-death signal).
- A failed test's report gets a "synapse cluster" section per cluster: its data dir and each node's
  state, URL and last log lines, taken before teardown stops the nodes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cluster.package_server import PackageServer
    from cluster.testing import SynapseCluster

PLUGIN_NAME = "synapse"
CLUSTERS_PER_TEST_MAX = 4           # each is N processes and an address block: a loop starting more is a bug
WAIT_UNTIL_TIMEOUT_S = 30.0
_STARTED = pytest.StashKey[list]()


@pytest.fixture
def synapse_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., "SynapseCluster"]]:
    """A factory: `synapse_cluster(nodes=5, validators=3, governance={...}, limits={...}, **options)` starts a
    fresh network and returns its handle (cluster/testing.py SynapseCluster). `limits` are the genesis's
    network limits; `options` go to LocalCluster (config_limits, extra_env, reputations, start_timeout_s)."""
    from cluster.testing import SynapseCluster
    from node.errors import ClusterError

    started: list[SynapseCluster] = []
    request.node.stash[_STARTED] = started
    with contextlib.ExitStack() as teardown:

        def start(nodes: int = 5, validators: int = 3, *, governance: Mapping[str, int] | None = None,
                  limits: Mapping[str, int] | None = None, **options: Any) -> SynapseCluster:
            if len(started) >= CLUSTERS_PER_TEST_MAX:
                raise ClusterError(f"a test may start at most {CLUSTERS_PER_TEST_MAX} clusters",
                                   hint="start one cluster and reuse it, or split the test")
            cluster = SynapseCluster.start(nodes=nodes, validators=validators, data_dir=tmp_path_factory.mktemp("synapse-cluster"),
                                           governance=governance, limits=limits, **options)
            teardown.callback(cluster.close)
            started.append(cluster)
            return cluster

        yield start


@pytest.fixture
def package_server() -> Iterator["PackageServer"]:
    """A package server on 127.0.0.1 (cluster/package_server.py): `add_file(path)` builds a .wat, .c or .wasm
    and serves it, `add(name, data)` serves bytes; either returns what `propose` takes."""
    from cluster.package_server import PackageServer

    with PackageServer() as server:
        yield server


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """`wait_until(check, what="...", timeout_s=30)`: call `check` until it returns something truthy and return
    that; on timeout an AssertionError names `what` (and `describe()`, if given). Never sleep in a test."""
    from cluster.polling import poll_until

    return functools.partial(poll_until, timeout_s=WAIT_UNTIL_TIMEOUT_S)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for cluster in item.stash.get(_STARTED, []):
            try:
                text = cluster.describe()
            except Exception as error:  # a report section must never hide the test's own failure
                text = f"(could not describe the cluster: {error!r})"
            report.sections.append((f"synapse cluster {cluster.data_dir}", text))
    return report
