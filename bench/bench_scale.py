"""Scale benchmark (issue 11): what a local network of N nodes costs on this machine, for N = 5, 33, 100,
200 in one run, beside HashiCorp Serf at the same N.

For each N (a fresh cluster each, 3 validators, equal reputations):
- up: `LocalCluster(nodes=N).start()` from the call until every node answers GET /health "ok" (address
  block, genesis, keys, configs, N spawns: through the preloaded template unless --spawn exec).
- upgrade: the spec's Rust crate (examples/rust/upgrade_v1_2_0, built offline as
  tests/integration/test_rust_example.py builds it) served over HTTP, proposed on the last node;
  floor(N/2) early approvals are cast and seen everywhere, then the clock is taken just before the
  deciding vote; "executed" = each node's own EXECUTION_REPORT visible on that node (the moment its
  GET /proposals/{id} says executed), from the nodes' own CLOCK_REALTIME stamps (bench_governance.py's
  milestones). Reported: last vote -> executed on every node, first EXECUTE_UPGRADE seen -> executed on
  every node, and how the nodes got the compiled module (compiled / loaded from the shared cache).
- idle: after the upgrade's reports have spread and a settle time, the CPU time (utime + stime in
  /proc/<pid>/stat) all node processes use over --idle-s seconds, in cores.
- memory: per node, Rss (VmRSS) and Pss (/proc/<pid>/smaps_rollup: shared pages divided among the
  processes sharing them, so sum(Pss) is what N nodes really cost), medians and sums.
- Serf: /work/shared/peers/serf_bench.py -n N -k --serf-events (its bootstrap time, and each user
  event's spread to the last agent, stream receipt), in a work dir of ours; skipped when serf is absent.

It asserts nothing. Every N past the address cap (cluster/addresses.py HOSTS_PER_BLOCK_MAX) is skipped
with a message; --budget-s bounds the whole run (the remaining N are skipped, said so). The load
average before and after each N is recorded: the machine is shared. From the repository root:

    .venv/bin/python bench/bench_scale.py                          # N = 5 33 100 200
    .venv/bin/python bench/bench_scale.py --nodes 5 33 --no-serf   # a quicker run
    .venv/bin/python bench/bench_scale.py --nodes 33 --spawn exec --no-shared-cache   # the "before"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "bench"))

from bench_governance import (HEADLINE, PER_NODE_STAGES, STEP_TIMEOUT_S, derived, load_now, milestones, ok,  # noqa: E402
                              statuses, visible_at_ns, wait_for_raft_leader)
from cluster.addresses import HOSTS_PER_BLOCK_MAX  # noqa: E402
from cluster.local import LocalCluster, NodeApi  # noqa: E402
from cluster.package_server import PackageServer  # noqa: E402
from node.errors import ClusterError  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
SERF_BENCH = Path("/work/shared/peers/serf_bench.py")
VALIDATORS = 3
REPUTATION = 100
VOTING_PERIOD_MS = 600_000
VERSION = "1.2.0"               # what the spec's crate sets
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SETTLE_S = 3.0
HTTP_TIMEOUT_S = 30.0
VISIBILITY_IDS_MAX = 100        # GET /gossip/visibility's bound
EXECUTED_LOOK_INTERVAL_S = 1.0
EXECUTED_TIMEOUT_PER_NODE_S = 1.5
START_TIMEOUT_PER_NODE_S = 2.0
SERF_TIMEOUT_S = 300.0
SERF_ATTEMPTS = 2
SERF_PORT_BLOCK = 1000          # agents' gossip ports from the base, RPC ports from base + 500 (N <= 500)
AIMS = {"up_s": {100: 5.0, 200: 12.0}, "executed_everywhere_ms": {100: 2_000.0}, "idle_cores": {100: 0.2},
        "pss_mb_median": {n: 25.0 for n in (5, 33, 100, 200)}}


def build_crate(workdir: Path) -> bytes:
    """The spec's crate as the issue measured it: built for release, then stripped (its debug sections
    make the module 5.1 MB instead of ~110 KB)."""
    from tests.wasm_build import build_rust_example, rust_toolchain_missing
    missing = rust_toolchain_missing()
    if missing is not None:
        raise SystemExit(f"bench_scale needs the spec's Rust crate, but the toolchain is missing: {missing}; "
                         "run scripts/install-toolchain.sh")
    return strip_custom_sections(build_rust_example(workdir / "rust", target_dir=Path(tempfile.gettempdir()) / "synapse-bench-rust-target"))


def strip_custom_sections(module: bytes) -> bytes:
    """What `wasm-strip` does: drop every custom section (id 0: debug info, names, producers); the
    code, data and exports are untouched."""
    def leb128(at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = module[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, at
    if module[:8] != b"\0asm\x01\0\0\0":
        raise SystemExit("the built crate is not a WebAssembly 1 module")
    stripped, at = bytearray(module[:8]), 8
    while at < len(module):
        size, payload = leb128(at + 1)
        if module[at] != 0:
            stripped += module[at:payload + size]
        at = payload + size
    return bytes(stripped)


def cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])      # utime, stime


def memory_kb(pid: int) -> tuple[int | None, int | None]:
    """(Rss, Pss) in kB from /proc/<pid>/smaps_rollup."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                values[name] = int(rest.split()[0])
    except OSError:
        return None, None
    return values.get("Rss"), values.get("Pss")


def node_pids(cluster: LocalCluster) -> list[int]:
    return [handle.pid for handle in cluster.nodes if handle.pid is not None]


def idle_cores(cluster: LocalCluster, seconds: float) -> float:
    pids = node_pids(cluster)
    before = {pid: cpu_ticks(pid) for pid in pids}
    started = time.monotonic()
    time.sleep(seconds)
    after = {pid: cpu_ticks(pid) for pid in pids}
    elapsed = time.monotonic() - started
    used = sum(after[pid] - before[pid] for pid in pids if before[pid] is not None and after[pid] is not None)
    return round(used / CLOCK_TICKS_PER_S / elapsed, 3)


def memory_summary(cluster: LocalCluster) -> dict:
    readings = [memory_kb(pid) for pid in node_pids(cluster)]
    rss = [value for value, _ in readings if value is not None]
    pss = [value for _, value in readings if value is not None]
    return {"rss_mb_median": round(statistics.median(rss) / 1024, 1) if rss else None,
            "pss_mb_median": round(statistics.median(pss) / 1024, 1) if pss else None,
            "rss_mb_total": round(sum(rss) / 1024, 1), "pss_mb_total": round(sum(pss) / 1024, 1)}


def metric_sum(cluster: LocalCluster, sample: str) -> float:
    total = 0.0
    for index in range(len(cluster.nodes)):
        for line in cluster.api(index).get("/metrics").text.splitlines():
            if line.startswith(sample + " "):
                total += float(line.split()[-1])
    return total


def wait_reports(cluster: LocalCluster, proposal_id: str, nodes: int) -> None:
    cluster.wait_for(lambda: all(len(ok(cluster.api(index).get(f"/proposals/{proposal_id}"))["reports"]) == nodes
                                 for index in range(nodes)), STEP_TIMEOUT_S * 2, "every report on every node")


def visible_everywhere(cluster: LocalCluster, ids: list[str]) -> bool:
    """GET /gossip/visibility takes at most VISIBILITY_IDS_MAX ids: ask in chunks (N/2 votes at N=200)."""
    chunks = [ids[start:start + VISIBILITY_IDS_MAX] for start in range(0, len(ids), VISIBILITY_IDS_MAX)]
    return all(all(stamp is not None for chunk in chunks for stamp in visible_at_ns(cluster.api(index), chunk).values())
               for index in range(len(cluster.nodes)))


