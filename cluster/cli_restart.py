"""`synapse cluster restart [NODE...]`: stop nodes of a `cluster up` cluster and start them again, with
their keys, logs and state.

Why it works as it does:
- It is LocalCluster's own restart (cluster/local.py), not a second one: the cluster is rebuilt from its
  cluster file (`LocalCluster.adopt`), each running node gets a stand-in for the Popen object of the
  process that started it (`cluster up` did, and has exited), and `LocalCluster.restart` stops it
  (SIGCONT + SIGTERM to its process group, SIGKILL after the grace period), spawns it again detached with
  the same config, and waits until it is healthy. A node that is not running is simply started.
- One node at a time (a rolling restart, as an operator does it): the others keep serving, and the
  validators keep their Raft majority while one of them is down (when there are three or more).
- The address block's lock is held while it runs, as `up` holds it (addresses.lock_block): no new
  cluster takes the address of a node that is down for a moment. The addresses are not probed: the
  other nodes listen on them. A node that cannot bind fails to start and the error shows its log tail.
- The stand-in signals nothing itself, and LocalCluster signals a node only while the stand-in says it
  runs, which it decides from /proc: the PID must be alive and its command line must name the node's own
  config (cli_cluster.node_process_alive). A recycled PID in an old cluster file is never signalled.
- The cluster file stays right at every step (the block, every node's PID, `up`'s own fields), also when
  a node fails to come up: its new PID is recorded, so `synapse cluster down` still finds it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import click

from cluster.addresses import lock_block, parse_block
from cluster.cli_cluster import (EXIT_FAILED, EXIT_USAGE, UP_TIMEOUT_S, _config_path, _detached_cluster_class, _fail, _print_table,
                                 _resolve_dir, _select_nodes, _serve_packages_again, _wait_for_leader, _write_cluster_file,
                                 load_cluster_file, node_process_alive)
from cluster.local import STOP_TIMEOUT_S, NodeApi
from node.errors import ClusterError, SynapseError

EXIT_STATUS_UNKNOWN = -1      # a process we did not start: its exit status is its real parent's to read
STOP_POLL_S = 0.05
GRACE_RANGE_S = click.FloatRange(0.0, 600.0)
HEALTH_TIMEOUT_S = 2.0


class AdoptedProcess:
    """Enough of subprocess.Popen for LocalCluster to stop a node another process started: whether it
    still runs (from /proc), and a wait with a timeout. `waited_out` records that a wait timed out, which
    in LocalCluster's stop means the node got SIGKILL after the grace period."""

    def __init__(self, pid: int, config_path: Path) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.waited_out = False
        self._config_path = config_path

    def poll(self) -> int | None:
        if self.returncode is None and not node_process_alive(self.pid, self._config_path):
            self.returncode = EXIT_STATUS_UNKNOWN
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (STOP_TIMEOUT_S if timeout is None else timeout)
        while self.poll() is None:
            if time.monotonic() >= deadline:
                self.waited_out = True
                raise subprocess.TimeoutExpired(f"node {self.pid}", timeout)
            time.sleep(STOP_POLL_S)
        return self.returncode


def restarting_cluster(data_dir: Path, document: dict, *, timeout_s: float, say):
    """The running (or stopped) cluster of `document`, adopted, with its address block locked: call
    .restart(index) for each node to restart, then .release_block()."""
    base = _detached_cluster_class(say)

    class RestartingCluster(base):
        def attach(self) -> None:
            if not document.get("address_block"):
                raise ClusterError("the cluster file names no address block, so its nodes' addresses are unknown",
                                   hint="start a new cluster in another --data-dir")
            self.adopt(document)
            self._lease = lock_block(parse_block(document["address_block"], hosts=len(document["nodes"])))
            for handle, node in zip(self.nodes, document["nodes"]):
                if node_process_alive(node.get("pid"), _config_path(node)):
                    handle.process = AdoptedProcess(node["pid"], handle.config_path)

        def _write_cluster_file(self) -> None:
            super()._write_cluster_file()  # nodes, their PIDs now, the block; `up`'s own fields are kept:
            _write_cluster_file(data_dir, {**document, **load_cluster_file(data_dir)})

        def release_block(self) -> None:
            if self._lease is not None:
                self._lease.release()
                self._lease = None

    restarting = RestartingCluster.reopen(data_dir, document, start_timeout_s=timeout_s, detached=True)
    restarting.attach()
    return restarting


