"""Run a chaos schedule against a fresh local cluster, record its history, heal, probe liveness, judge.

Why it works as it does:
- The schedule (cluster/chaos_plan.py) is fixed before anything starts; this module only executes it,
  item by item, never before its time (an item that comes late runs at once, and the history shows
  when it really ran). One thread drives everything, as in the scenario runner, so node processes
  die with it and the history reads in the order things happened.
- The cluster, faults and HTTP calls are the scenario runner's own (a provider of cluster/providers/,
  the scenario Driver with ProcessFaults over it, the package server): chaos is a generated scenario,
  not a second testbed. An ExitStack tears everything down in reverse order whatever happens.
- Every operation is recorded as Jepsen does (cluster/chaos_history.py): a node's 2xx is `ok`, a
  4xx is `fail` (refused: definitely not done), no answer or a 5xx is `info`. An operation aimed at a
  node this run took down is not sent and is a `fail` (the history says why), so a paused node does
  not stall the schedule for an HTTP timeout.
- At the end every fault is healed (resume, heal, restart, disarm crash points), the cluster gets
  time to converge, then a fresh upgrade is proposed and approved and must execute on every node
  within LIVENESS_BOUND_MS: liveness is only asked of a healed network. The final logs, states and
  proposal statuses are read then, and judged by pure checkers (cluster/chaos_checks.py) from the
  written folder, exactly as `synapse chaos check` judges it later.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import chaos_adversary as adversary
from cluster.chaos_folder import write_finals, write_run_document
from cluster.chaos_history import HISTORY_FILE_NAME, HistoryRecorder
from cluster.chaos_plan import FAULT_KINDS, LINK_FAULT_KINDS, LIVENESS_VERSION, VOTING_PERIOD_MS, Item, Schedule, schedule_lines
from cluster.providers import make_provider
from cluster.package_server import PackageServer, build_package
from cluster.report import copy_node_files
from cluster.safety import NodeSnapshot, logs_converged, one_version_and_state_hash
from cluster.scenario_steps import Driver
from node.clock import arm_skew, clear_skew
from node.config import load_genesis
from node.errors import FaultInjectionUnavailable, SynapseError
from node.fault_points import ENVIRONMENT_VARIABLE as FAULT_POINTS_VARIABLE, FILE_NAME as FAULT_POINT_FILE, arm
from node.logging_setup import LOG_FILE_NAME
from node.planted_bugs import ENVIRONMENT_VARIABLE as PLANTED_VARIABLE, planted_bugs_for

REPOSITORY = Path(__file__).resolve().parent.parent
GOOD_SOURCE = REPOSITORY / "examples" / "wat" / "feature_flag.wat"
HOSTILE_DIR = REPOSITORY / "tests" / "packages"
START_TIMEOUT_S = 90.0
SETTLE_MS = 60_000
LIVENESS_BOUND_MS = 90_000
POLL_INTERVAL_S = 0.5
SANDBOX_FUEL = 50_000_000
GENESIS_VERSION = "1.0.0"
NETWORK_OPS = ("partition", "cut", "heal")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    folder: Path
    verdict: str
    seed: int


def good_package_source(version: str) -> str:
    """feature_flag.wat for another version: its version text and field name substituted in place with
    texts of the same length (as scenarios/packages/second_flag.wat is made), so every data offset holds."""
    assert len(version) == 5, version
    field_name = f"chaos_{version.replace('.', '_')}_enabled"
    assert len(field_name) == len("new_feature_enabled"), field_name
    return GOOD_SOURCE.read_text().replace("1.2.0", version).replace("new_feature_enabled", field_name)


def _classify(response: Any) -> str:
    return "ok" if 200 <= response.status < 300 else "fail" if 400 <= response.status < 500 else "info"


def _message(response: Any) -> str:
    return str((response.data or {}).get("message") if isinstance(response.data, dict) else response.text[:200])


@dataclass(slots=True)
class ChaosRun:
    schedule: Schedule
    folder: Path
    echo: Callable[[str], None] = print
    driver: Driver | None = None
    history: HistoryRecorder | None = None
    names: dict[str, str] = field(default_factory=dict)        # "p3" -> proposal id
    finals: dict[str, dict] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    aborted: str | None = None
    _started: float = 0.0

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        options = self.schedule.options
        self.echo(f"seed: {options.seed} (replay: synapse chaos replay {self.folder})")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "schedule.jsonl").write_text("\n".join(schedule_lines(self.schedule)) + "\n")
        data_dir = Path(tempfile.mkdtemp(prefix="synapse-chaos-"))
        log_dirs: dict[str, Path] = {}
        planted: list[str] = []
        try:
            planted = sorted(planted_bugs_for(os.environ))    # the nodes inherit this environment
            if planted:
                self.echo(f"PLANTED BUG(S) ON EVERY NODE: {', '.join(planted)} ({PLANTED_VARIABLE} is set): this run tests the tester")
            self._preflight()
            with contextlib.ExitStack() as stack, open(self.folder / HISTORY_FILE_NAME, "w") as sink:
                self._start(stack, data_dir, log_dirs)
                self._started = time.monotonic()
                self.history = HistoryRecorder(clock_ms=lambda: int((time.monotonic() - self._started) * 1000),
                                               wall_ms=lambda: time.time_ns() // 1_000_000, sink=sink)
                self._play()
                self._heal_everything()
                self._settle()
                self._liveness()
                self._collect_finals()
        except KeyboardInterrupt:
            self.aborted = "interrupted (Ctrl-C)"
        except SynapseError as error:
            self.aborted = error.one_line()
            self.echo(f"run aborted: {error.one_line()}")
        finally:
            for label, node_dir in log_dirs.items():
                files = {name: node_dir / name for name in (LOG_FILE_NAME, "stderr.log") if (node_dir / name).exists()}
                copy_node_files(self.folder, label, files, self.finals.get(label, {"process": "not reached"}))
            write_finals(self.folder, self.finals)
            write_run_document(self.folder, {**self.meta, "options": options.as_dict(), "aborted": self.aborted, "planted_bugs": planted,
                                             "liveness_bound_ms": LIVENESS_BOUND_MS, "genesis_version": GENESIS_VERSION})
            shutil.rmtree(data_dir, ignore_errors=True)

    def _preflight(self) -> None:
        provider = self.schedule.options.provider
        for kind in LINK_FAULT_KINDS:
            if any(item.op == kind for item in self.schedule.items):
                capability = make_provider(provider).capabilities()[kind]
                if not capability.available:
                    raise FaultInjectionUnavailable(f"this schedule has {kind} faults, which the {provider} provider cannot inject "
                                                    f"here: {capability.detail}", hint=capability.hint or f"leave {kind} out of --faults")
        if any(item.op in NETWORK_OPS for item in self.schedule.items):
            capability = make_provider(provider).capabilities()["partition"]
            if not capability.available:
                others = ",".join(kind for kind in FAULT_KINDS if not kind.startswith("partition") and kind != "cut_one_way")
                raise FaultInjectionUnavailable(f"this schedule cuts the network, but partitions are not possible here: "
                                                f"{capability.detail}", hint=f"{capability.hint}; or run with --faults {others}")

    def _packages(self, stack: contextlib.ExitStack, data_dir: Path, host: str) -> tuple[PackageServer, dict]:
        import wasmtime

        server = stack.enter_context(PackageServer(host=host))   # an address every node reaches (the netns bridge)
        served = {}
        for item in self.schedule.items:
            if item.op != "propose":
                continue
            version, package = item.value["version"], item.value["package"]
            name = f"{package}-{version}" + ("-corrupt" if item.value.get("hash_mismatch") else "")
            if package == "good":
                data = bytes(wasmtime.wat2wasm(good_package_source(version)))
            else:
                data = build_package(HOSTILE_DIR / f"{package}.wat", data_dir / "builds")
            served[item.id] = server.add(name, data, corrupt=bool(item.value.get("hash_mismatch")))
        served["liveness"] = server.add("liveness", bytes(wasmtime.wat2wasm(good_package_source(LIVENESS_VERSION))))
        return server, served

    def _start(self, stack: contextlib.ExitStack, data_dir: Path, log_dirs: dict[str, Path]) -> None:
        options = self.schedule.options
        provider = make_provider(options.provider, nodes=options.nodes, validators=options.validators, data_dir=data_dir / "cluster",
                                 start_timeout_s=START_TIMEOUT_S, governance={"voting_period_ms": VOTING_PERIOD_MS},
                                 network_limits={"sandbox_fuel": SANDBOX_FUEL}, config_limits={"gossip_interval_ms": 100},
                                 extra_env={FAULT_POINTS_VARIABLE: "1"})   # crash points and clock skews can be armed
        stack.callback(provider.close)
        provider.setup()
        server, served = self._packages(stack, data_dir, provider.host_address)
        self.echo(f"starting {options.nodes} nodes ({options.validators} validators, {options.provider}), {len(served)} packages served ...")
        provider.start(ipfs_gateways=(server.gateway_url,))
        cluster = provider.cluster
        self.driver = Driver(scenario=None, provider=provider, rng=None, packages=server, log=self.echo)
        self.driver.served.update({str(key): value for key, value in served.items()})
        stack.callback(self.driver.close)
        genesis = load_genesis(cluster.genesis_path)
        shutil.copyfile(cluster.genesis_path, self.folder / "genesis.json")
        self.meta = {"network_id": genesis.network_id, "validators": {m.node_id: m.public_key.hex() for m in genesis.validators},
                     "nodes": {f"node-{h.index + 1}": h.node_id for h in cluster.nodes},
                     "adversary": {"member": f"node-{options.adversary_member}", "validator": f"node-{options.adversary_validator}"}}
        for handle in cluster.nodes:
            log_dirs[f"node-{handle.index + 1}"] = handle.data_dir
            self.echo(f"  node-{handle.index + 1}  {handle.node_id}  {'validator' if handle.is_validator else 'member   '}  {handle.api_url}")

    # --- playing the schedule ---------------------------------------------------------------

    def _play(self) -> None:
        total = len(self.schedule.items)
        for number, item in enumerate(self.schedule.items, start=1):
            delay_s = item.at_ms / 1000 - (time.monotonic() - self._started)
            if delay_s > 0:
                time.sleep(delay_s)
            self._execute(item, number, total)

    def _execute(self, item: Item, number: int, total: int) -> None:
        node = f"node-{item.nodes[0]}" if item.nodes else None
        invoke_value = {**item.value, "nodes": list(item.nodes)}
        self.history.record("invoke", process=item.source, op_id=item.id, f=item.op, node=node, value=invoke_value)
        try:
            outcome, value = OPERATIONS[item.op](self, item)
        except (OSError, SynapseError, http.client.HTTPException) as error:   # no (or a broken) answer: may have happened
            outcome, value = "info", {"error": f"{type(error).__name__}: {error}"}
        self.history.record(outcome, process=item.source, op_id=item.id, f=item.op, node=node, value=value)
        shown = value.get("error") or value.get("proposal_id") or value.get("entry_id", "")
        self.echo(f"[{number:>3}/{total}] {time.monotonic() - self._started:6.1f}s {item.source:9} {item.op:<17} "
                  f"{','.join(map(str, item.nodes)) or '-':<5} {outcome:<4} {str(shown)[:90]}")

    def _live(self, index: int) -> bool:
        return self.driver.processes.live(index) and self.driver.handle(index).running

    def _post(self, index: int, path: str, body: dict) -> tuple[str, dict, Any]:
        if not self._live(index):
            return "fail", {"error": f"node-{index} is {self.driver.processes.state(index)}: not sent"}, None
        response = self.driver.api(index).post(path, body)
        outcome = _classify(response)
        return outcome, ({} if outcome == "ok" else {"status": response.status, "error": _message(response)}), response

    # --- the workload -------------------------------------------------------------------------

    def _propose(self, item: Item) -> tuple[str, dict]:
        served = self.driver.served[str(item.id)]
        version = item.value["version"]
        body = {"title": f"chaos {item.value['package']} {version}", "description": f"chaos op {item.id}", "version": version,
                "package_url": served.http_url, "package_hash": f"sha256:{served.sha256}", "package_size": served.size}
        outcome, value, response = self._post(item.nodes[0], "/upgrades/propose", body)
        if outcome == "ok":
            self.names[item.value["proposal"]] = response.data["proposal_id"]
            value = {"proposal_id": response.data["proposal_id"], "entry_id": response.data["entry_id"]}
        return outcome, value

    def _propose_rollback(self, item: Item) -> tuple[str, dict]:
        target = self.names.get(item.value["target"])
        if target is None:
            return "fail", {"error": f"{item.value['target']} was never acknowledged: nothing to roll back, not sent"}
        outcome, value, response = self._post(item.nodes[0], "/rollbacks/propose", {"target_proposal_id": target})
        if outcome == "ok":
            self.names[item.value["proposal"]] = response.data["proposal_id"]
            value = {"proposal_id": response.data["proposal_id"], "entry_id": response.data["entry_id"], "target_proposal_id": target}
        return outcome, value

    def _vote(self, item: Item) -> tuple[str, dict]:
        proposal_id = self.names.get(item.value["proposal"])
        if proposal_id is None:
            return "fail", {"error": f"{item.value['proposal']} was never acknowledged: not sent"}
        outcome, value, response = self._post(item.nodes[0], f"/proposals/{proposal_id}/vote", {"vote": item.value["vote"]})
        if outcome == "ok":
            value = {"proposal_id": proposal_id, "entry_id": response.data["entry_id"], "status": response.data["status"]}
        return outcome, {**value, "proposal_id": proposal_id}

    def _note(self, item: Item) -> tuple[str, dict]:
        outcome, value, response = self._post(item.nodes[0], "/log/notes", {"text": item.value["text"]})
        return outcome, ({"entry_id": response.data["id"]} if outcome == "ok" else value)

    # --- the nemesis --------------------------------------------------------------------------

    def _note_crashes(self) -> list[int]:
        """Nodes that killed themselves at a crash point: marked down (a restart brings them back)."""
        crashed = [index for index in self.driver.live_indexes() if not self.driver.handle(index).running]
        for index in crashed:
            self.driver.processes.mark_crashed(index)
        return crashed

    def _partition(self, item: Item) -> tuple[str, dict]:
        self.driver.network().partition([[index - 1 for index in group] for group in item.value["groups"]])
        return "ok", {"groups": item.value["groups"], "rules": len(self.driver.network().cut_links())}

    def _cut(self, item: Item) -> tuple[str, dict]:
        self.driver.network().cut([index - 1 for index in item.value["from"]], [index - 1 for index in item.value["to"]])
        return "ok", {"from": item.value["from"], "to": item.value["to"]}

    def _heal(self, item: Item) -> tuple[str, dict]:
        self.driver.network().heal()
        return "ok", {}

    def _skew(self, item: Item) -> tuple[str, dict]:
        for index in item.nodes:
            arm_skew(self.driver.handle(index).data_dir, int(item.value["ms"]))
            self.driver.skewed.add(index)   # the driver's close (the final heal) clears it too
        return "ok", {"ms": item.value["ms"]}

    def _unskew(self, item: Item) -> tuple[str, dict]:
        cleared = [f"node-{index}" for index in item.nodes if clear_skew(self.driver.handle(index).data_dir)]
        self.driver.skewed.difference_update(item.nodes)
        return "ok", {"cleared": cleared}

    def _link_fault(self, item: Item) -> tuple[str, dict]:
        """One node's links both ways (to and from every other node), delayed or lossy until the heal."""
        node = [index - 1 for index in item.value["links_of"]]
        others = [index for index in range(self.driver.node_count) if index not in node]
        network = self.driver.network()
        for sources, destinations in ((node, others), (others, node)):
            if item.op == "delay":
                network.delay(sources, destinations, ms=int(item.value["ms"]), jitter_ms=int(item.value["jitter_ms"]))
            else:
                network.loss(sources, destinations, percent=float(item.value["percent"]))
        shown = {key: item.value[key] for key in ("links_of", "ms", "jitter_ms", "percent") if key in item.value}
        return "ok", {**shown, "links": len(network.link_faults())}   # read back from the provider

    def _crash_at(self, item: Item) -> tuple[str, dict]:
        for index in item.nodes:
            arm(self.driver.handle(index).data_dir, item.value["point"])
        return "ok", {"point": item.value["point"]}

    def _recover(self, item: Item) -> tuple[str, dict]:
        """After a crash point's window: restart the node if it fired, else disarm it."""
        crashed = set(self._note_crashes())
        fired = []
        for index in item.nodes:
            (self.driver.handle(index).data_dir / FAULT_POINT_FILE).unlink(missing_ok=True)
            if index in crashed or self.driver.processes.state(index) == "killed":
                self.driver.processes.apply("restart", [index])
                fired.append(f"node-{index}")
        return "ok", {"fired": fired}

    # --- the adversary ------------------------------------------------------------------------

    def _adversary(self, item: Item) -> tuple[str, dict]:
        options, driver = self.schedule.options, self.driver
        member = options.adversary_member
        if item.op in ("backdated_vote", "equivocating_vote"):
            proposal_id = self.names.get(item.value["proposal"])
            if proposal_id is None:
                return "fail", {"error": f"{item.value['proposal']} was never acknowledged: not sent"}
            if item.op == "backdated_vote":
                # A Byzantine member revives what it can: the latest expired proposal, else the planned one.
                proposal_id = adversary.revivable(driver, member, list(self.names.values())) or proposal_id
                return adversary.backdated_vote(driver, member, proposal_id, item.value["vote"])
            return adversary.equivocating_vote(driver, member, proposal_id)
        if item.op == "replay":
            return adversary.replay(driver, item.nodes[0], item.value["entry_kind"])
        if item.op == "flood":
            return adversary.flood(driver, member, item.value["count"], item.value["batch"], driver.served["liveness"])
        return adversary.forged_execute(driver, member, item.value["certificate"], list(item.value["signers"]),
                                        "liveness", LIVENESS_VERSION)

    # --- the end ------------------------------------------------------------------------------

    def _heal_everything(self) -> None:
        """Resume, heal the network, disarm crash points, restart every node this run took down."""
        self.echo("healing every fault ...")
        self.history.record("invoke", process="nemesis", op_id=0, f="final_heal", node=None)
        unskewed = [f"node-{index}" for index in self.driver.clear_skews()]
        self.driver.close()
        self._note_crashes()
        for index in range(1, self.driver.node_count + 1):
            (self.driver.handle(index).data_dir / FAULT_POINT_FILE).unlink(missing_ok=True)
        down = [index for index in range(1, self.driver.node_count + 1) if self.driver.processes.state(index) in ("killed", "stopped")]
        self.driver.processes.apply("restart", down)
        self.history.record("ok", process="nemesis", op_id=0, f="final_heal", node=None, value={"restarted": down, "unskewed": unskewed})

    def _snapshots(self) -> list[NodeSnapshot]:
        result = []
        for index in self.driver.live_indexes():
            try:
                state = self.driver.read_state(index) or {}
                result.append(NodeSnapshot(label=f"node-{index}", node_id=self.driver.handle(index).node_id,
                                           entries=tuple(self.driver.read_log(index)), version=state.get("version"),
                                           state_hash=state.get("state_hash")))
            except (OSError, SynapseError):
                continue
        return result

    def _settle(self) -> None:
        """Wait (at most SETTLE_MS) for converged logs and one version: the liveness probe starts from there."""
        deadline = time.monotonic() + SETTLE_MS / 1000
        while time.monotonic() < deadline:
            nodes = self._snapshots()
            if len(nodes) == self.driver.node_count and logs_converged(nodes).ok and one_version_and_state_hash(nodes).ok:
                self.echo(f"settled: {len(nodes[0].entries)} entries, version {nodes[0].version} on every node")
                return
            time.sleep(POLL_INTERVAL_S)
        self.echo(f"not settled after {SETTLE_MS} ms (the checkers will say what differs)")

    def _liveness(self) -> None:
        """A fresh upgrade, proposed and approved by every node after the heal, must execute everywhere."""
        served, began = self.driver.served["liveness"], time.monotonic()
        proposer = self.driver.live_indexes()[0]
        self.echo(f"liveness: proposing {LIVENESS_VERSION} on node-{proposer}, every node approves ...")
        self.history.record("invoke", process="checker", op_id=0, f="liveness", node=f"node-{proposer}",
                            value={"version": LIVENESS_VERSION, "bound_ms": LIVENESS_BOUND_MS})
        outcome, value = self._liveness_probe(proposer, served, began)
        value["elapsed_ms"] = int((time.monotonic() - began) * 1000)
        self.history.record(outcome, process="checker", op_id=0, f="liveness", node=f"node-{proposer}", value=value)
        self.echo(f"liveness: {outcome} in {value['elapsed_ms']} ms {value.get('error', '')}")

    def _liveness_probe(self, proposer: int, served: Any, began: float) -> tuple[str, dict]:
        body = {"title": "chaos liveness probe", "version": LIVENESS_VERSION, "package_url": served.http_url,
                "package_hash": f"sha256:{served.sha256}", "package_size": served.size}
        outcome, value, response = self._post(proposer, "/upgrades/propose", body)
        if outcome != "ok":
            return outcome, value
        proposal_id = response.data["proposal_id"]
        deadline = began + LIVENESS_BOUND_MS / 1000
        waiting = set(self.driver.live_indexes())
        voted: set[int] = set()
        while waiting and time.monotonic() < deadline:
            for index in sorted(waiting):
                try:
                    if index not in voted:
                        answer = self.driver.api(index).post(f"/proposals/{proposal_id}/vote", {"vote": "approval"})
                        if answer.status in (201, 409):
                            voted.add(index)
                    if (self.driver.read_state(index) or {}).get("version") == LIVENESS_VERSION:
                        waiting.discard(index)
                except (OSError, SynapseError):
                    continue
            time.sleep(POLL_INTERVAL_S)
        if waiting:
            return "fail", {"proposal_id": proposal_id, "error": f"not executed within {LIVENESS_BOUND_MS} ms on "
                                                                 f"{', '.join(f'node-{index}' for index in sorted(waiting))}"}
        return "ok", {"proposal_id": proposal_id}

    def _votes_of(self, index: int, proposals: dict[str, str]) -> dict[str, list]:
        """proposal id -> the node's vote records ({"entry_id", "counted", "reason", ...}) for each proposal."""
        votes = {}
        for proposal_id in proposals:
            document = self.driver.api(index).get(f"/proposals/{proposal_id}").data or {}
            votes[proposal_id] = [{key: vote.get(key) for key in ("voter", "vote", "entry_id", "counted", "reason")}
                                  for vote in document.get("votes", [])]
        return votes

    def _collect_finals(self) -> None:
        for index in range(1, self.driver.node_count + 1):
            label, final = f"node-{index}", {"process": self.driver.processes.state(index)}
            if self._live(index):
                try:
                    final["health"] = self.driver.api(index).get("/health").data
                    final["state"] = self.driver.read_state(index)
                    final["log"] = self.driver.read_log(index)
                    listing = self.driver.api(index).get("/proposals").data or {}
                    final["proposals"] = {view["proposal_id"]: view["status"] for view in listing.get("proposals", [])}
                    final["votes"] = self._votes_of(index, final["proposals"])
                except (OSError, SynapseError) as error:
                    final["error"] = f"unreadable: {error}"
                    final.pop("log", None)
            self.finals[label] = final


