"""Governance benchmark: how long an upgrade takes from the LAST NEEDED VOTE to `executed` on every node,
on a real cluster, and where that time goes.

How it measures (and why this way):
- Real node processes (cluster/local.py LocalCluster), N = 5 and 9 by default, 3 validators (a real
  PySyncObj cluster), packages served over HTTP from this process (cluster/package_server.py).
- A chain of upgrades 1.2.0, 1.3.0, ... in ONE cluster (the first `--warmup` are run but not counted).
  Each has its own package: examples/wat/feature_flag.wat with its version text replaced and its data
  segments laid out again (`versioned_feature_flag_wat`), so every package sets global.version to the
  version proposed, as the node requires; each package is run once in a local Sandbox before the
  cluster starts, so a broken generator is reported as such and never measured as a slow network.
- One specific vote decides. Members have equal reputation and the genesis rules (approval > 50% of
  the cast weight, cast weight >= 50% of the total, early decision): with N members, floor(N/2) votes
  leave the outcome open and the next one decides. The benchmark casts the floor(N/2) earlier votes,
  waits until they are visible on EVERY node and checks that the proposal is still `voting`
  everywhere, then takes the wall clock (CLOCK_REALTIME, time.time_ns()) just before it sends the
  deciding vote and checks that its reply says `approved`. The deciding voter, the earlier voters
  and the proposer rotate over the nodes, so validators and plain members decide in turn.
- Each milestone is read from the nodes' own clocks instead of polling while the upgrade is in flight
  (polling N nodes every 10 ms would take CPU from the nodes on this 2-core machine and slow down what
  is measured). Every process on one machine shares CLOCK_REALTIME, so the nodes' stamps and the
  benchmark's send time subtract directly:
    approved on node i   = when the deciding VOTE became visible on node i (GET /gossip/visibility):
                           node i folds it in that batch, and its tally then says approved;
    sequence assigned    = the validator `raft_ratify` log line with status sequence_assigned (node.log,
                           millisecond stamps): Raft's first round made a majority ratification;
    certificate complete = the `raft_certify` line with status certificate_complete: Raft's second round;
    RATIFY audit stored  = the first validator's RATIFY audit entry visible on that validator;
    certified            = when the first EXECUTE_UPGRADE of the proposal became visible on its publisher
                           (a validator holding a majority certificate signed and stored it);
    ratified on node i   = when the first EXECUTE_UPGRADE of the proposal became visible on node i;
    executed on node i   = when node i's OWN EXECUTION_REPORT became visible on node i: that is the moment
                           its GET /proposals/{id} says `executed` (the status is this node's report).
  Commit started on node i = its history's `executed_at_ms` (after download, hash, dry run and backup,
  just before the commit). `--poll-ms 10` adds a cross-check: one thread per node polls
  GET /proposals/{id} and records when each status was first seen (at a cost in CPU: see the README).
- Load: `uptime` before and after each cluster, and the load averages, go in the report; other helpers'
  tests may run at the same time on this machine.

It asserts nothing about speed: it prints a table and writes JSON and Markdown to bench/results/
(gitignored). From the repository root:

    .venv/bin/python bench/bench_governance.py                         # N = 5 and 9, 12 upgrades each (+1 warm-up)
    .venv/bin/python bench/bench_governance.py --nodes 5 --upgrades 3  # a smoke run
    .venv/bin/python bench/bench_governance.py --nodes 5 --poll-ms 10  # with the polling cross-check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from calendar import timegm
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

import wasmtime  # noqa: E402

from cluster.local import LocalCluster, NodeApi  # noqa: E402
from cluster.package_server import PackageServer  # noqa: E402
from node.errors import ClusterError  # noqa: E402
from node.sandbox import Sandbox  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
FEATURE_FLAG = REPOSITORY / "examples" / "wat" / "feature_flag.wat"
TEMPLATE_VERSION = "1.2.0"
DATA_FIRST_OFFSET = 16           # the template's data starts here and must end before its heap
DATA_END_MAX = 1024              # feature_flag.wat's bump allocator starts at 1024
DATA_ALIGN_BYTES = 8
VALIDATORS = 3
REPUTATION = 100               # every member the same: floor(N/2) votes leave it open, the next decides
VOTING_PERIOD_MS = 600_000       # long enough that no vote of a slow run falls after the deadline
STEP_TIMEOUT_S = 60.0            # any wait for one step of one upgrade
FIRST_LOOK_S = 0.3               # let an upgrade run before the first look (see the docstring)
LOOK_INTERVAL_S = 0.1
SETTLE_S = 0.5                   # quiet time between two upgrades (reports finish spreading)
# Stages on one node, from its own stamps (pooled over nodes and upgrades).
PER_NODE_STAGES = {
    "ratified -> executed": ("ratified_ms", "executed_ms"),
    "ratified -> commit started (download, hash, dry run, backup)": ("ratified_ms", "commit_started_ms"),
    "commit started -> executed (commit with fsync, EXECUTION_REPORT signed and stored)": ("commit_started_ms", "executed_ms"),
}
HEADLINE = "executed on every node"
AIM_MS = 1_000                   # issue 4: executed everywhere within a second of the last vote, at N = 5
POLLED_STATUSES = ("approved", "ratified", "executed")
_DATA_LINE = re.compile(r'^(\s*)\(data \(i32\.const (\d+)\)\s*"((?:[^"\\]|\\.)*)"\)(.*)$')
# (offset, length) operands of the data, and how to write them: i32 pairs in calls, and get_upgrade_info's
# result (offset << 32 | length). Each pattern is applied in one pass, so a moved pair is never moved twice.
_OPERAND_PAIRS = (
    (re.compile(r"\(i32\.const (\d+)\) \(i32\.const (\d+)\)"), "(i32.const {offset}) (i32.const {length})"),
    (re.compile(r"\(i64\.shl \(i64\.const (\d+)\) \(i64\.const 32\)\) \(i64\.const (\d+)\)"),
     "(i64.shl (i64.const {offset}) (i64.const 32)) (i64.const {length})"),
)
_LOG_TS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$")


# --- packages: feature_flag.wat for any version ----------------------------------------------------


def _wat_string_bytes(text: str) -> bytes:
    """The bytes of a WAT string literal's content (the escapes feature_flag.wat uses, and \\hh)."""
    output, index = bytearray(), 0
    while index < len(text):
        char = text[index]
        if char != "\\":
            output += char.encode()
            index += 1
        elif text[index + 1] in "\"\\'":
            output += text[index + 1].encode()
            index += 2
        elif re.match(r"[0-9a-fA-F]{2}", text[index + 1:index + 3]):
            output.append(int(text[index + 1:index + 3], 16))
            index += 3
        else:
            raise ValueError(f"unsupported escape in WAT string: {text[index:index + 4]!r}")
    return bytes(output)


