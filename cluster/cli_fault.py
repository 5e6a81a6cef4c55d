"""`synapse cluster fault --data-dir D KIND [--KEY VALUE ...]` and `synapse cluster heal --data-dir D`:
break a running cluster by hand, and mend it.

Why it works as it does:
- One vocabulary. KIND and its keys are a scenario step's (`do = KIND`, its keys as `--key value`, `-`
  for `_`): the table goes through the scenario parser (cluster/scenario.py `parse_fault_step`) and
  node selectors through the scenario's resolver (cluster/faults.py `resolve`), so `--nodes validators`,
  `--nodes 1,3`, `--nodes random@validators`, `--groups 1,2 --groups rest` mean here what they mean in a
  file, and a mistake is refused the same way (exit 2, nothing changed).
- The cluster is the one `synapse cluster up` left running, found from DIR/cluster.json alone, like
  `status` and `down`: only a PID whose command line names the node's own config is ever signalled.
  kill = SIGKILL, stop = SIGTERM (SIGKILL after the grace period), pause = SIGSTOP, resume = SIGCONT,
  restart = stop if running, then start it again detached with its data (cluster.json gets its new PID).
- Skew and crash points are node-side faults armed by a file in the node's data dir, which the node
  reads only when it runs with SYNAPSE_FAULT_POINTS=1 (`cluster up` starts its nodes so). Nothing on
  the nodes' API arms them: who can arm a fault is who can write the data dir, who could read the node's
  key anyway. `fault skew` waits until each running node's GET /health reports the new skew, so a
  node started without the switch is named at once instead of silently keeping real time.
- Partitions outlive the command. The block's iptables chain (cluster/faults.py) is kernel state; this
  command only edits it, holding the block's lock file while it does (cluster/addresses.py
  `lock_running_block`), so two `fault`/`heal` commands, `doctor --fix` and a launcher never interleave.
  A block whose lock a launcher holds (a scenario run, a test, an `up` in progress) is refused: its
  partitions belong to that launcher. The chain goes away with `heal`, with `down` (once the nodes
  stopped and the lock is free), or with `doctor --fix` when the cluster is gone (no lock, nothing
  listening on the block); while the nodes run, doctor keeps it.
- heal = undo every fault that leaves a node running but impaired: partitions and cuts (the chain is
  removed), clock skews (the files are removed; clocks are real again within 100 ms), paused nodes
  (SIGCONT). Killed or stopped nodes stay down: bringing one back is an event of its own (`restart`).
- Link faults (delay, loss, bandwidth) need a provider that gives each node its own link; on the
  loopback provider they exit 2 saying so. `_link_fault` is where the netns provider plugs in.
"""

from __future__ import annotations

import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import click

from cluster.cli_cluster import (EXIT_USAGE, TESTBED_ENV, _fail, _resolve_dir, _signal_group, _write_cluster_file, cluster,
                                 load_cluster_file, node_process_alive)
from cluster.faults import raft_delay_note_from_configs
from cluster.scenario import ACTIONS, Selector, parse_fault_step
from node.errors import ClusterError, ScenarioFormatError, SynapseError
from node.fault_points import ENVIRONMENT_VARIABLE as FAULT_POINTS_VARIABLE

PROCESS_KINDS = ("kill", "stop", "restart", "pause", "resume")
NETWORK_KINDS = ("partition", "isolate", "cut")
LINK_KINDS = ("delay", "loss", "bandwidth")
KINDS = PROCESS_KINDS + NETWORK_KINDS + ("skew", "crash_at") + LINK_KINDS
STOP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 60.0
SKEW_SEEN_TIMEOUT_S = 5.0
POLL_S = 0.1
OPTION_VALUES_MAX = 64
_INTEGER = re.compile(r"^[+-]?\d{1,15}$")
_NUMBER = re.compile(r"^[+-]?\d{1,15}\.\d{1,15}$")


# --- options -> a scenario step table ---------------------------------------------------------


def _scalar(text: str) -> Any:
    if _INTEGER.match(text):
        return int(text)
    if _NUMBER.match(text):
        return float(text)
    return text


def _value(text: str) -> Any:
    """'1,3' -> [1, 3]; '200' -> 200; 'validators' -> 'validators' (the scenario's validators judge the rest)."""
    items = [_scalar(item.strip()) for item in text.split(",")]
    return items if len(items) > 1 else items[0]


def options_table(kind: str, arguments: list[str]) -> dict[str, Any]:
    """`['--nodes', '1,2', '--ms=-20000']` -> {'do': kind, 'nodes': [1, 2], 'ms': -20000}. `--groups` may
    repeat (one group each); another repeated key is a mistake."""
    table: dict[str, Any] = {"do": kind}
    tokens = list(arguments)
    if len(tokens) > 2 * OPTION_VALUES_MAX:
        raise ScenarioFormatError(f"more than {OPTION_VALUES_MAX} options")
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) < 3:
            raise ScenarioFormatError(f"{token!r:.40} is not an option", hint="give --KEY VALUE pairs, e.g. --nodes 2 --ms 20000")
        name, _, inline = token[2:].partition("=")
        if not inline and not _ and not tokens:
            raise ScenarioFormatError(f"--{name} needs a value")
        text = inline if _ else tokens.pop(0)
        key = name.replace("-", "_")
        if key in ("do", "name", "save_as", "within", "during", "check"):
            raise ScenarioFormatError(f"--{name}: not an option of a fault")
        if key == "groups":
            table.setdefault("groups", []).append(_value(text))
        elif key in table:
            raise ScenarioFormatError(f"--{name} is given twice", hint="list several nodes in one value: --nodes 1,2")
        else:
            table[key] = _value(text)
    return table


def _usage_hint(kind: str) -> str:
    schema = ACTIONS.get(kind)
    if schema is None:
        return ""
    keys = [f"--{key.replace('_', '-')} VALUE" for key in schema.required] + \
           [f"[--{key.replace('_', '-')} VALUE]" for key in schema.optional if key != "expect_error"]
    return f"synapse cluster fault --data-dir DIR {kind} {' '.join(keys)} (the keys of a scenario step do = \"{kind}\")"


# --- the running cluster ----------------------------------------------------------------------