def _restart_one(restarting, index: int, grace_s: float) -> dict:
    """Stop node `index` (if it runs) and start it again; what happened, for the table."""
    handle = restarting.nodes[index]
    before = handle.process
    if before is not None and handle.running:
        restarting.stop(index, timeout_s=grace_s)
        stopped_by = f"SIGKILL after {grace_s:g} s" if before.waited_out else "SIGTERM"
    else:
        stopped_by = "was not running"
    restarting.restart(index)  # it is stopped now: this spawns it and waits until it is healthy
    return {"node": f"node-{index + 1}", "node_id": handle.node_id, "validator": handle.is_validator,
            "pid_before": before.pid if before is not None else None, "stopped_by": stopped_by, "pid": handle.pid}


def _health(api_url: str) -> dict:
    try:
        response = NodeApi(api_url, None, timeout_s=HEALTH_TIMEOUT_S).get("/health")
    except OSError:
        return {}
    return response.data if response.status == 200 and isinstance(response.data, dict) else {}


@click.command("restart")
@click.argument("node_names", metavar="[NODE]...", nargs=-1)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--grace", "grace_s", type=GRACE_RANGE_S, default=STOP_TIMEOUT_S, show_default=True,
              help="seconds a node has to stop after SIGTERM before SIGKILL")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1.0, 3600.0), default=UP_TIMEOUT_S, show_default=True,
              help="seconds each node has to become healthy")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document on stdout (progress goes to stderr)")
def restart(node_names: tuple[str, ...], data_dir: Path | None, grace_s: float, timeout_s: float, as_json: bool) -> None:
    """Stop and start NODEs again (all when none is named), one at a time, with their keys, logs and state.
    A NODE is 1..N, node-<i> or a node id; a node that is not running is simply started."""
    say = functools.partial(click.echo, err=as_json)
    data_dir = _resolve_dir(data_dir).absolute()
    try:
        document = load_cluster_file(data_dir)
        chosen = {candidate["index"] for name in node_names for candidate in _select_nodes(document, name)}
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    indexes = sorted(chosen) if node_names else [node["index"] for node in document["nodes"]]
    try:
        restarting = restarting_cluster(data_dir, document, timeout_s=timeout_s, say=say)
    except SynapseError as error:
        _fail(error)
    results = []
    try:
        for index in indexes:
            say(f"node-{index + 1}: restarting ...")
            results.append(_restart_one(restarting, index, grace_s))
        leader = _wait_for_leader(restarting, say)
    except BaseException as error:
        restarting._write_cluster_file()  # a node that did not become healthy (or Ctrl-C) may run: `down` must find it
        if isinstance(error, SynapseError):
            _fail(error)
        raise
    finally:
        restarting.release_block()
    _serve_packages_again(data_dir, say)
    final = load_cluster_file(data_dir)
    final.pop("stopped_at", None)
    final["raft_leader"] = leader
    _write_cluster_file(data_dir, final)
    _report(data_dir, results, leader, as_json)


def _report(data_dir: Path, results: list[dict], leader: str | None, as_json: bool) -> None:
    api_urls = {f"node-{node['index'] + 1}": node["api_url"] for node in load_cluster_file(data_dir)["nodes"]}
    for result in results:
        health = _health(api_urls[result["node"]])
        result.update(healthy=health.get("status") == "ok", version=health.get("version"), entries=health.get("entries"))
    if as_json:
        click.echo(json.dumps({"data_dir": str(data_dir), "raft_leader": leader, "nodes": results}, indent=2))
    else:
        _print_table([(result["node"], result["node_id"], "validator" if result["validator"] else "member",
                       str(result["pid_before"] or "-"), result["stopped_by"], str(result["pid"]),
                       "ok" if result["healthy"] else "NOT HEALTHY", str(result["version"] or "-"), str(result["entries"]))
                      for result in results],
                     ("node", "id", "role", "old pid", "stopped by", "pid", "health", "version", "entries"))
        click.echo(f"{sum(result['healthy'] for result in results)}/{len(results)} restarted nodes healthy")
    sys.exit(0 if all(result["healthy"] for result in results) else EXIT_FAILED)


def register(main: click.Group) -> None:
    main.commands["cluster"].add_command(restart)