def _process_operation(action: str) -> Callable[[ChaosRun, Item], tuple[str, dict]]:
    def run(chaos: ChaosRun, item: Item) -> tuple[str, dict]:
        chaos._note_crashes()
        chaos.driver.processes.apply(action, list(item.nodes))
        return "ok", {"states": {f"node-{index}": chaos.driver.processes.state(index) for index in item.nodes}}
    return run


OPERATIONS: dict[str, Callable[[ChaosRun, Item], tuple[str, dict]]] = {
    "propose": ChaosRun._propose, "propose_rollback": ChaosRun._propose_rollback, "vote": ChaosRun._vote, "note": ChaosRun._note,
    "kill": _process_operation("kill"), "restart": _process_operation("restart"),
    "pause": _process_operation("pause"), "resume": _process_operation("resume"),
    "partition": ChaosRun._partition, "cut": ChaosRun._cut, "heal": ChaosRun._heal, "crash_at": ChaosRun._crash_at,
    "recover": ChaosRun._recover, "skew": ChaosRun._skew, "unskew": ChaosRun._unskew, "delay": ChaosRun._link_fault,
    "loss": ChaosRun._link_fault, "backdated_vote": ChaosRun._adversary, "equivocating_vote": ChaosRun._adversary,
    "replay": ChaosRun._adversary, "forged_execute": ChaosRun._adversary, "minority_execute": ChaosRun._adversary,
    "flood": ChaosRun._adversary,
}
