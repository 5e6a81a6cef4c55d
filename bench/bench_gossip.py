"""Gossip benchmark: how fast a new log entry reaches every node, and what it costs in messages and bytes,
against HashiCorp Serf's user events on the same machine in the same session.

How it measures (and why this way):
- Real node processes (cluster/local.py), N = 5, 9, 17, 33 by default, each on its own loopback address.
- Latency of one entry = (the moment it became visible on the LAST node) - (just before the benchmark
  sent POST /log/notes to its author). Each node stamps the moment an entry becomes visible in its log
  with CLOCK_REALTIME (time.time_ns(), the same clock for every process on one machine) and serves it
  at GET /gossip/visibility?ids=... . The benchmark reads those stamps only after the entry has had
  time to spread (300 ms, then every 100 ms until complete), so it never polls 33 nodes while the
  entry is in flight: polling would steal CPU from the nodes on this 2-core machine and slow down the
  very thing measured. The start (before the POST) includes the HTTP request, signing and the fsync on
  the author, as Serf's includes spawning `serf event` (~6 ms).
- Entries are fired one at a time, from a random node (seeded), with 50-300 ms random pauses, as
  shared/peers/serf_bench.py fires Serf events (from node 0). An entry not everywhere within 5 s is
  "late"; its real latency is kept (the benchmark waits up to 30 s more for anti-entropy).
- Messages and bytes: deltas of the nodes' own counters (synapse_gossip_messages_sent_total and
  synapse_gossip_bytes_sent_total, summed over all nodes and message types; requests and replies
  both count as sent, by whoever sends them) over the whole run of one entry size, divided by
  entries x N. They include the anti-entropy rounds that run meanwhile (5 per second per node); the
  idle rate is measured first, over 3 s without entries, and the table shows both the total and the
  part above idle. Bytes are msgpack bodies. The transport's own bytes are shown as an estimate on
  top: over the nodes' gossip streams (the default), a websocket frame header (2 B, 4 B more for the
  caller's mask, 2 or 8 B more for a long frame, from each type's mean body size) and the call header
  of node/core/gossip_frames.py (5 B a request, 6 B a reply); with --http (every call a POST:
  gossip_streams_max = 0), the HTTP/1.1 headers, measured once (a real request of the gossip client and
  a real reply of a node, captured on a socket). TCP/IP headers are not counted (nor are they for Serf).
- Serf: shared/peers/serf_bench.py -n N -k K (its handler timestamps, from just before the CLI is
  spawned to the last agent's handler) for the same N, run right after ours.

It asserts nothing: it prints a table and writes JSON and Markdown to bench/results/. From the repository root:

    .venv/bin/python bench/bench_gossip.py                          # N = 5 9 17 33, 30 entries per size
    .venv/bin/python bench/bench_gossip.py --nodes 5 --entries 10 --no-serf   # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from cluster.local import LocalCluster, NodeApi  # noqa: E402
from node.gossip import DIGEST_HASH_BYTES, PATH_OFFER, PATH_PUSH, PATH_SYNC, GossipSettings, Offer, Sync, make_client_session  # noqa: E402
from node.core.gossip_frames import REPLY_HEADER, REQUEST_HEADER  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
SERF_BENCH = Path("/work/shared/peers/serf_bench.py")
FIRST_LOOK_S = 0.3
POLL_S = 0.1
LATE_S = 5.0
FINAL_WAIT_S = 30.0
AIM_BYTES_OVER_SIZE = 3.0
REQUEST_TYPES = ("offer", "push", "sync")
REPLY_TYPES = ("want", "pushed", "synced")
_SAMPLE = re.compile(r'^synapse_(gossip_(?:messages|bytes)_sent_total)\{type="([a-z]+)"\} (\S+)$')


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 2), "p95": round(percentile(values, 0.95), 2),
            "min": round(min(values), 2), "max": round(max(values), 2)}


# --- reading the nodes ---------------------------------------------------------------------------


def gossip_counters(cluster: LocalCluster) -> dict[str, dict[str, float]]:
    """{"gossip_messages_sent_total": {type: sum over nodes}, "gossip_bytes_sent_total": {...}}."""
    totals: dict[str, dict[str, float]] = {"gossip_messages_sent_total": {}, "gossip_bytes_sent_total": {}}
    for index in range(len(cluster.nodes)):
        for line in cluster.api(index).get("/metrics").text.splitlines():
            match = _SAMPLE.match(line)
            if match:
                by_type = totals[match.group(1)]
                by_type[match.group(2)] = by_type.get(match.group(2), 0.0) + float(match.group(3))
    return totals


def counter_delta(after: dict, before: dict) -> dict[str, dict[str, float]]:
    return {name: {kind: value - before[name].get(kind, 0.0) for kind, value in by_type.items()} for name, by_type in after.items()}


def visibility(cluster: LocalCluster, entry_id: str) -> list[int | None]:
    stamps = []
    for index in range(len(cluster.nodes)):
        response = cluster.api(index).get(f"/gossip/visibility?ids={entry_id}")
        stamps.append(response.data["visible_at_ns"][entry_id] if response.status == 200 else None)
    return stamps


def wait_visible_everywhere(cluster: LocalCluster, entry_id: str, deadline_s: float) -> list[int | None]:
    time.sleep(FIRST_LOOK_S)
    started = time.monotonic()
    while True:
        stamps = visibility(cluster, entry_id)
        if all(stamp is not None for stamp in stamps) or time.monotonic() - started > deadline_s:
            return stamps
        time.sleep(POLL_S)


def rss_kb(pid: int | None) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# --- one cluster -----------------------------------------------------------------------------------


def note_overhead_bytes(cluster: LocalCluster) -> int:
    """Bytes of a NOTE entry beyond its text (header, parents, clock, signature)."""
    created = cluster.api(0).post("/log/notes", {"text": ""})
    assert created.status == 201, created.text
    size = cluster.api(0).get(f"/log/{created.data['id']}").data["size_bytes"]
    wait_visible_everywhere(cluster, created.data["id"], LATE_S)
    return size


def fire_entries(cluster: LocalCluster, rng: random.Random, count: int, text_length: int, label: str) -> dict:
    """Fire `count` entries one at a time; return latencies, sizes and counter deltas."""
    latencies_ms, author_ms, sizes, late = [], [], [], []
    before, started_s = gossip_counters(cluster), time.monotonic()
    for number in range(count):
        time.sleep(rng.uniform(0.05, 0.3))
        author = rng.randrange(len(cluster.nodes))
        text = (f"{label} {number} " + "x" * text_length)[:text_length] if text_length else ""
        fired_ns = time.time_ns()
        created = cluster.api(author).post("/log/notes", {"text": text})
        assert created.status == 201, created.text
        stamps = wait_visible_everywhere(cluster, created.data["id"], LATE_S)
        if any(stamp is None for stamp in stamps):
            late.append((created.data["id"], fired_ns))
            continue
        latencies_ms.append((max(stamps) - fired_ns) / 1e6)
        author_ms.append((stamps[author] - fired_ns) / 1e6)
        sizes.append(cluster.api(author).get(f"/log/{created.data['id']}").data["size_bytes"])
    duration_s = time.monotonic() - started_s
    delta = counter_delta(gossip_counters(cluster), before)
    never = 0
    for entry_id, fired_ns in late:  # anti-entropy repairs: keep their real latency
        stamps = wait_visible_everywhere(cluster, entry_id, FINAL_WAIT_S)
        if all(stamp is not None for stamp in stamps):
            latencies_ms.append((max(stamps) - fired_ns) / 1e6)
        else:
            never += 1
    return {"latencies_ms": latencies_ms, "author_visible_ms": author_ms, "sizes": sizes, "late": len(late),
            "never": never, "duration_s": duration_s, "delta": delta}


def idle_rates(cluster: LocalCluster, seconds: float) -> dict[str, float]:
    """Messages and bytes per second per node with no new entries: the anti-entropy floor."""
    before = gossip_counters(cluster)
    time.sleep(seconds)
    delta = counter_delta(gossip_counters(cluster), before)
    nodes = len(cluster.nodes)
    return {"messages_per_s_per_node": sum(delta["gossip_messages_sent_total"].values()) / seconds / nodes,
            "bytes_per_s_per_node": sum(delta["gossip_bytes_sent_total"].values()) / seconds / nodes}


def frame_overhead_bytes(kind: str, mean_body_bytes: float) -> int:
    """Bytes a stream adds to one message: the call header and the websocket frame header (RFC 6455 5.2)."""
    request = kind in REQUEST_TYPES
    framed = mean_body_bytes + (REQUEST_HEADER.size if request else REPLY_HEADER.size)
    extended_length = 0 if framed < 126 else 2 if framed < 65_536 else 8
    return (REQUEST_HEADER.size if request else REPLY_HEADER.size) + 2 + extended_length + (4 if request else 0)


def transport_bytes(messages: dict, body_bytes: dict, headers: dict | None) -> float:
    """The transport's bytes on top of the bodies: HTTP headers (measured) or stream frames (computed)."""
    if headers is not None:
        return (sum(messages.get(kind, 0) * headers["request"][kind] for kind in REQUEST_TYPES)
                + sum(messages.get(kind, 0) for kind in REPLY_TYPES) * headers["reply"])
    return sum(count * frame_overhead_bytes(kind, body_bytes.get(kind, 0) / count) for kind, count in messages.items() if count)


