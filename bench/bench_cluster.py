"""Cluster benchmark: how long a local cluster takes to come up, what each node costs in memory at idle,
and (optionally) how long the whole test suite takes with and without pytest-xdist.

How it measures (and why this way):
- Start-up is what a user and every integration test wait for: `LocalCluster(nodes=N, validators=3)`
  from the call of start() (address block, genesis and keys, configs, N process spawns) until it
  returns, which is when every node answers GET /health with status "ok". N = 5, 9, 17 by default, a
  fresh cluster per repeat. On 2 cores the nodes' imports and key loading compete for CPU, so the time
  grows with N even though the nodes start in parallel.
- Raft leader: when the validators report Raft (a `raft` object with a `leader` field, as
  ValidatorRaft.status() gives it, or a top-level `raft_leader`) in GET /health or, failing that, in
  GET /upgrades/status, the time from the same start until every validator names the same leader is
  also measured. When no validator reports it, the table says so instead of a figure.
- Memory at idle: after start-up the cluster is left alone for --idle-s seconds, then each node's
  resident set (VmRSS in /proc/<pid>/status, what was asked for and what `ps` shows) and proportional
  set (Pss in /proc/<pid>/smaps_rollup: shared pages such as the interpreter's divided among the
  processes that share them, so the sum of Pss is what N nodes really cost) are read, with the CPU
  seconds each node has used so far (/proc/<pid>/stat utime + stime).
- --suite times the whole test suite: `pytest -n auto`, `pytest -n auto --dist worksteal` and
  `pytest -n 0`, wall clock and CPU, once each, with the slowest tests. It takes minutes and is only
  meaningful on an otherwise idle machine, so it refuses to run while the 1-minute load average is
  above --suite-load-max (unless --suite-force) and records why.

It asserts nothing about speed: it prints a table and writes JSON to bench/results/ (gitignored). From
the repository root:

    .venv/bin/python bench/bench_cluster.py                         # N = 5 9 17, 3 repeats each
    .venv/bin/python bench/bench_cluster.py --nodes 5 --repeats 1   # a smoke run
    .venv/bin/python bench/bench_cluster.py --suite-only            # only the test-suite timing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from cluster.local import LocalCluster, NodeApi  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
VALIDATORS = 3
LEADER_TIMEOUT_S = 60.0
HEALTH_TIMEOUT_S = 2.0
POLL_S = 0.05
RAFT_STATUS_PATHS = ("/health", "/upgrades/status")
SUITE_TIMEOUT_S = 3600.0
SLOWEST_TESTS = 8
# xdist's default `--dist load` hands out tests in chunks in collection order (component and integration
# first, unit last) and never takes back a chunk: one worker may finish the fast tests and sit idle while
# the other runs the slow ones. `worksteal` lets an idle worker take pending tests from a busy one; it is
# timed too, to show whether that matters for the suite as it is (bench/README.md).
SUITE_VARIANTS = {"n_auto": ["-n", "auto"], "n_auto_worksteal": ["-n", "auto", "--dist", "worksteal"], "n_0": ["-n", "0"]}
_DURATION_LINE = re.compile(r"^(\d+\.\d+)s (call|setup|teardown)\s+(\S+)")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_SUMMARY_LINE = re.compile(r"^=*\s*(\d+ (passed|failed|error).*?)\s*=*$")


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def other_node_processes(own_pids: set[int]) -> int:
    """How many node processes (`-m node --config`) not of this cluster run now: other tests' or
    benchmarks' clusters, whose start-up competes for the same 2 cores (a better hint than the load
    average, which this benchmark's own clusters raise)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own_pids:
            continue
        try:
            command_line = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        count += b"-m\0node\0--config" in command_line
    return count