def _wat_string_text(data: bytes) -> str:
    return "".join(chr(byte) if 32 <= byte < 127 and chr(byte) not in "\"\\" else f"\\{byte:02x}" for byte in data)


def versioned_feature_flag_wat(version: str, template: str | None = None) -> str:
    """feature_flag.wat with every "1.2.0" in its data replaced by `version`, the data segments laid out
    again from offset 16 (a longer version does not fit the template's gaps), and every
    `(i32.const offset) (i32.const length)` operand pair and get_upgrade_info's result moved along."""
    template = template if template is not None else FEATURE_FLAG.read_text()
    lines, segments, offset = template.splitlines(), [], DATA_FIRST_OFFSET
    for number, line in enumerate(lines):
        match = _DATA_LINE.match(line)
        if match is None:
            continue
        old = _wat_string_bytes(match.group(3))
        new = old.replace(TEMPLATE_VERSION.encode(), version.encode())
        segments.append((int(match.group(2)), len(old), offset, len(new)))
        lines[number] = f'{match.group(1)}(data (i32.const {offset}) "{_wat_string_text(new)}")'
        offset += -(-len(new) // DATA_ALIGN_BYTES) * DATA_ALIGN_BYTES
    if not segments or offset > DATA_END_MAX:
        raise ValueError(f"the data of version {version!r} does not fit below {DATA_END_MAX} (or the template has none)")
    moved = {(old_offset, old_length): (new_offset, new_length) for old_offset, old_length, new_offset, new_length in segments}
    used: set[tuple[int, int]] = set()
    text = "\n".join(lines) + "\n"
    for pattern, written in _OPERAND_PAIRS:
        def move(match: re.Match, written: str = written) -> str:
            key = (int(match.group(1)), int(match.group(2)))
            if key not in moved:
                return match.group(0)
            used.add(key)
            return written.format(offset=moved[key][0], length=moved[key][1])
        text = pattern.sub(move, text)
    if used != set(moved):
        raise ValueError(f"the template never uses its data at {sorted(set(moved) - used)} as (offset, length) operands")
    return text


def build_package(version: str, sandbox: Sandbox) -> bytes:
    """The package of `version`, checked in a local sandbox on a small state before any cluster sees it."""
    wasm = bytes(wasmtime.wat2wasm(versioned_feature_flag_wat(version)))
    state = {"global": {"network_id": "bench", "version": "1.0.0",
                        "nodes": {"a1": {"reputation": 100, "validator": True}, "b2": {"reputation": 7, "validator": False}}}}
    output = sandbox.run_upgrade(wasm, json.dumps(state, sort_keys=True, separators=(",", ":")).encode())
    expected = {"global": {"network_id": "bench", "version": version,
                           "nodes": {node: {**info, "new_feature_enabled": True} for node, info in state["global"]["nodes"].items()}}}
    info = sandbox.upgrade_info(wasm)
    if output.state != expected or (info or {}).get("version") != version:
        raise ClusterError(f"the generated package of {version} is wrong: upgrade() gave {output.state}, "
                           f"get_upgrade_info() gave {info}",
                           hint="compare versioned_feature_flag_wat's output with examples/wat/feature_flag.wat")
    return wasm


# --- small readers -------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile, as bench_gossip.py computes it (of 12 values, p95 is the second largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    values = [value for value in values if value is not None]
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 1), "p95": round(percentile(values, 0.95), 1),
            "min": round(min(values), 1), "max": round(max(values), 1)}


