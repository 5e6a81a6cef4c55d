"""Gossip of the signed log over aiohttp: the thin transport that executes the protocol core's effects.

Why it works as it does:

- The protocol (eager push with offer/want, push-pull anti-entropy, admission rules, peer choice,
  backoff, the skip-a-round rule) is decided by node/core/gossip_protocol.py, a pure state machine
  with no clock, randomness or I/O; its messages and their bytes are node/core/gossip_messages.py.
  This module does what the core cannot: calls with timeouts (each a frame on the peer's gossip
  stream, node/gossip_stream.py, or a POST to a peer without one), reading bodies with caps, fsync
  through one writer thread, timers, metrics and log lines. A call is answered the same way whichever
  way it came: one admission (`_admit`), one decoding and answer (`_answer_body`). node/gossip_inmem.py is its
  in-memory twin (virtual clock, faults), so the same core is tested at 50 nodes in one process.

- Persist before anything else. The core emits `Persist` before an entry may become visible; this
  transport appends it to the log file (on one writer thread, with group commit: concurrent requests
  share one write), and only then tells the core (`persisted`), which adds the entry, reports it
  `Visible` and forwards it. A local entry is fsynced too (`Persist.durable`): it is on disk before
  anyone can see it, so its sequence number can never be reused after a crash, even a power loss.
  Entries from peers are written without an fsync of their own (an fsync per hop was most of a
  flood's latency when a machine runs many nodes); they survive kill -9 (the page cache does), and
  the next local fsync or the kernel's writeback flushes them. After a crash, LogFile drops a torn
  tail, `load()` re-verifies every stored entry, and anti-entropy fetches what was missed.

- Never behind its own entries: after start, local writes wait (at most `first_write_wait_ms`) until
  one anti-entropy round completed and every own entry a peer's digest names was pulled back; past
  that bound the write goes ahead and a warning says why (`gossip_first_write_unsynced`,
  `gossip_own_entries_missing`).

- A hostile or broken peer cannot crash, stall or bloat a node. Every request body is read with a
  cap (413) and a timeout (408); malformed bodies are a 400 that changes nothing; the number of
  requests handled at once is bounded in total (503) and per source address (429); the core bounds
  entries being processed (`inbox_max`, 503), remembered ids and background exchanges. Every
  outbound call has a timeout; a 429/503 answer means busy (no backoff). Errors are JSON
  {"error", "message", "hint"} with a proper HTTP status.

- GET /gossip/visibility?ids=... returns when each entry became visible here (CLOCK_REALTIME in ns):
  it is what the gossip benchmark reads to measure propagation without polling during it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import logging
import random
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import aiohttp
from aiohttp import web

from node.core.crdt_log import CrdtLog
from node.core.entries import Entry, is_entry_id, is_node_id
from node.core.gossip_effects import Count, Effect, Event, Gauge, Persist, Refuse, Reply, Send, Visible, Wake
from node.core.gossip_messages import (  # noqa: F401  (re-exported: tests, bench and peers' tools import them from here)
    DIGEST_HASH_BYTES, Offer, Push, Pushed, Sync, Synced, Want, decode_message, digest_hash_of,
)
from node.core.gossip_protocol import GossipCore
from node.core.gossip_rules import BoundedMap
from node.core.gossip_settings import GossipSettings, fanout_for  # noqa: F401  (re-exported)
from node.errors import BadRequest, ConfigError, SynapseError, Unavailable
from node.gossip_stream import PATH_STREAM, StreamClient, StreamHellos, StreamServer
from node.metrics import Metrics
from node.limits import (
    GOSSIP_STOP_TIMEOUT_MS, GOSSIP_VISIBILITY_MEMORY_ENTRIES_MAX, GOSSIP_VISIBILITY_QUERY_IDS_MAX, GOSSIP_WRITE_GATE_POLL_MS,
)

PATH_OFFER = "/gossip/offer"
PATH_PUSH = "/gossip/push"
PATH_SYNC = "/gossip/sync"
PATH_VISIBILITY = "/gossip/visibility"
CONTENT_TYPE = "application/msgpack"
PATHS: Mapping[type, str] = {Offer: PATH_OFFER, Push: PATH_PUSH, Sync: PATH_SYNC}
REPLY_TYPES: Mapping[type, type] = {Offer: Want, Push: Pushed, Sync: Synced}

READ_CHUNK_BYTES = 64 * 1024
BUSY_STATUSES = (429, 503)
LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class AppendOnlyFile(Protocol):
    """What gossip needs of node.logfile.LogFile: a blocking append that returns once written, and
    fsynced when `sync`."""

    def append(self, raws: Sequence[bytes], *, sync: bool = True) -> None: ...


class _BodyTooLarge(Exception):
    pass


class _PeerCallFailed(Exception):
    pass


async def _read_capped(stream: aiohttp.StreamReader, declared_bytes: int | None, limit_bytes: int) -> bytes:
    """Read a whole body, refusing (before reading, when declared) anything over `limit_bytes`."""
    if declared_bytes is not None and declared_bytes > limit_bytes:
        raise _BodyTooLarge()
    chunks: list[bytes] = []
    size_bytes = 0
    async for chunk in stream.iter_chunked(READ_CHUNK_BYTES):
        size_bytes += len(chunk)
        if size_bytes > limit_bytes:
            raise _BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)



def make_client_session(settings: GossipSettings, *, local_host: str | None = None) -> aiohttp.ClientSession:
    """The one HTTP client of a node's gossip: a bounded keep-alive pool, a timeout per call, minimal
    headers (every header is sent with every message). Call inside a running event loop; close it."""
    connector = aiohttp.TCPConnector(limit=settings.connections_max, limit_per_host=8,
                                     local_addr=(local_host, 0) if local_host else None)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=settings.call_timeout_ms / 1000),
                                 skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                                 headers={"Content-Type": CONTENT_TYPE})



class _GroupWriter:
    """LogFile.append on one dedicated thread (LogFile is not thread-safe, and writes and fsync block);
    callers waiting at the same time share one append (group commit), fsynced when one of them asked
    for it (`durable`: this node's own entries; an fsync covers the whole file, so the others with it).

    The queue is bounded in bytes (entry bytes waiting or being written): a disk slower than the
    entries arriving would otherwise grow it without limit, each waiter holding its entries in memory
    until its timeout. Past the bound a write is refused at once (backpressure, not buffering)."""

    def __init__(self, logfile: AppendOnlyFile, timeout_ms: int, queue_max_bytes: int) -> None:
        self._logfile = logfile
        self._timeout_s = timeout_ms / 1000
        self._queue_max_bytes = queue_max_bytes
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gossip-logfile")
        self._queue: list[tuple[list[bytes], bool, asyncio.Future]] = []
        self._queued_bytes = 0                    # in _queue and in the append running now
        self._writer: asyncio.Task | None = None

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    async def append(self, raws: list[bytes], durable: bool = True) -> None:
        """Return once `raws` are written (and on disk, when `durable`); raise Unavailable if the disk
        is failing or too slow, or if the queue is full (nothing was written: a definite refusal)."""
        size_bytes = sum(len(raw) for raw in raws)
        if self._queued_bytes + size_bytes > self._queue_max_bytes:
            raise Unavailable(f"the log file's write queue is full: {self._queued_bytes} bytes wait for the disk, and "
                              f"{size_bytes} more would pass its limit of {self._queue_max_bytes} bytes; nothing was written",
                              hint="retry later (peers do, by anti-entropy); if this lasts, check the node's disk (slow or failing)",
                              definite=True)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._queue.append((raws, durable, done))
        self._queued_bytes += size_bytes
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._drain())
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.shield(done)
        except TimeoutError:
            raise Unavailable(f"writing {len(raws)} log entries to disk took longer than {self._timeout_s:g} s",
                              hint="check the node's disk (full, failing, or very slow)") from None

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            raws = [raw for batch_raws, _, _ in batch for raw in batch_raws]
            sync = any(durable for _, durable, _ in batch)
            try:
                await loop.run_in_executor(self._executor, functools.partial(self._logfile.append, raws, sync=sync))
                error: BaseException | None = None
            except Exception as caught:  # an OSError from the disk, reported to every waiter
                error = Unavailable(f"cannot write the log file: {caught}", hint="check the node's disk (full, permissions)")
            finally:
                self._queued_bytes -= sum(len(raw) for raw in raws)
            for _, _, done in batch:
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
                    done.exception()  # mark it retrieved: its waiter may have timed out already

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            try:
                async with asyncio.timeout(GOSSIP_STOP_TIMEOUT_MS / 1000):
                    await asyncio.shield(self._writer)
            except TimeoutError:
                pass
        self._executor.shutdown(wait=True)



# --- the gossip component ---------------------------------------------------------------------------


class Gossip:
    """Spreads log entries between this node and its peers: runs a GossipCore over streams and HTTP."""

    def __init__(self, *, log: CrdtLog, logfile: AppendOnlyFile, self_id: str, peers: Mapping[str, str], settings: GossipSettings,
                 rng: random.Random, now_ms: Callable[[], int], on_visible: Callable[[Sequence[Entry]], None],
                 metrics: Metrics, logger: logging.Logger, local_host: str | None = None,
                 now_ns: Callable[[], int] = time.time_ns, sign: Callable[[bytes], bytes] | None = None,
                 public_keys: Mapping[str, bytes] | None = None) -> None:
        """`peers`: node_id -> base URL ("http://127.12.7.2:7000"), without this node. `local_host`: the
        address outbound calls leave from (this node's own address), so that receivers can limit
        requests per source even when every node of a local cluster shares one loopback interface.
        `sign` (this node's key) and `public_keys` (genesis): streams carry the calls of both their
        ends after a signed hello (node/core/stream_hello.py); without them, one stream per direction."""
        if not is_node_id(self_id):
            raise ConfigError(f"gossip self_id must be a node id, got {self_id!r}")
        bad_peers = [node_id for node_id, url in peers.items()
                     if not is_node_id(node_id) or node_id == self_id or not str(url).startswith(("http://", "https://"))]
        if bad_peers:
            raise ConfigError(f"gossip peers must map other node ids to http(s) base URLs; bad: {bad_peers[:3]}")
        self._log = log
        self._self_id = self_id
        self._urls = {node_id: str(url).rstrip("/") for node_id, url in peers.items()}
        self._core = GossipCore(log=log, self_id=self_id, peer_ids=peers, settings=settings)
        self._settings = settings
        self._rng = rng
        self._now_ms = now_ms
        self._now_ns = now_ns  # the node's clock (node/clock.py), for the time an entry became visible
        self._on_visible = on_visible
        self._metrics = metrics
        self._logger = logger
        self._local_host = local_host
        self._writer = _GroupWriter(logfile, settings.persist_timeout_ms, settings.persist_queue_limit_bytes)
        self._publish_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        hellos = StreamHellos(self_id=self_id, sign=sign, public_keys=public_keys, urls=self._urls, settings=settings,
                              now_ms=now_ms, metrics=metrics) if sign is not None and public_keys is not None else None
        self._streams = StreamClient(settings=settings, metrics=metrics, logger=logger, local_host=local_host,
                                     serve_frame=self._serve_frame, hello=hellos.make if hellos else None)
        self._stream_server = StreamServer(settings=settings, serve_frame=self._serve_frame, refuse=self._refuse_request,
                                           metrics=metrics, logger=logger, check_hello=hellos.check if hellos else None,
                                           client=self._streams)
        self._loop_task: asyncio.Task | None = None
        self._tick_wake = asyncio.Event()               # set by the core's Wake: the quiet period snapped back
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._inbound_total = 0
        self._inbound_by_source: dict[str, int] = {}
        self._request_ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future] = {}   # request id -> the Reply's message or the Refuse's error
        self._visible_at_ns = BoundedMap(GOSSIP_VISIBILITY_MEMORY_ENTRIES_MAX)  # id -> the node clock's ns
        self._metrics.set("gossip_peers_up", 0)
        self._metrics.set("gossip_fanout", self._core.fanout)

    # --- lifecycle ---------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """The gossip endpoints, for the node's one aiohttp application."""
        app.router.add_post(PATH_OFFER, self._handle_offer)
        app.router.add_post(PATH_PUSH, self._handle_push)
        app.router.add_post(PATH_SYNC, self._handle_sync)
        app.router.add_get(PATH_VISIBILITY, self._handle_visibility)
        app.router.add_get(PATH_STREAM, self._stream_server.handle)
        app.on_shutdown.append(self._stream_server.close_all)

    async def start(self) -> None:
        """Open the shared HTTP client and start the anti-entropy timer."""
        assert self._session is None, "Gossip.start() called twice"
        self._session = make_client_session(self._settings, local_host=self._local_host)
        if self._streams.enabled:
            self._streams.open()
        self._loop_task = asyncio.get_running_loop().create_task(self._anti_entropy_loop(), name="gossip-anti-entropy")
        self._execute(self._core.start(self._now_ms(), self._rng))

    async def stop(self) -> None:
        """Stop background work, wait for the last log writes, close the HTTP client."""
        self._stopping = True
        tasks = [task for task in [self._loop_task, *self._tasks] if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=GOSSIP_STOP_TIMEOUT_MS / 1000)
        self._tasks.clear()
        # A request whose write was just cancelled would otherwise wait out its timeout (2 x persist_timeout_ms)
        # and hold the HTTP server's shutdown: answer it now. Indefinite: its entries may be on disk.
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(_Refused(_stopping_error(), "stopping"))
        await self._writer.close()
        await self._stream_server.close_all()
        await self._streams.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def load(self, raws: Sequence[bytes]) -> int:
        """At start: re-verify the entries stored in the log file (GossipCore.load). Returns how many
        were accepted. Does NOT call on_visible: the caller reads log.visible() afterwards. Refusals
        are logged and counted in log_load_refused_total{reason}."""
        accepted, effects = self._core.load(raws)
        self._execute(effects)
        return accepted

    def peers_up(self) -> int:
        """Peers whose last call succeeded."""
        return self._core.peers_up()

    def visible_at_ns(self, entry_id: str) -> int | None:
        """When the entry became visible on this node (CLOCK_REALTIME ns), if remembered."""
        return self._visible_at_ns.get(entry_id)

    def request_sync(self, peer_id: str) -> None:
        """Start an anti-entropy round with one peer now (bounded by the core)."""
        self._execute(self._core.request_sync(peer_id, self._now_ms(), self._rng))

    # --- local entries -----------------------------------------------------------------------------

    async def publish(self, entry: Entry) -> None:
        """Publish a LOCAL entry: verify, fsync to the log file, add to the log, then push it to
        `fanout` peers in the background. Returns once it is on disk and visible here. Raises
        Conflict if it is not the next entry of this node (build it with CrdtLog.new_entry, or use
        publish_new, which holds the lock across both), EntryRefused if the log refuses it."""
        await self._await_own_entries()
        async with asyncio.timeout(self._settings.persist_timeout_ms / 1000 * 2):
            async with self._publish_lock:
                await self._publish_locked(entry)

    async def publish_new(self, *, kind: str, body: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> Entry:
        """Build the next local entry (next sequence, current heads) and publish it, under one lock, so
        two concurrent callers can never produce two entries with the same sequence."""
        await self._await_own_entries()
        async with asyncio.timeout(self._settings.persist_timeout_ms / 1000 * 2):
            async with self._publish_lock:
                entry = self._log.new_entry(kind=kind, author=self._self_id, body=body, sign=sign, now_ms=self._now_ms())
                await self._publish_locked(entry)
                return entry

    async def _publish_locked(self, entry: Entry) -> None:
        if self._stopping:                        # its write would never run: refuse now
            raise _stopping_error()
        request_id, answer = self._expect_answer()
        try:
            self._execute(self._core.publish(entry, self._now_ms(), self._rng, request_id=request_id))
            await answer
        except _Refused as refused:  # Conflict, BadRequest, EntryRefused or Unavailable, as the core said
            raise refused.error from None
        finally:
            self._answers.pop(request_id, None)

    async def _await_own_entries(self) -> None:
        """The first local writes after start wait (at most first_write_wait_ms from start) until the
        core no longer sees this node behind its own entries; see GossipCore.close_write_gate."""
        deadline_ms = self._core.write_gate_deadline_ms
        if deadline_ms is None:
            return
        if self._core.behind_own_entries() and self._now_ms() < deadline_ms:
            # Counted as the wait begins: an operator sees writes held after a restart (and a test can
            # wait for this moment instead of sleeping).
            self._metrics.inc("gossip_writes_held_total")
        while (self._core.behind_own_entries() and self._now_ms() < deadline_ms
               and self._core.write_gate_deadline_ms is not None):
            await asyncio.sleep(GOSSIP_WRITE_GATE_POLL_MS / 1000)
        self._execute(self._core.close_write_gate())  # nothing if a concurrent first write went through already

    # --- executing the core's effects --------------------------------------------------------------

    def _expect_answer(self) -> tuple[int, asyncio.Future]:
        request_id = next(self._request_ids)
        answer = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        return request_id, answer

    def _execute(self, effects: list[Effect]) -> None:
        """Do what the core asked, in order. Never blocks: calls and writes run as bounded tasks."""
        for effect in effects:
            kind = type(effect)
            if kind is Count:
                self._metrics.inc(effect.name, effect.amount, **dict(effect.labels))
            elif kind is Send:
                self._spawn(self._call(effect))
            elif kind is Persist:
                self._spawn(self._persist(effect))
            elif kind is Reply or kind is Refuse:
                self._answer(effect)
            elif kind is Visible:
                self._became_visible(effect.entries)
            elif kind is Gauge:
                self._metrics.set(effect.name, effect.value)
            elif kind is Event:
                self._logger.log(LOG_LEVELS[effect.level], effect.name, extra={"fields": dict(effect.fields)})
            elif kind is Wake:
                self._tick_wake.set()
            else:
                raise AssertionError(f"unknown gossip effect {effect!r}")

    def _answer(self, effect: Reply | Refuse) -> None:
        answer = self._answers.get(effect.request_id)
        if answer is None or answer.done():  # its waiter gave up (timeout, stop)
            return
        if type(effect) is Reply:
            answer.set_result(effect.message)
        else:
            answer.set_exception(_Refused(effect.error, effect.reason))

    def _became_visible(self, entries: Sequence[Entry]) -> None:
        now_ns, now_ms = self._now_ns(), self._now_ms()
        for entry in entries:
            self._visible_at_ns.put(entry.id, now_ns)
            if entry.author != self._self_id:   # spread: the author's HLC time -> visible here (never a replay: load() is silent)
                self._metrics.observe("entry_spread_seconds", (now_ms - entry.hlc.wall_ms) / 1000)
        try:
            self._on_visible(list(entries))
        except Exception:  # a consumer's bug must not stop gossip
            self._logger.exception("gossip_on_visible_failed", extra={"fields": {"entries": len(entries)}})

    def _spawn(self, coroutine: Any) -> None:
        """Run a call or a write in the background (the core bounds how many exchanges run)."""
        if self._stopping:
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._logger.error("gossip_send_failed", exc_info=task.exception())

    async def _persist(self, effect: Persist) -> None:
        try:
            await self._writer.append(list(effect.raws), effect.durable)
        except SynapseError as error:  # Unavailable: the disk is failing or too slow
            self._execute(self._core.persist_failed(effect.batch_id, error))
            return
        self._execute(self._core.persisted(effect.batch_id, self._now_ms(), self._rng))

    async def _call(self, effect: Send) -> None:
        """POST one message to a peer, decode its reply, hand either to the core."""
        message, path = effect.message, PATHS[type(effect.message)]
        if self._session is None:  # not started yet: anti-entropy will carry it
            self._execute(self._core.call_failed(effect.call_id, self._now_ms(), self._rng, dropped=True))
            return
        try:
            reply = await self._post(self._urls[effect.peer_id], message)
        except _Busy:
            self._execute(self._core.call_failed(effect.call_id, self._now_ms(), self._rng, busy=True))
        except (aiohttp.ClientError, OSError, TimeoutError, _PeerCallFailed, _BodyTooLarge, SynapseError) as error:
            self._execute(self._core.call_failed(effect.call_id, self._now_ms(), self._rng, error_type=type(error).__name__,
                                                 detail=str(error), path=path))
        else:
            self._execute(self._core.receive_reply(effect.call_id, reply, self._now_ms(), self._rng))

    async def _post(self, base_url: str, message: Any) -> Any:
        """One call: over the peer's stream when there is one (node/gossip_stream.py), else a POST."""
        assert self._session is not None, "calls start only while the session is open"
        body = message.encode()
        message_type = type(message).__name__.lower()
        self._metrics.inc("gossip_messages_sent_total", type=message_type)
        self._metrics.inc("gossip_bytes_sent_total", len(body), type=message_type)
        reply_type = REPLY_TYPES[type(message)]
        async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
            answered = await self._streams.call(base_url, type(message), body) if self._streams.enabled else None
            if answered is None:
                async with self._session.post(base_url + PATHS[type(message)], data=body) as response:
                    reply_body = b""
                    if response.status == 200:
                        reply_body = await _read_capped(response.content, response.content_length,
                                                        self._settings.request_body_max_bytes)
                    answered = (response.status, reply_body)
        status, reply_body = answered
        if status in BUSY_STATUSES:  # alive but loaded: no backoff, anti-entropy retries
            raise _Busy()
        if status != 200:
            raise _PeerCallFailed(f"HTTP {status}")
        if len(reply_body) > self._settings.request_body_max_bytes:
            raise _BodyTooLarge()
        reply_name = reply_type.__name__.lower()
        self._metrics.inc("gossip_messages_received_total", type=reply_name)
        self._metrics.inc("gossip_bytes_received_total", len(reply_body), type=reply_name)
        return decode_message(reply_body, reply_type, array_length_max=self._core.array_length_max())

    # --- timers --------------------------------------------------------------------------------------

    async def _anti_entropy_loop(self) -> None:
        """Tick after the core's current period; a Wake (the quiet period snapped back) restarts the
        wait with the new, shorter period instead."""
        while not self._stopping:
            self._tick_wake.clear()
            delay_s = self._core.next_tick_delay_ms(self._rng) / 1000
            try:
                await asyncio.wait_for(self._tick_wake.wait(), delay_s)
            except TimeoutError:
                self._execute(self._core.tick(self._now_ms(), self._rng))

    # --- inbound handlers ----------------------------------------------------------------------------

    async def _handle_offer(self, request: web.Request) -> web.Response:
        return await self._serve(request, Offer)

    async def _handle_push(self, request: web.Request) -> web.Response:
        return await self._serve(request, Push)

    async def _handle_sync(self, request: web.Request) -> web.Response:
        return await self._serve(request, Sync)

    async def _serve(self, request: web.Request, message_type: type) -> web.Response:
        """Bounded, capped, timed: read one message, answer it, map every refusal to an HTTP status."""
        source = request.remote or "?"
        refused = self._admit(source)
        if refused is not None:
            return self._refuse_request(*refused)
        try:
            try:
                async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
                    body = await _read_capped(request.content, request.content_length, self._settings.request_body_max_bytes)
            except _BodyTooLarge:
                return self._refuse_request("too_large", BadRequest(
                    f"gossip body exceeds {self._settings.request_body_max_bytes} bytes",
                    hint="send smaller batches (batch_entries_max)"), 413)
            except (TimeoutError, aiohttp.ClientError, OSError):
                return self._refuse_request("slow_body", BadRequest("the gossip body did not arrive in time"), 408)
            status, payload = await self._answer_body(message_type, body)
        finally:
            self._release(source)
        if status != 200:
            return web.Response(body=payload, status=status, content_type="application/json")
        return web.Response(body=payload, content_type=CONTENT_TYPE)

    async def _serve_frame(self, source: str, message_type: type, body: bytes) -> tuple[int, bytes]:
        """A call that came as a stream frame: the same bounds and answer as over HTTP (status, payload)."""
        refused = self._admit(source)
        if refused is not None:
            return self._refusal(*refused)
        try:
            return await self._answer_body(message_type, body)
        finally:
            self._release(source)

    def _admit(self, source: str) -> tuple[str, SynapseError, int] | None:
        """Count one inbound call, or say why not (busy in total, or too many from this source)."""
        settings = self._settings
        if self._inbound_total >= settings.inbound_requests_max:
            return "busy", Unavailable("this node is handling too many gossip requests", hint="retry later"), 503
        if self._inbound_by_source.get(source, 0) >= settings.inbound_per_source_max:
            return "source_busy", SynapseError(
                f"too many concurrent gossip requests from {source} (at most {settings.inbound_per_source_max})",
                hint="wait for earlier requests to finish"), 429
        self._inbound_total += 1
        self._inbound_by_source[source] = self._inbound_by_source.get(source, 0) + 1
        return None

    def _release(self, source: str) -> None:
        self._inbound_total -= 1
        self._inbound_by_source[source] -= 1
        if not self._inbound_by_source[source]:
            del self._inbound_by_source[source]

    async def _answer_body(self, message_type: type, body: bytes) -> tuple[int, bytes]:
        """Decode a message and answer it: (200, the reply's bytes) or (status, the JSON error)."""
        name = message_type.__name__.lower()
        self._metrics.inc("gossip_messages_received_total", type=name)
        self._metrics.inc("gossip_bytes_received_total", len(body), type=name)
        if len(body) > self._settings.request_body_max_bytes:   # a stream frame; HTTP bodies are capped while read
            return self._refusal("too_large", BadRequest(f"gossip body exceeds {self._settings.request_body_max_bytes} bytes",
                                                         hint="send smaller batches (batch_entries_max)"), 413)
        try:
            message = decode_message(body, message_type, array_length_max=self._core.array_length_max())
        except BadRequest as error:
            return self._refusal("malformed", error)
        try:
            reply = await self._answer_request(message)
        except _Refused as refused:
            return self._refusal(refused.reason, refused.error)
        payload = reply.encode()
        reply_name = type(reply).__name__.lower()
        self._metrics.inc("gossip_messages_sent_total", type=reply_name)
        self._metrics.inc("gossip_bytes_sent_total", len(payload), type=reply_name)
        return 200, payload

    async def _answer_request(self, message: Any) -> Any:
        if self._stopping:                        # the HTTP server outlives stop() briefly: its write would never run
            raise _Refused(_stopping_error(), "stopping")
        request_id, answer = self._expect_answer()
        try:
            self._execute(self._core.receive(message.sender, message, self._now_ms(), self._rng, request_id=request_id))
            async with asyncio.timeout(self._settings.persist_timeout_ms / 1000 * 2):
                return await answer
        finally:
            self._answers.pop(request_id, None)

    def _refusal(self, reason: str, error: SynapseError, status: int | None = None) -> tuple[int, bytes]:
        self._metrics.inc("gossip_requests_refused_total", reason=reason)
        return status or error.http_status, json.dumps(error.to_dict()).encode()

    def _refuse_request(self, reason: str, error: SynapseError, status: int | None = None) -> web.Response:
        refused_status, payload = self._refusal(reason, error, status)
        return web.Response(body=payload, status=refused_status, content_type="application/json")

    async def _handle_visibility(self, request: web.Request) -> web.Response:
        """GET /gossip/visibility?ids=a,b,c -> {"node_id", "visible_at_ns": {id: ns | null}}."""
        ids = [entry_id for entry_id in request.query.get("ids", "").split(",") if entry_id]
        if len(ids) > GOSSIP_VISIBILITY_QUERY_IDS_MAX or not all(map(is_entry_id, ids)):
            error = BadRequest(f"ids must be at most {GOSSIP_VISIBILITY_QUERY_IDS_MAX} comma-separated entry ids (64 hex)",
                               hint="GET /gossip/visibility?ids=<id>,<id>")
            return web.json_response(error.to_dict(), status=400)
        return web.json_response({"node_id": self._self_id,
                                  "visible_at_ns": {entry_id: self._visible_at_ns.get(entry_id) for entry_id in ids}})


class _Busy(Exception):
    """The peer answered 429 or 503: alive but loaded."""


def _stopping_error() -> Unavailable:
    return Unavailable("this node is stopping", hint="retry on another node, or here once it is back")


class _Refused(Exception):
    """The core refused a request or a local publish (a Refuse effect)."""

    def __init__(self, error: SynapseError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason
