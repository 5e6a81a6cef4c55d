"""`synapse cluster up|status|logs|down`, `synapse scenario run|check`, `synapse doctor`.

Why it works as it does:
- `cluster up` must leave the nodes running after the command exits, unlike LocalCluster in tests
  (whose nodes die with their parent). So its nodes start detached, each in a session of its own
  (LocalCluster(detached=True)), and everything needed to find them again goes into DIR/cluster.json: node ids,
  API URLs, token files, PIDs. `status`, `logs` and `down` work from that file alone. The address
  block's lock is only held while `up` runs; afterwards the listening nodes themselves keep the
  block taken (acquire_block checks that every address is free by binding it).
- `up` on a stopped cluster's dir starts the same nodes again (LocalCluster.reopen): the cluster file
  names their addresses (the block is locked again, and must be free), configs, keys, logs and state
  stay where they are, so node ids, log, version and state hash are the ones `down` left. Options the
  genesis fixes (--nodes, --validators, --voting-period-ms) are refused there, not silently ignored.
- `down` signals only processes that are provably this cluster's nodes (the PID's command line names
  the node's own config file), because a PID in an old cluster.json may belong to anything now:
  SIGTERM to the node's process group, then SIGKILL after the grace period. It also stops the
  cluster's package server (cluster/package_host.py), which `synapse upgrade propose` starts.
- Without --data-dir, the commands use $SYNAPSE_CLUSTER_DIR, else the last cluster `up` started
  (remembered in a per-user file in the temp dir), and say which directory they use.
- Exit status: 0 success; 1 a failed scenario, an unhealthy cluster, a failed doctor check; 2 bad
  usage or an invalid scenario file (nothing was started).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import tempfile
import time
import types
from pathlib import Path

import click

from node.errors import ClusterError, ConfigError, SynapseError
from node.fault_points import ENVIRONMENT_VARIABLE as FAULT_POINTS_VARIABLE

EXIT_FAILED = 1
EXIT_USAGE = 2
DOWN_TIMEOUT_S = 15.0
UP_TIMEOUT_S = 60.0
LEADER_TIMEOUT_S = 30.0
FOLLOW_POLL_S = 0.3
POINTER_FILE = Path(tempfile.gettempdir()) / f"synapse-ng-last-cluster-{os.getuid()}"
# `cluster up` runs a testbed: `synapse cluster fault` (cluster/cli_fault.py) may arm skews and crash points.
TESTBED_ENV = types.MappingProxyType({FAULT_POINTS_VARIABLE: "1"})


def _fail(error: SynapseError, status: int = EXIT_FAILED) -> None:
    click.echo(f"error: {error.message}", err=True)
    if error.hint:
        click.echo(f"hint: {error.hint}", err=True)
    sys.exit(status)


# --- the detached cluster --------------------------------------------------------------------


def _detached_cluster_class(say=click.echo, provider: str = "loopback"):
    from cluster.local import LocalCluster

    base = LocalCluster
    if provider == "netns":   # a namespace per node (cluster/providers/netns.py)
        from cluster.providers.netns import NetnsCluster as base

    class DetachedCluster(base):
        """LocalCluster(detached=True) that shows each node as it becomes healthy."""

        def _wait_healthy(self, handles) -> None:
            deadline, waiting = time.monotonic() + self._start_timeout_s, list(handles)
            while waiting and time.monotonic() < deadline:
                for handle in list(waiting):
                    if handle.process.poll() is not None:
                        waiting = []  # the base class reports the exit with the node's log tail
                        break
                    if self._health(handle):
                        waiting.remove(handle)
                        say(f"  node-{handle.index + 1} healthy ({len(handles) - len(waiting)}/{len(handles)})")
                time.sleep(0.1)
            super()._wait_healthy(handles)

        def _spawn(self, handle) -> None:
            self._extra_env.update(TESTBED_ENV)  # a testbed: `synapse cluster fault` may arm skews and crash points
            super()._spawn(handle)

    return DetachedCluster


def _resolve_dir(data_dir: Path | None) -> Path:
    if data_dir is None and os.environ.get("SYNAPSE_CLUSTER_DIR"):
        data_dir = Path(os.environ["SYNAPSE_CLUSTER_DIR"])
    if data_dir is None:
        try:
            data_dir = Path(POINTER_FILE.read_text().strip())
        except OSError:
            _fail(ClusterError("no cluster directory given and no cluster started here before",
                               hint="pass --data-dir DIR (the directory 'synapse cluster up' printed)"), EXIT_USAGE)
        click.echo(f"cluster: {data_dir}", err=True)
    return data_dir


def load_cluster_file(data_dir: Path) -> dict:
    path = Path(data_dir) / "cluster.json"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"{path} does not exist", hint="start a cluster with 'synapse cluster up --data-dir DIR'") from None
    except (OSError, ValueError) as error:
        raise ClusterError(f"cannot read {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), list):
        raise ClusterError(f"{path} is not a cluster file (no node list)")
    return document


def _write_cluster_file(data_dir: Path, document: dict) -> None:
    temporary = data_dir / ".cluster.json.tmp"
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, data_dir / "cluster.json")


def node_process_alive(pid: int | None, config_path: Path) -> bool:
    """True if `pid` runs and is the node started with `config_path` (a recycled PID is not)."""
    if not pid:
        return False
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and str(config_path).encode() in words


# --- cluster commands ------------------------------------------------------------------------


@click.group()
def cluster() -> None:
    """Launch a local cluster that keeps running, inspect it, stop it."""


@cluster.command("up")
@click.option("--nodes", "node_count", type=int, default=5, show_default=True, help="number of nodes N")
@click.option("--validators", "validator_count", type=int, default=3, show_default=True, help="validators K (node-1..node-K)")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="default: a new temp dir; a stopped cluster's dir starts that cluster again")
@click.option("--voting-period-ms", type=int, default=None, help="genesis voting period (default 60000)")
@click.option("--timeout", "timeout_s", type=float, default=UP_TIMEOUT_S, show_default=True, help="seconds to wait for health")
@click.option("--json", "as_json", is_flag=True, help="print the cluster file as JSON on stdout (progress goes to stderr)")
@click.option("--provider", type=click.Choice(["loopback", "netns", "kubernetes"]), default=None,
              help="loopback (default: processes on 127.A.B.i), netns (a network namespace per node; root), or "
                   "kubernetes (applies the manifests in --data-dir that 'synapse cluster manifests' wrote)")
@click.pass_context
def up(context: click.Context, node_count: int, validator_count: int, data_dir: Path | None, voting_period_ms: int | None,
       timeout_s: float, as_json: bool, provider: str | None) -> None:
    """Start N nodes (genesis, keys, configs made), wait until healthy with a Raft leader, print them.
    On a stopped cluster's data dir: start its nodes again, with their keys, logs and state."""
    if provider == "kubernetes":
        if data_dir is None or not (data_dir / "manifests").is_dir():
            _fail(ConfigError("the kubernetes provider starts the network whose manifests --data-dir holds",
                              hint="write them first: synapse cluster manifests --provider kubernetes --nodes N "
                                   "--validators K -o DIR; then: synapse cluster up --provider kubernetes --data-dir DIR"), EXIT_USAGE)
        context.invoke(cluster.get_command(context, "up-kubernetes"), data_dir=data_dir.absolute(), timeout_s=timeout_s, as_json=as_json)
        return
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="synapse-cluster-"))
    data_dir = data_dir.absolute()
    say = functools.partial(click.echo, err=as_json)
    say(f"data dir: {data_dir}")
    if (data_dir / "cluster.json").exists():
        stopped = _stopped_cluster(context, data_dir)
        cluster_class = _detached_cluster_class(say, stopped.get("provider", "loopback"))
        launched = cluster_class.reopen(data_dir, stopped, start_timeout_s=timeout_s, detached=True)
        say(f"starting the stopped cluster again ({len(stopped['nodes'])} nodes; keys, logs and state kept) ...")
    else:
        say(f"starting {node_count} nodes ({validator_count} validator{'s' if validator_count != 1 else ''}) ...")
        governance = {"voting_period_ms": voting_period_ms} if voting_period_ms else None
        cluster_class = _detached_cluster_class(say, provider or "loopback")
        launched = cluster_class(nodes=node_count, validators=validator_count, data_dir=data_dir,
                                 start_timeout_s=timeout_s, governance=governance, detached=True)
    try:
        launched.start()
    except SynapseError as error:
        launched.close()
        _fail(error)
    except BaseException:
        launched.close()
        raise
    leader = _wait_for_leader(launched, say)
    _serve_packages_again(data_dir, say)
    document = load_cluster_file(data_dir)
    document.update(detached=True, started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), raft_leader=leader)
    document.pop("stopped_at", None)
    _write_cluster_file(data_dir, document)
    POINTER_FILE.write_text(str(data_dir) + "\n")
    if as_json:
        click.echo(json.dumps({"data_dir": str(data_dir), **document}, indent=2))
        return
    _print_table([(f"node-{h.index + 1}", h.node_id, "validator" if h.is_validator else "member", h.api_url, str(h.pid)) for h in launched.nodes],
                 ("node", "id", "role", "API", "pid"))
    click.echo(f"cluster file: {data_dir / 'cluster.json'}")
    click.echo(f"stop it with: synapse cluster down --data-dir {data_dir}")