def proc_kb(pid: int, file_name: str, field: str) -> int | None:
    """A 'Field:   123 kB' value from /proc/<pid>/<file_name>; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/{file_name}") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime (fields 14 and 15 of stat)


def raft_leader(health: object) -> tuple[bool, str | None]:
    """(does this /health report Raft at all, the leader it names or None)."""
    if not isinstance(health, dict):
        return False, None
    raft = health.get("raft")
    if isinstance(raft, dict) and "leader" in raft:
        return True, raft["leader"]
    if "raft_leader" in health:
        return True, health["raft_leader"]
    return False, None


def _get_json(cluster: LocalCluster, index: int, path: str) -> object:
    api = cluster.api(index)
    try:
        response = NodeApi(api.base_url, api.token, timeout_s=HEALTH_TIMEOUT_S).get(path)
    except OSError:
        return None
    return response.data if response.ok else None


def raft_source(cluster: LocalCluster) -> str | None:
    """Where a validator reports its Raft leader: GET /health (preferred) or GET /upgrades/status; None if nowhere."""
    index = next(handle.index for handle in cluster.nodes if handle.is_validator)
    for path in RAFT_STATUS_PATHS:
        if raft_leader(_get_json(cluster, index, path))[0]:
            return path
    return None


def validator_leaders(cluster: LocalCluster, path: str) -> set:
    return {raft_leader(_get_json(cluster, handle.index, path))[1] for handle in cluster.nodes if handle.is_validator}


def wait_for_leader(cluster: LocalCluster, started: float) -> tuple[float | None, str | None]:
    """(seconds from `started` until every validator names the same leader, where it was read); (None, None)
    when no validator reports Raft. Both paths are read as they come: the first one that reports Raft wins."""
    deadline = time.perf_counter() + LEADER_TIMEOUT_S
    path = raft_source(cluster)
    if path is None:
        return None, None
    while True:
        leaders = validator_leaders(cluster, path)
        if len(leaders) == 1 and None not in leaders:
            return time.perf_counter() - started, path
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the validators did not agree on a Raft leader within {LEADER_TIMEOUT_S} s: {leaders}")
        time.sleep(POLL_S)


def node_memory(cluster: LocalCluster) -> list[dict]:
    return [{"index": handle.index, "validator": handle.is_validator, "pid": handle.pid,
             "rss_kb": proc_kb(handle.pid, "status", "VmRSS"), "rss_peak_kb": proc_kb(handle.pid, "status", "VmHWM"),
             "pss_kb": proc_kb(handle.pid, "smaps_rollup", "Pss"), "cpu_s": cpu_seconds(handle.pid)}
            for handle in cluster.nodes]


def one_cluster(nodes: int, idle_s: float) -> dict:
    """Start a fresh cluster, time it, measure it at idle, stop it. Everything is stopped on any error."""
    cluster = LocalCluster(nodes=nodes, validators=VALIDATORS)
    result: dict = {"nodes": nodes, "load_before": load_average(), "other_nodes_before": other_node_processes(set())}
    try:
        started = time.perf_counter()
        cluster.start()
        result["healthy_s"] = time.perf_counter() - started
        result["leader_s"], result["leader_source"] = wait_for_leader(cluster, started)
        time.sleep(idle_s)
        result["memory"] = node_memory(cluster)
        result["load_after"] = load_average()
        result["other_nodes_after"] = other_node_processes({handle.pid for handle in cluster.nodes})
    finally:
        stopping = time.perf_counter()
        cluster.close(remove_data=True)
        result["stop_s"] = time.perf_counter() - stopping
    return result


def summarize_size(runs: list[dict]) -> dict:
    nodes = [node for run in runs for node in run["memory"]]

    def median_of(key: str, validator: bool | None = None) -> float | None:
        values = [node[key] for node in nodes if node[key] is not None and validator in (None, node["validator"])]
        return round(statistics.median(values), 2) if values else None

    leaders = [run["leader_s"] for run in runs if run["leader_s"] is not None]
    return {"healthy_s": [round(run["healthy_s"], 2) for run in runs],
            "healthy_s_median": round(statistics.median(run["healthy_s"] for run in runs), 2),
            "leader_s": [round(value, 2) for value in leaders] or None,
            "leader_s_median": round(statistics.median(leaders), 2) if leaders else None,
            "leader_source": sorted({run["leader_source"] for run in runs if run["leader_source"]}) or None,
            "stop_s_median": round(statistics.median(run["stop_s"] for run in runs), 2),
            "rss_kb_median": median_of("rss_kb"), "rss_kb_validator_median": median_of("rss_kb", True),
            "rss_kb_other_median": median_of("rss_kb", False), "pss_kb_median": median_of("pss_kb"),
            "rss_kb_total_median": round(statistics.median(sum(n["rss_kb"] or 0 for n in run["memory"]) for run in runs)),
            "pss_kb_total_median": round(statistics.median(sum(n["pss_kb"] or 0 for n in run["memory"]) for run in runs)),
            "cpu_s_per_node_median": median_of("cpu_s")}


def print_cluster_table(summaries: dict, idle_s: float) -> None:
    print(f"\nLocalCluster(nodes=N, validators={VALIDATORS}): start() until every node is healthy, and memory per node "
          f"after {idle_s:.0f} s idle (medians over repeats; RSS and PSS in MB)")
    print(f"{'N':>3}{'healthy s':>11}{'  (each run)':<24}{'leader s':>9}{'RSS/node':>10}{'valid.':>8}{'other':>7}"
          f"{'PSS/node':>10}{'RSS sum':>9}{'PSS sum':>9}{'CPU s/node':>11}{'stop s':>8}")
    for nodes, s in summaries.items():
        leader = f"{s['leader_s_median']:.2f}" if s["leader_s_median"] is not None else "n/a"
        megabytes = lambda kb: f"{kb / 1024:.1f}" if kb is not None else "-"  # noqa: E731
        print(f"{nodes:>3}{s['healthy_s_median']:>11.2f}  {' / '.join(f'{v:.2f}' for v in s['healthy_s']):<22}{leader:>9}"
              f"{megabytes(s['rss_kb_median']):>10}{megabytes(s['rss_kb_validator_median']):>8}{megabytes(s['rss_kb_other_median']):>7}"
              f"{megabytes(s['pss_kb_median']):>10}{megabytes(s['rss_kb_total_median']):>9}{megabytes(s['pss_kb_total_median']):>9}"
              f"{s['cpu_s_per_node_median']:>11.2f}{s['stop_s_median']:>8.2f}")
    sources = sorted({source for s in summaries.values() for source in s["leader_source"] or ()})
    if sources:
        print(f"leader: read from GET {', '.join(sources)} on the {VALIDATORS} validators")
    if all(s["leader_s_median"] is None for s in summaries.values()):
        print("leader: n/a - no validator reports Raft ('raft.leader' or 'raft_leader') in GET "
              + " or GET ".join(RAFT_STATUS_PATHS))


# --- the whole test suite -----------------------------------------------------------------------


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (the 'cpu' line of /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS_PER_S, sum(fields[:8]) / CLOCK_TICKS_PER_S


def run_suite_once(arguments: list[str], log_path: Path) -> dict:
    """`pytest -q <arguments>` over the whole suite; wall time, CPU, exit code and pytest's summary line.
    pytest runs in its own process group, so a timeout stops it and everything it started."""
    command = [str(REPOSITORY / ".venv" / "bin" / "pytest"), "-q", *arguments, f"--durations={SLOWEST_TESTS}"]
    started = time.perf_counter()
    cpu_before, machine_before = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu_s()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPOSITORY, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            exit_code = process.wait(timeout=SUITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            exit_code = None
    wall_s = time.perf_counter() - started
    cpu_after, machine_after = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu_s()
    # CPU of pytest and every descendant it reaped (workers, node processes): how busy the cores were.
    cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    lines = log_path.read_text(errors="replace").splitlines()
    summary = next((match.group(1) for line in reversed(lines) if (match := _SUMMARY_LINE.match(line.strip()))), None)
    slowest = [[float(match.group(1)), match.group(2), match.group(3)] for line in lines if (match := _DURATION_LINE.match(line))]
    return {"command": " ".join(["pytest", *command[1:]]), "wall_s": round(wall_s, 1), "exit_code": exit_code,
            "cpu_s": round(cpu_s, 1), "cores_busy": round(cpu_s / wall_s, 2),
            "machine_cores_busy": round((machine_after[0] - machine_before[0]) / wall_s, 2),
            "summary": summary, "slowest": slowest, "log": str(log_path.relative_to(REPOSITORY))}


def run_suite(options: argparse.Namespace, stamp: str) -> dict:
    load = load_average()
    if load[0] > options.suite_load_max and not options.suite_force:
        reason = (f"not run: the 1-minute load average is {load[0]} (> {options.suite_load_max}); other work would "
                  "distort the figures. Run again on an idle machine, or pass --suite-force")
        print(reason)
        return {"run": False, "reason": reason, "load": load}
    result: dict = {"run": True, "load_before": load}
    for name, arguments in SUITE_VARIANTS.items():
        run = result[name] = run_suite_once(arguments, RESULTS / f"bench_cluster-suite-{name}-{stamp}.log")
        print(f"pytest {' '.join(arguments)}: {run['wall_s']:.0f} s, CPU {run['cpu_s']:.0f} s ({run['cores_busy']} cores "
              f"busy; whole machine {run['machine_cores_busy']} of {os.cpu_count()}), exit {run['exit_code']}, "
              f"{run['summary']}", flush=True)
    result["load_after"] = load_average()
    result["speedup"] = {name: round(result["n_0"]["wall_s"] / result[name]["wall_s"], 2) for name in SUITE_VARIANTS}
    for seconds, phase, test in result["n_0"]["slowest"][:5]:
        print(f"  slowest (-n 0): {seconds:6.1f} s {phase:<8} {test}")
    print(f"whole suite, speed-up over -n 0: {result['speedup']}; load {result['load_before']} -> {result['load_after']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 9, 17])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle time after start-up before memory is read")
    parser.add_argument("--suite", action="store_true", help="also time the whole test suite (-n auto, worksteal, -n 0): minutes")
    parser.add_argument("--suite-only", action="store_true", help="only time the test suite")
    parser.add_argument("--suite-load-max", type=float, default=1.0, help="refuse --suite above this 1-minute load")
    parser.add_argument("--suite-force", action="store_true", help="run the suite timing whatever the load")
    options = parser.parse_args(argv)
    if any(nodes < VALIDATORS for nodes in options.nodes) or options.repeats < 1:
        parser.error(f"every N must be at least {VALIDATORS} (the validators) and --repeats at least 1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict = {"load_before": load_average(), "options": {**vars(options)}}
    if not options.suite_only:
        runs: dict = {}
        for nodes in options.nodes:
            runs[nodes] = []
            for repeat in range(options.repeats):
                runs[nodes].append(one_cluster(nodes, options.idle_s))
                run = runs[nodes][-1]
                print(f"N={nodes} repeat {repeat + 1}/{options.repeats}: healthy {run['healthy_s']:.2f} s, "
                      f"load {run['load_before']} -> {run['load_after']}, other clusters' node processes "
                      f"{run['other_nodes_before']} -> {run['other_nodes_after']}", flush=True)
        results["clusters"] = runs
        results["summary"] = {nodes: summarize_size(size_runs) for nodes, size_runs in runs.items()}
        print_cluster_table(results["summary"], options.idle_s)
    if options.suite or options.suite_only:
        results["suite"] = run_suite(options, stamp)
    results["load_after"] = load_average()
    results["environment"] = {"python": platform.python_version(), "machine": platform.machine(),
                              "cpu_count": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"load average (1, 5, 15 min) before {results['load_before']}, after {results['load_after']}")
    path = RESULTS / f"bench_cluster-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