class RunningCluster:
    """The nodes of DIR/cluster.json, signalled by PID and asked over HTTP; indexes are 1-based as in scenarios."""

    def __init__(self, data_dir: Path, document: dict) -> None:
        self.data_dir = data_dir
        self.document = document
        self.nodes = sorted(document["nodes"], key=lambda node: node["index"])

    def node(self, index: int) -> dict:
        return self.nodes[index - 1]

    @staticmethod
    def label(index: int) -> str:
        return f"node-{index}"

    def host(self, index: int) -> str:
        return self.node(index)["api_url"].split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def block_prefix(self) -> str:
        block = self.document.get("address_block")
        if not block:
            raise ClusterError("the cluster file names no address block", hint="start the cluster with 'synapse cluster up'")
        return block

    def config_path(self, index: int) -> Path:
        return Path(self.node(index)["data_dir"]) / "config.toml"

    def running(self, index: int) -> bool:
        return node_process_alive(self.node(index).get("pid"), self.config_path(index))

    def state(self, index: int) -> str:
        """'up', 'paused' (SIGSTOPped) or 'killed' (no process of this node runs)."""
        if not self.running(index):
            return "killed"
        try:
            letter = Path(f"/proc/{self.node(index)['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return "killed"
        return "paused" if letter in ("T", "t") else "up"

    def views(self) -> list:
        from cluster.faults import NodeView

        return [NodeView(index=index, node_id=self.node(index)["node_id"], host=self.host(index),
                         validator=bool(self.node(index).get("validator")), state=self.state(index))
                for index in range(1, len(self.nodes) + 1)]

    def health(self, index: int, timeout_s: float = 2.0) -> dict | None:
        from cluster.local import NodeApi

        try:
            response = NodeApi(self.node(index)["api_url"], None, timeout_s=timeout_s).get("/health")
        except OSError:
            return None
        return response.data if response.status == 200 and isinstance(response.data, dict) else None

    def leader_index(self) -> int | None:
        answers: dict[int, int] = {}
        for index in range(1, len(self.nodes) + 1):
            if not self.node(index).get("validator") or self.state(index) != "up":
                continue
            leader = (self.health(index) or {}).get("raft_leader")
            for candidate in range(1, len(self.nodes) + 1):
                if leader in (self.node(candidate)["node_id"], self.node(candidate).get("raft_address")):
                    answers[candidate] = answers.get(candidate, 0) + 1
        return max(answers, key=answers.get) if answers else None

    def resolve(self, selector: Selector, excluded: list[int] = ()) -> list[int]:
        from cluster.faults import resolve

        return resolve(selector, self.views(), leader=self.leader_index, rng=random.Random(), excluded=excluded)

    # --- process faults --------------------------------------------------------------------------

    def _wait_exit(self, index: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.running(index):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def kill(self, index: int) -> str:
        if not self.running(index):
            return "not running"
        _signal_group(self.node(index)["pid"], signal.SIGKILL)
        self._wait_exit(index, STOP_TIMEOUT_S)
        return "killed (SIGKILL)"

    def stop(self, index: int) -> str:
        if not self.running(index):
            return "not running"
        _signal_group(self.node(index)["pid"], signal.SIGCONT)   # a stopped process never handles SIGTERM
        _signal_group(self.node(index)["pid"], signal.SIGTERM)
        if self._wait_exit(index, STOP_TIMEOUT_S):
            return "stopped (SIGTERM)"
        _signal_group(self.node(index)["pid"], signal.SIGKILL)
        self._wait_exit(index, STOP_TIMEOUT_S)
        return f"did not stop within {STOP_TIMEOUT_S:.0f} s: killed (SIGKILL)"

    def pause(self, index: int) -> str:
        state = self.state(index)
        if state != "up":
            raise ClusterError(f"node-{index} is {'down' if state == 'killed' else state}: only a running node can be paused")
        _signal_group(self.node(index)["pid"], signal.SIGSTOP)
        return "paused (SIGSTOP)"

    def resume(self, index: int) -> str:
        state = self.state(index)
        if state != "paused":
            raise ClusterError(f"node-{index} is {'down' if state == 'killed' else state}, not paused",
                               hint="'restart' starts a node that is down")
        _signal_group(self.node(index)["pid"], signal.SIGCONT)
        return "resumed (SIGCONT)"

    def restart(self, index: int) -> str:
        before = self.stop(index) if self.running(index) else "was down"
        pid = _start_node(self.document, self.node(index))
        self.node(index)["pid"] = pid
        _write_cluster_file(self.data_dir, self.document)
        return f"{before}; started again (pid {pid}), healthy"


def _start_node(document: dict, node: dict) -> int:
    """Start one node of a detached cluster again (its own session, the testbed environment) and wait
    until it is healthy; its PID."""
    from cluster.local import LocalCluster, NodeHandle

    class OneNodeLauncher(LocalCluster):
        def start_one(self, handle: NodeHandle) -> None:
            self._spawn(handle)
            self._wait_healthy([handle])

    launcher = OneNodeLauncher(nodes=len(document["nodes"]), start_timeout_s=START_TIMEOUT_S, extra_env=TESTBED_ENV, detached=True)
    launcher.nodes = [NodeHandle(index=item["index"], node_id=item["node_id"], api_url=item["api_url"],
                                 raft_address=item["raft_address"], data_dir=Path(item["data_dir"]),
                                 config_path=Path(item["data_dir"]) / "config.toml", is_validator=bool(item.get("validator")))
                      for item in sorted(document["nodes"], key=lambda item: item["index"])]
    handle = launcher.nodes[node["index"]]
    launcher.start_one(handle)
    return handle.pid


# --- applying a fault -------------------------------------------------------------------------


def _process_fault(running: RunningCluster, step) -> list[str]:
    indexes = running.resolve(step.params["nodes"])
    return [f"{running.label(index)}: {getattr(running, step.do)(index)}" for index in indexes]


def _crash_at(running: RunningCluster, step) -> list[str]:
    from node.fault_points import arm

    indexes = running.resolve(step.params["nodes"])
    for index in indexes:
        arm(Path(running.node(index)["data_dir"]), step.params["point"])
    return [f"{running.label(index)}: crash point {step.params['point']} armed (one-shot)" for index in indexes]


def _skew(running: RunningCluster, step) -> list[str]:
    """Arm the skew on each node, then wait until each running node's /health reports it."""
    from node.clock import arm_skew, clear_skew

    skew_ms, lines = step.params["ms"], []
    for index in running.resolve(step.params["nodes"]):
        data_dir = Path(running.node(index)["data_dir"])
        arm_skew(data_dir, skew_ms)
        if running.state(index) != "up":
            lines.append(f"{running.label(index)}: clock skew {skew_ms:+d} ms armed; the node is {running.state(index)}, "
                         "it applies when it runs")
            continue
        deadline = time.monotonic() + SKEW_SEEN_TIMEOUT_S
        while True:
            health = running.health(index) or {}
            if health.get("clock_skew_ms") == skew_ms:
                lines.append(f"{running.label(index)}: clock skewed by {skew_ms:+d} ms (GET /health time_ms {health.get('time_ms')})")
                break
            if health and "clock_skew_ms" not in health:
                clear_skew(data_dir)
                raise ClusterError(f"{running.label(index)} runs without {FAULT_POINTS_VARIABLE}=1, so its clock cannot be skewed",
                                   hint="restart the cluster with this version ('synapse cluster down', then 'up'), "
                                        "or restart that node: 'synapse cluster fault restart --nodes ...'")
            if time.monotonic() >= deadline:
                raise ClusterError(f"{running.label(index)} did not report the skew within {SKEW_SEEN_TIMEOUT_S:.0f} s "
                                   f"(GET /health: {health or 'no answer'})", hint="see 'synapse cluster status'", definite=False)
            time.sleep(POLL_S)
    return lines


def _network_fault(running: RunningCluster, step) -> list[str]:
    from cluster.addresses import lock_running_block, parse_block
    from cluster.faults import NetworkFaults, unbound_peer_connections

    if running.document.get("provider") == "netns":
        return _netns_fault(running, step)
    block = parse_block(running.block_prefix, hosts=len(running.nodes))
    lease = lock_running_block(block)
    if lease is None:
        raise ClusterError(f"the address block {block.cidr} is held by the process that launched this cluster "
                           "(a scenario run, a test, or a 'cluster up' still starting): its partitions are its own",
                           hint="wait for it to finish, or break a cluster started with 'synapse cluster up'")
    with lease:
        groups = _groups_of(running, step)
        pids = {running.node(index)["pid"]: running.host(index) for index in range(1, len(running.nodes) + 1)
                if running.state(index) == "up"}
        problems = unbound_peer_connections(pids, running.block_prefix, block.width)
        if problems:
            raise ClusterError(f"a partition would not hold: {problems[0]} ({len(problems)} such connection(s))",
                               hint="every node must bind its outgoing sockets to its own address")
        network = NetworkFaults.attach(running.block_prefix, width=block.width)
        if step.do == "cut":
            network.cut([running.host(index) for index in groups[0]], [running.host(index) for index in groups[1]])
            shown = f"cut {', '.join(map(running.label, groups[0]))} -> {', '.join(map(running.label, groups[1]))}"
        else:
            network.partition([[running.host(index) for index in group] for group in groups])
            shown = "partitioned " + " | ".join("{" + ", ".join(map(running.label, group)) + "}" for group in groups)
        rules = network.rules()
    return [f"{shown}: {len(rules)} links cut in chain {network.chain}; it stays until 'synapse cluster heal' or 'down'"]


def _groups_of(running: RunningCluster, step) -> list[list[int]]:
    if step.do == "cut":
        return [running.resolve(step.params["from"]), running.resolve(step.params["to"])]
    if step.do == "isolate":
        nodes = running.resolve(step.params["nodes"])
        rest = [index for index in range(1, len(running.nodes) + 1) if index not in nodes]
        if not rest:
            raise ClusterError("isolate names every node: there is nobody to isolate them from")
        return [nodes, rest]
    selectors = step.params["groups"]
    resolved = [None if "rest" in selector.groups else running.resolve(selector) for selector in selectors]
    taken = sorted({index for group in resolved if group for index in group})
    return [group if group is not None else running.resolve(selector, excluded=taken) for group, selector in zip(resolved, selectors)]


def _link_fault(running: RunningCluster, kind: str, table: dict) -> list[str]:
    """delay / loss / bandwidth: only a provider that gives each node a link of its own can do them.
    The netns provider (cluster/providers/, `cluster.json` "provider": "netns") plugs in here."""
    provider = running.document.get("provider", "loopback")
    if provider != "netns":
        raise _Usage(f"'{kind}' needs the netns provider: this cluster runs on the {provider} provider, where every node is a "
                     "process on a loopback address and a link cannot be delayed, made lossy or limited",
                     hint="start a cluster with 'synapse cluster up --provider netns' (root), then run this again; "
                          "on loopback: kill, stop, restart, pause, resume, partition, isolate, cut, skew, crash_at")
    try:
        step = parse_fault_step(table, nodes=len(running.nodes))
    except ScenarioFormatError as error:
        raise _Usage(error.message, hint=_usage_hint(kind)) from None
    return _netns_fault(running, step)


def _netns_fault(running: RunningCluster, step) -> list[str]:
    """A network fault on a netns cluster, through its provider attached to the running cluster
    (cluster/providers/netns_attached.py): rules in the namespaces, detached helpers; heal or down clears them."""
    from cluster.providers import attach_provider

    provider = attach_provider(running.data_dir, running.document)
    params = step.params
    if step.do == "bandwidth":
        nodes = running.resolve(params["nodes"])
        provider.bandwidth([index - 1 for index in nodes], kbit=params["kbit"])
        return [f"bandwidth {params['kbit']} kbit/s on {', '.join(map(running.label, nodes))}; it stays until 'synapse cluster heal'"]
    if step.do in ("delay", "loss"):
        sources, destinations = running.resolve(params["from"]), running.resolve(params["to"])
        zero_based = ([index - 1 for index in sources], [index - 1 for index in destinations])
        note = None
        if step.do == "delay":
            provider.delay(*zero_based, ms=params["ms"], jitter_ms=params.get("jitter_ms", 0))
            shown = f"delay {params['ms']} ms (jitter {params.get('jitter_ms', 0)} ms)"
            note = raft_delay_note_from_configs(
                sources=sources, destinations=destinations, one_way_ms=params["ms"] - params.get("jitter_ms", 0),
                validator_configs={index: running.config_path(index) for index in running.resolve(Selector(groups=("validators",)))})
        else:
            provider.loss(*zero_based, percent=params["percent"])
            shown = f"loss {params['percent']} %"
        return [f"{shown} on {', '.join(map(running.label, sources))} -> {', '.join(map(running.label, destinations))}; "
                "it stays until 'synapse cluster heal'"] + ([note] if note else [])
    groups = _groups_of(running, step)
    if step.do == "cut":
        provider.cut([index - 1 for index in groups[0]], [index - 1 for index in groups[1]])
    else:
        provider.partition([[index - 1 for index in group] for group in groups])
    return [f"{step.do}: {len(provider.cut_links())} links cut in the namespaces; it stays until 'synapse cluster heal' or 'down'"]


class _Usage(ClusterError):
    """A fault this cluster cannot take: exit 2, nothing changed."""


_APPLY = {**{kind: _process_fault for kind in PROCESS_KINDS}, **{kind: _network_fault for kind in NETWORK_KINDS},
          "skew": _skew, "crash_at": _crash_at}


def apply_fault(running: RunningCluster, kind: str, arguments: list[str]) -> list[str]:
    """Parse KIND and its options like a scenario step and apply it; the lines to print."""
    if kind not in KINDS:
        raise _Usage(f"unknown fault {kind!r}", hint=f"faults: {', '.join(KINDS)}")
    try:
        table = options_table(kind, arguments)
    except ScenarioFormatError as error:
        raise _Usage(error.message, hint=error.hint or _usage_hint(kind)) from None
    if kind in LINK_KINDS:
        return _link_fault(running, kind, table)
    try:
        step = parse_fault_step(table, nodes=len(running.nodes))
    except ScenarioFormatError as error:
        raise _Usage(error.message, hint=_usage_hint(kind)) from None
    return _APPLY[kind](running, step)


def heal_cluster(running: RunningCluster) -> list[str]:
    """Remove partitions and cuts, take clock skews away, resume paused nodes; the lines to print."""
    from cluster.addresses import lock_running_block, parse_block
    from cluster.faults import chain_name, network_capability, remove_stale_chain, synapse_chains
    from node.clock import clear_skew

    lines = []
    if running.document.get("provider") == "netns":
        from cluster.providers import attach_provider

        attach_provider(running.data_dir, running.document).heal()
        lines.append("network: partitions, cuts, delay, loss and bandwidth cleared in every namespace")
    elif network_capability().available:
        block = parse_block(running.block_prefix, hosts=len(running.nodes))
        lease = lock_running_block(block)
        if lease is None:
            lines.append(f"partitions: not touched, the block {block.cidr} is held by the process that launched "
                         "this cluster (its partitions are its own)")
        else:
            with lease:
                chain = chain_name(running.block_prefix)
                cut = chain in synapse_chains()
                remove_stale_chain(running.block_prefix, width=block.width)
                lines.append(f"partitions: chain {chain} removed, every link restored" if cut else "partitions: none")
    else:
        lines.append(f"partitions: none possible here ({network_capability().detail})")
    skewed = [index for index in range(1, len(running.nodes) + 1) if clear_skew(Path(running.node(index)["data_dir"]))]
    lines.append(f"clock skews: cleared on {', '.join(map(running.label, skewed))}" if skewed else "clock skews: none")
    paused = [index for index in range(1, len(running.nodes) + 1) if running.state(index) == "paused"]
    for index in paused:
        running.resume(index)
    lines.append(f"paused nodes: resumed {', '.join(map(running.label, paused))}" if paused else "paused nodes: none")
    down = [index for index in range(1, len(running.nodes) + 1) if running.state(index) == "killed"]
    if down:
        lines.append(f"down (not restarted by heal): {', '.join(map(running.label, down))}; "
                     f"'synapse cluster fault restart --nodes down' starts them")
    return lines


# --- commands ---------------------------------------------------------------------------------


@click.command("fault", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False})
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.argument("kind")
@click.pass_context
def fault(context: click.Context, data_dir: Path | None, kind: str) -> None:
    """Break a running cluster by hand: KIND [--KEY VALUE ...] with a scenario step's keys.

    \b
    kill|stop|restart|pause|resume --nodes SEL     partition --groups SEL --groups SEL ...
    isolate --nodes SEL    cut --from SEL --to SEL   skew --nodes SEL --ms N (+/-)
    crash_at --nodes SEL --point POINT             delay|loss|bandwidth: --provider netns only
    SEL: 1,3 | node-2 | a node id | validators | leader | majority | rest | random@validators ...
    'synapse cluster heal' undoes partitions, skews and pauses."""
    arguments = list(context.args)
    if data_dir is None and "--data-dir" in arguments[:-1]:   # also accepted after KIND
        at = arguments.index("--data-dir")
        data_dir = Path(arguments[at + 1])
        del arguments[at:at + 2]
    running = _running_cluster(data_dir)
    try:
        lines = apply_fault(running, kind, arguments)
    except _Usage as error:
        _fail(error, EXIT_USAGE)
    except SynapseError as error:
        _fail(error)
    for line in lines:
        click.echo(line)


def _running_cluster(data_dir: Path | None) -> RunningCluster:
    data_dir = _resolve_dir(data_dir)
    try:
        return RunningCluster(data_dir, load_cluster_file(data_dir))
    except SynapseError as error:
        _fail(error, EXIT_USAGE)


@click.command("heal")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
def heal(data_dir: Path | None) -> None:
    """Undo what 'cluster fault' left: partitions and cuts, clock skews, paused nodes (killed nodes stay down)."""
    running = _running_cluster(data_dir)
    try:
        lines = heal_cluster(running)
    except SynapseError as error:
        _fail(error)
    for line in lines:
        click.echo(line)


def register(main: click.Group) -> None:
    """`synapse cluster fault | heal`, added to cli_cluster's `cluster` group (registered from cluster/cli.py:
    cli_cluster importing this module would be an import cycle)."""
    cluster.add_command(fault)
    cluster.add_command(heal)