def _serve_packages_again(data_dir: Path, say=click.echo) -> None:
    """A restarted cluster may still need the packages `synapse upgrade propose` served (an upgrade
    approved before `down`, a node catching up): serve them again, on the same URL if the port is free."""
    from cluster import package_host

    if package_host.has_packages(data_dir):
        try:
            say(f"package server: {package_host.ensure_running(data_dir)}")
        except SynapseError as error:
            say(f"warning: the cluster's packages are not served: {error.message} ({error.hint})")


def _stopped_cluster(context: click.Context, data_dir: Path) -> dict:
    """The cluster file of a stopped cluster to start again; refuses a running one, or options its genesis fixes."""
    try:
        document = load_cluster_file(data_dir)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    running = [f"node-{node['index'] + 1}" for node in document["nodes"] if node_process_alive(node.get("pid"), _config_path(node))]
    if running:
        _fail(ClusterError(f"{data_dir} already holds a cluster, and it runs ({', '.join(running)})",
                           hint=f"stop it with 'synapse cluster down --data-dir {data_dir}', or choose another --data-dir"), EXIT_USAGE)
    given = [f"--{name.replace('_', '-')}" for name, option in (("nodes", "node_count"), ("validators", "validator_count"),
                                                                 ("voting_period_ms", "voting_period_ms"), ("provider", "provider"))
             if context.get_parameter_source(option) == click.core.ParameterSource.COMMANDLINE]
    if given:
        _fail(ClusterError(f"{data_dir} holds a stopped cluster whose genesis fixes {', '.join(given)}",
                           hint=f"leave out {' and '.join(given)} to start it again, or choose another --data-dir"), EXIT_USAGE)
    return document


