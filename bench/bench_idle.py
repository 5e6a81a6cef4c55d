"""Idle CPU of a real local cluster: the sum over every node process of the CPU it used in a window
while nothing happens (no entries, no proposals), in cores (CPU seconds per second).

How it measures (and why this way):
- `synapse cluster up --nodes N` (the user's command, detached nodes), then a settle time (default 15 s:
  start-up traffic ends and anti-entropy reaches its quiet period), then utime + stime of every node
  process from /proc/<pid>/stat at the start and the end of a `--seconds` window (default 10 s), then
  `synapse cluster down`. Only the nodes count, not this script.
- Several trees side by side in one run (`--tree LABEL=PATH`, e.g. an export of main and this
  worktree), interleaved round by round, so both see the same load of a shared machine; the table
  gives each tree's median and the ratio to the first tree.

It asserts nothing: it prints a table and writes JSON to bench/results/. From the repository root:

    .venv/bin/python bench/bench_idle.py                                    # this tree, N = 33, 3 rounds
    git -C . archive main | tar -x -C /tmp/main-export
    .venv/bin/python bench/bench_idle.py --tree main=/tmp/main-export --tree this=. --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "bench" / "results"
UP_TIMEOUT_S = 300
DOWN_TIMEOUT_S = 60
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S   # fields 14 and 15 of proc(5)


def synapse(tree: Path, *arguments: str, timeout_s: float) -> subprocess.CompletedProcess:
    """The `synapse` CLI of `tree` (its cluster/ and node/ first on the path)."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from cluster.cli import main; sys.exit(main())"
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, timeout=timeout_s,
                          env=environment, cwd=tree)


def idle_cores(tree: Path, nodes: int, settle_s: float, window_s: float) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    started = time.monotonic()
    up = synapse(tree, "cluster", "up", "--nodes", str(nodes), "--data-dir", str(data_dir / "c"), "--json", timeout_s=UP_TIMEOUT_S)
    try:
        if up.returncode != 0:
            return {"error": f"cluster up failed ({up.returncode}): {up.stderr.strip()[-500:]}"}
        up_s = time.monotonic() - started
        pids = [node["pid"] for node in json.loads(up.stdout)["nodes"]]
        time.sleep(settle_s)
        before = {pid: cpu_seconds(pid) for pid in pids}
        window_started = time.monotonic()
        time.sleep(window_s)
        after = {pid: cpu_seconds(pid) for pid in pids}
        elapsed_s = time.monotonic() - window_started
        alive = [pid for pid in pids if before[pid] is not None and after[pid] is not None]
        used_s = sum(after[pid] - before[pid] for pid in alive)
        return {"cores": round(used_s / elapsed_s, 4), "nodes_measured": len(alive), "up_s": round(up_s, 2)}
    finally:
        synapse(tree, "cluster", "down", "--data-dir", str(data_dir / "c"), timeout_s=DOWN_TIMEOUT_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=33)
    parser.add_argument("--rounds", type=int, default=3, help="clusters per tree, interleaved")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds between healthy and the window")
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    parser.add_argument("--tree", action="append", default=[], help="LABEL=PATH of a source tree (default: this one)")
    arguments = parser.parse_args()
    trees = [(label, Path(path).resolve()) for label, path in (item.split("=", 1) for item in arguments.tree)] \
        or [("this", REPOSITORY)]
    load_before = os.getloadavg()
    samples: dict[str, list[dict]] = {label: [] for label, _ in trees}
    for round_number in range(arguments.rounds):
        for label, tree in trees:
            result = idle_cores(tree, arguments.nodes, arguments.settle, arguments.seconds)
            samples[label].append(result)
            print(f"round {round_number + 1} {label}: {result}", flush=True)
    medians = {label: statistics.median([s["cores"] for s in runs if "cores" in s] or [float("nan")])
               for label, runs in samples.items()}
    first = trees[0][0]
    print(f"\nidle CPU of {arguments.nodes} nodes over {arguments.seconds:.0f} s (after {arguments.settle:.0f} s settle), "
          f"median of {arguments.rounds}; load average before {load_before[0]:.2f}")
    for label, median in medians.items():
        print(f"  {label:>10}: {median:.3f} cores ({median / arguments.nodes * 1000:.1f} millicores per node), "
              f"x{median / medians[first]:.2f} of {first}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    document = {"nodes": arguments.nodes, "settle_s": arguments.settle, "window_s": arguments.seconds,
                "trees": {label: str(tree) for label, tree in trees}, "samples": samples, "median_cores": medians,
                "load_average_before": load_before}
    (RESULTS / f"bench_idle-{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"written: bench/results/bench_idle-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
