"""What each scenario step does against a running cluster, and how each assertion judges it.

Why it works as it does:
- A `Driver` holds everything a step may touch: the provider (cluster/providers/: its `cluster`, its
  process and network faults), the process states (cluster/faults.py), the package server, the run's seeded random generator and the values
  saved by earlier steps (`save_as`). Hooks (`hook = "module:function"`) receive the same Driver, so
  what TOML cannot say is written against one documented object (see `Driver`).
- Actions go through the nodes' public HTTP API only, exactly as a user with curl would: a scenario
  tests the network, not its internals. A step whose call is refused fails with the node's error
  message, unless the step says `expect_error` (attacks: the refusal is the expected result).
- An assertion is a function that looks once and returns a `Judgement` (ok, expected, seen, the nodes
  concerned). The runner polls it until `within` runs out, or throughout `during`; so a check never
  sleeps on its own, and a failure always carries what was expected and what was seen last.
- Network faults go through the provider interface only (partition, cut, delay, loss, bandwidth,
  heal), in 0-based node indexes; the provider opens what it needs at the first fault, so a scenario
  without partitions runs on a machine without iptables, and one with them fails there with the
  reason, never pretends. On loopback, before cutting, the driver checks that every node talks to its
  peers from its own address (faults.unbound_peer_connections): rules by source address need that.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cluster.addresses import width_for
from cluster.faults import NodeView, ProcessFaults, raft_delay_note_from_configs, resolve, unbound_peer_connections
from cluster.package_server import PackageServer, ServedPackage
from cluster.safety import NodeSnapshot, Outcome, safety_outcomes
from cluster.scenario import Scenario, Selector, Step, parse_selector
from node.config import load_genesis
from node.errors import ClusterError, SynapseError
from node.clock import arm_skew, clear_skew
from node.fault_points import arm
from node.identity import verify_signature

LOG_PAGE_LIMIT = 500
LOG_ENTRIES_READ_MAX = 200_000
SHOWN_MAX = 5
_METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class StepFailed(Exception):
    """An action's outcome was not the expected one (a definite failure of the scenario)."""

    def __init__(self, expected: str, seen: str, nodes: Sequence[str] = (), details: Sequence[str] = ()) -> None:
        super().__init__(f"expected {expected}; saw {seen}")
        self.expected, self.seen, self.nodes, self.details = expected, seen, tuple(nodes), tuple(details)


@dataclass(frozen=True, slots=True, kw_only=True)
class Judgement:
    ok: bool
    expected: str
    seen: str
    nodes: tuple[str, ...] = ()
    details: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class SavedNote:
    label: str
    entry_id: str
    text: str