def load_now() -> dict:
    """What `uptime` says, and the load averages (1, 5, 15 min), for the report."""
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        uptime = f"(uptime failed: {error})"
    return {"uptime": uptime, "loadavg": [round(value, 2) for value in os.getloadavg()]}


def ok(response, status: int = 200, what: str = "request") -> dict:
    if response.status != status:
        raise ClusterError(f"{what}: HTTP {response.status}, expected {status}: {response.text[:400]}",
                           hint="the clusters' node logs are kept: see the path printed below")
    return response.data


def visible_at_ns(api: NodeApi, ids: list[str]) -> dict[str, int | None]:
    """When each entry became visible on this node (its own CLOCK_REALTIME stamp), None when not (yet)."""
    return ok(api.get("/gossip/visibility?ids=" + ",".join(ids)), what="GET /gossip/visibility")["visible_at_ns"]


def visible_everywhere(cluster: LocalCluster, ids: list[str]) -> bool:
    return all(all(stamp is not None for stamp in visible_at_ns(cluster.api(index), ids).values())
               for index in range(len(cluster.nodes)))


def statuses(cluster: LocalCluster, proposal_id: str) -> list[str | None]:
    found = []
    for index in range(len(cluster.nodes)):
        response = cluster.api(index).get(f"/proposals/{proposal_id}")
        found.append(response.data["status"] if response.status == 200 else None)
    return found


def log_ts_ms(ts: str) -> int | None:
    """node.log's "2026-11-24T14:10:46.123Z" as Unix milliseconds."""
    match = _LOG_TS.match(ts or "")
    if match is None:
        return None
    *parts, milliseconds = (int(group) for group in match.groups())
    return timegm(tuple(parts) + (0, 0, 0)) * 1000 + milliseconds


def execute_entries(cluster: LocalCluster, proposal_id: str) -> list[dict]:
    """Every EXECUTE_UPGRADE entry of the proposal, from the validators' logs (only validators publish them)."""
    found: dict[str, dict] = {}
    for handle in cluster.nodes:
        if not handle.is_validator:
            continue
        after = 0
        while True:
            page = ok(cluster.api(handle.index).get(f"/log?kind=EXECUTE_UPGRADE&after={after}&limit=500"), what="GET /log")
            found.update({entry["id"]: entry for entry in page["entries"] if entry["body"]["proposal_id"] == proposal_id})
            if not page["more"]:
                break
            after = page["next"]
    return list(found.values())


