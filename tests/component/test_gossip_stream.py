"""Gossip streams (node/gossip_stream.py): one websocket per peer carries gossip calls as frames.

What a user checks: many calls share one stream and each gets its own reply, in any order; a call that
times out or a stream that breaks fails fast and the next call opens a new stream; a peer that serves
no streams is called over HTTP; a node keeps its stream count bounded and closes idle ones; and a
stranger on the port cannot hold more than its share (streams per source and in total, frame size,
frames answered at once, silence) nor hold the node's shutdown. Real aiohttp servers on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from node.core.gossip_frames import decode_reply, decode_request, encode_reply, encode_request
from node.core.gossip_messages import Offer, Push, Sync
from node.core.gossip_settings import GossipSettings
from node.errors import SynapseError
from node.gossip_stream import PATH_STREAM, StreamClient, StreamClosed, StreamServer
from node.metrics import Metrics
from tests.component.test_gossip import FAST, QUIET, Net, make_net  # noqa: F401  (make_net: the fixture)
from tests.polling import poll_until_async

pytestmark = pytest.mark.timeout(60)

SETTINGS = GossipSettings(call_timeout_ms=2_000)
ServeFrame = Callable[[str, type, bytes], Awaitable[tuple[int, bytes]]]


async def echo(source: str, message_type: type, body: bytes) -> tuple[int, bytes]:
    """Answers b'<type>:<body>'; a body b'sleep:<s>' is answered after that many seconds."""
    if body.startswith(b"sleep:"):
        await asyncio.sleep(float(body[6:]))
    return 200, message_type.__name__.encode() + b":" + body


def refuse(reason: str, error: SynapseError, status: int) -> web.Response:
    return web.json_response(error.to_dict(), status=status)


class Peer:
    """A real aiohttp server with a StreamServer (or without the route: an older node)."""

    def __init__(self, settings: GossipSettings = SETTINGS, serve_frame: ServeFrame = echo, *, streams: bool = True) -> None:
        self.metrics = Metrics()
        self.server = StreamServer(settings=settings, serve_frame=serve_frame, refuse=refuse, metrics=self.metrics)
        self.upgrades_asked = 0
        self.streams = streams
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Peer:
        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.upgrades_asked += request.path == PATH_STREAM
            return await handler(request)
        app = web.Application(middlewares=[count])
        if self.streams:
            app.router.add_get(PATH_STREAM, self.server.handle)
            app.on_shutdown.append(self.server.close_all)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await asyncio.wait_for(self.runner.cleanup(), 10)


@pytest.fixture
async def peers():
    started: list[Peer] = []
    clients: list[StreamClient] = []

    async def make(*arguments: Any, **options: Any) -> Peer:
        started.append(await Peer(*arguments, **options).start())
        return started[-1]

    def client(settings: GossipSettings = SETTINGS, **options: Any) -> StreamClient:
        clients.append(StreamClient(settings=settings, metrics=Metrics(), logger=logging.getLogger("test.stream"), **options))
        clients[-1].open()
        return clients[-1]

    make.client = client
    yield make
    for each in clients:
        await each.close()
    for peer in started:
        await peer.stop()


async def raw_stream(session: aiohttp.ClientSession, peer: Peer) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(peer.url + PATH_STREAM, max_msg_size=0)


# --- frames (pure) -------------------------------------------------------------------------------

def test_frames_round_trip_and_refuse_what_is_not_a_frame() -> None:
    assert decode_request(encode_request(7, Push, b"body")) == (7, Push, b"body")
    assert decode_reply(encode_reply(2**32 - 1, 429, b"{}")) == (2**32 - 1, 429, b"{}")
    for bad in (b"", b"\x00\x00\x00\x01", struct.pack(">IB", 1, 0), struct.pack(">IB", 1, 9)):
        with pytest.raises(SynapseError, match="malformed gossip frame"):
            decode_request(bad)
    for bad in (b"\x00" * 5, struct.pack(">IH", 1, 42), struct.pack(">IH", 1, 600)):
        with pytest.raises(SynapseError, match="malformed gossip frame"):
            decode_reply(bad)


# --- the calling side ----------------------------------------------------------------------------

async def test_concurrent_calls_share_one_stream_and_each_gets_its_own_reply_in_any_order(peers) -> None:
    peer = await peers()
    client = peers.client()
    bodies = [b"sleep:%.2f" % (0.05 * (8 - index)) for index in range(8)]
    replies = await asyncio.gather(*(client.call(peer.url, (Offer, Push, Sync)[index % 3], body) for index, body in enumerate(bodies)))
    assert replies == [(200, (Offer, Push, Sync)[index % 3].__name__.encode() + b":" + body) for index, body in enumerate(bodies)]
    assert peer.metrics.get("gossip_streams_opened_total", side="server") == 1
    assert client.open_count() == 1


def _large_values_held_by_waiting_tasks(size: int) -> list[str]:
    """Every local of every suspended coroutine (down each task's await chain) that holds `size` bytes
    or more: a frame, a reply, a message wrapping one."""
    held = []
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        awaiting = task.get_coro()
        while awaiting is not None and getattr(awaiting, "cr_frame", None) is not None:
            for name, value in awaiting.cr_frame.f_locals.items():
                data = value.data if isinstance(value, aiohttp.WSMessage) else value
                if isinstance(data, (bytes, bytearray, memoryview)) and len(data) >= size:
                    held.append(f"{awaiting.cr_code.co_name}: {name}")
                if isinstance(value, asyncio.Future) and value.done() and not value.cancelled() and value.exception() is None \
                        and isinstance(value.result(), tuple) and any(isinstance(item, bytes) and len(item) >= size for item in value.result()):
                    held.append(f"{awaiting.cr_code.co_name}: {name} (a future's result)")
            awaiting = awaiting.cr_await
    return held


async def test_an_open_stream_holds_no_frame_or_reply_between_calls(peers) -> None:
    """A node keeps a stream per peer in each direction (199 of each at N=200): a frame or reply kept
    by a stream's loop while it waits for the next one is memory held for nothing, per stream."""
    peer = await peers()
    client = peers.client()
    body = b"x" * 40_000
    assert await client.call(peer.url, Push, body) == (200, b"Push:" + body)
    await asyncio.sleep(0)
    assert _large_values_held_by_waiting_tasks(len(body)) == []


async def test_a_timed_out_call_closes_its_stream_and_its_late_reply_is_dropped(peers) -> None:
    peer = await peers()
    client = peers.client()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.call(peer.url, Push, b"sleep:1")
    assert client.open_count() == 0
    assert await client.call(peer.url, Push, b"next") == (200, b"Push:next")
    assert peer.metrics.get("gossip_streams_opened_total", side="server") == 2


async def test_calls_waiting_on_a_stream_fail_at_once_when_it_closes(peers) -> None:
    release = asyncio.Event()

    async def stuck(source: str, message_type: type, body: bytes) -> tuple[int, bytes]:
        await release.wait()
        return 200, b""
    peer = await peers(serve_frame=stuck)
    client = peers.client()
    calls = [asyncio.create_task(client.call(peer.url, Push, b"x")) for _ in range(3)]
    await poll_until_async(lambda: peer.server.open_count() == 1, what="the stream to open", timeout_s=10)
    await peer.server.close_all()
    async with asyncio.timeout(10):     # without the stream's failure rule they would wait for `release`, set only after
        results = await asyncio.gather(*calls, return_exceptions=True)
    release.set()
    assert all(isinstance(result, StreamClosed) and isinstance(result, OSError) for result in results), results


async def test_a_message_over_stream_request_max_bytes_goes_as_a_post(peers) -> None:
    peer = await peers()
    client = peers.client(GossipSettings(stream_request_max_bytes=2_048))
    assert await client.call(peer.url, Push, b"x" * 2_000) == (200, b"Push:" + b"x" * 2_000)
    assert await client.call(peer.url, Push, b"x" * 2_100) is None
    assert peer.metrics.get("gossip_streams_opened_total", side="server") == 1 and client.open_count() == 1


async def test_a_peer_that_serves_no_streams_is_called_over_http_for_a_while(peers) -> None:
    older = await peers(streams=False)
    client = peers.client()
    assert await client.call(older.url, Push, b"x") is None
    assert await client.call(older.url, Push, b"x") is None
    assert older.upgrades_asked == 1            # not asked again within stream_fallback_ms
    assert client._metrics.get("gossip_stream_fallbacks_total", status="404") == 1


async def test_the_client_keeps_at_most_streams_max_closing_the_least_recently_used(peers) -> None:
    first, second, third = [await peers() for _ in range(3)]
    client = peers.client(GossipSettings(streams_max=2))
    for peer in (first, second, first, third):
        assert (await client.call(peer.url, Sync, b"x"))[0] == 200
    assert client.open_count() == 2
    await poll_until_async(lambda: second.server.open_count() == 0, what="the least recently used stream to close", timeout_s=10)
    assert first.server.open_count() == third.server.open_count() == 1


async def test_the_client_closes_streams_idle_for_stream_idle_ms(peers) -> None:
    clock = [100.0]
    first, second = await peers(), await peers()
    client = peers.client(GossipSettings(stream_idle_ms=1_000), monotonic_s=lambda: clock[0])
    await client.call(first.url, Sync, b"x")
    clock[0] += 0.5
    await client.call(second.url, Sync, b"x")
    assert client.open_count() == 2
    clock[0] += 0.8                             # first idle 1.3 s, second 0.8 s
    await client.call(second.url, Sync, b"x")
    assert client.open_count() == 1
    await poll_until_async(lambda: first.server.open_count() == 0, what="the idle stream to close", timeout_s=10)


# --- the answering side: what a stranger on the port can do --------------------------------------

async def test_streams_are_bounded_per_source_and_in_total(peers) -> None:
    peer = await peers(GossipSettings(inbound_streams_max=3, inbound_streams_per_source_max=2))
    sessions = {host: aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(host, 0)))
                for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3")}
    try:
        opened = [await raw_stream(sessions["127.0.0.1"], peer) for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as same_source:
            await raw_stream(sessions["127.0.0.1"], peer)
        opened.append(await raw_stream(sessions["127.0.0.2"], peer))
        with pytest.raises(aiohttp.WSServerHandshakeError) as full:
            await raw_stream(sessions["127.0.0.3"], peer)
        assert (same_source.value.status, full.value.status) == (429, 503)
        assert peer.server.open_count() == 3
        for stream in opened:
            await stream.close()
    finally:
        for session in sessions.values():
            await session.close()


async def test_a_caller_that_leaves_before_its_upgrade_is_answered_is_not_an_error() -> None:
    """A caller that gave up on its connect (its call timed out on a busy machine) has closed the
    connection by the time the upgrade is answered: not a failed request (the node logged an error with
    a traceback for each, 20-30 a second on an overloaded N=200 cluster), and its slot is given back."""
    server = StreamServer(settings=SETTINGS, serve_frame=echo, refuse=refuse, metrics=Metrics())
    escaped: list[BaseException] = []

    @web.middleware
    async def caller_leaves(request: web.Request, handler: Any) -> web.StreamResponse:
        request.transport.close()
        try:
            return await handler(request)
        except BaseException as error:
            escaped.append(error)
            raise
    app = web.Application(middlewares=[caller_leaves])
    app.router.add_get(PATH_STREAM, server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                await session.ws_connect(url + PATH_STREAM)
        await poll_until_async(lambda: server.open_count() == 0 and not server._by_source, timeout_s=10,
                               what="the stream's slot given back")
        assert escaped == []
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)


@pytest.mark.parametrize("frame, reason", [
    (b"\x00\x01", "malformed"),                                    # shorter than a header
    (struct.pack(">IB", 1, 9) + b"x", "malformed"),                # no such message
    (encode_request(1, Push, b"x" * 3_000), "bad_frame"),          # over the frame cap (2,048 + header)
    (struct.pack(">IB", 2**31 | 1, 2), "malformed"),               # a "reply" (the acceptor's bit) to no call, too short
])
async def test_a_frame_that_is_not_a_call_closes_the_stream_and_is_counted(peers, frame: bytes, reason: str) -> None:
    peer = await peers(GossipSettings(stream_request_max_bytes=2_048))
    async with aiohttp.ClientSession() as session:
        stream = await raw_stream(session, peer)
        await stream.send_bytes(frame)
        async with asyncio.timeout(10):
            message = await stream.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert peer.metrics.get("gossip_requests_refused_total", reason=reason) == 1


async def test_frames_of_one_stream_are_answered_at_most_inbound_per_source_max_at_once(peers) -> None:
    release, running, seen_max = asyncio.Event(), [0], [0]

    async def slow(source: str, message_type: type, body: bytes) -> tuple[int, bytes]:
        running[0] += 1
        seen_max[0] = max(seen_max[0], running[0])
        await release.wait()
        running[0] -= 1
        return 200, body
    peer = await peers(GossipSettings(inbound_per_source_max=4), serve_frame=slow)
    async with aiohttp.ClientSession() as session:
        stream = await raw_stream(session, peer)
        for call_id in range(40):
            await stream.send_bytes(encode_request(call_id, Offer, b"%d" % call_id))
        await poll_until_async(lambda: running[0] == 4, what="four frames being answered", timeout_s=10)
        release.set()
        async with asyncio.timeout(10):
            replies = [decode_reply((await stream.receive()).data) for _ in range(40)]
        await stream.close()
    assert seen_max[0] == 4
    assert sorted(call_id for call_id, _, _ in replies) == list(range(40))


async def test_a_caller_that_never_reads_its_replies_loses_its_stream(peers) -> None:
    peer = await peers(GossipSettings(call_timeout_ms=300))
    async with aiohttp.ClientSession() as session:
        stream = await raw_stream(session, peer)
        stream._response.connection.transport.pause_reading()   # the kernel's buffers fill, then the peer's writes wait
        for call_id in range(400):                               # up to 400 x 60 KB echoed: more than the socket buffers
            try:
                await asyncio.wait_for(stream.send_bytes(encode_request(call_id, Push, b"x" * 60_000)), 2)
            except (TimeoutError, ConnectionError):              # the peer stopped reading our frames, or closed
                break
        await poll_until_async(lambda: peer.metrics.get("gossip_requests_refused_total", reason="reply_not_read") >= 1,
                               what="the unread replies to close the stream", timeout_s=20)
        await poll_until_async(lambda: peer.server.open_count() == 0, what="the server to forget the stream", timeout_s=10)
        stream._response.connection.transport.resume_reading()
        await stream.close()


async def test_a_silent_stream_is_closed_after_two_idle_periods(peers) -> None:
    peer = await peers(GossipSettings(stream_idle_ms=100))
    async with aiohttp.ClientSession() as session:
        stream = await raw_stream(session, peer)
        async with asyncio.timeout(10):
            message = await stream.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await poll_until_async(lambda: peer.server.open_count() == 0, what="the server to forget the stream", timeout_s=10)


async def test_an_open_stream_does_not_hold_the_server_s_shutdown(peers) -> None:
    peer = await Peer().start()
    async with aiohttp.ClientSession() as session:
        stream = await raw_stream(session, peer)
        await poll_until_async(lambda: peer.server.open_count() == 1, what="the stream to open", timeout_s=10)
        await peer.stop()                       # bounded at 10 s; aiohttp alone would wait its 60 s shutdown timeout
        async with asyncio.timeout(10):
            assert (await stream.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await stream.close()
    assert peer.server.open_count() == 0


# --- through Gossip: the node's own wiring -------------------------------------------------------

def _streams_opened(net: Net) -> float:
    return sum(node.metric("gossip_streams_opened_total", side="server") for node in net.nodes)


@pytest.mark.parametrize("settings, streams", [
    ({}, True),                                 # the default: calls go over streams
    ({"streams_max": 0}, False),                # this node opens none: every call is a POST
    ({"inbound_streams_max": 0}, False),        # the peers serve none (503): callers fall back to POSTs
], ids=["streams", "streams off", "peers refuse streams"])
async def test_entries_converge_over_streams_and_over_http(make_net, settings: dict, streams: bool) -> None:
    net = make_net(4, settings={**FAST, **settings})
    await net.start()
    written = [await net.publish(index % 4, f"note {index}") for index in range(12)]
    await net.converged(len(written))
    assert (_streams_opened(net) > 0) is streams
    refused_upgrades = sum(node.metric("gossip_stream_fallbacks_total", status="503") for node in net.nodes)
    assert (refused_upgrades > 0) is ("inbound_streams_max" in settings)


async def test_an_open_stream_does_not_hold_the_node_s_shutdown(make_net) -> None:
    net = make_net(1, settings=QUIET)
    await net.start()
    node = net.nodes[0]
    async with aiohttp.ClientSession() as session:
        stream = await session.ws_connect(node.url + PATH_STREAM)
        # The runtime's order: the HTTP server shuts down (waiting for its handlers) before Gossip.stop().
        await asyncio.wait_for(node.runner.cleanup(), 10)    # aiohttp alone would wait its 60 s shutdown timeout
        async with asyncio.timeout(10):
            assert (await stream.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await stream.close()