def open_proposal(cluster: LocalCluster, package, proposer: int, early: list[int]) -> str:
    """Propose, cast the early votes, return once all of it is visible everywhere and still `voting`."""
    body = {"title": f"bench upgrade to {VERSION}", "description": "bench/bench_scale.py", "version": VERSION,
            "package_url": package.http_url, "package_hash": "sha256:" + package.sha256, "package_size": package.size}
    created = ok(cluster.api(proposer).post("/upgrades/propose", body), 201, "POST /upgrades/propose")
    proposal_id, ids = created["proposal_id"], [created["entry_id"]]
    timeout_s = max(STEP_TIMEOUT_S, EXECUTED_TIMEOUT_PER_NODE_S * len(cluster.nodes))
    cluster.wait_for(lambda: visible_everywhere(cluster, ids), timeout_s, f"proposal {proposal_id} on every node")
    for index in early:
        ids.append(ok(cluster.api(index).post(f"/proposals/{proposal_id}/vote", {"vote": "approval"}), 201, "a vote")["entry_id"])
    cluster.wait_for(lambda: visible_everywhere(cluster, ids), timeout_s, "the early votes on every node")
    found = statuses(cluster, proposal_id)
    if set(found) != {"voting"}:
        raise ClusterError(f"{proposal_id} should still be voting everywhere before the deciding vote: {sorted(set(found), key=str)}")
    return proposal_id


def wait_executed(cluster: LocalCluster, proposal_id: str) -> None:
    """Look every second, and only at the nodes not seen executed yet (a GET /proposals/{id} builds the
    whole view, votes and reports: asking all N nodes every second took CPU from the very thing measured);
    for at most EXECUTED_TIMEOUT_PER_NODE_S * N. The figures come from the nodes' own stamps, not from
    when this loop saw them."""
    deadline = time.monotonic() + max(STEP_TIMEOUT_S, EXECUTED_TIMEOUT_PER_NODE_S * len(cluster.nodes))
    waiting = list(range(len(cluster.nodes)))
    while waiting:
        time.sleep(EXECUTED_LOOK_INTERVAL_S)
        still = []
        for index in waiting:
            response = cluster.api(index).get(f"/proposals/{proposal_id}")
            status = response.data["status"] if response.status == 200 else None
            if status == "failed":
                raise ClusterError(f"{proposal_id} failed on node {index}")
            if status != "executed":
                still.append(index)
        waiting = still
        if waiting and time.monotonic() > deadline:
            raise ClusterError(f"{proposal_id} not executed everywhere in time: {len(waiting)} nodes left")


def _median_gap(earlier: list, later: list) -> float | None:
    gaps = [b - a for a, b in zip(earlier, later) if None not in (a, b)]
    return round(statistics.median(gaps), 1) if gaps else None


