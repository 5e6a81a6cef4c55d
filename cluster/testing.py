"""A running local cluster as one object for tests: what the pytest plugin's `synapse_cluster` returns.

    network = synapse_cluster(nodes=5, validators=3)
    proposal_id = network.propose(package_server.add_file("feature_flag.wat"), version="1.2.0")
    network.vote(proposal_id, "approval")
    network.wait_executed(proposal_id)
    network.kill("node-5")
    network.assert_safe()

Why it works as it does:
- A thin layer over the testbed, not a second one: LocalCluster (cluster/local.py) runs and stops the
  processes; the scenario Driver (cluster/scenario_steps.py) knows which nodes are down (ProcessFaults),
  cuts the network (iptables, NetworkFaults), reads logs and states and runs the shared safety checks
  (cluster/safety.py); cluster/upgrade_client.py proposes, votes and judges a wait from every node's own
  view. A test written against this handle does what `synapse upgrade` and a scenario file do.
- Nodes are named as everywhere else: `nodes[0]` is node-1. A method that takes a node accepts the
  ClusterNode itself, its position in `nodes` (0-based, like the list), its name "node-3" or its node id.
  Waits and the safety checks look at the live nodes by default (a killed node answers nothing).
- A failed expectation is an AssertionError that says what was awaited and what each node showed last;
  a node's refusal stays the node's own error (upgrade_client.ApiError: its message and hint).
- `close` resumes paused nodes and removes the partition rules before it stops anything (a paused node
  never handles SIGTERM), and may be called twice: the fixture calls it whatever the test did.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cluster.local import LocalCluster, NodeApi, NodeHandle
from cluster.package_server import ServedPackage
from cluster.polling import TIMEOUT_S_MAX, poll_until
from cluster.safety import Outcome, logs_converged, one_version_and_state_hash
from cluster.scenario_steps import Driver, cut_groups
from cluster.upgrade_client import WAIT_GOALS, Target, call, vote, wait_for
from node.errors import ClusterError

WAIT_TIMEOUT_S = 60.0        # an upgrade on a loaded 2-core machine: vote, close, ratify, certify, execute
ARRIVAL_TIMEOUT_S = 30.0     # gossip bringing a proposal to a voter
SETTLE_TIMEOUT_S = 30.0      # logs and versions converging after the last fault
SETTLE_POLL_S = 0.2
LOG_LINES_SHOWN = 8


class ClusterNode:
    """One node as a test sees it: `name`, `url`, `token`, `api` (a client sending the token)."""

    def __init__(self, handle: NodeHandle) -> None:
        self.handle = handle      # the LocalCluster's own record (process, data dir, Raft address)

    @property
    def index(self) -> int:
        return self.handle.index

    @property
    def name(self) -> str:
        return f"node-{self.handle.index + 1}"

    @property
    def node_id(self) -> str:
        return self.handle.node_id

    @property
    def url(self) -> str:
        return self.handle.api_url

    @property
    def token(self) -> str | None:
        return self.handle.token

    @property
    def is_validator(self) -> bool:
        return self.handle.is_validator

    @property
    def data_dir(self) -> Path:
        return self.handle.data_dir

    @property
    def api(self) -> NodeApi:
        return NodeApi(self.url, self.token)

    def target(self) -> Target:
        """This node for cluster/upgrade_client.py."""
        return Target(self.name, self.url, self.token)

    def __repr__(self) -> str:
        return f"ClusterNode({self.name}, {self.url}, {'validator' if self.is_validator else 'member'})"


NodeRef = ClusterNode | int | str


class SynapseCluster:
    """A started LocalCluster with the operations a test needs; see the module docstring."""

    def __init__(self, local: LocalCluster) -> None:
        self.local = local
        # No scenario (so no hooks) and no random node groups here; the generator is only the Driver's field.
        self._driver = Driver(scenario=None, cluster=local, rng=random.Random(0))
        self.nodes = [ClusterNode(handle) for handle in local.nodes]
        self._partitioned = False
        self._closed = False

    @classmethod
    def start(cls, *, nodes: int, validators: int, data_dir: Path, governance: Mapping[str, int] | None = None,
              limits: Mapping[str, int] | None = None, **options: Any) -> "SynapseCluster":
        """Create and start a fresh network. `limits` are the genesis's network limits (sandbox_fuel, ...);
        `options` go to LocalCluster (config_limits, extra_env, reputations, start_timeout_s, ...)."""
        local = LocalCluster(nodes=nodes, validators=validators, data_dir=data_dir, governance=governance,
                             network_limits=limits, **options)
        local.start()          # on failure it stops whatever it started, then raises
        return cls(local)

    # --- nodes ------------------------------------------------------------------------------

    @property
    def network_id(self) -> str | None:
        return self.local.network_id

    @property
    def data_dir(self) -> Path | None:
        return self.local.data_dir

    def node(self, which: NodeRef) -> ClusterNode:
        if isinstance(which, ClusterNode) and any(node is which for node in self.nodes):
            return which
        if isinstance(which, int) and not isinstance(which, bool) and 0 <= which < len(self.nodes):
            return self.nodes[which]
        if isinstance(which, str):
            for node in self.nodes:
                if which in (node.name, node.node_id):
                    return node
        raise ClusterError(f"no node {which!r} in this cluster",
                           hint=f"give one of .nodes, its position 0..{len(self.nodes) - 1}, "
                                f"its name node-1..node-{len(self.nodes)} or its node id")

    def _nodes(self, which: NodeRef | Iterable[NodeRef]) -> list[ClusterNode]:
        items = [which] if isinstance(which, (ClusterNode, int, str)) else list(which)
        return [self.node(item) for item in items]

    def api(self, which: NodeRef) -> NodeApi:
        return self.node(which).api

    def state_of(self, which: NodeRef) -> str:
        """'up', 'killed', 'stopped' or 'paused', as this handle's faults left the node."""
        return self._driver.processes.state(self.node(which).index + 1)

    @property
    def live_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if self._driver.processes.live(node.index + 1)]

    def leader(self) -> ClusterNode | None:
        """The validators' Raft leader, as most live validators report it (None during an election)."""
        number = self._driver.leader_index()
        return None if number is None else self.nodes[number - 1]

    # --- process and network faults -----------------------------------------------------------

    def _fault(self, action: str, which: Sequence[NodeRef]) -> None:
        self._driver.processes.apply(action, [node.index + 1 for node in self._nodes(which)])

    def kill(self, *which: NodeRef) -> None:
        """SIGKILL: no clean shutdown."""
        self._fault("kill", which)

    def stop(self, *which: NodeRef) -> None:
        """SIGTERM, and wait for a clean exit."""
        self._fault("stop", which)

    def restart(self, *which: NodeRef) -> None:
        """Start again from the same data dir (killed, stopped, paused or running), and wait until healthy."""
        self._fault("restart", which)

    def pause(self, *which: NodeRef) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing."""
        self._fault("pause", which)

    def resume(self, *which: NodeRef) -> None:
        self._fault("resume", which)

    def partition(self, *groups: NodeRef | Iterable[NodeRef]) -> None:
        """Nodes in different groups can no longer reach each other; nodes in no group keep every link.
        Needs root and iptables (FaultInjectionUnavailable says so otherwise). The test itself (127.0.0.1)
        still reaches every node."""
        if len(groups) < 2:
            raise ClusterError("a partition needs two groups or more", hint='for example partition(["node-1", "node-2"], ["node-3"])')
        self._partitioned = True
        cut_groups(self._driver, [[node.index + 1 for node in self._nodes(group)] for group in groups])

    def heal(self) -> None:
        """Every link works again."""
        if self._partitioned:
            self._driver.network().heal()

    # --- governance ---------------------------------------------------------------------------

    def propose(self, package: ServedPackage | Mapping[str, Any], *, version: str, node: NodeRef = 0,
                title: str | None = None, description: str = "proposed by a test", via: str = "http") -> str:
        """Propose an upgrade to `package` (from the package_server fixture, or a mapping with package_url,
        package_hash and package_size) on `node`; returns the proposal id."""
        fields = package.proposal_fields(via=via) if isinstance(package, ServedPackage) else dict(package)
        body = {"title": title or f"upgrade to {version}", "description": description, "version": version, **fields}
        return call(self.node(node).target(), "POST", "/upgrades/propose", body, ok=(201,))["proposal_id"]

    def propose_rollback(self, target_proposal_id: str, *, node: NodeRef = 0) -> str:
        """Propose a network-wide rollback of an executed upgrade; returns the new proposal's id."""
        body = {"target_proposal_id": target_proposal_id}
        return call(self.node(node).target(), "POST", "/rollbacks/propose", body, ok=(201,))["proposal_id"]

    def vote(self, proposal_id: str, choice: str = "approval", *, by: NodeRef | Iterable[NodeRef] | None = None) -> list[dict]:
        """Each voter (every live node by default) votes with its own key, once gossip has brought it the
        proposal. A vote that arrives after the outcome is settled comes back with "skipped" (see upgrade_client.vote)."""
        voters = self.live_nodes if by is None else self._nodes(by)
        results = []
        for voter in voters:
            poll_until(lambda: voter.api.get(f"/proposals/{proposal_id}").status == 200, timeout_s=ARRIVAL_TIMEOUT_S,
                       what=f"proposal {proposal_id} to reach {voter.name} before its vote", interval_s=0.05)
            results.append(vote(voter.target(), proposal_id, choice))
        return results

    def wait_status(self, proposal_id: str, goal: str, *, nodes: NodeRef | Iterable[NodeRef] | None = None,
                    timeout_s: float = WAIT_TIMEOUT_S) -> dict[str, dict]:
        """Wait until every given node (every live node by default) has the proposal `goal` ("approved" or
        "executed": its own successful report) in its own view; returns each node's view by name. Fails at
        once on an outcome that cannot get there (rejected, expired, failed on node-3: FuelExhausted ...)."""
        if goal not in WAIT_GOALS:
            raise ClusterError(f"cannot wait for {goal!r}", hint=f"one of {', '.join(WAIT_GOALS)}; poll other states with wait_until")
        if not 0 < timeout_s <= TIMEOUT_S_MAX:
            raise ClusterError(f"timeout_s must be in (0, {TIMEOUT_S_MAX}], got {timeout_s}")
        targets = [node.target() for node in (self.live_nodes if nodes is None else self._nodes(nodes))]
        result = wait_for(targets, proposal_id, goal, timeout_s, echo=lambda line: None)
        if not result.reached:
            shown = "\n".join(f"  {name}: {line}" for name, line in result.lines.items())
            raise AssertionError(f"proposal {proposal_id} is not {goal} on every node: {result.reason}\n{shown}")
        return {target.name: call(target, "GET", f"/proposals/{proposal_id}") for target in targets}

    def wait_executed(self, proposal_id: str, **options: Any) -> dict[str, dict]:
        return self.wait_status(proposal_id, "executed", **options)

    def wait_approved(self, proposal_id: str, **options: Any) -> dict[str, dict]:
        return self.wait_status(proposal_id, "approved", **options)

    def states(self, nodes: NodeRef | Iterable[NodeRef] | None = None) -> dict[str, dict]:
        """GET /state ({"version", "state_hash", "state", ...}) of each node (every live node by default), by name."""
        chosen = self.live_nodes if nodes is None else self._nodes(nodes)
        return {node.name: self._driver.read_state(node.index + 1) for node in chosen}

    # --- safety -------------------------------------------------------------------------------

    def safety_outcomes(self, *, settle_s: float = SETTLE_TIMEOUT_S) -> list[Outcome]:
        """The shared safety checks on the live nodes, after at most `settle_s` for their logs, versions and
        state hashes to converge: logs converged, one version and state hash, nothing executed without a
        valid certificate, nothing executed twice."""
        seen: dict[str, Any] = {}

        def settled() -> bool:
            seen["snapshots"], seen["unreadable"] = self._driver.snapshots()
            snapshots = seen["snapshots"]
            return not seen["unreadable"] and logs_converged(snapshots).ok and one_version_and_state_hash(snapshots).ok
        try:
            poll_until(settled, what="the live nodes to converge", timeout_s=settle_s, interval_s=SETTLE_POLL_S)
        except AssertionError:
            pass            # not settled: the checks below say what differs, from the last look
        return self._driver.safety_outcomes(seen["snapshots"], seen["unreadable"])

    def assert_safe(self, *, settle_s: float = SETTLE_TIMEOUT_S) -> list[Outcome]:
        """`safety_outcomes`, failing the test with every failed check, what it expected and what it saw."""
        outcomes = self.safety_outcomes(settle_s=settle_s)
        failed = [outcome for outcome in outcomes if not outcome.ok]
        if failed:
            lines = []
            for outcome in failed:
                lines.append(f"  {outcome.name}: expected {outcome.expected}; saw {outcome.seen}")
                lines += [f"      {detail}" for detail in outcome.details]
            raise AssertionError(f"{len(failed)} of {len(outcomes)} safety checks failed:\n" + "\n".join(lines))
        return outcomes

    # --- reports and teardown -----------------------------------------------------------------

    def describe(self, lines: int = LOG_LINES_SHOWN) -> str:
        """For a failed test's report: the data dir, and each node's state, URL and last log lines."""
        parts = [f"data dir {self.data_dir} (network {self.network_id})"]
        for node in self.nodes:
            parts.append(f"--- {node.name} ({self.state_of(node)}, {node.url}, {'validator' if node.is_validator else 'member'}):")
            parts.append(self.local.log_tail(node.index, lines) or "(no log lines)")
        return "\n".join(parts)

    def close(self) -> None:
        """Resume paused nodes, remove partition rules, stop every node, release the address block. The
        data dir stays (a failed test's logs are there)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._driver.close()
        finally:
            self.local.close()

    def __enter__(self) -> "SynapseCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