def _wait_for_leader(launched, say=click.echo) -> str | None:
    """Wait until the validators report a Raft leader in GET /health; say so if they do not report one."""
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    validators = [handle for handle in launched.nodes if handle.is_validator]
    while True:
        answers = []
        for handle in validators:
            try:
                health = launched.api(handle.index).get("/health").data or {}
            except OSError:
                continue
            if "raft_leader" not in health and "raft" not in health:
                say("note: these nodes do not report a Raft leader in GET /health; not waiting for one")
                return None
            answers.append(health.get("raft_leader") or (health.get("raft") or {}).get("leader"))
        if answers and all(answers) and len(set(answers)) == 1:
            say(f"raft leader: {answers[0]}")
            return answers[0]
        if time.monotonic() >= deadline:
            say(f"warning: no agreed Raft leader after {LEADER_TIMEOUT_S:.0f} s (answers: {answers})")
            return None
        time.sleep(0.2)


def _print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(row[column])) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _config_path(node: dict) -> Path:
    return Path(node["data_dir"]) / "config.toml"


@cluster.command("status")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document (every node's process and health)")
@click.option("--watch", is_flag=True, help="a live table (role, version, state hash, Raft leader, entries, open proposals) "
                                            "until Ctrl-C; with --json one JSON line per update")
@click.option("--interval", "interval_s", type=click.FloatRange(0.2, 3600.0), default=2.0, show_default=True,
              help="seconds between updates with --watch")
@click.option("--count", type=click.IntRange(1, 100_000), default=None, hidden=True, help="stop --watch after N updates")
def status(data_dir: Path | None, as_json: bool, watch: bool, interval_s: float, count: int | None) -> None:
    """Each node's process, health, version, log size and peers. Exit 1 unless all are healthy."""
    from cluster.local import NodeApi

    data_dir = _resolve_dir(data_dir)
    try:
        document = load_cluster_file(data_dir)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    if watch:  # cluster/cli_watch.py; it exits 0 on Ctrl-C or SIGTERM
        from cluster.cli_watch import watch_cluster
        sys.exit(watch_cluster(lambda: load_cluster_file(data_dir), interval_s=interval_s, count=count, as_json=as_json))
    rows, healthy, found = [], 0, []
    for node in document["nodes"]:
        alive = node_process_alive(node.get("pid"), _config_path(node))
        health: dict = {}
        if alive:
            try:
                response = NodeApi(node["api_url"], None, timeout_s=2.0).get("/health")
                health = response.data if response.status == 200 and isinstance(response.data, dict) else {}
            except OSError:
                health = {}
        ok = alive and health.get("status") == "ok"
        healthy += ok
        found.append({"node": f"node-{node['index'] + 1}", "node_id": node["node_id"], "validator": bool(node.get("validator")),
                      "api_url": node["api_url"], "running": alive, "healthy": ok, "health": health})
        rows.append((f"node-{node['index'] + 1}", node["node_id"], "validator" if node.get("validator") else "member",
                     "running" if alive else "down", health.get("status", "-") if alive else "-", str(health.get("version", "-")),
                     str(health.get("entries", "-")), f"{health.get('peers_up', '-')}/{health.get('peers_total', '-')}", node["api_url"]))
    if as_json:
        click.echo(json.dumps({"data_dir": str(data_dir), "healthy": healthy, "nodes": found}, indent=2))
    else:
        _print_table(rows, ("node", "id", "role", "process", "health", "version", "entries", "peers", "API"))
        click.echo(f"{healthy}/{len(rows)} nodes healthy")
    sys.exit(0 if healthy == len(rows) else EXIT_FAILED)


def _select_nodes(document: dict, node: str | None) -> list[dict]:
    nodes = document["nodes"]
    if node is None:
        return nodes
    for candidate in nodes:
        if node in (str(candidate["index"] + 1), f"node-{candidate['index'] + 1}", candidate["node_id"]):
            return [candidate]
    raise ClusterError(f"no node {node!r} in this cluster", hint="give 1..N, node-<i> or a node id (see 'synapse cluster status')")


@cluster.command("logs")
@click.argument("node", required=False)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines until Ctrl-C")
@click.option("--lines", "-n", "lines_max", type=click.IntRange(0, None), default=100, show_default=True,
              help="show the last N lines first (like tail -n)")
@click.option("--all", "show_all", is_flag=True, help="show every line so far")
@click.option("--json", "raw", is_flag=True, help="print the raw JSON lines")
def logs(node: str | None, data_dir: Path | None, follow: bool, lines_max: int, show_all: bool, raw: bool) -> None:
    """Print the nodes' structured logs (all nodes merged by time, or NODE: 1..N, node-<i>, or an id)."""
    from cluster.report import format_log_line, parse_log_time

    data_dir = _resolve_dir(data_dir)
    try:
        chosen = _select_nodes(load_cluster_file(data_dir), node)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    files = {f"node-{item['index'] + 1}": Path(item["data_dir"]) / "node.log" for item in chosen}
    offsets: dict[str, int] = {}
    merged = []
    for label, path in files.items():
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        offsets[label] = len(data)
        for line in data.decode(errors="replace").splitlines():
            moment = _line_time(line, parse_log_time)
            merged.append((moment, label, line))
    merged.sort(key=lambda item: item[0])
    for _moment, label, line in merged if show_all else merged[len(merged) - lines_max:]:
        click.echo(line if raw else format_log_line(label, line))
    while follow:
        time.sleep(FOLLOW_POLL_S)
        for label, path in files.items():
            try:
                with open(path, "rb") as handle:
                    handle.seek(offsets[label])
                    data = handle.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            offsets[label] += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                click.echo(line if raw else format_log_line(label, line))


def _line_time(line: str, parse) -> float:
    try:
        return parse(json.loads(line).get("ts")) or 0.0
    except (ValueError, AttributeError):
        return 0.0


@cluster.command("down")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--timeout", "timeout_s", type=float, default=DOWN_TIMEOUT_S, show_default=True, help="grace period before SIGKILL")
def down(data_dir: Path | None, timeout_s: float) -> None:
    """Stop every node of the cluster: SIGTERM, then SIGKILL after the grace period."""
    data_dir = _resolve_dir(data_dir)
    try:
        document = load_cluster_file(data_dir)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    running = {}
    for node in document["nodes"]:
        label = f"node-{node['index'] + 1}"
        if node_process_alive(node.get("pid"), _config_path(node)):
            running[label] = node
            _signal_group(node["pid"], signal.SIGCONT)
            _signal_group(node["pid"], signal.SIGTERM)
        else:
            click.echo(f"{label}: not running")
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        for label, node in list(running.items()):
            if not node_process_alive(node["pid"], _config_path(node)):
                click.echo(f"{label}: stopped")
                del running[label]
        time.sleep(0.1)
    for label, node in running.items():
        _signal_group(node["pid"], signal.SIGKILL)
        click.echo(f"{label}: did not stop within {timeout_s:.0f} s, killed (SIGKILL)")
    _remove_chain_if_free(document, data_dir)
    from cluster import package_host

    if package_host.stop(data_dir):
        click.echo("package server: stopped")
    for node in document["nodes"]:
        node["pid"] = None
    document["stopped_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_cluster_file(data_dir, document)
    click.echo(f"cluster stopped; its data stays in {data_dir}")


def _signal_group(pid: int, signal_number: int) -> None:
    try:
        os.killpg(pid, signal_number)  # detached nodes lead their own session and process group
    except ProcessLookupError:
        pass


def _remove_chain_if_free(document: dict, data_dir: Path) -> None:
    from cluster.addresses import LOCK_DIR
    from cluster.doctor import _lock_is_free
    from cluster.faults import remove_stale_chain

    block = document.get("address_block")
    if block and document.get("provider") == "netns":
        from cluster.providers import netns_net
        from cluster.providers.netns_attached import stop_helpers

        if stop_helpers(data_dir, len(document["nodes"])):   # link faults set on the running cluster
            click.echo("link faults: helpers stopped")
        removed = netns_net.remove_stale(only=netns_net.subnet_number(block))  # only if no process of it holds the lock
        if removed:
            click.echo(f"network: removed {len(removed)} namespaces and links of {block}.0/24")
    elif block and _lock_is_free(LOCK_DIR / f"{block}.lock"):
        remove_stale_chain(block)


# --- scenarios -------------------------------------------------------------------------------


@click.group()
def scenario() -> None:
    """Run scripted scenarios (scenarios/*.toml) against fresh local clusters."""


def _load_all(files: tuple[Path, ...], *, as_json: bool = False):
    from cluster.scenario import load_scenario
    from cluster.scenario_runner import REPOSITORY

    loaded = []
    for path in files:
        try:
            loaded.append(load_scenario(path, repository=REPOSITORY))
        except SynapseError as error:
            if as_json:  # a script still gets its one document, and learns that nothing ran
                click.echo(json.dumps({"verdict": "INVALID", "error": error.message, "hint": error.hint or "", "runs": []}, indent=2))
            _fail(error, EXIT_USAGE)
    return loaded


@scenario.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
def check(files: tuple[Path, ...]) -> None:
    """Validate scenario files without running them."""
    for loaded in _load_all(files):
        click.echo(f"{loaded.path}: ok ({loaded.name}: {len(loaded.steps)} steps, {loaded.cluster.nodes} nodes)")


@scenario.command("run")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None, help="replay a randomized run")
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("runs"), show_default=True)
@click.option("--keep-data", is_flag=True, help="keep the cluster's data dirs (keys included) after the run")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document (each run's verdict, seed, report) on stdout; "
                                                      "progress goes to stderr")