def raft_milestones_ms(cluster: LocalCluster, proposal_id: str) -> dict[str, int | None]:
    """From the validators' node.log (millisecond stamps): when Raft's first round assigned the sequence
    (the `raft_ratify` that completed the majority) and its second round completed the certificate."""
    completing = {"raft_ratify": "sequence_assigned", "raft_certify": "certificate_complete"}
    found: dict[str, list[int]] = {status: [] for status in completing.values()}
    for handle in cluster.nodes:
        if not handle.is_validator:
            continue
        for event in cluster.log_events(handle.index):
            fields = event.get("fields") or {}
            status = completing.get(event.get("event"))
            if status is not None and fields.get("status") == status and fields.get("proposal_id") == proposal_id:
                stamp = log_ts_ms(event.get("ts", ""))
                if stamp is not None:
                    found[status].append(stamp)
    return {status: min(stamps) if stamps else None for status, stamps in found.items()}


def wait_for_raft_leader(cluster: LocalCluster) -> str:
    """The Raft leader every validator names (nothing is decided from it: it only says Raft is up)."""
    def agreed() -> str | None:
        leaders = {(ok(cluster.api(h.index).get("/upgrades/status"))["raft"] or {}).get("leader")
                   for h in cluster.nodes if h.is_validator}
        return leaders.pop() if len(leaders) == 1 and None not in leaders else None
    return cluster.wait_for(agreed, STEP_TIMEOUT_S, "one Raft leader named by every validator")


# --- the optional cross-check: poll every node's GET /proposals/{id} --------------------------------


class StatusPoller:
    """One thread per node polls GET /proposals/{id} every `interval_ms` and records when it first saw each
    of approved / ratified / executed (a later status implies the earlier ones), until executed or stop()."""

    def __init__(self, cluster: LocalCluster, proposal_id: str, interval_ms: int) -> None:
        self.seen_ns: list[dict[str, int]] = [{} for _ in cluster.nodes]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(cluster.api(index), proposal_id, interval_ms / 1000,
                                                                   self.seen_ns[index]), daemon=True, name=f"poll-{index}")
                         for index in range(len(cluster.nodes))]
        for thread in self._threads:
            thread.start()

    def _poll(self, api: NodeApi, proposal_id: str, interval_s: float, seen: dict[str, int]) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = api.get(f"/proposals/{proposal_id}")
            except OSError:
                response = None
            now_ns = time.time_ns()
            status = response.data.get("status") if response is not None and response.status == 200 else None
            if status in POLLED_STATUSES:
                for reached in POLLED_STATUSES[:POLLED_STATUSES.index(status) + 1]:
                    seen.setdefault(reached, now_ns)
            if status in ("executed", "failed"):
                return
            self._stop.wait(interval_s)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=STEP_TIMEOUT_S)


# --- one upgrade ----------------------------------------------------------------------------------


