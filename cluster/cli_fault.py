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

import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from cluster.cli_cluster import (EXIT_FAILED, EXIT_USAGE, _fail, _resolve_dir, _signal_group, _write_cluster_file, load_cluster_file,
                                 node_process_alive)
from cluster.scenario import ACTIONS, Selector, parse_fault_step
from node.errors import ClusterError, FaultInjectionUnavailable, ScenarioFormatError, SynapseError
from node.fault_points import ENVIRONMENT_VARIABLE as FAULT_POINTS_VARIABLE

# The environment of a testbed node: crash points and clock skews may be armed through its data dir.
TESTBED_ENV = {FAULT_POINTS_VARIABLE: "1"}
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
