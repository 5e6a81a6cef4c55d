"""Raft benchmark: what one replicated ratification costs on the validators' PySyncObj cluster, next to
etcd's put latency for a 3-member cluster measured in the same session on the same machine.

How it measures (and why this way):
- The real adapter (node/raft.py ValidatorRaft over node/raft_transport.py: per-validator authenticated,
  encrypted msgpack frames; journal and dump files, ed25519 signing by the caller and verification in every member's apply, the callback -> event
  loop handoff) on three loopback addresses of a block leased from cluster/addresses.py, so it never
  collides with tests running at the same time.
- Three validators in THREE PROCESSES by default, one validator per process as in production (a node
  process runs one validator). In one process the three tick threads and the event loop share one GIL:
  every commit needs work on all three members (unpickle, decrypt, verify a signature, apply), and one
  process serialises all of it on one core where three processes use both cores. `--mode both` also
  runs the one-process layout (as tests/component/test_raft.py does) to show what the GIL costs.
  Each worker process is this script with `--worker`; it reads JSON commands on stdin and answers on a
  private copy of stdout. It stops when told or when stdin closes, is killed by the kernel when the
  coordinator dies (PR_SET_PDEATHSIG, also in the middle of a series), and the coordinator kills it by
  pid if it does not stop in time.
- Latency of one `ratify` = `await raft.ratify(...)` timed inside the process that calls it (so no
  inter-process hop is counted): sign, submit, replicate to a majority, commit, apply on the caller,
  callback, back on the loop. Sequential calls (one at a time), distinct proposal ids, first from the
  leader and then from a follower (PySyncObj forwards a follower's command to the leader). The
  pending-ratification quota is raised for the run (each call leaves one more proposal waiting for a
  majority); everything else is the production code and timing.
- The full two-phase ratification, two ways: (a) sequential, the shortest path: ratify on the leader,
  ratify on a follower (sequence assigned), certify on the leader, certify on the follower (certificate
  complete), timed by the coordinator, so it includes four coordinator <-> worker round trips (the
  `ping` row shows one); (b) the driver flow of node/raft.py: all three validators are told at once,
  each ratifies, waits for its SequenceAssigned, certifies and waits for CertificateCompleted; timed
  from just before the coordinator tells them (CLOCK_MONOTONIC, the same clock for every process) to
  the first validator that holds the complete certificate (it can publish EXECUTE_UPGRADE) and to the
  last.
- The pure machine's apply cost with 0 ... 100,000 records already held (the upper bound of sequences):
  every member runs it for every command, on the tick thread, before the call can return.
- etcd: /work/shared/peers/etcd_bench.py -m 3 (one repeat per round, sequential 100-byte puts through
  its JSON gateway with a keep-alive client, to the leader then to a follower), run right after ours in
  each round so both see the same machine load. Percentiles are computed as that script does (linear
  interpolation). The ratio ours / etcd compares the medians over rounds of each round's median and p95.
  etcd's figure includes an HTTP request from a Python client, ours an in-process call: ours has no
  HTTP in it, and etcd fsyncs its WAL where PySyncObj's journal is an mmap without fsync.

It asserts nothing about speed: it prints a table and writes JSON to bench/results/ (gitignored). From
the repository root:

    .venv/bin/python bench/bench_raft.py                          # 3 rounds, 500 calls, both layouts, etcd
    .venv/bin/python bench/bench_raft.py --quick --no-etcd        # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import asyncio
import contextlib
import ctypes
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from cluster.addresses import acquire_block  # noqa: E402
from node.core.closing import EMPTY_VOTES_DIGEST  # noqa: E402
from node.core.ratification import (  # noqa: E402
    CertificateCompleted,
    RatificationLimits,
    RatificationMachine,
    SequenceAssigned,
)
from node.identity import Identity, verify_signature  # noqa: E402
from node.raft import ValidatorRaft, ValidatorRaftConfig  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
ETCD_BENCH = Path("/work/shared/peers/etcd_bench.py")
AIM_RATIO_TO_ETCD = 1.0        # issue 11 (was 3x): one ratify no slower than one etcd put
AIM_FAILOVER_S = 0.6           # issue 11: median seconds from kill -9 of the leader to a new leader
MEMBERS = 3
RAFT_PORT = 9000
NETWORK_ID = "net-bench-raft"
PASSWORD = "bench raft password, not a secret 0123456789"
PACKAGE_HASH = "cd" * 32
VERSION = "1.2.0"
CALL_TIMEOUT_S = 10.0
LEADER_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 20.0
WORKER_START_TIMEOUT_S = 30.0
WORKER_REPLY_TIMEOUT_S = 600.0
WORKER_STOP_GRACE_S = 2.0      # a worker in the middle of a series reads 'stop' only after it: then SIGTERM
WORKER_STOP_TIMEOUT_S = 15.0
ETCD_TIMEOUT_S = 300.0
WARMUP_CALLS = 20
PENDING_MAX_FOR_BENCH = 1_000_000
APPLY_RECORDS = (0, 1_000, 10_000, 100_000)
APPLY_CALLS = 200
PR_SET_PDEATHSIG = 1


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks, as shared/peers/etcd_bench.py computes it."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 3), "p95": round(percentile(values, 0.95), 3),
            "p99": round(percentile(values, 0.99), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC: one clock for every process on this machine, so stamps compare across workers."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def node_processes() -> int:
    """How many Synapse node processes (`-m node --config`) run now: other tests' or benchmarks'
    clusters competing for the same cores."""
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            count += entry.name.isdigit() and b"-m\0node\0--config" in (entry / "cmdline").read_bytes()
        except OSError:
            continue
    return count


# --- one validator and what the benchmark does with it ----------------------------------------


class LogCounter(logging.Handler):
    """Counts warnings and worse that PySyncObj (or our adapter) logs during a run, by message, so an
    alarming line (e.g. PySyncObj's CRITICAL 'truncating already-applied log entries') is reported."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {record.msg}"] += 1

    def __enter__(self) -> "LogCounter":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger().removeHandler(self)


def member_identity(index: int) -> Identity:
    return Identity.from_private_bytes(hashlib.sha256(f"bench-raft-validator-{index}".encode()).digest())


def member_config(index: int, addresses: list[str], data_dir: Path, *, bind_outgoing: bool) -> ValidatorRaftConfig:
    identities = [member_identity(i) for i in range(len(addresses))]
    extra = {}
    if "validator_addresses" in {f.name for f in dataclasses.fields(ValidatorRaftConfig)}:
        # The per-validator transport (node/raft_transport.py); absent before it, so the same script
        # measures both (PYTHONPATH=<a checkout without it> for the "before" figures).
        extra["validator_addresses"] = {v.node_id: a for v, a in zip(identities, addresses)}
    return ValidatorRaftConfig(
        self_address=addresses[index], partner_addresses=tuple(a for i, a in enumerate(addresses) if i != index),
        data_dir=data_dir / f"validator-{index}", password=PASSWORD, network_id=NETWORK_ID,
        validator_id=identities[index].node_id, validators={v.node_id: v.public_key for v in identities},
        limits=RatificationLimits(pending_per_validator_max=PENDING_MAX_FOR_BENCH), bind_outgoing=bind_outgoing,
        **extra)


class BenchMember:
    """One ValidatorRaft and the benchmark's operations on it, run on its event loop (in a worker
    process, or in the coordinator for the one-process layout). Every operation returns plain data."""

    def __init__(self, index: int, addresses: list[str], data_dir: Path, *, bind_outgoing: bool,
                 log_counter: LogCounter) -> None:
        self._index = index
        self._log_counter = log_counter
        self._config = member_config(index, addresses, data_dir, bind_outgoing=bind_outgoing)
        identity = member_identity(index)
        self._raft = ValidatorRaft(self._config, sign=identity.sign, verify=verify_signature, on_change=self._on_change)
        self._assigned: dict[str, int] = {}
        self._completed_ns: dict[str, int] = {}
        self._changed = asyncio.Event()

    def _on_change(self, events: tuple) -> None:
        now_ns = monotonic_ns()
        for event in events:
            if isinstance(event, SequenceAssigned):
                self._assigned.setdefault(event.proposal_id, event.sequence)
            elif isinstance(event, CertificateCompleted):
                self._completed_ns.setdefault(event.proposal_id, now_ns)
        self._changed.set()

    async def _wait_until(self, predicate, timeout_s: float, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            self._changed.clear()
            if predicate():
                return
            remaining_s = deadline - asyncio.get_running_loop().time()
            if remaining_s <= 0:
                raise TimeoutError(f"validator {self._index}: no {what} within {timeout_s} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining_s)

    async def start(self) -> dict:
        await self._raft.start()
        return {"pid": os.getpid()}

    async def stop(self) -> dict:
        await self._raft.stop()
        return {}

    async def status(self) -> dict:
        status = self._raft.status()
        return {**status, "is_leader": status.get("leader") == self._config.self_address, "pid": os.getpid(),
                "rss_kb": rss_kb(os.getpid()), "log_warnings": dict(self._log_counter.counts)}

    async def ping(self) -> dict:
        return {}

    async def close(self, proposal_id: str) -> dict:
        """This validator closes voting on the proposal with no votes (voting must be closed by a
        majority of validators before anyone can ratify)."""
        started = time.perf_counter()
        outcome = await self._raft.close(proposal_id=proposal_id, vote_ids=(), timeout_s=CALL_TIMEOUT_S)
        return {"status": outcome.status, "ms": (time.perf_counter() - started) * 1000}

    async def close_series(self, prefix: str, count: int) -> dict:
        statuses = Counter()
        for number in range(count):
            statuses[(await self.close(f"{prefix}-{number:06d}"))["status"]] += 1
        return {"statuses": dict(statuses)}

    async def ratify(self, proposal_id: str) -> dict:
        started = time.perf_counter()
        outcome = await self._raft.ratify(proposal_id=proposal_id, action="upgrade", package_hash=PACKAGE_HASH,
                                          version=VERSION, votes_digest=EMPTY_VOTES_DIGEST, timeout_s=CALL_TIMEOUT_S)
        if outcome.sequence is not None:
            self._assigned.setdefault(proposal_id, outcome.sequence)
        return {"status": outcome.status, "sequence": outcome.sequence, "ms": (time.perf_counter() - started) * 1000}

    async def certify(self, proposal_id: str, sequence: int) -> dict:
        started = time.perf_counter()
        outcome = await self._raft.certify(proposal_id=proposal_id, sequence=sequence, action="upgrade",
                                           package_hash=PACKAGE_HASH, version=VERSION, votes_digest=EMPTY_VOTES_DIGEST,
                                           timeout_s=CALL_TIMEOUT_S)
        if outcome.status == "certificate_complete":
            self._completed_ns.setdefault(proposal_id, monotonic_ns())
        return {"status": outcome.status, "sequence": outcome.sequence, "ms": (time.perf_counter() - started) * 1000}

    async def ratify_series(self, prefix: str, count: int) -> dict:
        """`count` sequential ratify calls with distinct proposal ids; latencies in ms, in call order."""
        latencies_ms, statuses = [], Counter()
        for number in range(count):
            result = await self.ratify(f"{prefix}-{number:06d}")
            latencies_ms.append(result["ms"])
            statuses[result["status"]] += 1
        return {"latencies_ms": latencies_ms, "statuses": dict(statuses)}

    async def two_phase(self, proposal_id: str) -> dict:
        """The validator driver's flow for one approved proposal: ratify, wait for the sequence, certify,
        wait for the complete certificate. Returns the CLOCK_MONOTONIC stamp of completion."""
        ratified = await self.ratify(proposal_id)
        await self._wait_until(lambda: proposal_id in self._assigned, CALL_TIMEOUT_S, f"sequence for {proposal_id}")
        certified = await self.certify(proposal_id, self._assigned[proposal_id])
        await self._wait_until(lambda: proposal_id in self._completed_ns, CALL_TIMEOUT_S, f"certificate of {proposal_id}")
        return {"complete_ns": self._completed_ns[proposal_id], "statuses": [ratified["status"], certified["status"]]}


OPERATIONS = ("start", "stop", "status", "ping", "close", "close_series", "ratify", "certify", "ratify_series",
              "two_phase")


async def run_operation(member: BenchMember, command: dict) -> dict:
    operation = command.pop("op")
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    return await getattr(member, operation)(**command)


# --- the worker process -----------------------------------------------------------------------


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this worker when the coordinator dies (even by SIGKILL, even in the middle of a series,
    when nobody reads stdin): PR_SET_PDEATHSIG. Exit at once if the coordinator is already gone."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


async def serve_worker(index: int, addresses: list[str], data_dir: Path) -> None:
    """Answer JSON commands from stdin, one per line, until 'stop' or end of input. Replies go to a
    private copy of stdout; fd 1 then points at stderr, so no library print can corrupt a reply."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # stop, even in the middle of a series
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    log_counter = LogCounter()
    logging.getLogger().addHandler(log_counter)
    member = BenchMember(index, addresses, data_dir, bind_outgoing=True, log_counter=log_counter)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["op"] == "stop":
                break
            try:
                reply = {"ok": True, "result": await run_operation(member, command)}
            except Exception as error:  # noqa: BLE001 - reported to the coordinator, which stops the run
                reply = {"ok": False, "error": repr(error)}
            replies.write(json.dumps(reply) + "\n")
    finally:
        await member.stop()
        transport.close()
        replies.close()


class ProcessMember:
    """The coordinator's handle on one worker process."""

    def __init__(self, index: int, addresses: list[str], data_dir: Path, log_counter: LogCounter) -> None:
        del log_counter  # the worker counts its own
        self._arguments = ["--worker", str(index), "--addresses", ",".join(addresses), "--data-dir", str(data_dir),
                           "--parent-pid", str(os.getpid())]
        self._log_path = data_dir / f"worker-{index}.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> dict:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), *self._arguments, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        return await self.call({"op": "start"}, WORKER_START_TIMEOUT_S)

    async def call(self, command: dict, timeout_s: float = WORKER_REPLY_TIMEOUT_S) -> dict:
        assert self._process is not None and self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write((json.dumps(command) + "\n").encode())
        await asyncio.wait_for(self._process.stdin.drain(), timeout_s)
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"worker {self._arguments[1]} exited; see {self._log_path}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"worker {self._arguments[1]}: {reply['error']}; see {self._log_path}")
        return reply["result"]

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            process.stdin.write(b'{"op": "stop"}\n')
            process.stdin.close()
        for signal_number, wait_s in ((None, WORKER_STOP_GRACE_S), (signal.SIGTERM, WORKER_STOP_TIMEOUT_S), (signal.SIGKILL, None)):
            if signal_number is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal_number)
            try:
                await asyncio.wait_for(process.wait(), wait_s if wait_s is not None else WORKER_STOP_TIMEOUT_S)
                return
            except asyncio.TimeoutError:
                continue


class LocalMember:
    """The same interface on a BenchMember in the coordinator's own process and event loop."""

    def __init__(self, index: int, addresses: list[str], data_dir: Path, log_counter: LogCounter) -> None:
        self._member = BenchMember(index, addresses, data_dir, bind_outgoing=False, log_counter=log_counter)
        self.pid = os.getpid()

    async def start(self) -> dict:
        return await self._member.start()

    async def call(self, command: dict, timeout_s: float = WORKER_REPLY_TIMEOUT_S) -> dict:
        return await asyncio.wait_for(run_operation(self._member, dict(command)), timeout_s)

    async def stop(self) -> None:
        await self._member.stop()


# --- the coordinator: one layout, one fresh cluster --------------------------------------------


async def wait_for_leader(members: list, timeout_s: float = LEADER_TIMEOUT_S) -> tuple[int, list[dict]]:
    """Poll until every member names the same leader, has quorum and is connected to both partners.
    Returns the leader's index and the statuses."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = [await member.call({"op": "status"}) for member in members]
        leaders = {status.get("leader") for status in statuses}
        settled = all(status.get("has_quorum") and status.get("partners_connected") == MEMBERS - 1 for status in statuses)
        if len(leaders) == 1 and None not in leaders and settled:
            return next(i for i, status in enumerate(statuses) if status["is_leader"]), statuses
        if time.monotonic() > deadline:
            raise TimeoutError(f"no agreed Raft leader within {timeout_s} s: {statuses}")
        await asyncio.sleep(0.02)


async def closed(members: list, prefix: str, count: int | None = None) -> None:
    """Voting closed (untimed: not part of what is measured) on `prefix` (count None) or on the series
    `prefix-000000`..., by two validators at once: a majority of three."""
    if count is None:
        await asyncio.gather(*(member.call({"op": "close", "proposal_id": prefix}) for member in members[:2]))
    else:
        await asyncio.gather(*(member.call({"op": "close_series", "prefix": prefix, "count": count}) for member in members[:2]))


async def two_phase_sequential(members: list, leader: int, follower: int, proposal_id: str) -> tuple[float, list[str]]:
    """Ratify on the leader then the follower (the follower's call assigns the sequence), certify on the
    leader then the follower (the follower's completes the certificate). Wall time in ms, statuses.
    Voting is closed first, untimed."""
    await closed(members, proposal_id)
    started = time.perf_counter()
    first = await members[leader].call({"op": "ratify", "proposal_id": proposal_id})
    second = await members[follower].call({"op": "ratify", "proposal_id": proposal_id})
    sequence = second["sequence"]
    third = await members[leader].call({"op": "certify", "proposal_id": proposal_id, "sequence": sequence})
    fourth = await members[follower].call({"op": "certify", "proposal_id": proposal_id, "sequence": sequence})
    elapsed_ms = (time.perf_counter() - started) * 1000
    return elapsed_ms, [first["status"], second["status"], third["status"], fourth["status"]]


async def two_phase_concurrent(members: list, proposal_id: str) -> tuple[float, float, list[str]]:
    """All validators run the driver flow at once: ms to the first and to the last complete certificate
    (voting closed first, untimed)."""
    await closed(members, proposal_id)
    started_ns = monotonic_ns()
    results = await asyncio.gather(*(member.call({"op": "two_phase", "proposal_id": proposal_id}) for member in members))
    stamps = [result["complete_ns"] for result in results]
    return (min(stamps) - started_ns) / 1e6, (max(stamps) - started_ns) / 1e6, [s for r in results for s in r["statuses"]]


async def measure_two_phase(members: list, leader: int, follower: int, count: int, prefix: str) -> dict:
    sequential, first, last, statuses = [], [], [], Counter()
    for number in range(count):
        elapsed_ms, seen = await two_phase_sequential(members, leader, follower, f"{prefix}-seq-{number:05d}")
        sequential.append(elapsed_ms)
        statuses.update(f"sequential:{status}" for status in seen)
    for number in range(count):
        first_ms, last_ms, seen = await two_phase_concurrent(members, f"{prefix}-all-{number:05d}")
        first.append(first_ms)
        last.append(last_ms)
        statuses.update(f"concurrent:{status}" for status in seen)
    return {"sequential_ms": sequential, "concurrent_first_ms": first, "concurrent_last_ms": last, "statuses": dict(statuses)}


async def measure_cluster(members: list, calls: int, two_phase_calls: int, prefix: str) -> dict:
    """Start the members, wait for a leader, then the series. Latencies are raw lists (ms)."""
    started = time.perf_counter()
    await asyncio.gather(*(member.start() for member in members))
    leader, statuses = await wait_for_leader(members)
    result = {"leader_elected_s": round(time.perf_counter() - started, 3), "leader": leader}
    follower = next(i for i in range(MEMBERS) if i != leader)
    await closed(members, f"{prefix}-warm", WARMUP_CALLS)
    await members[leader].call({"op": "ratify_series", "prefix": f"{prefix}-warm", "count": WARMUP_CALLS})
    for role, index in (("leader", leader), ("follower", follower)):
        await closed(members, f"{prefix}-{role}", calls)
        series = await members[index].call({"op": "ratify_series", "prefix": f"{prefix}-{role}", "count": calls})
        result[f"ratify_{role}_ms"], result[f"ratify_{role}_statuses"] = series["latencies_ms"], series["statuses"]
    pings = []
    for _ in range(100):
        ping_started = time.perf_counter()
        await members[follower].call({"op": "ping"})
        pings.append((time.perf_counter() - ping_started) * 1000)
    result["ping_ms"] = pings
    result.update(await measure_two_phase(members, leader, follower, two_phase_calls, prefix))
    _, after = await wait_for_leader(members)
    result["leader_after"] = next(i for i, status in enumerate(after) if status["is_leader"])
    result["term_before_after"] = [statuses[0]["term"], after[0]["term"]]
    result["rss_kb"] = [status["rss_kb"] for status in after]
    processes = {status["pid"]: status["log_warnings"] for status in after}  # one counter per process
    result["log_warnings"] = dict(sum((Counter(counts) for counts in processes.values()), Counter()))
    if isinstance(members[0], ProcessMember):
        result["failover"] = await measure_failover(members, result["leader_after"], prefix)
    return result


async def measure_failover(members: list, leader: int, prefix: str) -> dict:
    """SIGKILL the leader's process (as etcd_bench.py does to etcd's leader): seconds until a survivor
    names another leader, and until a ratify submitted through a survivor right after the kill returns
    (its retries wait for the new leader). The killed member is not restarted: the cluster is torn down."""
    survivors = [i for i in range(MEMBERS) if i != leader]
    await closed(members, f"{prefix}-failover")
    old = (await members[survivors[0]].call({"op": "status"}))["leader"]
    killed_at = time.perf_counter()
    os.kill(members[leader].pid, signal.SIGKILL)

    async def commit_through_survivor() -> tuple[dict, float]:
        outcome = await members[survivors[1]].call({"op": "ratify", "proposal_id": f"{prefix}-failover"},
                                                   FAILOVER_TIMEOUT_S)
        return outcome, time.perf_counter() - killed_at

    first_commit = asyncio.create_task(commit_through_survivor())
    new_leader_s = None
    while new_leader_s is None and time.perf_counter() - killed_at < FAILOVER_TIMEOUT_S:
        status = await members[survivors[0]].call({"op": "status"})
        if status.get("leader") not in (None, old):
            new_leader_s = time.perf_counter() - killed_at
        else:
            await asyncio.sleep(0.005)
    outcome, first_commit_s = await first_commit
    return {"new_leader_s": round(new_leader_s, 3) if new_leader_s is not None else None,
            "first_commit_s": round(first_commit_s, 3), "first_commit_status": outcome.get("status")}


async def run_layout(layout: str, calls: int, two_phase_calls: int, work: Path, prefix: str) -> dict:
    """One fresh 3-validator cluster in `layout` ('processes' or 'one-process'), on a leased loopback block."""
    with acquire_block(hosts=MEMBERS, ports=[RAFT_PORT]) as lease:
        addresses = [f"{lease.block.host(i + 1)}:{RAFT_PORT}" for i in range(MEMBERS)]
        data_dir = Path(tempfile.mkdtemp(prefix=f"raft-{layout}-", dir=work))
        kind = ProcessMember if layout == "processes" else LocalMember
        with LogCounter() as log_counter:
            members = [kind(i, addresses, data_dir, log_counter) for i in range(MEMBERS)]
            try:
                result = await measure_cluster(members, calls, two_phase_calls, prefix)
            finally:
                await asyncio.gather(*(member.stop() for member in members), return_exceptions=True)
    result["addresses"] = addresses
    return result


# --- the pure machine's apply cost ----------------------------------------------------------------


def apply_cost(records_held: int, calls: int) -> float:
    """Median µs of one RatificationMachine.ratify (signature check replaced by a constant) with
    `records_held` certified records already in the state."""
    identities = [member_identity(i) for i in range(MEMBERS)]
    validators = {v.node_id: v.public_key for v in identities}
    signature = b"\x01" * 64
    records = [[f"held-{n:06d}", "certified", n + 1, ["upgrade", PACKAGE_HASH, VERSION],
                [[v, "upgrade", PACKAGE_HASH, VERSION, signature] for v in list(validators)[:2]],
                [[v, signature] for v in list(validators)[:2]], [[v, b""] for v in list(validators)[:2]], b""]
               for n in range(records_held)]
    machine = RatificationMachine.from_plain(
        {"format": 2, "next_sequence": records_held + 1, "records": records}, network_id=NETWORK_ID,
        validators=validators, verify=lambda *_: True, limits=RatificationLimits(pending_per_validator_max=PENDING_MAX_FOR_BENCH))
    validator_id = identities[0].node_id
    durations = []
    for number in range(calls):
        for closer in list(validators)[:2]:       # voting closed first (not timed)
            machine.close(proposal_id=f"new-{number:06d}", vote_ids=b"", validator_id=closer, signature=signature)
        started = time.perf_counter()
        machine.ratify(proposal_id=f"new-{number:06d}", action="upgrade", package_hash=PACKAGE_HASH, version=VERSION,
                       votes_digest=EMPTY_VOTES_DIGEST, validator_id=validator_id, signature=signature)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations) * 1e6


def verify_cost(calls: int) -> float:
    """Median µs of one ed25519 verification (every member does one per ratify or certify it applies)."""
    identity = member_identity(0)
    message = b"x" * 200
    signature = identity.sign(message)
    durations = []
    for _ in range(calls):
        started = time.perf_counter()
        verify_signature(identity.public_key, message, signature)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations) * 1e6


# --- etcd, through the peers' script ------------------------------------------------------------


def free_port_base(count: int, *, avoid: range | None = None) -> int:
    """A base port such that base .. base+count-1 are free on 127.0.0.1 now (etcd_bench.py binds there)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        base = rng.randrange(20_000, 30_000 - count)
        if avoid is not None and (base in avoid or base + count - 1 in avoid):
            continue
        if all(_port_free(port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no free port range on 127.0.0.1 for etcd")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kill_leftovers(marker: str) -> list[int]:
    """SIGKILL, by pid, any process whose command line names our own etcd work directory."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in command_line and int(entry.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


async def run_etcd(script: Path, puts: int, work: Path) -> dict:
    """One repeat of etcd_bench.py -m 3 (sequential puts; a short throughput phase; one kill -9 of its leader)."""
    etcd_work = Path(tempfile.mkdtemp(prefix="etcd-", dir=work))
    client_base = free_port_base(MEMBERS)
    peer_base = free_port_base(MEMBERS, avoid=range(client_base, client_base + MEMBERS))
    command = [sys.executable, str(script), "-m", str(MEMBERS), "--puts", str(puts), "--repeats", "1", "--failovers", "1",
               "--concurrency", "16", "--tput-puts", "500", "--client-base", str(client_base),
               "--peer-base", str(peer_base), "--workdir", str(etcd_work)]
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                   start_new_session=True)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), ETCD_TIMEOUT_S)
    finally:
        if process.returncode is None:  # timed out or interrupted: etcd_bench.py kills its members on SIGTERM
            process.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), WORKER_STOP_TIMEOUT_S)
        if process.returncode is None:
            process.kill()
            await process.wait()
        leftovers = _kill_leftovers(str(etcd_work))
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"etcd_bench.py failed (exit {process.returncode}): {stderr.decode().strip()[-800:]}")
    result = lines[0]
    result["command"] = " ".join(command)
    result["leftover_processes_killed"] = leftovers
    return result


def etcd_available(script: Path) -> str | None:
    """None when etcd can be benchmarked; otherwise why not, and how to fix it."""
    if not script.is_file():
        return f"{script} not found (pass --etcd-bench PATH)"
    if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        return "etcd is not installed: apt-get install -y etcd-server etcd-client"
    return None


# --- rounds, summaries, the table ----------------------------------------------------------------

OUR_SERIES = ("ratify_leader_ms", "ratify_follower_ms", "sequential_ms", "concurrent_first_ms", "concurrent_last_ms", "ping_ms")
ETCD_SERIES = {"put_leader_ms": "seq_leader_ms", "put_follower_ms": "seq_follower_ms"}


def over_rounds(per_round: list[dict]) -> dict:
    """Median over rounds of each round's median and p95 (what the ratios use)."""
    return {"median": round(statistics.median(r["median"] for r in per_round), 3),
            "p95": round(statistics.median(r["p95"] for r in per_round), 3),
            "round_medians": [r["median"] for r in per_round], "round_p95s": [r["p95"] for r in per_round]}


def summarize(rounds: list[dict], layouts: list[str], with_etcd: bool) -> dict:
    summaries: dict = {}
    for layout in layouts:
        runs = [r[layout] for r in rounds]
        summaries[layout] = {name: over_rounds([summary(run[name]) for run in runs]) for name in OUR_SERIES}
        for name in OUR_SERIES:
            summaries[layout][name]["pooled"] = summary([value for run in runs for value in run[name]])
        summaries[layout]["leader_elected_s"] = [run["leader_elected_s"] for run in runs]
        summaries[layout]["leader_changes"] = sum(run["leader"] != run["leader_after"] for run in runs)
        # Elections during the steady series (a loaded machine must not cause any): term after - before.
        summaries[layout]["elections_during_series"] = [run["term_before_after"][1] - run["term_before_after"][0]
                                                        for run in runs]
        summaries[layout]["log_warnings"] = dict(sum((Counter(run["log_warnings"]) for run in runs), Counter()))
        failovers = [run["failover"] for run in runs if run.get("failover")]
        if failovers:
            summaries[layout]["failover"] = {
                key: statistics.median(f[key] for f in failovers if f[key] is not None)
                for key in ("new_leader_s", "first_commit_s") if any(f[key] is not None for f in failovers)}
            summaries[layout]["failover"]["runs"] = failovers
    if with_etcd:
        etcd_runs = [r["etcd"] for r in rounds]
        summaries["etcd"] = {ours: over_rounds([run[theirs] for run in etcd_runs]) for ours, theirs in ETCD_SERIES.items()}
        summaries["etcd"]["leader_elected_s"] = [run["startup"]["first_leader_s"] for run in etcd_runs]
        etcd_failovers = [f for run in etcd_runs for f in run.get("failover", [])]
        if etcd_failovers:
            summaries["etcd"]["failover"] = {
                "new_leader_s": statistics.median(f["new_leader_s"] for f in etcd_failovers if f["new_leader_s"] is not None),
                "first_commit_s": statistics.median(f["first_put_ok_s"] for f in etcd_failovers if f["first_put_ok_s"] is not None),
                "runs": etcd_failovers}
        summaries["ratios"] = {}
        for layout in layouts:
            ours = summaries[layout]
            summaries["ratios"][layout] = {
                f"{role}_{statistic}": round(ours[f"ratify_{role}_ms"][statistic] / summaries["etcd"][f"put_{role}_ms"][statistic], 2)
                for role in ("leader", "follower") for statistic in ("median", "p95")}
    return summaries


def _cell(figures: dict) -> str:
    return f"{figures['median']:.2f} / {figures['p95']:.2f}"


def print_table(results: dict) -> None:
    s, options = results["summary"], results["options"]
    print(f"\nOne replicated call, sequential, {options['calls']} calls per series; two-phase x {options['two_phase']}; "
          f"{options['rounds']} round(s). Cells: median / p95 in ms, each the median over rounds.")
    header = f"{'':<22}{'ratify: leader':>16}{'ratify: follower':>18}{'2-phase seq':>15}{'2-phase all: 1st':>18}{'all: last':>15}{'election s':>12}"
    print(header)
    for layout in options["layouts"]:
        row = s[layout]
        print(f"{'ours, ' + layout:<22}{_cell(row['ratify_leader_ms']):>16}{_cell(row['ratify_follower_ms']):>18}"
              f"{_cell(row['sequential_ms']):>15}{_cell(row['concurrent_first_ms']):>18}{_cell(row['concurrent_last_ms']):>15}"
              f"{statistics.median(row['leader_elected_s']):>12.2f}")
    if "etcd" in s:
        etcd = s["etcd"]
        print(f"{'etcd 3 members, put':<22}{_cell(etcd['put_leader_ms']):>16}{_cell(etcd['put_follower_ms']):>18}"
              f"{'':>15}{'':>18}{'':>15}{statistics.median(etcd['leader_elected_s']):>12.2f}")
        for layout, ratio in s["ratios"].items():
            print(f"{'ratio ' + layout + '/etcd':<22}{ratio['leader_median']:>7.2f}x / {ratio['leader_p95']:.2f}x"
                  f"{ratio['follower_median']:>9.2f}x / {ratio['follower_p95']:.2f}x   (aim: <= {AIM_RATIO_TO_ETCD:.0f}x, medians)")
    for name in [*options["layouts"], "etcd"]:
        failover = s.get(name, {}).get("failover")
        if failover:
            each = ", ".join(f"{run['new_leader_s']:.2f}" for run in failover["runs"] if run.get("new_leader_s") is not None)
            print(f"kill -9 of the leader ({name}): new leader after {failover.get('new_leader_s', float('nan')):.3f} s, "
                  f"first commit after {failover.get('first_commit_s', float('nan')):.3f} s (medians over rounds; "
                  f"each: {each}; aim for ours: <= {AIM_FAILOVER_S} s)")
    for layout in options["layouts"]:
        print(f"elections during the steady series ({layout}), per round: {s[layout]['elections_during_series']}")
    for layout in options["layouts"]:
        print(f"coordinator <-> validator round trip ({layout}): {_cell(s[layout]['ping_ms'])} ms (in the 2-phase seq column 4x)")
    for layout in options["layouts"]:
        for message, count in s[layout]["log_warnings"].items():
            print(f"logged ({layout}, all rounds): {count} x {message[:110]}")
    apply = results["apply_cost_us"]
    print("\nPure machine, one ratify applied (signature check stubbed), median µs by records held: "
          + ", ".join(f"{records:,}: {micros:.1f}" for records, micros in apply.items())
          + f"; one ed25519 verify: {results['verify_us']:.1f} µs")
    print(f"load average (1, 5, 15 min) before {results['load_before']}, after {results['load_after']}")


async def run_rounds(options: argparse.Namespace, work: Path) -> list[dict]:
    """All rounds. SIGINT and SIGTERM cancel the run, so every cluster is stopped on the way out."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, task.cancel)
    rounds = []
    for number in range(options.rounds):
        row: dict = {"load_before": load_average(), "node_processes_before": node_processes()}
        for layout in options.layouts:
            row[layout] = await run_layout(layout, options.calls, options.two_phase, work, f"r{number}-{layout}")
        if options.etcd_bench is not None:
            row["etcd"] = await run_etcd(options.etcd_bench, options.calls, work)
        row["load_after"], row["node_processes_after"] = load_average(), node_processes()
        rounds.append(row)
        print(f"round {number + 1}/{options.rounds} done; load {row['load_before']} -> {row['load_after']}; "
              f"other node processes {row['node_processes_before']} -> {row['node_processes_after']}", flush=True)
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="sequential ratify calls per series (leader, follower)")
    parser.add_argument("--two-phase", type=int, default=100, help="two-phase ratifications per flow")
    parser.add_argument("--rounds", type=int, default=3, help="fresh clusters (and etcd runs) per layout")
    parser.add_argument("--mode", choices=("processes", "one-process", "both"), default="both")
    parser.add_argument("--etcd-bench", type=Path, default=ETCD_BENCH, help="path to shared/peers/etcd_bench.py")
    parser.add_argument("--no-etcd", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 round, 50 calls, 10 two-phase: a smoke run")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--addresses", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker is not None:
        die_with_parent(options.parent_pid)
        asyncio.run(serve_worker(options.worker, options.addresses.split(","), options.data_dir))
        return 0
    if options.quick:
        options.rounds, options.calls, options.two_phase = 1, 50, 10
    options.layouts = ["processes", "one-process"] if options.mode == "both" else [options.mode]
    if options.no_etcd:
        options.etcd_bench = None
    elif (missing := etcd_available(options.etcd_bench)) is not None:
        print(f"note: etcd not measured: {missing}", file=sys.stderr)
        options.etcd_bench = None
    results: dict = {"load_before": load_average()}
    with tempfile.TemporaryDirectory(prefix="bench-raft-") as work:
        try:
            results["rounds"] = asyncio.run(run_rounds(options, Path(work)))
        except asyncio.CancelledError:
            print("interrupted: every validator was stopped; no results written", file=sys.stderr)
            return 130
    results["apply_cost_us"] = {records: apply_cost(records, APPLY_CALLS) for records in APPLY_RECORDS}
    results["verify_us"] = verify_cost(1_000)
    results["load_after"] = load_average()
    results["options"] = {"calls": options.calls, "two_phase": options.two_phase, "rounds": options.rounds,
                          "layouts": options.layouts, "etcd_bench": str(options.etcd_bench) if options.etcd_bench else None}
    results["summary"] = summarize(results["rounds"], options.layouts, options.etcd_bench is not None)
    results["environment"] = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                              "pysyncobj": _version("pysyncobj"), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print_table(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_raft-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path.relative_to(REPOSITORY)}")
    return 0


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
