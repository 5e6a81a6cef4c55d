"""Gossip calls over one websocket per pair of nodes (GET /gossip/stream): the cheap path for Offer/Push/Sync.

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

- One stream per pair of nodes, not per direction. The opener sends a signed hello
  (node/core/stream_hello.py: its id, the callee's id, the time, a nonce, its genesis key's signature);
  the node that accepts a stream whose hello proves a member calls that member back over it, with call
  ids that carry the acceptor's bit (node/core/gossip_frames.py), so each end tells a reply to its own
  call from a call of the other end. A stream costs ~13-14 KB in each process (the websocket, its
  connection and request objects); every node calls every peer sooner or later, so at N=200 this halves
  ~5 MB per node. When both opened a stream at once, both keep the one opened by the smaller node id
  and the other is closed (after its calls in flight). An unproven hello (a stranger claiming to be a
  member, a stale or replayed hello) changes nothing: the stream carries its opener's calls, answered
  with every bound, and this node calls that peer over a stream of its own. The opener closes a stream
  idle both ways; the acceptor only stops calling over it.

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
import secrets
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web

from node.core.gossip_frames import (CALL_NUMBER_MAX, FRAME_HEADER_BYTES_MAX, call_id_for, decode_reply, decode_request,
                                     encode_reply, encode_request, is_reply)
from node.core.gossip_settings import GossipSettings
from node.core.stream_hello import HELLO_HEADER, HelloReplays, Verify, check_hello, make_hello, parse_hello
from node.errors import BadRequest, SynapseError, Unavailable
from node.identity import verify_signature
from node.metrics import Metrics

PATH_STREAM = "/gossip/stream"
SERVER_IDLE_FACTOR = 2          # the server waits this many times the client's idle bound before it closes
CLOSE_TIMEOUT_S = 1.0           # a close handshake the peer does not answer is cut after this
SWEEP_EVERY_FRACTION = 4        # idle streams are looked for every stream_idle_ms / 4

ServeFrame = Callable[[str, type, bytes], Awaitable[tuple[int, bytes]]]
RefuseRequest = Callable[[str, SynapseError, int], web.Response]
MakeHello = Callable[[str], "str | None"]       # a peer's base URL -> this node's signed hello to it, or None
# A hello -> (the base URL of the member it proves, whether that member's stream is the one the pair keeps), or None
CheckHello = Callable[[str], "tuple[str, bool] | None"]


class StreamClosed(ConnectionResetError):
    """The stream a call waited on closed before its reply came (an OSError: the call failed)."""


def reply_frame_max_bytes(settings: GossipSettings) -> int:
    return settings.request_body_max_bytes + FRAME_HEADER_BYTES_MAX


def request_frame_max_bytes(settings: GossipSettings) -> int:
    return min(settings.stream_request_max_bytes, settings.request_body_max_bytes) + FRAME_HEADER_BYTES_MAX


@dataclass(eq=False)
class _Stream:
    socket: aiohttp.ClientWebSocketResponse | web.WebSocketResponse
    source: str                      # the other end's address: its calls are admitted per source
    opened_here: bool                # this node opened it (its call ids never carry the acceptor's bit)
    used_at_s: float                 # the last call either way
    url: str | None = None           # this node calls the other end over it; None: it only answers
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    answering: set[asyncio.Task] = field(default_factory=set)
    reader: asyncio.Task | None = None
    closed: bool = False
    retiring: bool = False           # replaced by the peer's stream: closed once its last call is answered


class _Frames:
    """What both ends of a stream do with what they read: answer the other end's calls (through
    serve_frame: the HTTP path's admission, decoding and answer) and hand replies to this end's calls."""

    def __init__(self, *, settings: GossipSettings, metrics: Metrics, logger: logging.Logger,
                 serve_frame: ServeFrame | None, monotonic_s: Callable[[], float]) -> None:
        self._settings = settings
        self._metrics = metrics
        self._logger = logger
        self._serve_frame = serve_frame
        self._monotonic_s = monotonic_s

    async def _read_frames(self, stream: _Stream) -> None:
        """Until the stream ends. At most inbound_per_source_max of the other end's calls are answered
        at once; beyond that the stream is not read (TCP pushes back)."""
        slots = asyncio.Semaphore(self._settings.inbound_per_source_max)
        try:
            while True:
                await slots.acquire()
                try:
                    message = await stream.socket.receive()
                except TimeoutError:                  # silent for too long, or a frame that never ends
                    return
                going = self._take(stream, message, slots)
                del message                           # not held while waiting for the next frame
                if not going:
                    return
        finally:
            for task in stream.answering:
                task.cancel()

    def _take(self, stream: _Stream, message: aiohttp.WSMessage, slots: asyncio.Semaphore) -> bool:
        """One frame: a reply is handed to its call, a call starts being answered. False: the stream ends.
        A function of its own so that the loop holds no frame while it waits for the next one."""
        if message.type is not aiohttp.WSMsgType.BINARY:
            if message.type is aiohttp.WSMsgType.ERROR:
                self._metrics.inc("gossip_requests_refused_total", reason="bad_frame")
            return False
        if is_reply(message.data, opened_here=stream.opened_here):
            slots.release()
            return self._deliver(stream, message.data)
        if self._serve_frame is None:
            self._metrics.inc("gossip_requests_refused_total", reason="malformed")
            return False
        try:
            call_id, message_type, body = decode_request(message.data)
        except BadRequest:
            self._metrics.inc("gossip_requests_refused_total", reason="malformed")
            return False
        stream.used_at_s = self._monotonic_s()
        task = asyncio.get_running_loop().create_task(self._answer(stream, call_id, message_type, body))
        stream.answering.add(task)
        task.add_done_callback(lambda done: (stream.answering.discard(done), slots.release()))
        return True

    def _deliver(self, stream: _Stream, frame: bytes) -> bool:
        try:
            call_id, status, body = decode_reply(frame)
        except BadRequest as error:    # a peer that sends garbage loses its stream
            if stream.url is None:     # not a peer this node calls: a stranger's garbage, counted, not logged
                self._metrics.inc("gossip_requests_refused_total", reason="malformed")
            else:
                self._logger.warning("gossip_stream_bad_reply", extra={"fields": {"peer": stream.url, "error": error.message}})
            return False
        answer = stream.pending.get(call_id)
        if answer is not None and not answer.done():
            answer.set_result((status, body))
        return True

    async def _answer(self, stream: _Stream, call_id: int, message_type: type, body: bytes) -> None:
        assert self._serve_frame is not None, "calls are answered only where serve_frame is set"
        status, payload = await self._serve_frame(stream.source, message_type, body)
        try:
            async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
                await stream.socket.send_bytes(encode_reply(call_id, status, payload))
        except (TimeoutError, OSError, RuntimeError):   # a caller that does not read its replies loses its stream
            self._metrics.inc("gossip_requests_refused_total", reason="reply_not_read")
            await self._end(stream)

    async def _end(self, stream: _Stream) -> None:
        raise NotImplementedError


class StreamClient(_Frames):
    """The calling side: one stream per peer base URL, opened on first use, or one the peer opened
    with a hello that proved who it is (`adopt`)."""

    def __init__(self, *, settings: GossipSettings, metrics: Metrics, logger: logging.Logger,
                 local_host: str | None = None, monotonic_s: Callable[[], float] = time.monotonic,
                 serve_frame: ServeFrame | None = None, hello: MakeHello | None = None) -> None:
        """`serve_frame`: answers the calls a peer sends back over a stream this node opened (None: such
        a call ends the stream). `hello(url)`: the signed hello sent when opening a stream to url."""
        super().__init__(settings=settings, metrics=metrics, logger=logger, serve_frame=serve_frame, monotonic_s=monotonic_s)
        self._local_host = local_host
        self._hello = hello
        self._session: aiohttp.ClientSession | None = None
        self._streams: dict[str, _Stream] = {}          # insertion order = least recently used first
        self._connecting: dict[str, asyncio.Task] = {}
        self._http_until_s: dict[str, float] = {}       # peers called over HTTP until then
        self._closing: set[asyncio.Task] = set()
        self._call_numbers = itertools.count(1)
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
        call_id = call_id_for(next(self._call_numbers) % (CALL_NUMBER_MAX + 1), opened_here=stream.opened_here)
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
            if stream.retiring and not stream.pending:
                self._discard(stream)

    def adopt(self, base_url: str, stream: _Stream, *, preferred: bool) -> bool:
        """Call `base_url` over a stream it opened here (its hello proved who it is). When this node has
        (or is opening) a stream of its own to it too, both opened at once: the pair keeps the stream
        opened by the node with the smaller id (`preferred`: the peer's), so that each side decides alike
        and one of the two is closed. True if adopted."""
        if not self.enabled or self._session is None or stream.closed:
            return False
        own = self._streams.get(base_url)
        if own is not None or base_url in self._connecting:
            if not preferred:
                return False
            if own is not None:
                self._retire(own)
        elif len(self._streams) >= self._settings.streams_max and not self._evict_one():
            return False
        stream.url = base_url
        self._streams[base_url] = stream
        self._metrics.inc("gossip_streams_opened_total", side="adopted")
        self._metrics.set("gossip_streams_open", len(self._streams), side="client")
        return True

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
        hello = self._hello(base_url) if self._hello is not None else None
        try:
            async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
                socket = await self._session.ws_connect(base_url + PATH_STREAM, autoping=True, compress=0,
                                                        max_msg_size=reply_frame_max_bytes(self._settings),
                                                        headers={HELLO_HEADER: hello} if hello else None)
        except aiohttp.WSServerHandshakeError as error:
            # An older peer (404) or one without a free stream slot (429/503): HTTP for a while.
            self._http_until_s[base_url] = self._monotonic_s() + self._settings.stream_fallback_ms / 1000
            self._metrics.inc("gossip_stream_fallbacks_total", status=str(error.status))
            return None
        adopted = self._streams.get(base_url)
        if adopted is not None:         # the peer's stream, the one the pair keeps, came while this one opened
            await _close_quietly(socket)
            return adopted
        peer = socket.get_extra_info("peername")
        stream = _Stream(socket=socket, source=peer[0] if peer else "?", opened_here=True, used_at_s=self._monotonic_s(), url=base_url)
        self._streams[base_url] = stream
        stream.reader = asyncio.get_running_loop().create_task(self._read(stream), name="gossip-stream-reader")
        self._metrics.inc("gossip_streams_opened_total", side="client")
        self._metrics.set("gossip_streams_open", len(self._streams), side="client")
        return stream

    async def _read(self, stream: _Stream) -> None:
        try:
            await self._read_frames(stream)
        finally:
            self._discard(stream)

    async def _end(self, stream: _Stream) -> None:
        self._discard(stream)

    def drop(self, stream: _Stream) -> None:
        """A stream the peer opened has ended: fail this node's calls on it (if it called over it)."""
        if stream.url is not None:
            self._discard(stream)

    def _discard(self, stream: _Stream) -> None:
        """Close a stream and fail every call waiting on it (idempotent)."""
        if stream.closed:
            return
        stream.closed = True
        self._forget(stream)
        for answer in stream.pending.values():
            if not answer.done():
                answer.set_exception(StreamClosed(f"the gossip stream to {stream.url} closed"))
        if stream.reader is not None and stream.reader is not asyncio.current_task():
            stream.reader.cancel()
        task = asyncio.get_running_loop().create_task(_close_quietly(stream.socket), name="gossip-stream-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _forget(self, stream: _Stream) -> None:
        """Stop calling over a stream (it stays open if the peer opened it: it still carries the peer's calls)."""
        if stream.url is not None and self._streams.get(stream.url) is stream:
            del self._streams[stream.url]
            self._metrics.set("gossip_streams_open", len(self._streams), side="client")

    def _retire(self, stream: _Stream) -> None:
        """Stop calling over one of this node's streams; close it now, or after its last call."""
        self._forget(stream)
        if stream.pending:
            stream.retiring = True
        else:
            self._discard(stream)

    def _evict_one(self) -> bool:
        for stream in self._streams.values():
            if not stream.pending:
                if stream.opened_here:
                    self._discard(stream)
                else:
                    self._forget(stream)
                return True
        return False

    def _sweep_idle(self) -> None:
        """Close the streams this node opened that carried no call either way for stream_idle_ms (the
        peer closes the ones it opened)."""
        now_s = self._monotonic_s()
        idle_s = self._settings.stream_idle_ms / 1000
        if now_s - self._swept_at_s < idle_s / SWEEP_EVERY_FRACTION:
            return
        self._swept_at_s = now_s
        for stream in [stream for stream in self._streams.values()
                       if stream.opened_here and not stream.pending and now_s - stream.used_at_s > idle_s]:
            self._discard(stream)
        for base_url in [url for url, until_s in self._http_until_s.items() if until_s <= now_s]:
            del self._http_until_s[base_url]


async def _close_quietly(socket: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await socket.close()
    except (TimeoutError, OSError, aiohttp.ClientError, RuntimeError):
        pass


class StreamServer(_Frames):
    """The answering side: GET /gossip/stream upgrades to a websocket whose frames are gossip calls."""

    def __init__(self, *, settings: GossipSettings, serve_frame: ServeFrame, refuse: RefuseRequest, metrics: Metrics,
                 logger: logging.Logger | None = None, check_hello: CheckHello | None = None,
                 client: StreamClient | None = None, monotonic_s: Callable[[], float] = time.monotonic) -> None:
        """`serve_frame(source, message type, body)` -> (status, payload): the HTTP path's admission,
        decoding and answer. `refuse(reason, error, status)`: the HTTP path's refusal response.
        `check_hello(hello)` -> (the base URL of the member the opener proved to be, whether the pair
        keeps its stream), or None; `client` then adopts the stream for this node's calls to it."""
        super().__init__(settings=settings, metrics=metrics, logger=logger or logging.getLogger("synapse.gossip"),
                         serve_frame=serve_frame, monotonic_s=monotonic_s)
        self._refuse = refuse
        self._check_hello = check_hello
        self._client = client
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
        hello = request.headers.get(HELLO_HEADER)
        proven = self._check_hello(hello) if hello is not None and self._check_hello is not None else None
        peer_url = proven[0] if proven else None
        # A proven member's stream also brings the replies to this node's calls, up to a whole body.
        socket = web.WebSocketResponse(max_msg_size=reply_frame_max_bytes(settings) if peer_url else request_frame_max_bytes(settings),
                                       autoping=True, compress=False,
                                       receive_timeout=settings.stream_idle_ms * SERVER_IDLE_FACTOR / 1000)
        self._sockets.add(socket)
        self._by_source[source] = self._by_source.get(source, 0) + 1
        self._metrics.inc("gossip_streams_opened_total", side="server")
        stream = _Stream(socket=socket, source=source, opened_here=False, used_at_s=self._monotonic_s())
        try:
            try:
                await socket.prepare(request)
            except ConnectionError:    # the caller left first (a connect it gave up on): nothing to answer
                return socket
            if proven is not None and self._client is not None:
                self._client.adopt(proven[0], stream, preferred=proven[1])
            await self._read_frames(stream)
        finally:
            if self._client is not None:
                self._client.drop(stream)
            self._sockets.discard(socket)
            self._by_source[source] -= 1
            if not self._by_source[source]:
                del self._by_source[source]
            await _close_quietly(socket)
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

    async def _end(self, stream: _Stream) -> None:
        await _close_quietly(stream.socket)


class StreamHellos:
    """This node's signed hellos, and its check of the hellos of streams opened here (node/core/stream_hello.py)."""

    def __init__(self, *, self_id: str, sign: Callable[[bytes], bytes], public_keys: Mapping[str, bytes],
                 urls: Mapping[str, str], settings: GossipSettings, now_ms: Callable[[], int], metrics: Metrics,
                 verify: Verify = verify_signature, nonce: Callable[[], str] = lambda: secrets.token_hex(16)) -> None:
        """`urls`: the peers' node ids -> base URLs (genesis): a proven hello names the URL this node
        calls its sender by."""
        self._self_id = self_id
        self._sign = sign
        self._public_keys = public_keys
        self._urls = urls
        self._ids_by_url = {url: node_id for node_id, url in urls.items()}
        self._settings = settings
        self._now_ms = now_ms
        self._metrics = metrics
        self._verify = verify
        self._nonce = nonce
        self._replays = HelloReplays(window_ms=settings.stream_hello_skew_ms, entries_max=settings.stream_hellos_remembered_max)

    def make(self, base_url: str) -> str | None:
        peer_id = self._ids_by_url.get(base_url)
        if peer_id is None:
            return None
        return make_hello(from_id=self._self_id, to_id=peer_id, at_ms=self._now_ms(), nonce=self._nonce(), sign=self._sign)

    def check(self, text: str) -> tuple[str, bool] | None:
        """(the base URL of the member the hello proves, whether its stream is the one the pair keeps:
        its id is the smaller), or None (counted by reason)."""
        now_ms = self._now_ms()
        try:
            hello = parse_hello(text)
            check_hello(hello, self_id=self._self_id, public_keys=self._public_keys, verify=self._verify,
                        now_ms=now_ms, skew_ms=self._settings.stream_hello_skew_ms)
            url = self._urls.get(hello.from_id)
            if url is None:
                raise BadRequest("not_a_peer")
            if not self._replays.remember(hello.nonce, now_ms):
                raise BadRequest("replayed")
        except BadRequest as refused:
            self._metrics.inc("gossip_stream_hellos_refused_total", reason=refused.message)
            return None
        return url, hello.from_id < self._self_id