@dataclass(slots=True)
class Driver:
    """The run's handle on the cluster, for steps and hooks.

    For hooks: `api(index)` is a node's HTTP client (1-based index; `.get(path)`, `.post(path, body)`
    return `.status` and `.data`), `resolve(selector_text)` turns "validators" or ["node-1", 3] into
    indexes, `saved` holds earlier `save_as` values, `rng` is the run's seeded random.Random,
    `provider` is the Provider (cluster/providers/base.py: partition, delay, loss, heal, ... on
    0-based indexes), `cluster` its LocalCluster, `processes` the ProcessFaults, `log(text)` prints a
    progress line. The pytest plugin's cluster handle (cluster/testing.py) drives its cluster through
    a Driver too (a LoopbackProvider adopting its LocalCluster), with no scenario (and so no hooks)."""

    scenario: Scenario | None
    provider: Any
    rng: Any
    packages: PackageServer | None = None
    served: dict[str, ServedPackage] = field(default_factory=dict)
    saved: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    processes: ProcessFaults = field(init=False)
    _faulted: bool = field(init=False, default=False)   # a network fault was injected since the last heal
    skewed: set[int] = field(init=False, default_factory=set)   # nodes whose clock a skew step moved
    _deferred: list[Callable[[], None]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.processes = ProcessFaults(self.provider, len(self.cluster.nodes))

    @property
    def cluster(self) -> Any:
        return self.provider.cluster

    # --- nodes ------------------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        return len(self.cluster.nodes)

    @staticmethod
    def label(index: int) -> str:
        return f"node-{index}"

    def handle(self, index: int) -> Any:
        return self.cluster.nodes[index - 1]

    def host(self, index: int) -> str:
        return self.handle(index).api_url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def block_prefix(self) -> str:
        return self.host(1).rsplit(".", 1)[0]

    def api(self, index: int) -> Any:
        return self.cluster.api(index - 1)

    def views(self) -> list[NodeView]:
        return [NodeView(index=index, node_id=self.handle(index).node_id, host=self.host(index),
                         validator=self.handle(index).is_validator, state=self.processes.state(index))
                for index in range(1, self.node_count + 1)]

    def live_indexes(self) -> list[int]:
        return [index for index in range(1, self.node_count + 1) if self.processes.live(index)]

    def resolve(self, selector: Selector | str | int | list | None, *, default: str = "live", excluded: Sequence[int] = ()) -> list[int]:
        if selector is None or not isinstance(selector, Selector):
            selector = parse_selector(selector if selector is not None else default, nodes=self.node_count)
        return resolve(selector, self.views(), leader=self.leader_index, rng=self.rng, excluded=excluded)

    def leader_index(self) -> int | None:
        """The validators' Raft leader as their /health reports it (the most common answer), or None."""
        answers: dict[int, int] = {}
        for index in range(1, self.node_count + 1):
            if not (self.handle(index).is_validator and self.processes.live(index)):
                continue
            try:
                health = self.api(index).get("/health").data or {}
            except OSError:
                continue
            leader = health.get("raft_leader") or (health.get("raft") or {}).get("leader")
            for candidate in range(1, self.node_count + 1):
                handle = self.handle(candidate)
                if leader in (handle.node_id, handle.raft_address):
                    answers[candidate] = answers.get(candidate, 0) + 1
        return max(answers, key=answers.get) if answers else None

    def network(self) -> Any:
        """The provider, as the one that injects network faults (marks the run as needing a heal)."""
        self._faulted = True
        return self.provider

    def defer(self, cleanup: Callable[[], None]) -> None:
        """For hooks that start something (a server): `cleanup` runs when the run ends, last in first out."""
        self._deferred.append(cleanup)

    def close(self) -> None:
        """Heal, resume paused nodes, remove the iptables chain (the final checks need every live node),
        then run what hooks deferred."""
        try:
            self._close_faults()
        finally:
            while self._deferred:
                self._deferred.pop()()

    def clear_skews(self) -> list[int]:
        """Take every armed skew away (node/clock.py): those clocks are real time again within a refresh."""
        cleared = sorted(index for index in self.skewed if clear_skew(self.handle(index).data_dir))
        self.skewed.clear()
        return cleared

    def _close_faults(self) -> None:
        try:
            self.clear_skews()
            self.processes.resume_all()
        finally:
            if self._faulted:
                self._faulted = False
                self.provider.heal()

    # --- HTTP -------------------------------------------------------------------------------

    def call(self, index: int, method: str, path: str, body: Any = None, *, expect_error: int | bool | None = None) -> Any:
        """One API call; a refusal fails the step unless `expect_error` says it is the expected result."""
        try:
            response = self.api(index).post(path, body) if method == "POST" else self.api(index).get(path)
        except OSError as error:
            raise StepFailed(f"{method} {path} answered by {self.label(index)}", f"no answer: {error}", [self.label(index)]) from None
        if expect_error is not None:
            wanted = "an error status (4xx/5xx)" if expect_error is True else f"status {expect_error}"
            if (expect_error is True and response.status >= 400) or response.status == expect_error:
                return response
            raise StepFailed(f"{method} {path} on {self.label(index)} refused with {wanted}",
                             f"status {response.status}: {response.text[:300]}", [self.label(index)])
        if not 200 <= response.status < 300:
            message = (response.data or {}).get("message") if isinstance(response.data, dict) else response.text[:300]
            raise StepFailed(f"{method} {path} accepted by {self.label(index)}", f"status {response.status}: {message}", [self.label(index)])
        return response

    def read_log(self, index: int, *, kind: str | None = None) -> list[dict]:
        """Every visible entry of a node's log, in its visible order (paged, bounded)."""
        entries: list[dict] = []
        after = 0
        while len(entries) < LOG_ENTRIES_READ_MAX:
            query = f"/log?after={after}&limit={LOG_PAGE_LIMIT}" + (f"&kind={kind}" if kind else "")
            page = self.api(index).get(query)
            if page.status != 200 or not isinstance(page.data, dict):
                raise ClusterError(f"GET /log on {self.label(index)} answered {page.status}: {page.text[:200]}")
            entries.extend(page.data["entries"])
            if not page.data.get("more"):
                return entries
            after = page.data["next"]
        raise ClusterError(f"{self.label(index)} holds more than {LOG_ENTRIES_READ_MAX} entries", hint="raise LOG_ENTRIES_READ_MAX")

    def read_state(self, index: int) -> dict | None:
        """GET /state ({"version", "state_hash", "state"}), or None when the node has no such route."""
        response = self.api(index).get("/state")
        if response.status == 404 and isinstance(response.data, dict) and "no route" in str(response.data.get("message", "")):
            return None
        if response.status != 200 or not isinstance(response.data, dict):
            raise ClusterError(f"GET /state on {self.label(index)} answered {response.status}: {response.text[:200]}")
        return response.data

    def snapshots(self) -> tuple[list[NodeSnapshot], list[str]]:
        """What the safety checks judge: each live node's log, version and state hash; and the labels of
        the live nodes that did not answer."""
        snapshots, unreadable = [], []
        for index in self.live_indexes():
            try:
                entries = self.read_log(index)
                state = self.read_state(index)
                version = state.get("version") if state else (self.api(index).get("/health").data or {}).get("version")
            except (OSError, SynapseError):
                unreadable.append(self.label(index))
                continue
            snapshots.append(NodeSnapshot(label=self.label(index), node_id=self.handle(index).node_id, entries=tuple(entries),
                                          version=version, state_hash=state.get("state_hash") if state else None))
        return snapshots, unreadable

    def safety_outcomes(self, snapshots: Sequence[NodeSnapshot], unreadable: Sequence[str]) -> list[Outcome]:
        """The shared safety checks (cluster/safety.py) over `snapshots`, against this cluster's genesis;
        first a failed "every live node answers" when some live node did not."""
        genesis = load_genesis(self.cluster.genesis_path)
        validators = {member.node_id: member.public_key for member in genesis.validators}
        outcomes = safety_outcomes(snapshots, network_id=genesis.network_id, validators=validators, verify=verify_signature)
        if unreadable:
            outcomes.insert(0, Outcome(name="every live node answers", ok=False, expected="each live node serves GET /log and /health",
                                       seen=f"{len(unreadable)} node(s) did not answer", nodes=tuple(unreadable)))
        return outcomes


# --- actions ---------------------------------------------------------------------------------


def _do_note(driver: Driver, step: Step) -> str:
    notes = []
    for index in driver.resolve(step.params.get("on"), default="node-1"):
        text = step.params["text"].replace("{node}", driver.label(index))
        response = driver.call(index, "POST", "/log/notes", {"text": text}, expect_error=step.params.get("expect_error"))
        if response.status == 201:
            notes.append(SavedNote(label=driver.label(index), entry_id=response.data["id"], text=text))
    if "save_as" in step.params:
        driver.saved[step.params["save_as"]] = notes
    return f"{len(notes)} note(s) written"


def _do_propose(driver: Driver, step: Step) -> str:
    (index,) = driver.resolve(step.params.get("on"), default="node-1")
    package = driver.served[step.params["package"]]
    fields = package.proposal_fields(via="ipfs" if step.params.get("via") == "ipfs" else "http")
    body = {"title": step.params.get("title", step.label), "description": step.params.get("description", f"scenario step {step.index}"),
            "version": step.params["version"], **fields,
            "package_hash": step.params.get("hash", fields["package_hash"]), "package_size": step.params.get("size", fields["package_size"])}
    response = driver.call(index, "POST", "/upgrades/propose", body, expect_error=step.params.get("expect_error"))
    if "expect_error" in step.params:
        return f"refused as expected: {response.status}"
    proposal_id = response.data["proposal_id"]
    driver.saved[step.params["save_as"]] = proposal_id
    return f"proposal {proposal_id} by {driver.label(index)}"


def _do_propose_rollback(driver: Driver, step: Step) -> str:
    (index,) = driver.resolve(step.params.get("on"), default="node-1")
    body = {"target_proposal_id": driver.saved[step.params["target"]]}
    body.update({key: step.params[key] for key in ("title", "description") if key in step.params})
    response = driver.call(index, "POST", "/rollbacks/propose", body, expect_error=step.params.get("expect_error"))
    if "expect_error" in step.params:
        return f"refused as expected: {response.status}"
    driver.saved[step.params["save_as"]] = response.data["proposal_id"]
    return f"rollback proposal {response.data['proposal_id']}"


def _do_vote(driver: Driver, step: Step) -> str:
    proposal_id = driver.saved[step.params["proposal"]]
    voters = driver.resolve(step.params.get("by"))
    statuses = [driver.call(index, "POST", f"/proposals/{quote(proposal_id, safe='')}/vote", {"vote": step.params["vote"]},
                            expect_error=step.params.get("expect_error")).status for index in voters]
    if "expect_error" in step.params:
        return f"{step.params['vote']} by {', '.join(map(driver.label, voters))} refused as expected: {statuses}"
    return f"{step.params['vote']} by {', '.join(map(driver.label, voters))}"


def _do_rollback(driver: Driver, step: Step) -> str:
    proposal_id = driver.saved[step.params["proposal"]]
    nodes = driver.resolve(step.params.get("on"), default="node-1")
    statuses = [driver.call(index, "POST", f"/upgrades/{quote(proposal_id, safe='')}/rollback", {},
                            expect_error=step.params.get("expect_error")).status for index in nodes]
    if "expect_error" in step.params:
        return f"rollback on {', '.join(map(driver.label, nodes))} refused as expected: {statuses}"
    return f"rolled back on {', '.join(map(driver.label, nodes))}"


def _process_action(action: str) -> Callable[[Driver, Step], str]:
    def run(driver: Driver, step: Step) -> str:
        nodes = driver.resolve(step.params["nodes"], default="live")
        driver.processes.apply(action, nodes)
        return f"{action}: {', '.join(map(driver.label, nodes))}"
    return run


def _check_partitions_hold(driver: Driver) -> None:
    if driver.provider.name != "loopback":
        return  # a node in a namespace of its own has one address: nothing else to send from
    pids = {driver.handle(index).pid: driver.host(index) for index in driver.live_indexes() if driver.handle(index).pid}
    problems = unbound_peer_connections(pids, driver.block_prefix, width_for(driver.node_count))
    if problems:
        raise ClusterError(f"a partition would not hold: {problems[0]} ({len(problems)} such connection(s))",
                           hint="every node must bind its outgoing sockets to its own address (gossip connector, Raft transport)")


def cut_groups(driver: Driver, groups: Sequence[Sequence[int]]) -> str:
    _check_partitions_hold(driver)
    network = driver.network()
    network.partition([[index - 1 for index in group] for group in groups])
    shown = " | ".join("{" + ", ".join(str(index) for index in group) + "}" for group in groups)
    return f"partitioned {shown}: {len(network.cut_links())} links cut"


def _do_partition(driver: Driver, step: Step) -> str:
    selectors = step.params["groups"]
    resolved: list[list[int] | None] = [None if "rest" in selector.groups else driver.resolve(selector, default="live")
                                        for selector in selectors]
    taken = sorted({index for group in resolved if group for index in group})
    groups = [group if group is not None else driver.resolve(selector, excluded=taken) for group, selector in zip(resolved, selectors)]
    return cut_groups(driver, groups)


def _do_isolate(driver: Driver, step: Step) -> str:
    nodes = driver.resolve(step.params["nodes"])
    rest = [index for index in range(1, driver.node_count + 1) if index not in nodes]
    if not rest:
        raise ClusterError("isolate names every node: there is nobody to isolate them from")
    return cut_groups(driver, [nodes, rest])


def _do_cut(driver: Driver, step: Step) -> str:
    sources, destinations = driver.resolve(step.params["from"]), driver.resolve(step.params["to"])
    _check_partitions_hold(driver)
    driver.network().cut([index - 1 for index in sources], [index - 1 for index in destinations])
    return f"cut {sources} -> {destinations}"


def _do_delay(driver: Driver, step: Step) -> str:
    sources, destinations = driver.resolve(step.params["from"]), driver.resolve(step.params["to"])
    jitter_ms = step.params.get("jitter_ms", 0)
    driver.network().delay([index - 1 for index in sources], [index - 1 for index in destinations], ms=step.params["ms"],
                           jitter_ms=jitter_ms)
    note = raft_delay_note_from_configs(sources=sources, destinations=destinations, one_way_ms=step.params["ms"] - jitter_ms,
                                        validator_configs={index: driver.handle(index).config_path for index in driver.resolve("validators")})
    return f"delay {step.params['ms']} ms (jitter {jitter_ms} ms) on {sources} -> {destinations}" + (f"; {note}" if note else "")


def _do_loss(driver: Driver, step: Step) -> str:
    sources, destinations = driver.resolve(step.params["from"]), driver.resolve(step.params["to"])
    driver.network().loss([index - 1 for index in sources], [index - 1 for index in destinations], percent=step.params["percent"])
    return f"loss {step.params['percent']} % on {sources} -> {destinations}"


def _do_bandwidth(driver: Driver, step: Step) -> str:
    nodes = driver.resolve(step.params["nodes"])
    driver.network().bandwidth([index - 1 for index in nodes], kbit=step.params["kbit"])
    return f"bandwidth {step.params['kbit']} kbit/s on {', '.join(map(driver.label, nodes))}"


def _do_heal(driver: Driver, step: Step) -> str:
    cleared = driver.clear_skews()
    clocks = f"; clocks of {', '.join(map(driver.label, cleared))} real again" if cleared else ""
    if not driver._faulted:
        return ("nothing to heal" + clocks) if not cleared else clocks[2:]
    driver.provider.heal()
    driver._faulted = False
    return "every link restored (partitions, delay, loss, bandwidth)" + clocks


def _do_skew(driver: Driver, step: Step) -> str:
    """Arm a clock skew (node/clock.py): the cluster runs with SYNAPSE_FAULT_POINTS=1, as for crash points."""
    nodes = driver.resolve(step.params["nodes"])
    for index in nodes:
        arm_skew(driver.handle(index).data_dir, step.params["ms"])
        driver.skewed.add(index)
    return f"clock of {', '.join(map(driver.label, nodes))} skewed by {step.params['ms']:+d} ms"


def _do_serve(driver: Driver, step: Step) -> str:
    assert driver.packages is not None, "packages are declared, so the server runs"
    driver.packages.set_available(step.params["package"], step.params["available"])
    return f"package {step.params['package']} {'served' if step.params['available'] else 'unavailable (503)'}"


def _do_crash_at(driver: Driver, step: Step) -> str:
    nodes = driver.resolve(step.params["nodes"])
    for index in nodes:
        arm(driver.handle(index).data_dir, step.params["point"])
    return f"armed crash point {step.params['point']} on {', '.join(map(driver.label, nodes))}: each kills itself there"


def _do_wait(driver: Driver, step: Step) -> str:
    time.sleep(step.params["duration"] / 1000)
    return f"waited {step.params['duration']} ms"


ACTIONS: Mapping[str, Callable[[Driver, Step], str]] = {
    "note": _do_note, "propose": _do_propose, "propose_rollback": _do_propose_rollback, "vote": _do_vote,
    "rollback": _do_rollback, "kill": _process_action("kill"), "stop": _process_action("stop"),
    "restart": _process_action("restart"), "pause": _process_action("pause"), "resume": _process_action("resume"),
    "crash_at": _do_crash_at, "partition": _do_partition, "isolate": _do_isolate, "cut": _do_cut, "heal": _do_heal, "skew": _do_skew, "serve": _do_serve, "wait": _do_wait,
    "delay": _do_delay, "loss": _do_loss, "bandwidth": _do_bandwidth,
}


# --- hooks -----------------------------------------------------------------------------------


def load_hook(reference: str, scenario_dir: Path | None) -> Callable[..., Any]:
    """`module:function`: an importable module, or a .py file beside the scenario (`hooks:f` -> hooks.py).
    A hook is code the scenario's author wrote: scenario files are trusted like any test."""
    module_name, function_name = reference.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        candidate = (scenario_dir / Path(*module_name.split("."))).with_suffix(".py") if scenario_dir else None
        if candidate is None or not candidate.is_file():
            raise ClusterError(f"hook module {module_name!r} is neither importable nor a file beside the scenario",
                               hint=f"put {module_name.replace('.', '/')}.py beside the scenario file, or install the module") from None
        specification = importlib.util.spec_from_file_location(f"synapse_scenario_hooks.{module_name}", candidate)
        module = importlib.util.module_from_spec(specification)
        sys.modules[specification.name] = module
        specification.loader.exec_module(module)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ClusterError(f"hook {reference!r}: {module_name} has no function {function_name}")
    return function


def run_hook(driver: Driver, step: Step) -> Judgement:
    """Call the hook once: an AssertionError is a failed judgement (retried under `within`)."""
    function = load_hook(step.params["hook"], driver.scenario.path.parent if driver.scenario.path else None)
    try:
        seen = function(driver, **step.params.get("args", {}))
    except AssertionError as error:
        return Judgement(ok=False, expected=f"hook {step.params['hook']} holds", seen=str(error) or "an assertion failed")
    return Judgement(ok=True, expected=f"hook {step.params['hook']} holds", seen=str(seen) if seen is not None else "ok")


# --- assertions ------------------------------------------------------------------------------


def _per_node(driver: Driver, step: Step, expected: str, judge: Callable[[int], str | None]) -> Judgement:
    """Run `judge(index)` on every selected node: None means it holds there, a string says what was seen."""
    nodes = driver.resolve(step.params.get("on"), default="live")
    failures: list[tuple[int, str]] = []
    for index in nodes:
        try:
            problem = judge(index)
        except (OSError, SynapseError, KeyError, TypeError, ValueError) as error:
            problem = f"could not be read: {error}"
        if problem is not None:
            failures.append((index, problem))
    if not failures:
        return Judgement(ok=True, expected=expected, seen=f"holds on {', '.join(map(driver.label, nodes))}")
    details = tuple(f"{driver.label(index)}: {problem}" for index, problem in failures)
    return Judgement(ok=False, expected=expected, seen=f"fails on {len(failures)} of {len(nodes)} node(s): {details[0]}",
                     nodes=tuple(driver.label(index) for index, _ in failures), details=details[:SHOWN_MAX])


def _check_healthy(driver: Driver, step: Step) -> Judgement:
    def judge(index: int) -> str | None:
        response = driver.api(index).get("/health")
        status = (response.data or {}).get("status") if isinstance(response.data, dict) else None
        return None if response.status == 200 and status == "ok" else f"status {response.status}, {response.text[:120]}"
    return _per_node(driver, step, "GET /health says ok", judge)


def _check_crashed(driver: Driver, step: Step) -> Judgement:
    def judge(index: int) -> str | None:
        handle = driver.handle(index)
        if handle.running:
            return "still running"
        driver.processes.mark_crashed(index)
        return None
    return _per_node(driver, step, "the node process has exited (its crash point fired)", judge)


def _check_proposal_status(driver: Driver, step: Step) -> Judgement:
    proposal_id = driver.saved[step.params["proposal"]]
    wanted = (step.params["equals"],) if "equals" in step.params else step.params["one_of"]

    def judge(index: int) -> str | None:
        response = driver.api(index).get(f"/proposals/{quote(proposal_id, safe='')}")
        status = response.data.get("status") if isinstance(response.data, dict) else None
        if response.status != 200:
            return f"GET /proposals/{proposal_id} answered {response.status}: {response.text[:120]}"
        outcome = (response.data.get("tally") or {}).get("outcome")
        if "tally" in step.params and outcome != step.params["tally"]:
            return f"status {status!r}, tally {outcome!r}"
        return None if status in wanted else f"status {status!r}"
    shown = f" (tally {step.params['tally']})" if "tally" in step.params else ""
    return _per_node(driver, step, f"proposal {proposal_id} status {' or '.join(wanted)}{shown}", judge)


def _version_of(driver: Driver, index: int) -> str | None:
    state = driver.read_state(index)
    if state is not None:
        return state.get("version")
    return (driver.api(index).get("/health").data or {}).get("version")


def _check_version(driver: Driver, step: Step) -> Judgement:
    wanted = step.params["equals"]

    def judge(index: int) -> str | None:
        version = _version_of(driver, index)
        return None if version == wanted else f"version {version!r}"
    return _per_node(driver, step, f"version {wanted}", judge)


def state_values(state: Any, path: str) -> list[Any]:
    """The values at a dotted path, `*` matching every key of an object: ("global.nodes.*.flag")."""
    values = [state]
    for key in path.split("."):
        following = []
        for value in values:
            if isinstance(value, dict):
                following += list(value.values()) if key == "*" else ([value[key]] if key in value else [])
        values = following
    return values


def _check_state_field(driver: Driver, step: Step) -> Judgement:
    path = step.params["path"]
    expected = f"state {path} " + (f"== {step.params['equals']!r}" if "equals" in step.params else
                                   "exists" if step.params.get("exists") else "absent")

    def judge(index: int) -> str | None:
        document = driver.read_state(index)
        if document is None:
            return "the node has no GET /state"
        values = state_values(document.get("state"), path)
        if "equals" in step.params:
            return None if values and all(value == step.params["equals"] for value in values) else f"values {values[:SHOWN_MAX]!r}"
        return None if bool(values) == step.params["exists"] else f"{len(values)} value(s) at {path}"
    return _per_node(driver, step, expected, judge)


def _check_state_hash(driver: Driver, step: Step) -> Judgement:
    nodes = driver.resolve(step.params.get("on"), default="live")
    hashes: dict[int, str | None] = {}
    for index in nodes:
        try:
            document = driver.read_state(index)
            hashes[index] = document.get("state_hash") if document else None
        except (OSError, SynapseError) as error:
            hashes[index] = f"unreadable ({error})"
    distinct = set(hashes.values())
    details = tuple(f"{driver.label(index)}: {value}" for index, value in hashes.items())
    expected = "one state hash on " + ", ".join(map(driver.label, nodes))
    if len(distinct) != 1 or None in distinct:
        return Judgement(ok=False, expected=expected, seen=f"{len(distinct)} different state hashes", details=details,
                         nodes=tuple(map(driver.label, nodes)))
    (value,) = distinct
    for key, must_equal in (("equals_saved", True), ("differs_from_saved", False)):
        if key in step.params and (driver.saved[step.params[key]] == value) != must_equal:
            relation = "equal to" if must_equal else "different from"
            return Judgement(ok=False, expected=f"{expected}, {relation} saved {step.params[key]} ({driver.saved[step.params[key]]})",
                             seen=f"state hash {value}", details=details)
    if "save_as" in step.params:
        driver.saved[step.params["save_as"]] = value
    return Judgement(ok=True, expected=expected, seen=f"state hash {value}")


def _entry_matches(step: Step, driver: Driver) -> Callable[[list[dict]], tuple[int, int, list[str]]]:
    """(matching entries, wanted, missing note ids) for the log_contains/log_lacks filters."""
    def count(entries: list[dict]) -> tuple[int, int, list[str]]:
        if "notes" in step.params:
            notes: list[SavedNote] = driver.saved[step.params["notes"]]
            held = {entry["id"] for entry in entries}
            missing = [note.entry_id for note in notes if note.entry_id not in held]
            return len(notes) - len(missing), len(notes), missing
        matching = [entry for entry in entries if ("kind" not in step.params or entry["kind"] == step.params["kind"])
                    and ("text" not in step.params or (entry["kind"] == "NOTE" and entry["body"].get("text") == step.params["text"]))]
        return len(matching), step.params.get("count_min", 1), []
    return count


def _log_filter_text(step: Step) -> str:
    parts = [f"notes saved as {step.params['notes']}" if "notes" in step.params else None,
             f"kind {step.params['kind']}" if "kind" in step.params else None,
             f"text {step.params['text']!r}" if "text" in step.params else None]
    return " and ".join(part for part in parts if part)


def _check_log_contains(driver: Driver, step: Step) -> Judgement:
    count = _entry_matches(step, driver)

    def judge(index: int) -> str | None:
        found, wanted, missing = count(driver.read_log(index, kind=step.params.get("kind")))
        if found > step.params.get("count_max", found):
            return f"{found} entries, more than {step.params['count_max']}"
        if found >= wanted:
            return None
        return f"{found} of {wanted} entries" + (f"; missing {', '.join(entry_id[:16] for entry_id in missing[:SHOWN_MAX])}" if missing else "")
    return _per_node(driver, step, f"the log holds {_log_filter_text(step)}", judge)


def _check_log_lacks(driver: Driver, step: Step) -> Judgement:
    count = _entry_matches(step, driver)

    def judge(index: int) -> str | None:
        found, _wanted, _missing = count(driver.read_log(index, kind=step.params.get("kind")))
        return None if found == 0 else f"{found} matching entries present"
    return _per_node(driver, step, f"the log holds no {_log_filter_text(step)}", judge)


def _check_log_converged(driver: Driver, step: Step) -> Judgement:
    from cluster.safety import logs_converged

    nodes = driver.resolve(step.params.get("on"), default="live")
    snapshots = [NodeSnapshot(label=driver.label(index), node_id=driver.handle(index).node_id, entries=tuple(driver.read_log(index)),
                              version=None, state_hash=None) for index in nodes]
    outcome = logs_converged(snapshots)
    return Judgement(ok=outcome.ok, expected=outcome.expected, seen=outcome.seen, nodes=outcome.nodes, details=outcome.details)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text -> [(name, labels, value)]; comments and malformed lines are skipped."""
    series = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if not match or line.startswith("#"):
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        series.append((match.group(1), dict(_LABEL.findall(match.group(2) or "")), value))
    return series


def metric_value(text: str, query: str) -> float | None:
    """The sum of the series named by `query` (`name` or `name{label="v",...}`, labels matched as a
    subset), or None when no series matches."""
    match = _METRIC_LINE.match(query + " 0")
    name, wanted = match.group(1), dict(_LABEL.findall(match.group(2) or ""))
    values = [value for series_name, labels, value in parse_metrics(text)
              if series_name == name and all(labels.get(key) == item for key, item in wanted.items())]
    return sum(values) if values else None


def _check_metric(driver: Driver, step: Step) -> Judgement:
    query = step.params["metric"]
    bounds = [(key, step.params[key]) for key in ("equals", "at_least", "at_most") if key in step.params]
    expected = f"{query} " + " and ".join({"equals": "==", "at_least": ">=", "at_most": "<="}[key] + f" {value:g}" for key, value in bounds)

    def judge(index: int) -> str | None:
        response = driver.api(index).get("/metrics")
        value = metric_value(response.text, query) if response.status == 200 else None
        holds = value is not None and all({"equals": value == bound, "at_least": value >= bound, "at_most": value <= bound}[key]
                                          for key, bound in bounds)
        return None if holds else f"value {value if value is not None else 'absent'}"
    return _per_node(driver, step, expected, judge)


CHECKS: Mapping[str, Callable[[Driver, Step], Judgement]] = {
    "healthy": _check_healthy, "crashed": _check_crashed, "proposal_status": _check_proposal_status, "version": _check_version,
    "state_field": _check_state_field, "state_hash": _check_state_hash, "log_contains": _check_log_contains,
    "log_lacks": _check_log_lacks, "log_converged": _check_log_converged, "metric": _check_metric,
}