@click.option("-j", "--jobs", type=click.IntRange(1, 8), default=1, show_default=True,
              help="run up to N scenarios at once (each its own cluster); progress lines are prefixed with the scenario's name")
def run(files: tuple[Path, ...], seed: int | None, report_dir: Path, keep_data: bool, as_json: bool, jobs: int) -> None:
    """Run each scenario on its own fresh cluster; exit 0 only if every one passes."""
    from cluster.scenario_runner import RunOptions, ScenarioRun

    scenarios = _load_all(files, as_json=as_json)  # every file is validated before anything starts
    if jobs > 1 and len(scenarios) > 1:  # cluster/scenario_parallel.py: one process per scenario; exit status: the worst
        from cluster.scenario_parallel import run_in_parallel
        sys.exit(run_in_parallel(scenarios, jobs=jobs, seed=seed, report_dir=report_dir, keep_data=keep_data, as_json=as_json))
    say = functools.partial(click.echo, err=as_json)
    runs = []
    for loaded in scenarios:
        scenario_run = ScenarioRun(loaded, RunOptions(report_root=report_dir, seed=seed, keep_data=keep_data, echo=say))
        record = scenario_run.run()
        runs.append(_run_summary(loaded.path, record, scenario_run.folder))
    passed = all(summary["verdict"] == "PASS" for summary in runs)
    if as_json:
        click.echo(json.dumps({"verdict": "PASS" if passed else "FAIL", "runs": runs}, indent=2))
    elif len(runs) > 1:
        for summary in runs:
            click.echo(f"{summary['verdict']}  {summary['path']}")
    sys.exit(0 if passed else EXIT_FAILED)