def run_upgrade(cluster: LocalCluster, package) -> dict:
    """Proposed on the last node, floor(N/2) early approvals, then the deciding vote (timed)."""
    nodes = len(cluster.nodes)
    proposer, early, decider = nodes - 1, [index for index in range(nodes // 2)], nodes // 2
    proposal_id = open_proposal(cluster, package, proposer, early)
    sent_ns = time.time_ns()
    voted = ok(cluster.api(decider).post(f"/proposals/{proposal_id}/vote", {"vote": "approval"}), 201, "the deciding vote")
    acknowledged_ms = round((time.time_ns() - sent_ns) / 1e6, 2)
    if voted["tally"]["outcome"] != "approved":
        raise ClusterError(f"the deciding vote left {proposal_id} {voted['status']!r}: {voted['tally']}")
    wait_executed(cluster, proposal_id)
    record = milestones(cluster, proposal_id, voted["entry_id"], sent_ns)
    record.update(proposal_id=proposal_id, decider=decider, vote_acknowledged_ms=acknowledged_ms, decider_validator=cluster.nodes[decider].is_validator)
    rows = derived(record, [handle.index for handle in cluster.nodes if handle.is_validator])
    first_seen = min((value for value in record["ratified_ms"] if value is not None), default=None)
    stages = {name: _median_gap(record[first], record[second]) for name, (first, second) in PER_NODE_STAGES.items()}
    everywhere = rows[HEADLINE]
    return {"proposal_id": proposal_id, "executed_everywhere_ms": everywhere,
            "ratified_everywhere_ms": rows["ratified on every node (EXECUTE_UPGRADE visible)"],
            "execute_seen_to_executed_everywhere_ms": (round(everywhere - first_seen, 1)
                                                       if None not in (everywhere, first_seen) else None),
            "executed_first_node_ms": rows["executed on the first node"], "per_node_stage_median_ms": stages,
            "milestones_ms": rows,
            "modules_compiled": metric_sum(cluster, 'synapse_sandbox_compiled_cache{event="compiled"}'),
            "modules_loaded_from_disk": metric_sum(cluster, 'synapse_sandbox_compiled_cache{event="loaded_from_disk"}'),
            "sandbox_runs": metric_sum(cluster, "synapse_sandbox_runs_total")}


class BenchCluster(LocalCluster):
    """A LocalCluster whose API calls wait longer: at N >= 100 on 2 cores a busy node may take seconds."""

    def api(self, index: int) -> NodeApi:
        handle = self._check_index(index)
        return NodeApi(handle.api_url, handle.token, timeout_s=HTTP_TIMEOUT_S)


def node_limits(arguments: argparse.Namespace, *, versus: bool) -> dict[str, int] | None:
    """The [limits] every node of a run gets: --gossip-interval-ms and --limit, and --versus for the second run."""
    limits = {"gossip_interval_ms": arguments.gossip_interval_ms} if arguments.gossip_interval_ms else {}
    limits.update(arguments.limit)
    if versus:
        limits.update(arguments.versus)
    return limits or None


def parse_limit(text: str) -> tuple[str, int]:
    """KEY=VALUE for a node's [limits] (every limit is an integer)."""
    key, separator, value = text.partition("=")
    if not separator or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE, a node limit and an integer (README: Node configuration)")
    try:
        return key, int(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be an integer") from None


def bench_synapse(nodes: int, package, arguments: argparse.Namespace, workdir: Path, *, versus: bool = False) -> dict:
    environment = {"SYNAPSE_SPAWN": arguments.spawn}
    started = time.monotonic()
    label = f"N={nodes}" + (" versus" if versus else "")
    cluster = BenchCluster(nodes=nodes, validators=VALIDATORS, data_dir=workdir / (f"n{nodes}" + ("-versus" if versus else "")),
                           reputations=[REPUTATION] * nodes, governance={"voting_period_ms": VOTING_PERIOD_MS},
                           extra_env=environment, start_timeout_s=max(60.0, START_TIMEOUT_PER_NODE_S * nodes),
                           shared_compiled_cache=arguments.shared_cache, config_limits=node_limits(arguments, versus=versus))
    with cluster:
        up_s = round(time.monotonic() - started, 2)
        print(f"{label}: up in {up_s} s", flush=True)
        wait_for_raft_leader(cluster)
        upgrade = run_upgrade(cluster, package)
        print(f"{label}: last vote -> executed everywhere {upgrade['executed_everywhere_ms']} ms "
              f"(EXECUTE_UPGRADE first seen -> executed everywhere {upgrade['execute_seen_to_executed_everywhere_ms']} ms; "
              f"compiled {upgrade['modules_compiled']:.0f}x, loaded {upgrade['modules_loaded_from_disk']:.0f}x, "
              f"sandbox runs {upgrade['sandbox_runs']:.0f}); on one node, median: {upgrade['per_node_stage_median_ms']}", flush=True)
        wait_reports(cluster, upgrade["proposal_id"], nodes)
        time.sleep(SETTLE_S)
        idle = idle_cores(cluster, arguments.idle_s)
        memory = memory_summary(cluster)
        print(f"{label}: idle {idle} cores over {arguments.idle_s} s; per node RSS {memory['rss_mb_median']} MB, "
              f"PSS {memory['pss_mb_median']} MB (totals {memory['rss_mb_total']} / {memory['pss_mb_total']} MB)", flush=True)
    return {"up_s": up_s, **upgrade, "idle_cores": idle, **memory}


def bench_serf(nodes: int, arguments: argparse.Namespace, workdir: Path) -> dict:
    if not SERF_BENCH.exists() or shutil.which("serf") is None and not Path("/usr/bin/serf").exists():
        return {"skipped": "serf or serf_bench.py is not installed"}
    out = workdir / f"serf-{nodes}.jsonl"
    failures = []
    for attempt in range(SERF_ATTEMPTS):     # a port of the block may be taken by someone else: another block
        port_base = arguments.serf_port_base + attempt * SERF_PORT_BLOCK
        command = [sys.executable, str(SERF_BENCH), "-n", str(nodes), "-k", str(arguments.serf_events), "--fire", "rpc",
                   "--workdir", str(workdir / f"serf-{nodes}"), "--json", str(out), "--final-wait", "20",
                   "--bind-base", str(port_base), "--rpc-base", str(port_base + SERF_PORT_BLOCK // 2)]
        try:
            subprocess.run(command, capture_output=True, text=True, timeout=SERF_TIMEOUT_S, check=True)
            break
        except subprocess.TimeoutExpired:
            return {"skipped": f"serf_bench.py did not finish within {SERF_TIMEOUT_S:.0f} s"}
        except subprocess.CalledProcessError as error:
            failures.append(f"serf_bench.py failed (exit {error.returncode}): {error.stderr.strip().splitlines()[-1][:200]}")
    else:
        return {"skipped": "; ".join(failures)}
    result = json.loads(out.read_text().splitlines()[-1])
    return {"bootstrap_s": result.get("bootstrap_s"), "event_last_agent_ms": result.get("last_agent_ms_stream"),
            "late_events": result.get("late_events"), "rss_kb": result.get("rss_kb"), "command": " ".join(command)}


def bench_one(nodes: int, package, arguments: argparse.Namespace, workdir: Path) -> dict:
    load_before = load_now()
    print(f"N={nodes}: load before: {load_before['uptime']}", flush=True)
    result: dict = {"nodes": nodes, "load_before": load_before}
    for side, versus in (("synapse", False), ("versus", True)) if arguments.versus else (("synapse", False),):
        try:
            result[side] = bench_synapse(nodes, package, arguments, workdir, versus=versus)
        except (ClusterError, OSError) as error:     # e.g. nodes too busy to answer: a figure we could not take
            reason = error.one_line() if isinstance(error, ClusterError) else f"{type(error).__name__}: {error}"
            result[side] = {"failed": reason}
            print(f"N={nodes} {side}: FAILED: {reason}", flush=True)
    if arguments.serf:
        result["serf"] = bench_serf(nodes, arguments, workdir)
        print(f"N={nodes}: serf {result['serf']}", flush=True)
    result["load_after"] = load_now()
    return result


def markdown(results: list[dict], meta: dict) -> str:
    rows = [("cluster up (s)", "synapse", "up_s"), ("last vote -> executed everywhere (ms)", "synapse", "executed_everywhere_ms"),
            ("EXECUTE_UPGRADE first seen -> executed everywhere (ms)", "synapse", "execute_seen_to_executed_everywhere_ms"),
            ("modules compiled / loaded from the shared cache", "synapse", None),
            ("idle CPU, all nodes (cores)", "synapse", "idle_cores"), ("RSS per node, median (MB)", "synapse", "rss_mb_median"),
            ("PSS per node, median (MB)", "synapse", "pss_mb_median"), ("PSS all nodes (MB)", "synapse", "pss_mb_total"),
            ("Serf bootstrap (s)", "serf", "bootstrap_s"), ("Serf event to the last agent, median (ms)", "serf", None)]
    if any("versus" in result for result in results):
        versus = ", ".join(f"{key}={value}" for key, value in meta["arguments"]["versus"])
        rows[8:8] = [(f"{title}, with {versus}", "versus", key) for title, side, key in rows[:8]]
    measured = [result for result in results if "synapse" in result]
    lines = [f"# bench_scale ({meta['when']}; {meta['machine']}; spawn={meta['arguments']['spawn']}, "
             f"shared cache={meta['arguments']['shared_cache']})", "", f"`{meta['command']}`", "",
             "| | " + " | ".join(f"N={result['nodes']}" for result in measured) + " |", "|---|" + "---:|" * len(measured)]
    for title, side, key in rows:
        cells = []
        for result in measured:
            figures = result.get(side) or {}
            if "failed" in figures or "skipped" in figures:
                cells.append("failed" if "failed" in figures else "skipped")
            elif key is not None:
                cells.append(str(figures.get(key, "")))
            elif side in ("synapse", "versus"):
                cells.append(f"{figures.get('modules_compiled', 0):.0f} / {figures.get('modules_loaded_from_disk', 0):.0f}")
            else:
                cells.append(str((figures.get("event_last_agent_ms") or {}).get("median", figures.get("skipped", ""))))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- N={result['nodes']}: load before `{result['load_before']['uptime']}`, after "
                     f"`{result['load_after']['uptime']}`" for result in measured]
    lines += [f"- N={result['nodes']}: skipped: {result['skipped']}" for result in results if "skipped" in result]
    lines += [f"- N={result['nodes']} {side}: {reason}: {figures[reason]}" for result in measured
              for side in ("synapse", "versus", "serf") for figures in [result.get(side) or {}]
              for reason in ("failed", "skipped") if reason in figures]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 33, 100, 200])
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--spawn", choices=["template", "exec"], default="template",
                        help="how nodes start: forked from the preloaded template, or a plain exec")
    parser.add_argument("--shared-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="the nodes share one compiled-module cache (cluster up's default)")
    parser.add_argument("--gossip-interval-ms", type=int, default=None, help="the nodes' gossip_interval_ms (default: theirs, 200)")
    parser.add_argument("--limit", type=parse_limit, action="append", default=[], metavar="KEY=VALUE",
                        help="a node limit for every cluster (repeat for more), e.g. gossip_fanout=6")
    parser.add_argument("--versus", type=parse_limit, action="append", default=[], metavar="KEY=VALUE",
                        help="run each N a second time, right after the first, with these limits too (repeat for more): "
                             "a before/after in one run, e.g. --versus gossip_streams_max=0 (every gossip call a POST)")
    parser.add_argument("--serf", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--serf-events", type=int, default=10)
    parser.add_argument("--serf-port-base", type=int, default=21000,
                        help="below the ephemeral range (32768+), where outgoing connections would take ports")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="start no new N after this long")
    arguments = parser.parse_args()
    if not all(1 <= nodes for nodes in arguments.nodes) or not 1 <= arguments.idle_s <= 600:
        parser.error("--nodes >= 1, --idle-s in 1..600")
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}", "arguments": vars(arguments), "command": " ".join(sys.argv)}
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    server = PackageServer()
    results = []
    try:
        wasm = build_crate(workdir)
        package = server.add("upgrade_v1_2_0.wasm", wasm)
        meta["package_size_bytes"] = len(wasm)
        print(f"package: the spec's crate, {len(wasm):,} bytes (stripped)", flush=True)
        for nodes in arguments.nodes:
            if nodes > HOSTS_PER_BLOCK_MAX:
                results.append({"nodes": nodes, "skipped": f"over this checkout's cap of {HOSTS_PER_BLOCK_MAX} nodes "
                                                          "(cluster/addresses.py HOSTS_PER_BLOCK_MAX)"})
            elif time.monotonic() - started > arguments.budget_s:
                results.append({"nodes": nodes, "skipped": f"the run's budget of {arguments.budget_s:.0f} s was spent"})
            else:
                results.append(bench_one(nodes, package, arguments, workdir))
                continue
            print(f"N={nodes}: skipped: {results[-1]['skipped']}", flush=True)
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"bench_scale-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    text = markdown(results, meta)
    (RESULTS / f"bench_scale-{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