def per_entry_costs(run: dict, nodes: int, idle: dict, headers: dict | None) -> dict:
    entries = len(run["sizes"]) + run["late"]
    messages = run["delta"]["gossip_messages_sent_total"]
    body_bytes = run["delta"]["gossip_bytes_sent_total"]
    total_messages = sum(messages.values()) / entries / nodes
    total_bytes = sum(body_bytes.values()) / entries / nodes
    idle_share_s = run["duration_s"] / entries
    header_bytes = transport_bytes(messages, body_bytes, headers) / entries / nodes
    mean_size = statistics.mean(run["sizes"]) if run["sizes"] else float("nan")
    above_idle_bytes = total_bytes - idle["bytes_per_s_per_node"] * idle_share_s
    return {
        "entry_size_bytes": round(mean_size, 1),
        "messages_per_entry_per_node": round(total_messages, 2),
        "messages_above_idle": round(total_messages - idle["messages_per_s_per_node"] * idle_share_s, 2),
        "body_bytes_per_entry_per_node": round(total_bytes, 1),
        "body_bytes_above_idle": round(above_idle_bytes, 1),
        "bytes_over_size": round(total_bytes / mean_size, 2),
        "bytes_above_idle_over_size": round(above_idle_bytes / mean_size, 2),
        "transport_bytes_per_entry_per_node_estimate": round(header_bytes, 1),
        "messages_by_type_per_entry_per_node": {kind: round(value / entries / nodes, 3) for kind, value in sorted(messages.items())},
        "bytes_by_type_per_entry_per_node": {kind: round(value / entries / nodes, 1) for kind, value in sorted(body_bytes.items())},
    }