def _run_summary(path: Path, record, folder: Path) -> dict:
    """What a script needs from one run; the full story stays in the report folder (history.json)."""
    failures = [{"label": step.label, "status": step.status, "expected": step.expected, "seen": step.seen}
                for step in record.steps + record.safety if step.status in ("failed", "error")]
    return {"path": str(path), "scenario": record.scenario, "verdict": record.verdict, "seed": record.seed,
            "report": str(folder), "aborted": record.aborted, "steps": len(record.steps), "failures": failures}


# --- doctor ----------------------------------------------------------------------------------


@click.command("doctor")
@click.option("--fix", is_flag=True, help="remove iptables chains left by dead runs (nothing else)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document (every check) on stdout")
def doctor(fix: bool, as_json: bool) -> None:
    """Check this machine for the testbed: addresses, firewall tools, stale runs, toolchains."""
    from dataclasses import asdict

    from cluster.doctor import run_checks

    results = run_checks(fix=fix)
    failed = sum(result.status == "fail" for result in results)
    warnings = sum(result.status == "warn" for result in results)
    if as_json:
        click.echo(json.dumps({"ok": not failed, "failed": failed, "warnings": warnings,
                               "checks": [asdict(result) for result in results]}, indent=2))
        sys.exit(EXIT_FAILED if failed else 0)
    for result in results:
        click.echo(f"{result.status.upper():5} {result.name}: {result.detail}")
        if result.hint and result.status != "ok":
            click.echo(f"      hint: {result.hint}")
    click.echo(f"{len(results)} checks: {failed} failed, {warnings} warnings")
    sys.exit(EXIT_FAILED if failed else 0)


def register(main: click.Group) -> None:
    main.add_command(cluster)
    __import__("cluster.cli_prometheus", fromlist=["register"]).register(cluster)  # synapse cluster prometheus-config
    main.add_command(scenario)
    main.add_command(doctor)
    __import__("cluster.cli_k8s", fromlist=["register"]).register(cluster)  # manifests / up-kubernetes / chaos-kubernetes
