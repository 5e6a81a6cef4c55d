"""Gossip calls over one websocket per peer (GET /gossip/stream): the cheap path for Offer/Push/Sync.

Why it works as it does:

- Cost. An HTTP gossip call costs about 150 us of CPU on aiohttp (95 us the caller, 52 us the
  answerer: a request, headers, a response, a connection from the pool); one binary frame each way on
  an open stream costs about 65 us together (bench/bench_gossip_transport.py), and a POST to a peer not
  called within the pool's 15 s keep-alive also pays a TCP connection. With many nodes on one
  machine the cores are the bottleneck, and every entry is N x fanout calls. The frames carry the same
  message bodies and the same answers (node/core/gossip_frames.py), so the stream changes what a call
  costs, not what it means: the receiver reads a frame into the same admission, decoding and
  answering as POST /gossip/{offer,push,sync}, under the same bounds.

- HTTP stays. A peer that answers the upgrade with another status (an older node: 404; no free
  stream slot: 429/503) is called over HTTP for `stream_fallback_ms`; so is a call when its stream has
  `stream_calls_max` calls in flight, or when its message is over `stream_request_max_bytes`. A node with `streams_max = 0` never opens a stream, and still serves them.

- A stream is a connection, with a connection's failure rule: a call that times out or fails closes
  its stream (its replies would be stale), and every call waiting on it fails at once (anti-entropy
  repairs what they carried). A reply to a call given up on is dropped.

- Bounds (a stranger may open streams too). Client: at most `streams_max` streams (the least recently
  used idle one is closed for a new one), at most `stream_calls_max` calls in flight on one, a stream
  idle for `stream_idle_ms` closed. Server: at most `inbound_streams_max` streams, at most
  `inbound_streams_per_source_max` from one address (503/429 before the upgrade), request frames at
  most `stream_request_max_bytes` plus a header (larger: the stream is closed; the caller sends a
  larger message as a POST, whose body is read as a stream; so strangers pin at most 512 x 64 KiB), at most `inbound_per_source_max` frames
  of one stream answered at once (beyond it the stream is not read: TCP pushes back), a reply that
  cannot be written within `call_timeout_ms` closes the stream, and a stream silent for
  2 x `stream_idle_ms` is closed (this also ends a frame that never finishes arriving).

- Streams live long (`stream_idle_ms`, 5 minutes). What costs is opening and closing one (an upgrade
  request, then a close handshake), not keeping it: an idle websocket costs no CPU (no pings; a dead
  peer shows as a call's timeout). Peers are chosen at random, so a short idle bound closed and reopened
  streams all the time; `streams_max` (256, the most nodes `cluster up` starts) bounds what is kept.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web

from node.core.gossip_frames import CALL_ID_MAX, FRAME_HEADER_BYTES_MAX, decode_reply, decode_request, encode_reply, encode_request
from node.core.gossip_settings import GossipSettings
from node.errors import BadRequest, SynapseError, Unavailable
from node.metrics import Metrics

PATH_STREAM = "/gossip/stream"
SERVER_IDLE_FACTOR = 2          # the server waits this many times the client's idle bound before it closes
CLOSE_TIMEOUT_S = 1.0           # a close handshake the peer does not answer is cut after this
SWEEP_EVERY_FRACTION = 4        # idle streams are looked for every stream_idle_ms / 4

ServeFrame = Callable[[str, type, bytes], Awaitable[tuple[int, bytes]]]
RefuseRequest = Callable[[str, SynapseError, int], web.Response]


class StreamClosed(ConnectionResetError):
    """The stream a call waited on closed before its reply came (an OSError: the call failed)."""


def reply_frame_max_bytes(settings: GossipSettings) -> int:
    return settings.request_body_max_bytes + FRAME_HEADER_BYTES_MAX


def request_frame_max_bytes(settings: GossipSettings) -> int:
    return min(settings.stream_request_max_bytes, settings.request_body_max_bytes) + FRAME_HEADER_BYTES_MAX


@dataclass(eq=False)
class _Stream:
    url: str
    socket: aiohttp.ClientWebSocketResponse
    used_at_s: float
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    reader: asyncio.Task | None = None
    closed: bool = False


class StreamClient:
    """The calling side: one stream per peer base URL, opened on first use."""

    def __init__(self, *, settings: GossipSettings, metrics: Metrics, logger: logging.Logger,
                 local_host: str | None = None, monotonic_s: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._metrics = metrics
        self._logger = logger
        self._local_host = local_host
        self._monotonic_s = monotonic_s
        self._session: aiohttp.ClientSession | None = None
        self._streams: dict[str, _Stream] = {}          # insertion order = least recently used first
        self._connecting: dict[str, asyncio.Task] = {}
        self._http_until_s: dict[str, float] = {}       # peers called over HTTP until then
        self._closing: set[asyncio.Task] = set()
        self._call_ids = itertools.count(1)
        self._swept_at_s = 0.0

    @property
    def enabled(self) -> bool:
        return self._settings.streams_max > 0

    def open(self) -> None:
        """Create the client session (inside the running loop)."""
        assert self._session is None, "StreamClient.open() called twice"
        connector = aiohttp.TCPConnector(limit=self._settings.streams_max + self._settings.stream_calls_max,
                                         local_addr=(self._local_host, 0) if self._local_host else None)
        self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))

    async def close(self) -> None:
        for task in list(self._connecting.values()):
            task.cancel()
        for stream in list(self._streams.values()):
            self._discard(stream)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=CLOSE_TIMEOUT_S)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def open_count(self) -> int:
        return len(self._streams)

    async def call(self, base_url: str, message_type: type, body: bytes) -> tuple[int, bytes] | None:
        """(status, reply body) of one call, or None: use HTTP for this one. Raises OSError or
        aiohttp.ClientError when the peer cannot be reached or the stream broke; the caller bounds the
        whole call in time (a cancelled call closes its stream)."""
        if len(body) + FRAME_HEADER_BYTES_MAX > request_frame_max_bytes(self._settings):
            return None
        stream = await self._stream_for(base_url)
        if stream is None or len(stream.pending) >= self._settings.stream_calls_max:
            return None
        call_id = next(self._call_ids) % (CALL_ID_MAX + 1)
        answer = asyncio.get_running_loop().create_future()
        stream.pending[call_id] = answer
        stream.used_at_s = self._monotonic_s()
        try:
            await stream.socket.send_bytes(encode_request(call_id, message_type, body))
            return await answer
        except BaseException:
            self._discard(stream)
            raise
        finally:
            stream.pending.pop(call_id, None)

    async def _stream_for(self, base_url: str) -> _Stream | None:
        self._sweep_idle()
        stream = self._streams.get(base_url)
        if stream is not None:
            self._streams[base_url] = self._streams.pop(base_url)   # most recently used last
            return stream
        if self._session is None or self._http_until_s.get(base_url, 0.0) > self._monotonic_s():
            return None
        task = self._connecting.get(base_url)
        if task is None:
            if len(self._streams) + len(self._connecting) >= self._settings.streams_max and not self._evict_one():
                return None
            task = asyncio.get_running_loop().create_task(self._connect(base_url), name="gossip-stream-connect")
            self._connecting[base_url] = task
            task.add_done_callback(lambda done: self._connected(base_url, done))
        return await asyncio.shield(task)

    def _connected(self, base_url: str, task: asyncio.Task) -> None:
        self._connecting.pop(base_url, None)
        if not task.cancelled():
            task.exception()   # retrieved: a connect whose callers all gave up must not log "never retrieved"

    async def _connect(self, base_url: str) -> _Stream | None:
        assert self._session is not None, "connects start only while the session is open"
        try:
            async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
                socket = await self._session.ws_connect(base_url + PATH_STREAM, autoping=True, compress=0,
                                                        max_msg_size=reply_frame_max_bytes(self._settings))
        except aiohttp.WSServerHandshakeError as error:
            # An older peer (404) or one without a free stream slot (429/503): HTTP for a while.
            self._http_until_s[base_url] = self._monotonic_s() + self._settings.stream_fallback_ms / 1000
            self._metrics.inc("gossip_stream_fallbacks_total", status=str(error.status))
            return None
        stream = _Stream(url=base_url, socket=socket, used_at_s=self._monotonic_s())
        self._streams[base_url] = stream
        stream.reader = asyncio.get_running_loop().create_task(self._read(stream), name="gossip-stream-reader")
        self._metrics.inc("gossip_streams_opened_total", side="client")
        self._metrics.set("gossip_streams_open", len(self._streams), side="client")
        return stream

    async def _read(self, stream: _Stream) -> None:
        try:
            while self._deliver(stream, await stream.socket.receive()):
                pass
        finally:
            self._discard(stream)

    def _deliver(self, stream: _Stream, message: aiohttp.WSMessage) -> bool:
        """Hand one reply to its call; False ends the stream. A function of its own so that the reader
        holds no reply while it waits for the next one (a stream per peer: 199 of them at N=200)."""
        if message.type is not aiohttp.WSMsgType.BINARY:
            return False
        try:
            call_id, status, body = decode_reply(message.data)
        except BadRequest as error:    # a peer that sends garbage loses its stream
            self._logger.warning("gossip_stream_bad_reply", extra={"fields": {"peer": stream.url, "error": error.message}})
            return False
        answer = stream.pending.get(call_id)
        if answer is not None and not answer.done():
            answer.set_result((status, body))
        return True

    def _discard(self, stream: _Stream) -> None:
        """Close a stream and fail every call waiting on it (idempotent)."""
        if stream.closed:
            return
        stream.closed = True
        if self._streams.get(stream.url) is stream:
            del self._streams[stream.url]
        self._metrics.set("gossip_streams_open", len(self._streams), side="client")
        for answer in stream.pending.values():
            if not answer.done():
                answer.set_exception(StreamClosed(f"the gossip stream to {stream.url} closed"))
        if stream.reader is not None and stream.reader is not asyncio.current_task():
            stream.reader.cancel()
        task = asyncio.get_running_loop().create_task(_close_quietly(stream.socket), name="gossip-stream-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _evict_one(self) -> bool:
        for stream in self._streams.values():
            if not stream.pending:
                self._discard(stream)
                return True
        return False

    def _sweep_idle(self) -> None:
        now_s = self._monotonic_s()
        idle_s = self._settings.stream_idle_ms / 1000
        if now_s - self._swept_at_s < idle_s / SWEEP_EVERY_FRACTION:
            return
        self._swept_at_s = now_s
        for stream in [stream for stream in self._streams.values() if not stream.pending and now_s - stream.used_at_s > idle_s]:
            self._discard(stream)
        for base_url in [url for url, until_s in self._http_until_s.items() if until_s <= now_s]:
            del self._http_until_s[base_url]


async def _close_quietly(socket: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await socket.close()
    except (TimeoutError, OSError, aiohttp.ClientError, RuntimeError):
        pass


class StreamServer:
    """The answering side: GET /gossip/stream upgrades to a websocket whose frames are gossip calls."""

    def __init__(self, *, settings: GossipSettings, serve_frame: ServeFrame, refuse: RefuseRequest, metrics: Metrics) -> None:
        """`serve_frame(source, message type, body)` -> (status, payload): the HTTP path's admission,
        decoding and answer. `refuse(reason, error, status)`: the HTTP path's refusal response."""
        self._settings = settings
        self._serve_frame = serve_frame
        self._refuse = refuse
        self._metrics = metrics
        self._by_source: dict[str, int] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._stopping = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        source = request.remote or "?"
        settings = self._settings
        if self._stopping:
            return self._refuse("stopping", Unavailable("this node is stopping", hint="retry on another node"), 503)
        if len(self._sockets) >= settings.inbound_streams_max:
            return self._refuse("streams_busy", Unavailable(
                f"this node has {settings.inbound_streams_max} gossip streams open", hint="call over HTTP"), 503)
        if self._by_source.get(source, 0) >= settings.inbound_streams_per_source_max:
            return self._refuse("source_streams_busy", SynapseError(
                f"{source} has {settings.inbound_streams_per_source_max} gossip streams open here",
                hint="use the open streams, or call over HTTP"), 429)
        socket = web.WebSocketResponse(max_msg_size=request_frame_max_bytes(settings), autoping=True, compress=False,
                                       receive_timeout=settings.stream_idle_ms * SERVER_IDLE_FACTOR / 1000)
        self._sockets.add(socket)
        self._by_source[source] = self._by_source.get(source, 0) + 1
        self._metrics.inc("gossip_streams_opened_total", side="server")
        try:
            try:
                await socket.prepare(request)
            except ConnectionError:    # the caller left first (a connect it gave up on): nothing to answer
                return socket
            await self._serve(socket, source)
        finally:
            self._sockets.discard(socket)
            self._by_source[source] -= 1
            if not self._by_source[source]:
                del self._by_source[source]
        return socket

    def open_count(self) -> int:
        return len(self._sockets)

    async def close_all(self, *_: object) -> None:
        """Close every stream (on the application's shutdown: a handler that waits on a quiet peer
        would otherwise hold the server's shutdown)."""
        self._stopping = True
        sockets = list(self._sockets)
        if sockets:
            await asyncio.wait([asyncio.get_running_loop().create_task(_close_quietly(socket)) for socket in sockets],
                               timeout=CLOSE_TIMEOUT_S * 2)

    async def _serve(self, socket: web.WebSocketResponse, source: str) -> None:
        slots = asyncio.Semaphore(self._settings.inbound_per_source_max)
        answering: set[asyncio.Task] = set()
        try:
            while not self._stopping:
                await slots.acquire()
                try:
                    message = await socket.receive()
                except TimeoutError:                  # silent for too long, or a frame that never ends
                    return
                task = self._dispatch(socket, source, message)
                del message                           # not held while waiting for the next frame
                if task is None:
                    return
                answering.add(task)
                task.add_done_callback(lambda done: (answering.discard(done), slots.release()))
        finally:
            for task in answering:
                task.cancel()
            await _close_quietly(socket)

    def _dispatch(self, socket: web.WebSocketResponse, source: str, message: aiohttp.WSMessage) -> asyncio.Task | None:
        """Start answering one frame, or None: the stream ends. A function of its own so that the loop
        holds no frame while it waits for the next one (a stream per peer: 199 of them at N=200)."""
        if message.type is not aiohttp.WSMsgType.BINARY:
            if message.type is aiohttp.WSMsgType.ERROR:
                self._metrics.inc("gossip_requests_refused_total", reason="bad_frame")
            return None
        try:
            call_id, message_type, body = decode_request(message.data)
        except BadRequest:
            self._metrics.inc("gossip_requests_refused_total", reason="malformed")
            return None
        return asyncio.get_running_loop().create_task(self._answer(socket, source, call_id, message_type, body))

    async def _answer(self, socket: web.WebSocketResponse, source: str, call_id: int, message_type: type, body: bytes) -> None:
        status, payload = await self._serve_frame(source, message_type, body)
        try:
            async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
                await socket.send_bytes(encode_reply(call_id, status, payload))
        except (TimeoutError, OSError, RuntimeError):   # a caller that does not read its replies loses its stream
            self._metrics.inc("gossip_requests_refused_total", reason="reply_not_read")
            await _close_quietly(socket)
