"""`synapse scenario run -j N FILES...`: run scenario files in parallel, one summary at the end.

Why it works as it does:
- Each scenario runs in a process of its own (`synapse scenario run FILE --json`), not a thread: its
  cluster is isolated already (its own address block and data dir), and as a process it keeps what a
  single run guarantees: its nodes die with it, its SIGTERM handler removes its iptables chain, and one
  scenario's crash cannot take the others down. Its JSON document is its result; its progress (stderr)
  is shown line by line, prefixed with the scenario's name.
- Children are started from the main thread, so the parent-death signal they get (the same as the
  nodes': cluster/local.py) fires when this command dies, even by SIGKILL. When it is stopped (Ctrl-C,
  SIGTERM) every running child gets SIGTERM, so each tears its cluster down, and SIGKILL after a grace.
- At most N run at once, N from 1 to JOBS_MAX: each scenario is a whole cluster (N nodes x ~0.5 s of
  CPU to start, then gossip), so more than a few at once only makes every run's timing worse.
- Exit status: the worst of the runs' (0 pass, 1 fail, 2 invalid; a run that died without a verdict
  counts as failed, with the end of its output in the summary).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from cluster.local import _die_with_parent
from cluster.template import python_child_environment

JOBS_MAX = 8
POLL_S = 0.05
STOP_GRACE_S = 30.0
READER_JOIN_TIMEOUT_S = 30.0
RESULT_BYTES_MAX = 16 * 1024 * 1024
ERROR_TAIL_LINES = 10
NAME_CHARS_MAX = 40
EXIT_FAILED = 1
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(slots=True)
class Child:
    label: str
    path: Path
    process: subprocess.Popen
    started_s: float
    stderr_tail: list[str] = field(default_factory=list)
    stdout: bytes = b""
    readers: list[threading.Thread] = field(default_factory=list)


def labels_for(names: list[str]) -> list[str]:
    """A short printable label per scenario, unique (a second 'x' becomes 'x#2')."""
    labels, seen = [], {}
    for name in names:
        label = _UNPRINTABLE.sub("?", name)[:NAME_CHARS_MAX] or "scenario"
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return labels


def _child_command(path: Path, *, seed: int | None, report_dir: Path, keep_data: bool) -> list[str]:
    command = [sys.executable, "-c", "from cluster.cli import main; main()", "scenario", "run", str(path), "--json",
               "--report-dir", str(report_dir)]
    if seed is not None:
        command += ["--seed", str(seed)]
    return command + (["--keep-data"] if keep_data else [])


def _start(label: str, path: Path, command: list[str], say: Callable[[str], None], lock: threading.Lock) -> Child:
    environment = python_child_environment({**os.environ, "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=environment, preexec_fn=_die_with_parent(os.getpid()))
    child = Child(label=label, path=path, process=process, started_s=time.monotonic())

    def progress() -> None:
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            child.stderr_tail = (child.stderr_tail + [line])[-ERROR_TAIL_LINES:]
            with lock:
                say(f"[{label}] {line}")

    def result() -> None:
        child.stdout = process.stdout.read(RESULT_BYTES_MAX)
        process.stdout.read()  # drain the rest, so the child never blocks on a full pipe

    child.readers = [threading.Thread(target=progress, daemon=True), threading.Thread(target=result, daemon=True)]
    for reader in child.readers:
        reader.start()
    return child


def _finished(child: Child) -> dict:
    for reader in child.readers:
        reader.join(timeout=READER_JOIN_TIMEOUT_S)  # EOF comes when the run exits (its nodes write to files, not to our pipes)
    child.process.stdout.close()
    child.process.stderr.close()
    status, duration_s = child.process.returncode, round(time.monotonic() - child.started_s, 1)
    try:
        document = json.loads(child.stdout)
        runs = document["runs"]
    except (ValueError, KeyError, TypeError):
        runs = [{"path": str(child.path), "scenario": child.label, "verdict": "ERROR", "failures": [],
                 "error": "\n".join(child.stderr_tail)}]
    for run in runs:
        run.update(exit_status=status, duration_s=duration_s)
    return {"runs": runs, "status": status}


def _stop_all(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def run_in_parallel(scenarios: list, *, jobs: int, seed: int | None, report_dir: Path, keep_data: bool, as_json: bool,
                    out: TextIO | None = None) -> int:
    """Run every scenario (loaded, validated) with at most `jobs` at once; print the summary; return the exit status."""
    out = out or sys.stdout
    progress_out = sys.stderr if as_json else out
    lock = threading.Lock()

    def say(line: str) -> None:
        progress_out.write(line + "\n")
        progress_out.flush()

    labels = labels_for([loaded.name for loaded in scenarios])
    waiting = list(zip(labels, scenarios))
    running: list[Child] = []
    results: dict[str, dict] = {}
    began_s = time.monotonic()
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                label, loaded = waiting.pop(0)
                command = _child_command(loaded.path, seed=seed, report_dir=report_dir, keep_data=keep_data)
                running.append(_start(label, loaded.path, command, say, lock))
            for child in [child for child in running if child.process.poll() is not None]:
                running.remove(child)
                results[child.label] = _finished(child)
            time.sleep(POLL_S)
    finally:
        _stop_all(running)
    ordered = [results[label] for label in labels]
    _summary(ordered, labels, jobs, time.monotonic() - began_s, as_json, out)
    return max(max(0, result["status"]) if result["status"] is not None else EXIT_FAILED for result in ordered)


def _summary(results: list[dict], labels: list[str], jobs: int, elapsed_s: float, as_json: bool, out: TextIO) -> None:
    runs = [run for result in results for run in result["runs"]]
    passed = sum(run["verdict"] == "PASS" for run in runs)
    if as_json:
        out.write(json.dumps({"verdict": "PASS" if passed == len(runs) else "FAIL", "jobs": jobs, "runs": runs}, indent=2) + "\n")
        return
    out.write(f"\n{len(runs)} scenarios, {passed} passed, {len(runs) - passed} not (-j {jobs}, {elapsed_s:.0f} s):\n")
    for label, result in zip(labels, results):
        for run in result["runs"]:
            out.write(f"  {run['verdict']:<5} {label}  ({run['duration_s']} s)  {run.get('report') or run.get('error', '')}\n")
    out.flush()