def voters_of(number: int, nodes: int) -> tuple[int, list[int], int]:
    """(proposer, early voters, deciding voter) of upgrade `number`: all rotate over the nodes.
    floor(N/2) equal votes leave the outcome open (no quorum yet); the next one decides."""
    decider = number % nodes
    early = [(decider + 1 + offset) % nodes for offset in range(nodes // 2)]
    return (number + 1) % nodes, early, decider


def open_proposal(cluster: LocalCluster, package, version: str, proposer: int, early: list[int]) -> str:
    """Propose, cast the early votes, and return once all of it is visible on every node and the proposal
    is still `voting` everywhere (so the next vote is the deciding one, and nothing else is in flight)."""
    body = {"title": f"bench upgrade to {version}", "description": "bench/bench_governance.py", "version": version,
            "package_url": package.http_url, "package_hash": "sha256:" + package.sha256, "package_size": package.size}
    created = ok(cluster.api(proposer).post("/upgrades/propose", body), 201, "POST /upgrades/propose")
    proposal_id, ids = created["proposal_id"], [created["entry_id"]]
    cluster.wait_for(lambda: visible_everywhere(cluster, ids), STEP_TIMEOUT_S, f"proposal {proposal_id} on every node")
    for index in early:
        voted = ok(cluster.api(index).post(f"/proposals/{proposal_id}/vote", {"vote": "approval"}), 201, "an early vote")
        ids.append(voted["entry_id"])
    cluster.wait_for(lambda: visible_everywhere(cluster, ids), STEP_TIMEOUT_S, f"the early votes of {proposal_id} on every node")
    found = statuses(cluster, proposal_id)
    if set(found) != {"voting"}:
        raise ClusterError(f"{proposal_id} should still be voting everywhere before the deciding vote, but is {found}",
                           hint="the genesis rules must leave floor(N/2) equal votes undecided (approval > 50%, quorum 50%)")
    return proposal_id


def wait_executed(cluster: LocalCluster, proposal_id: str) -> None:
    """Look only after FIRST_LOOK_S, then every LOOK_INTERVAL_S (sequentially: light on the nodes)."""
    time.sleep(FIRST_LOOK_S)

    def all_executed() -> bool:
        found = statuses(cluster, proposal_id)
        if "failed" in found:
            document = ok(cluster.api(found.index("failed")).get(f"/proposals/{proposal_id}"))
            raise ClusterError(f"{proposal_id} failed: {[r['error'] for r in document['reports'] if r['error']][:3]}")
        return set(found) == {"executed"}
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not all_executed():
        if time.monotonic() > deadline:
            raise ClusterError(f"{proposal_id} not executed everywhere within {STEP_TIMEOUT_S} s: {statuses(cluster, proposal_id)}")
        time.sleep(LOOK_INTERVAL_S)


def milestones(cluster: LocalCluster, proposal_id: str, vote_id: str, sent_ns: int) -> dict:
    """Each node's own stamps of the upgrade's milestones, in ms after the deciding vote was sent."""
    def since(stamp_ns: int | None) -> float | None:
        return None if stamp_ns is None else round((stamp_ns - sent_ns) / 1e6, 2)

    executes = execute_entries(cluster, proposal_id)
    approved, ratified, executed, committed = [], [], [], []
    certified_ns, audited_ns = [], []
    for handle in cluster.nodes:
        api = cluster.api(handle.index)
        document = ok(api.get(f"/proposals/{proposal_id}"))
        own = [report["entry_id"] for report in document["reports"] if report["node_id"] == handle.node_id]
        audits = [ratify["entry_id"] for ratify in document["ratifications"] if ratify["validator_id"] == handle.node_id]
        published = [entry["id"] for entry in executes if entry["author"] == handle.node_id]
        stamps = visible_at_ns(api, [vote_id, *own, *audits, *(entry["id"] for entry in executes)])
        approved.append(since(stamps[vote_id]))
        execute_stamps = [stamps[entry["id"]] for entry in executes if stamps[entry["id"]] is not None]
        ratified.append(since(min(execute_stamps)) if execute_stamps else None)
        executed.append(since(stamps[own[0]]) if own else None)
        certified_ns += [stamps[entry_id] for entry_id in published if stamps[entry_id] is not None]
        audited_ns += [stamps[entry_id] for entry_id in audits if stamps[entry_id] is not None]
        history = ok(api.get("/upgrades/history"))["history"]
        started = [record["executed_at_ms"] for record in history if record.get("proposal_id") == proposal_id]
        committed.append(since(started[0] * 1_000_000) if started else None)
    raft = {status: since(stamp_ms * 1_000_000) if stamp_ms is not None else None
            for status, stamp_ms in raft_milestones_ms(cluster, proposal_id).items()}
    return {"approved_ms": approved, "sequence_assigned_ms": raft["sequence_assigned"],
            "certificate_complete_ms": raft["certificate_complete"],
            "ratify_audit_ms": since(min(audited_ns)) if audited_ns else None,
            "certified_ms": since(min(certified_ns)) if certified_ns else None, "ratified_ms": ratified,
            "executed_ms": executed, "commit_started_ms": committed, "execute_entries": len(executes)}


def run_upgrade(cluster: LocalCluster, package, version: str, number: int, poll_ms: int) -> dict:
    """One upgrade, from the proposal to `executed` everywhere; the timeline of the deciding vote."""
    proposer, early, decider = voters_of(number, len(cluster.nodes))
    proposal_id = open_proposal(cluster, package, version, proposer, early)
    poller = StatusPoller(cluster, proposal_id, poll_ms) if poll_ms else None
    decider_api = cluster.api(decider)
    try:
        sent_ns = time.time_ns()
        reply = decider_api.post(f"/proposals/{proposal_id}/vote", {"vote": "approval"})
        acked_ns = time.time_ns()
        voted = ok(reply, 201, "the deciding vote")
        if voted["tally"]["outcome"] != "approved":        # decided; the validators' close follows
            raise ClusterError(f"the deciding vote on {proposal_id} left it {voted['status']!r}, not approved: {voted['tally']}")
        wait_executed(cluster, proposal_id)
    finally:
        if poller is not None:
            poller.stop()
    record = {"version": version, "proposal_id": proposal_id, "proposer": proposer, "early_voters": early,
              "decider": decider, "decider_validator": cluster.nodes[decider].is_validator,
              "vote_acknowledged_ms": round((acked_ns - sent_ns) / 1e6, 2), **milestones(cluster, proposal_id, voted["entry_id"], sent_ns)}
    if poller is not None:
        record["polled_ms"] = {status: [round((seen[status] - sent_ns) / 1e6, 2) if status in seen else None
                                        for seen in poller.seen_ns] for status in POLLED_STATUSES}
    return record


# --- one cluster, and the summary ---------------------------------------------------------------


def _latest(values: list[float | None]) -> float | None:
    return None if not values or any(value is None for value in values) else max(values)


def derived(record: dict, validators: list[int]) -> dict[str, float | None]:
    """The milestones of one upgrade as the table shows them (ms after the deciding vote was sent)."""
    approved, executed = record["approved_ms"], record["executed_ms"]
    rows = {
        "vote stored on the voter (its HTTP 201 back)": record["vote_acknowledged_ms"],
        "approved on the deciding voter": approved[record["decider"]],
        "approved on every validator": _latest([approved[index] for index in validators]),
        "approved on every node": _latest(approved),
        "sequence assigned (Raft round 1; log, 1 ms steps)": record["sequence_assigned_ms"],
        "certificate complete (Raft round 2; log, 1 ms steps)": record["certificate_complete_ms"],
        "first RATIFY audit entry stored": record["ratify_audit_ms"],
        "first EXECUTE_UPGRADE stored (by its validator)": record["certified_ms"],
        "ratified on every node (EXECUTE_UPGRADE visible)": _latest(record["ratified_ms"]),
        "commit started on every node (history executed_at_ms)": _latest(record["commit_started_ms"]),
        "executed on the first node": min((value for value in executed if value is not None), default=None),
        HEADLINE: _latest(executed),
    }
    for status, seen in record.get("polled_ms", {}).items():
        rows[f"polled every {record['poll_ms']} ms: {status} on every node"] = _latest(seen)
    return rows


def wait_reports_everywhere(cluster: LocalCluster, proposal_id: str) -> None:
    """Every node holds every node's EXECUTION_REPORT: the upgrade's gossip is over before the next one."""
    def complete() -> bool:
        return all(len(ok(cluster.api(index).get(f"/proposals/{proposal_id}"))["reports"]) == len(cluster.nodes)
                   for index in range(len(cluster.nodes)))
    cluster.wait_for(complete, STEP_TIMEOUT_S, f"every report of {proposal_id} on every node")


def bench_cluster(nodes: int, packages: dict, arguments: argparse.Namespace, workdir: Path) -> dict:
    load_before, started_s = load_now(), time.monotonic()
    print(f"N={nodes}: load before: {load_before['uptime']}", flush=True)
    records = []
    with LocalCluster(nodes=nodes, validators=VALIDATORS, data_dir=workdir / f"n{nodes}", reputations=[REPUTATION] * nodes,
                      governance={"voting_period_ms": VOTING_PERIOD_MS}) as cluster:
        startup_s = round(time.monotonic() - started_s, 1)
        wait_for_raft_leader(cluster)
        validators = [handle.index for handle in cluster.nodes if handle.is_validator]
        for number, (version, package) in enumerate(packages.items()):
            record = run_upgrade(cluster, package, version, number, arguments.poll_ms)
            record.update(warmup=number < arguments.warmup, poll_ms=arguments.poll_ms)
            records.append(record)
            rows = derived(record, validators)
            print(f"N={nodes} {version:>7} decider {record['decider']} ({'validator' if record['decider_validator'] else 'member'})"
                  f"{' warm-up' if record['warmup'] else ''}: approved everywhere {rows['approved on every node']} ms, "
                  f"ratified everywhere {rows['ratified on every node (EXECUTE_UPGRADE visible)']} ms, "
                  f"executed everywhere {rows[HEADLINE]} ms", flush=True)
            wait_reports_everywhere(cluster, record["proposal_id"])
            time.sleep(SETTLE_S)
    load_after = load_now()
    print(f"N={nodes}: load after: {load_after['uptime']}", flush=True)
    return {"nodes": nodes, "validators": VALIDATORS, "startup_s": startup_s, "load_before": load_before, "load_after": load_after,
            "warmup": arguments.warmup, **summarize([record for record in records if not record["warmup"]], validators),
            "records": records}


def summarize(measured: list[dict], validators: list[int]) -> dict:
    rows = [derived(record, validators) for record in measured]
    per_node = {name: summary([later - earlier for record in measured
                               for earlier, later in zip(record[first], record[second]) if None not in (earlier, later)])
                for name, (first, second) in PER_NODE_STAGES.items()}
    by_role = {role: summary([row[HEADLINE] for row, record in zip(rows, measured)
                              if record["decider_validator"] == (role == "validator")]) for role in ("validator", "member")}
    return {"upgrades": len(measured), "milestones": {name: summary([row[name] for row in rows]) for name in rows[0]},
            "per_node_stages_ms": per_node, "executed_everywhere_by_decider": by_role,
            "within_aim": sum(1 for row in rows if row[HEADLINE] is not None and row[HEADLINE] <= AIM_MS)}


def markdown(results: list[dict], meta: dict) -> str:
    columns = [f"N={result['nodes']} {what}" for result in results for what in ("median", "p95", "max")]
    lines = [f"# Governance latency: deciding vote -> executed everywhere ({meta['when']})", "",
             f"Machine: {meta['machine']}. {VALIDATORS} validators; {results[0]['upgrades']} upgrades per N after "
             f"{results[0]['warmup']} warm-up; ms after the deciding vote was sent.", "",
             "| milestone | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in results[0]["milestones"]:
        cells = []
        for result in results:
            figures = result["milestones"].get(name, {})
            cells += [str(figures.get(what, "")) for what in ("median", "p95", "max")]
        shown = f"**{name}**" if name == HEADLINE else name
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    lines.append("")
    for result in results:
        role = result["executed_everywhere_by_decider"]
        lines += [f"- N={result['nodes']}: executed everywhere within {AIM_MS} ms in {result['within_aim']} of {result['upgrades']} "
                  f"upgrades; executed everywhere when a validator cast the deciding vote: median {role['validator'].get('median')} ms, "
                  f"when a plain member did: {role['member'].get('median')} ms; start-up {result['startup_s']} s.",
                  f"  load before: `{result['load_before']['uptime']}`; after: `{result['load_after']['uptime']}`"]
        for name, figures in result["per_node_stages_ms"].items():
            lines.append(f"  - on one node, {name}: median {figures.get('median')} ms, p95 {figures.get('p95')} ms, "
                         f"max {figures.get('max')} ms")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 9])
    parser.add_argument("--upgrades", type=int, default=12, help="measured upgrades per N (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="upgrades run first and not counted")
    parser.add_argument("--poll-ms", type=int, default=0, help="also poll GET /proposals/{id} on every node this often")
    arguments = parser.parse_args()
    if not all(3 <= nodes <= 64 for nodes in arguments.nodes) or arguments.upgrades < 1 or arguments.warmup < 0 \
            or not 0 <= arguments.poll_ms <= 10_000:
        parser.error("--nodes in 3..64, --upgrades >= 1, --warmup >= 0, --poll-ms in 0..10000")
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}", "arguments": vars(arguments), "command": " ".join(sys.argv)}
    versions = [f"1.{minor}.0" for minor in range(2, 2 + arguments.warmup + arguments.upgrades)]
    sandbox, server = Sandbox(), PackageServer()
    workdir = Path(tempfile.mkdtemp(prefix="bench-governance-"))
    failed = True
    try:
        packages = {version: server.add(f"feature_flag_{version}", build_package(version, sandbox)) for version in versions}
        results = [bench_cluster(nodes, packages, arguments, workdir) for nodes in arguments.nodes]
        failed = False
    finally:
        server.close()
        if failed:
            print(f"kept the clusters' data (node logs) in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"bench_governance-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    table = markdown(results, meta)
    (RESULTS / f"bench_governance-{stamp}.md").write_text(table)
    print("\n" + table)
    print(f"written: bench/results/bench_governance-{stamp}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