def bench_cluster(nodes: int, sizes: list[int], entries: int, rng: random.Random, workdir: Path, headers: dict,
                  config_limits: dict[str, int]) -> dict:
    print(f"\n== N = {nodes}: starting {nodes} node processes {config_limits or ''}", flush=True)
    started = time.monotonic()
    with LocalCluster(nodes=nodes, validators=1, data_dir=workdir / f"synapse-n{nodes}", start_timeout_s=240,
                      config_limits=config_limits) as cluster:
        startup_s = time.monotonic() - started
        time.sleep(2.0)
        for number in range(3):  # warm up keep-alive connections on every path
            fire_entries(cluster, rng, 1, 64, f"warmup {number}")
        overhead = note_overhead_bytes(cluster)
        idle = idle_rates(cluster, 3.0)
        result = {"nodes": nodes, "startup_s": round(startup_s, 1), "idle": {k: round(v, 1) for k, v in idle.items()},
                  "note_overhead_bytes": overhead, "sizes": []}
        for size in sizes:
            run = fire_entries(cluster, rng, entries, max(0, size - overhead), f"size {size}")
            row = {"target_size_bytes": size, "latency_ms": summary(run["latencies_ms"]),
                   "author_visible_ms": summary(run["author_visible_ms"]), "late": run["late"], "never": run["never"],
                   **per_entry_costs(run, nodes, idle, headers), "raw_latencies_ms": [round(x, 2) for x in run["latencies_ms"]]}
            result["sizes"].append(row)
            print(f"   size {row['entry_size_bytes']:>6} B: median {row['latency_ms'].get('median')} ms, "
                  f"p95 {row['latency_ms'].get('p95')} ms, late {row['late']}, {row['messages_per_entry_per_node']} msg and "
                  f"{row['body_bytes_per_entry_per_node']} B per entry per node ({row['bytes_over_size']}x size)", flush=True)
        rss = [value for value in (rss_kb(handle.pid) for handle in cluster.nodes) if value]
        result["rss_kb"] = {"median": statistics.median(rss), "total_mb": round(sum(rss) / 1024, 1)} if rss else {}
    return result


