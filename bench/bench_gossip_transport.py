"""CPU per gossip call: a POST (the node's HTTP client and an aiohttp route) against a frame on the
node's gossip stream (node/gossip_stream.py), side by side in one run.

How it measures (and why this way):
- The answering side is a separate process (as a peer is): an aiohttp application with a POST route
  that reads the body and answers the first 100 bytes (what Gossip's handler does around the core),
  and the real StreamServer with the same answer. The calling side is this process: the node's own
  `make_client_session` for POSTs, the real StreamClient for frames.
- Each round makes `--calls` calls, `--concurrency` at a time (a node's forward wave calls several
  peers at once), of a `--body-bytes` body (a small push), first one way then the other. CPU is
  utime + stime of each process over the round (the answering process reports its own on request),
  per call, in microseconds; wall time per call too. The table gives medians over `--rounds` and the
  ratio stream / POST.
- Only the transport is timed: the gossip core's work per message is the same both ways.

It asserts nothing: it prints a table and writes JSON to bench/results/. From the repository root:

    .venv/bin/python bench/bench_gossip_transport.py                 # 4,000 calls, 4 at a time, 5 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from aiohttp import web  # noqa: E402

from cluster.polling import poll_until  # noqa: E402
from node.core.gossip_messages import Push  # noqa: E402
from node.core.gossip_settings import GossipSettings  # noqa: E402
from node.gossip import PATH_PUSH, make_client_session  # noqa: E402
from node.gossip_stream import PATH_STREAM, StreamClient, StreamServer  # noqa: E402
from node.metrics import Metrics  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
PATH_CPU = "/cpu"
SETTINGS = GossipSettings()
START_TIMEOUT_S = 30


def process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


async def answer(source: str, message_type: type, body: bytes) -> tuple[int, bytes]:
    return 200, body[:100]


def serve(port: int) -> None:
    """The answering process: POST route, stream route, and its own CPU time on GET /cpu."""
    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=(await answer("", Push, body))[1], content_type="application/msgpack")

    async def cpu(request: web.Request) -> web.Response:
        return web.json_response(process_cpu_s())
    streams = StreamServer(settings=SETTINGS, serve_frame=answer, metrics=Metrics(),
                           refuse=lambda reason, error, status: web.json_response(error.to_dict(), status=status))
    app = web.Application()
    app.router.add_post(PATH_PUSH, post)
    app.router.add_get(PATH_STREAM, streams.handle)
    app.router.add_get(PATH_CPU, cpu)
    app.on_shutdown.append(streams.close_all)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


async def one_round(base_url: str, way: str, calls: int, concurrency: int, body: bytes) -> dict:
    session = make_client_session(SETTINGS)
    streams = StreamClient(settings=SETTINGS, metrics=Metrics(), logger=logging.getLogger("bench"))
    streams.open()

    async def call() -> None:
        if way == "stream":
            status, _ = await streams.call(base_url, Push, body)
        else:
            async with session.post(base_url + PATH_PUSH, data=body) as response:
                status = response.status
                await response.read()
        assert status == 200, f"the answering process said {status}"

    async def server_cpu_s() -> float:
        async with session.get(base_url + PATH_CPU) as response:
            return float(await response.json())
    try:
        await call()                                  # connection or stream open before the clock starts
        server_before_s, client_before_s, wall_before_s = await server_cpu_s(), process_cpu_s(), time.perf_counter()
        for _ in range(calls // concurrency):
            await asyncio.gather(*(call() for _ in range(concurrency)))
        wall_s, client_s = time.perf_counter() - wall_before_s, process_cpu_s() - client_before_s
        server_s = await server_cpu_s() - server_before_s
    finally:
        await streams.close()
        await session.close()
    made = calls // concurrency * concurrency
    return {"client_us": client_s / made * 1e6, "server_us": server_s / made * 1e6, "wall_us": wall_s / made * 1e6}


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=4_000, help="calls per round and way (at most 100,000)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls at once (at most 8, the stream's bound)")
    parser.add_argument("--body-bytes", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5, help="at most 20")
    parser.add_argument("--port", type=int, default=18_557)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.port)
        return 0
    if not (1 <= options.calls <= 100_000 and 1 <= options.concurrency <= SETTINGS.stream_calls_max and 1 <= options.rounds <= 20):
        parser.error("--calls 1..100000, --concurrency 1..8, --rounds 1..20")
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(options.port)])
    rows: dict[str, list[dict]] = {"post": [], "stream": []}
    try:
        poll_until(lambda: listening(options.port), what=f"the answering process to listen on port {options.port}",
                   timeout_s=START_TIMEOUT_S)
        for round_number in range(options.rounds):
            for way in rows:
                rows[way].append(asyncio.run(one_round(f"http://127.0.0.1:{options.port}", way, options.calls,
                                                       options.concurrency, b"x" * options.body_bytes)))
            print(f"round {round_number + 1}: " + ", ".join(
                f"{way} {rows[way][-1]['client_us'] + rows[way][-1]['server_us']:.0f} us" for way in rows), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    medians = {way: {key: statistics.median(row[key] for row in rows[way]) for key in ("client_us", "server_us", "wall_us")}
               for way in rows}
    print(f"\n{options.calls} calls x {options.rounds} rounds, {options.concurrency} at a time, {options.body_bytes}-byte bodies "
          "(medians, microseconds per call)\n")
    print("| way | caller CPU | answerer CPU | both | wall |\n|---|---:|---:|---:|---:|")
    for way, median in medians.items():
        print(f"| {way} | {median['client_us']:.0f} | {median['server_us']:.0f} | "
              f"{median['client_us'] + median['server_us']:.0f} | {median['wall_us']:.0f} |")
    both = {way: median["client_us"] + median["server_us"] for way, median in medians.items()}
    print(f"\nstream / POST, CPU of both sides: {both['stream'] / both['post']:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_gossip_transport-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"options": vars(options), "rounds": rows, "medians": medians}, indent=2))
    print(f"written {out.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
