"""`synapse demo`: the whole story on one machine, in seconds, narrated step by step.

A 5-node network (3 validators) on a fresh local cluster: build the example package from WAT, serve
it over HTTP, propose it, vote, watch the validators ratify it through Raft and every node execute it
(version, state hash and the migration's new field, per node), then roll it back NETWORK-WIDE (a
rollback proposal through the same votes and ratification) and watch every node return to the
previous version and state hash. Then tear everything down.

Why it works as it does:
- It drives the network only through the nodes' public HTTP API, as a user with curl would (the same
  calls README shows), so the demo is also a smoke test of the product, not of internals.
- Every step is a wait on an observable fact, read on EVERY node (never one node's word about the
  others), with a deadline; a step that does not happen raises a ClusterError naming what did not happen,
  what was seen last, and the demo stops there. Exit 0 only if every narrated step happened.
- On failure the data dir (node logs, keys, stores) is kept and its path printed with the command to
  read the logs; on success it is removed unless --keep-data. Nodes never outlive the demo: they run
  under LocalCluster (parent-death signal, SIGTERM then SIGKILL on exit), even on Ctrl-C.
- The package is built at run time with wasmtime's wat2wasm (no external toolchain), from the same
  WAT file the tests and scenarios use, and served from 127.0.0.1 by cluster/package_server.py.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import click

from node.core.quorum import majority_of
from node.errors import ClusterError, SynapseError

REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGE_SOURCE = REPOSITORY / "examples" / "wat" / "feature_flag.wat"
PACKAGE_NAME = "feature_flag"
UPGRADE_VERSION = "1.2.0"
NEW_FIELD = "new_feature_enabled"
VOTING_PERIOD_MS = 60_000
STEP_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05
NODES_MAX = 16
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

T = TypeVar("T")


def demo_failed(message: str) -> ClusterError:
    """A narrated step did not happen (definite: the demo saw it not happen by its deadline)."""
    return ClusterError(message, hint="the node logs named below say why")


@dataclass(slots=True)
class Narrator:
    """Prints each step with the time since the demo started, and how long the step took."""

    echo: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    step_started: float = field(default_factory=time.monotonic)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def begin(self) -> None:
        self.step_started = time.monotonic()

    def say(self, tag: str, text: str, *, timed: bool = False) -> None:
        took = f"  ({time.monotonic() - self.step_started:.2f} s)" if timed else ""
        self.echo(f"[{self.elapsed_s():6.2f} s] {tag:<9}{text}{took}")
        self.step_started = time.monotonic()

    def detail(self, text: str) -> None:
        self.echo(f"{'':21}{text}")


def wait_until(look: Callable[[], tuple[T | None, str]], what: str, timeout_s: float = STEP_TIMEOUT_S) -> T:
    """Poll `look` -> (value or None, what was seen) until a value comes; a ClusterError on the deadline."""
    deadline = time.monotonic() + timeout_s
    seen = "nothing yet"
    while True:
        try:
            value, seen = look()
        except OSError as error:
            value, seen = None, f"a node did not answer: {error}"
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise demo_failed(f"{what} did not happen within {timeout_s:.0f} s; last seen: {seen}")
        time.sleep(POLL_INTERVAL_S)


@dataclass(slots=True)
class Demo:
    cluster: Any                  # LocalCluster
    narrator: Narrator
    package: dict = field(default_factory=dict)

    @property
    def indexes(self) -> range:
        return range(len(self.cluster.nodes))

    @staticmethod
    def label(index: int) -> str:
        return f"node-{index + 1}"

    def call(self, index: int, method: str, path: str, body: Any = None) -> Any:
        api = self.cluster.api(index)
        response = api.post(path, body) if method == "POST" else api.get(path)
        if not response.ok:
            message = response.data.get("message") if isinstance(response.data, dict) else response.text[:300]
            raise demo_failed(f"{method} {path} on {self.label(index)} answered {response.status}: {message}")
        return response.data

    def states(self) -> list[dict]:
        return [self.call(index, "GET", "/state") for index in self.indexes]

    def statuses(self, proposal_id: str) -> list[str | None]:
        statuses = []
        for index in self.indexes:
            response = self.cluster.api(index).get(f"/proposals/{quote(proposal_id, safe='')}")
            statuses.append(response.data.get("status") if response.ok and isinstance(response.data, dict) else None)
        return statuses


# --- the steps ---------------------------------------------------------------------------------------


def build_and_serve(narrator: Narrator, server: Any, work_dir: Path) -> dict:
    from cluster.package_server import build_package

    wasm = build_package(PACKAGE_SOURCE, work_dir)
    narrator.say("build", f"{PACKAGE_SOURCE.relative_to(REPOSITORY)} -> {len(wasm):,} bytes of WebAssembly (wasmtime wat2wasm)",
                 timed=True)
    served = server.add(PACKAGE_NAME, wasm)
    digest = hashlib.sha256(wasm).hexdigest()
    narrator.say("serve", f"{served.http_url}  sha256:{digest[:16]}...")
    return {"package_url": served.http_url, "package_hash": f"sha256:{digest}", "package_size": len(wasm)}


def wait_for_leader(demo: Demo) -> str:
    validators = [handle for handle in demo.cluster.nodes if handle.is_validator]
    by_address = {handle.raft_address: demo.label(handle.index) for handle in demo.cluster.nodes}
    by_address.update({handle.node_id: demo.label(handle.index) for handle in demo.cluster.nodes})

    def look() -> tuple[str | None, str]:
        answers = [demo.call(handle.index, "GET", "/health").get("raft_leader") for handle in validators]
        agreed = answers[0] if answers and len(set(answers)) == 1 and answers[0] in by_address else None
        return (by_address[agreed] if agreed else None), f"validators name {answers}"
    return wait_until(look, "the validators electing one Raft leader")


def show_states(demo: Demo, states: Sequence[dict]) -> None:
    for index, state in enumerate(states):
        members = (state["state"].get("global") or {}).get("nodes") or {}
        flagged = sum(1 for member in members.values() if isinstance(member, dict) and member.get(NEW_FIELD) is True)
        demo.narrator.detail(f"{demo.label(index)}  version {state['version']}  {state['state_hash']}  "
                             f"{NEW_FIELD}: {flagged}/{len(members)} members")


def one_version_everywhere(demo: Demo, version: str, what: str) -> list[dict]:
    def look() -> tuple[list[dict] | None, str]:
        states = demo.states()
        seen = {(state["version"], state["state_hash"]) for state in states}
        return (states if len(seen) == 1 and states[0]["version"] == version else None), f"(version, state hash) {sorted(seen)}"
    return wait_until(look, what)


def vote_until(demo: Demo, proposal_id: str, voters: Sequence[int], wanted: str) -> dict:
    """Each voter approves with its own key, once the proposal and the earlier votes reached it (so the
    tally it answers with counts them all); the tally after each vote."""
    document: dict = {}
    for position, index in enumerate(voters):
        def arrived() -> tuple[bool | None, str]:
            response = demo.cluster.api(index).get(f"/proposals/{quote(proposal_id, safe='')}")
            seen = response.data if response.ok and isinstance(response.data, dict) else {}
            votes = sum(1 for vote in seen.get("votes", ()) if vote.get("counted"))
            ready = seen.get("status") == "voting" and votes >= position
            return (True if ready else None), f"on {demo.label(index)}: status {seen.get('status')}, {votes} votes"
        wait_until(arrived, f"the proposal and the earlier votes reaching {demo.label(index)}")
        document = demo.call(index, "POST", f"/proposals/{quote(proposal_id, safe='')}/vote", {"vote": "approval"})
        tally = document["tally"]
        demo.narrator.say("vote", f"{demo.label(index)} approves: approval {tally['approval_weight']} of "
                                  f"{tally['total_weight']} reputation -> {tally['outcome']}")
    # The last voter's reply may not count every earlier vote yet (gossip may still carry one to it), so
    # the outcome is judged once the validators have closed voting, not from that reply.
    def closed() -> tuple[dict | None, str]:
        seen = demo.call(voters[-1], "GET", f"/proposals/{quote(proposal_id, safe='')}")
        if seen["status"] in ("rejected", "expired"):
            raise demo_failed(f"the proposal is {seen['status']!r} after the votes of "
                             f"{', '.join(map(demo.label, voters))}, not {wanted!r}")
        # Closed once a majority of the validators' CLOSE entries reached this node: they travel lazily
        # (by anti-entropy), so the certificate, even the execution, may come first.
        return ((seen if seen.get("closed") and seen["status"] != "voting" else None),
                f"status {seen['status']}, tally {seen['tally']['outcome']} "
                f"({seen['tally']['approval_weight']} of {seen['tally']['total_weight']}), "
                f"closed by {len(seen.get('closed_by', ()))} validators")
    document = wait_until(closed, "the validators closing voting (Raft fixes which votes count)")
    closers = {handle.node_id: demo.label(handle.index) for handle in demo.cluster.nodes}
    demo.narrator.say("close", f"validators closed voting through Raft: {sum(1 for v in document['votes'] if v['counted'])} "
                               f"votes counted, published by {', '.join(closers.get(v, v) for v in document['closed_by'])}",
                      timed=True)
    return document


def ratified_and_executed(demo: Demo, proposal_id: str) -> dict:
    """Wait for the certificate (any node), then for executed on every node; show the certificate."""
    def certified() -> tuple[dict | None, str]:
        document = demo.call(0, "GET", f"/proposals/{quote(proposal_id, safe='')}")
        return document.get("execution"), f"status {document['status']} on node-1"
    execution = wait_until(certified, "ratification by a majority of the validators (a certified EXECUTE_UPGRADE)")
    signers = {handle.node_id: demo.label(handle.index) for handle in demo.cluster.nodes}
    demo.narrator.say("ratify", f"validators ratified through Raft: upgrade sequence {execution['sequence']}, certificate "
                                f"signed by {', '.join(signers.get(item, item) for item in execution['certificate_signers'])}",
                      timed=True)

    def executed() -> tuple[bool | None, str]:
        statuses = demo.statuses(proposal_id)
        if "failed" in statuses:
            raise demo_failed(f"the upgrade failed on {demo.label(statuses.index('failed'))}: "
                             f"{failed_reason(demo, proposal_id, statuses.index('failed'))}")
        return (True if set(statuses) == {"executed"} else None), f"statuses {statuses}"
    wait_until(executed, "execution on every node")
    demo.narrator.say("execute", f"executed on {len(demo.cluster.nodes)}/{len(demo.cluster.nodes)} nodes", timed=True)
    return execution


def failed_reason(demo: Demo, proposal_id: str, index: int) -> str:
    document = demo.call(index, "GET", f"/proposals/{quote(proposal_id, safe='')}")
    node_id = demo.cluster.nodes[index].node_id
    return next((report["error"] for report in document["reports"] if report["node_id"] == node_id), "no report")


def upgrade(demo: Demo, before: list[dict]) -> tuple[str, list[dict]]:
    proposer, majority = len(demo.cluster.nodes) - 1, majority_of(len(demo.cluster.nodes))
    body = {"title": f"Upgrade to v{UPGRADE_VERSION}: Add Feature Flag", "version": UPGRADE_VERSION,
            "description": "Adds new_feature_enabled to every member (examples/wat/feature_flag.wat)", **demo.package}
    created = demo.call(proposer, "POST", "/upgrades/propose", body)
    proposal_id = created["proposal_id"]
    demo.narrator.say("propose", f"{demo.label(proposer)} proposes {body['title']!r}: {proposal_id} (voting until "
                                 f"{created['voting_deadline']})")
    vote_until(demo, proposal_id, range(majority), "approved")
    ratified_and_executed(demo, proposal_id)
    after = one_version_everywhere(demo, UPGRADE_VERSION, f"every node on {UPGRADE_VERSION} with one state hash")
    if after[0]["state_hash"] == before[0]["state_hash"]:
        raise demo_failed("the state hash did not change with the upgrade")
    demo.narrator.say("after", f"every node on {UPGRADE_VERSION}, one new state hash; the migration's field on every member:")
    show_states(demo, after)
    missing = [demo.label(index) for index, state in enumerate(after)
               if not all(member.get(NEW_FIELD) is True for member in state["state"]["global"]["nodes"].values())]
    if missing:
        raise demo_failed(f"{NEW_FIELD} is not true on every member on {', '.join(missing)}")
    return proposal_id, after


def rollback(demo: Demo, upgrade_id: str, before: list[dict]) -> None:
    count = len(demo.cluster.nodes)
    proposer, voters = 0, range(count - majority_of(count), count)
    created = demo.call(proposer, "POST", "/rollbacks/propose", {"target_proposal_id": upgrade_id})
    demo.narrator.say("rollback", f"{demo.label(proposer)} proposes a network-wide rollback to {created['version']}: "
                                  f"{created['proposal_id']}")
    vote_until(demo, created["proposal_id"], voters, "approved")
    ratified_and_executed(demo, created["proposal_id"])
    restored = one_version_everywhere(demo, before[0]["version"], f"every node back on {before[0]['version']}")
    if restored[0]["state_hash"] != before[0]["state_hash"]:
        raise demo_failed(f"every node is on {before[0]['version']}, but with state hash {restored[0]['state_hash']}, "
                         f"not the one before the upgrade ({before[0]['state_hash']})")
    demo.narrator.say("restored", f"every node back on {before[0]['version']} with the state hash it had before the upgrade:")
    show_states(demo, restored)
    statuses = demo.statuses(upgrade_id)
    if set(statuses) != {"rolled_back"}:
        raise demo_failed(f"the upgrade's status is {statuses}, not rolled_back everywhere")


# --- the command ---------------------------------------------------------------------------------------


def new_cluster(data_dir: Path, nodes: int, validators: int, gateway_url: str) -> Any:
    """A LocalCluster to use with `with` (which starts it and always stops it)."""
    from cluster.local import LocalCluster

    return LocalCluster(nodes=nodes, validators=validators, data_dir=data_dir / "cluster", start_timeout_s=START_TIMEOUT_S,
                        governance={"voting_period_ms": VOTING_PERIOD_MS}, ipfs_gateways=(gateway_url,))


def announce(narrator: Narrator, cluster: Any, data_dir: Path) -> None:
    validators = sum(1 for handle in cluster.nodes if handle.is_validator)
    narrator.say("cluster", f"{len(cluster.nodes)} node processes healthy ({validators} validators), data in {data_dir}",
                 timed=True)
    for handle in cluster.nodes:
        narrator.detail(f"node-{handle.index + 1}  {handle.node_id}  {'validator' if handle.is_validator else 'member   '}  "
                        f"{handle.api_url}")


def play(narrator: Narrator, data_dir: Path, nodes: int, validators: int) -> None:
    from cluster.package_server import PackageServer

    with PackageServer() as server:
        package = build_and_serve(narrator, server, data_dir / "build")
        with new_cluster(data_dir, nodes, validators, server.gateway_url) as cluster:
            announce(narrator, cluster, data_dir)
            demo = Demo(cluster=cluster, narrator=narrator, package=package)
            narrator.say("raft", f"validators elected a leader: {wait_for_leader(demo)}", timed=True)
            before = one_version_everywhere(demo, "1.0.0", "every node on 1.0.0 with one state hash")
            narrator.say("before", "every node on 1.0.0, one state hash:")
            show_states(demo, before)
            upgrade_id, _after = upgrade(demo, before)
            rollback(demo, upgrade_id, before)
            narrator.begin()
        narrator.say("teardown", f"stopped {nodes} nodes and the package server", timed=True)


def run_demo(*, nodes: int, validators: int, data_dir: Path | None, keep_data: bool, echo: Callable[[str], None]) -> int:
    """The demo; returns the exit status (0 only if everything happened as narrated)."""
    given = data_dir is not None
    data_dir = Path(data_dir).absolute() if given else Path(tempfile.mkdtemp(prefix="synapse-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    narrator = Narrator(echo=echo)
    echo(f"Synapse-NG demo: {nodes} nodes ({validators} validators) upgrade themselves by vote, then roll back by vote.")
    try:
        play(narrator, data_dir, nodes, validators)
    except KeyboardInterrupt:
        echo(f"interrupted: the nodes are stopped; their data and logs stay in {data_dir}")
        return EXIT_INTERRUPTED
    except SynapseError as error:
        echo(f"FAILED after {narrator.elapsed_s():.1f} s: {error.one_line()}")
        echo(f"the nodes are stopped; their data and logs stay in {data_dir}")
        echo(f"  node logs: {data_dir / 'cluster'}/node-<i>/node.log (read them merged: "
             f"synapse cluster logs --data-dir {data_dir / 'cluster'} --all)")
        return EXIT_FAILED
    if keep_data or given:
        echo(f"data kept in {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    echo(f"Demo complete in {narrator.elapsed_s():.1f} s: {nodes} nodes went 1.0.0 -> {UPGRADE_VERSION} -> 1.0.0, "
         "each step decided by vote, ratified by Raft and executed on every node.")
    return 0


@click.command("demo")
@click.option("--nodes", "node_count", type=click.IntRange(1, NODES_MAX), default=5, show_default=True, help="number of nodes")
@click.option("--validators", "validator_count", type=click.IntRange(1, NODES_MAX), default=3, show_default=True,
              help="validators (node-1..node-K)")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="where the nodes keep their data (kept); default: a temp dir, removed on success")
@click.option("--keep-data", is_flag=True, help="keep the temp data dir (keys, stores, logs) after a successful run")
def demo(node_count: int, validator_count: int, data_dir: Path | None, keep_data: bool) -> None:
    """Launch a local cluster, upgrade it by vote, roll it back by vote, and tear it down, narrated."""
    if validator_count > node_count:
        raise click.BadParameter(f"{validator_count} validators for {node_count} nodes", param_hint="--validators")
    if data_dir is not None and data_dir.exists() and any(data_dir.iterdir()):
        raise click.BadParameter(f"{data_dir} is not empty", param_hint="--data-dir")
    sys.exit(run_demo(nodes=node_count, validators=validator_count, data_dir=data_dir, keep_data=keep_data, echo=click.echo))