# --- HTTP header overhead, measured once -------------------------------------------------------------


async def _capture_request_headers(path: str, body: bytes) -> int:
    """The header bytes the gossip client sends with one request (captured by a raw server)."""
    received = bytearray()
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while b"\r\n\r\n" not in received:
            received.extend(await reader.read(65536))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    session = make_client_session(GossipSettings())
    try:
        async with session.post(f"http://127.0.0.1:{port}{path}", data=body) as response:
            await response.read()
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await session.close()
        server.close()
        await server.wait_closed()
    # (The benchmark's nodes listen on 127.A.B.C:7000: their Host header differs by a few bytes.)
    return received.index(b"\r\n\r\n") + 4


def reply_header_bytes(api: NodeApi) -> int:
    """The header bytes of one gossip reply from a real node (a raw HTTP/1.1 exchange)."""
    host, port = api.base_url.removeprefix("http://").rsplit(":", 1)
    body = Sync(sender="", digest_hash=bytes(DIGEST_HASH_BYTES), digest=None, want=()).encode()
    request = (f"POST {PATH_SYNC} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/msgpack\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(request)
        reply = bytearray()
        while chunk := connection.recv(65536):
            reply.extend(chunk)
    return reply.index(b"\r\n\r\n") + 4


def measure_headers(workdir: Path) -> dict:
    requests = {"offer": asyncio.run(_capture_request_headers(PATH_OFFER, Offer(sender="", ids=()).encode())),
                "push": asyncio.run(_capture_request_headers(PATH_PUSH, b"x")),
                "sync": asyncio.run(_capture_request_headers(PATH_SYNC, b"x"))}
    with LocalCluster(nodes=1, validators=1, data_dir=workdir / "synapse-headers") as cluster:
        reply = reply_header_bytes(cluster.api(0)) - len("Connection: close\r\n")
    return {"request": requests, "reply": reply}


# --- Serf --------------------------------------------------------------------------------------------


def run_serf(nodes: int, entries: int, workdir: Path) -> dict | None:
    if shutil.which("serf") is None or not SERF_BENCH.exists():
        print("   serf: not run (apt-get install -y serf; needs /work/shared/peers/serf_bench.py)", flush=True)
        return None
    out = workdir / f"serf-{nodes}.jsonl"
    print(f"   serf: {nodes} agents, {entries} events", flush=True)
    completed = subprocess.run([sys.executable, str(SERF_BENCH), "-n", str(nodes), "-k", str(entries), "--json", str(out),
                                "--workdir", str(workdir / "serf")], capture_output=True, text=True, timeout=900)
    if completed.returncode != 0:
        print(f"   serf failed: {completed.stderr[-2000:]}", flush=True)
        return None
    result = json.loads(out.read_text().splitlines()[-1])
    row = {"latency_ms": result["last_agent_ms_handler"], "latency_ms_stream": result["last_agent_ms_stream"],
           "late": result["late_events"], "rss_kb": result.get("rss_kb")}
    print(f"   serf: median {row['latency_ms']['median']} ms, p95 {row['latency_ms']['p95']} ms, late {row['late']}", flush=True)
    return row


# --- report ------------------------------------------------------------------------------------------


def markdown(results: list[dict], headers: dict, meta: dict) -> str:
    lines = [f"# Gossip benchmark ({meta['when']}, {meta['machine']})", "",
             f"{meta['entries']} entries per size per N, seed {meta['seed']}, node limits {meta['config_limits'] or 'default'}. "
             "Latency: until visible on the LAST node.", "",
             "| N | entry B | median ms | p95 ms | late | Serf median | Serf p95 | Serf late | median ratio | p95 ratio "
             "| msg/entry/node | body B/entry/node | x size | above idle x size | + transport B (est.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        serf = result.get("serf") or {}
        serf_latency = serf.get("latency_ms", {})
        for row in result["sizes"]:
            ours = row["latency_ms"]
            ratio = lambda key: (f"{ours[key] / serf_latency[key]:.3f}" if serf_latency.get(key) and ours.get(key) else "-")  # noqa: E731
            lines.append(f"| {result['nodes']} | {row['entry_size_bytes']:.0f} | {ours.get('median')} | {ours.get('p95')} | "
                         f"{row['late']} | {serf_latency.get('median', '-')} | {serf_latency.get('p95', '-')} | "
                         f"{serf.get('late', '-')} | {ratio('median')} | {ratio('p95')} | {row['messages_per_entry_per_node']} | "
                         f"{row['body_bytes_per_entry_per_node']} | {row['bytes_over_size']} | {row['bytes_above_idle_over_size']} | "
                         f"{row['transport_bytes_per_entry_per_node_estimate']} |")
    lines += ["", (f"Every call a POST; HTTP headers measured: request {headers['request']} B, reply {headers['reply']} B."
                   if headers is not None else "Calls over the nodes' gossip streams; frame headers computed per message."), ""]
    for result in results:
        lines.append(f"- N={result['nodes']}: start-up {result['startup_s']} s, idle anti-entropy "
                     f"{result['idle']['messages_per_s_per_node']} msg/s and {result['idle']['bytes_per_s_per_node']} B/s per node, "
                     f"RSS median {result['rss_kb'].get('median')} kB per node")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 9, 17, 33])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="target entry sizes in bytes")
    parser.add_argument("--entries", type=int, default=30, help="entries per size per N")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-serf", action="store_true")
    parser.add_argument("--interval-ms", type=int, default=None, help="the nodes' gossip_interval_ms (default: theirs, 200)")
    parser.add_argument("--http", action="store_true", help="every gossip call a POST (gossip_streams_max = 0), as before streams")
    arguments = parser.parse_args()
    seed = arguments.seed if arguments.seed is not None else random.randrange(2**32)
    print(f"seed {seed}", flush=True)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gossip-"))
    config_limits = {} if arguments.interval_ms is None else {"gossip_interval_ms": arguments.interval_ms}
    if arguments.http:
        config_limits["gossip_streams_max"] = 0
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}", "entries": arguments.entries, "seed": seed, "config_limits": config_limits}
    try:
        headers = measure_headers(workdir) if arguments.http else None
        if headers is not None:
            print(f"HTTP headers: request {headers['request']} B, reply {headers['reply']} B", flush=True)
        results = []
        for nodes in arguments.nodes:
            result = bench_cluster(nodes, arguments.sizes, arguments.entries, rng, workdir, headers, config_limits)
            result["serf"] = None if arguments.no_serf else run_serf(nodes, arguments.entries, workdir)
            results.append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    document = {"meta": meta, "http_headers": headers, "results": results}
    (RESULTS / f"bench_gossip-{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
    table = markdown(results, headers, meta)
    (RESULTS / f"bench_gossip-{stamp}.md").write_text(table)
    print("\n" + table)
    print(f"written: bench/results/bench_gossip-{stamp}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
