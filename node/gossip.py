"""Gossip of the signed log between nodes, over aiohttp: eager push plus push-pull anti-entropy.

Why it works as it does:

- Two mechanisms, as in Demers et al. (1987). *Eager push* makes a new entry visible everywhere in a
  few network round trips; *anti-entropy* (one random peer per `interval_ms`) repairs whatever push
  missed: a lost message, a node that was down, a partition that healed. Push alone is fast but leaky;
  anti-entropy alone is reliable but slow (rounds ~ log N). Together: fast and eventually complete.

- Eager push, bounded. The author pushes a new entry in full to `fanout` random peers (ceil(ln N) + 1
  by default: with fan-out f the chance that a node is missed by every forwarder is about e^-f, and
  anti-entropy catches those). Every node forwards an entry exactly once: when it first becomes
  visible there (never a pending or refused entry, never on a duplicate), and never to the peer it
  came from or to peers known to hold it. Forwarding is *offer/want*: a node sends the ids (32 bytes
  each) and the peer answers with the ids it lacks, then gets those in full. So each node receives
  the full bytes of an entry about once instead of `fanout` times, which keeps the bytes sent per
  entry per node near the entry's own size. The cost is one extra round trip per hop (about a
  millisecond on a LAN). A peer that answered "want" for an id is expected to get it soon; it answers
  "have" to other offers of that id until `call_timeout_ms` passes, so concurrent offers do not all
  turn into full copies.

- Anti-entropy in at most three small exchanges. (1) I send the sha256 prefix of my digest (the log's
  per-author leaves, see crdt_log.py) and the ids of parents I miss; a peer holding the same digest
  answers "in sync" in a few bytes, which is the common case when push works. (2) Otherwise it
  answers its full digest and I push what it lacks (one bounded batch per round; its own rounds pull
  the rest). (3) If its digest shows something I lack, I send my digest and pull what I lack in
  bounded batches until it says there is no more (a restarted node catches up in one round).
  Missing parents of pending entries are pulled explicitly by id in (1). A node that wanted an
  offered entry within the last period skips its next round (once): that round would meet the
  entry in flight and pay for full digests and a second copy.

- Persist before anything else. An entry is verified at the door (`CrdtLog.check`: signature, author,
  size, clock, chain rules), then appended to the log file and fsynced (on one writer thread, with
  group commit: concurrent requests share one fsync), and only then added to the log, handed to
  `on_visible` and forwarded. A refused entry is never stored or forwarded; its reason is counted
  in `synapse_entries_refused_total{reason}`. A local entry is on disk before anyone can see it, so
  its sequence number can never be reused after a crash (which would be equivocation by ourselves).
  After `kill -9`, LogFile drops a torn tail, `load()` re-verifies every stored entry through
  `CrdtLog.add`, and anti-entropy fetches what was missed while down.

- Never behind its own entries. A node whose data dir was wiped or restored from an older copy would
  start its sequence again below entries its peers hold, and sign twins of them (equivocation, which
  voids its votes). So after start, local writes wait for one anti-entropy round to complete and for
  every own entry a peer's digest names to be pulled back (verified like any entry: a peer cannot
  forge them), at most `first_write_wait_ms` from start: digests are unauthenticated, and a node
  must be able to write with every peer down. Past that bound the write goes ahead and a warning
  says why (`gossip_first_write_unsynced`, `gossip_own_entries_missing`).

- A hostile or broken peer cannot crash, stall or bloat a node. Every request body is read with a
  cap (413) and a timeout; bodies are msgpack with explicit type tags and decoded with length limits;
  anything malformed is a 400 that changes nothing; the number of requests handled at once is
  bounded in total (503) and per source address (429); entries being processed are bounded
  (`inbox_max`, 503); pending entries are bounded by the log; remembered ids (offers expected,
  holders, visibility times) are bounded LRU maps; background sends are bounded (`outbound_tasks_max`,
  extra forwards are dropped and left to anti-entropy). Every outbound call has a timeout; a peer
  that fails is retried after an exponential backoff with jitter and does not count in `peers_up()`.

- Wire format: every body is a msgpack array whose first element names the message type
  ("offer", "want", "push", "pushed", "sync", "synced"); entries travel as their canonical bytes
  (never re-serialized); a sender is its node id's 8 raw bytes, a digest's fingerprint 8 bytes of
  sha256 (a collision would only delay a repair until either digest changes). Errors are JSON {"error", "message", "hint"} with a proper HTTP status.
  GET /gossip/visibility?ids=... returns when each entry became visible here (CLOCK_REALTIME in ns):
  it is what the gossip benchmark reads to measure propagation without polling during it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Iterable, Mapping, Protocol, Sequence

import aiohttp
import msgpack
from aiohttp import web

from node.core.crdt_log import DIGEST_AUTHORS_MAX, DIGEST_LEAVES_MAX, AddStatus, CrdtLog, parse_digest
from node.core.entries import ENTRY_SIZE_MAX_BYTES, Entry, decode_entry, is_entry_id, is_node_id
from node.core.hlc import WALL_MS_MAX
from node.errors import BadRequest, ConfigError, Conflict, EntryRefused, SynapseError, Unavailable
from node.metrics import Metrics

PATH_OFFER = "/gossip/offer"
PATH_PUSH = "/gossip/push"
PATH_SYNC = "/gossip/sync"
PATH_VISIBILITY = "/gossip/visibility"
CONTENT_TYPE = "application/msgpack"

ID_BYTES = 32
DIGEST_HASH_BYTES = 8                 # a digest's fingerprint on the wire: equal fingerprints mean "in sync"
IDS_PER_MESSAGE_MAX = 10_000         # format ceiling; settings.batch_entries_max is the real bound
VISIBILITY_QUERY_IDS_MAX = 100      # ids travel in the query string (aiohttp reads lines of at most 8 KiB)
VISIBILITY_MEMORY_MAX = 20_000       # entries whose visibility time is kept (for benchmarks and debugging)
HOLDERS_MEMORY_MAX = 4_096           # entries for which we remember which peers hold them
PULL_BATCHES_PER_ROUND_MAX = 64      # a restarted node catches up with up to 64 batches per round
ROUNDS_RUNNING_MAX = 4               # anti-entropy rounds at once (a slow peer never blocks the others)
MESSAGE_ENVELOPE_BYTES = 1_024       # room left in a request for everything but entry bytes
READ_CHUNK_BYTES = 64 * 1024
STOP_TIMEOUT_S = 5.0
WRITE_GATE_POLL_S = 0.02              # how often a first local write re-checks whether it may go ahead
BUSY_STATUSES = (429, 503)


# --- settings ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipSettings:
    fanout: int | None = None            # None -> ceil(ln N) + 1, N = cluster size
    interval_ms: int = 200               # anti-entropy period (one random peer per period)
    batch_entries_max: int = 256         # entries per push / sync reply
    request_body_max_bytes: int = 4 * 1024 * 1024
    call_timeout_ms: int = 2_000         # every outbound call, and reading an inbound body
    backoff_base_ms: int = 500
    backoff_max_ms: int = 10_000
    inbox_max: int = 10_000              # entries being processed at once, over all requests
    inbound_requests_max: int = 64       # gossip requests handled at once (503 beyond)
    inbound_per_source_max: int = 16     # ... from one source address (429 beyond)
    outbound_tasks_max: int = 256        # background sends at once (extra forwards are dropped)
    connections_max: int = 64            # the shared ClientSession's connection pool
    want_ids_max: int = 64               # missing parents asked for per anti-entropy round
    persist_timeout_ms: int = 30_000     # LogFile.append + fsync
    first_write_wait_ms: int = 3_000     # after start, local writes wait up to this long to learn this node's own entries from a peer

    def __post_init__(self) -> None:
        bounds = {
            "interval_ms": (10, 600_000), "batch_entries_max": (1, IDS_PER_MESSAGE_MAX),
            "request_body_max_bytes": (2048, 256 * 1024 * 1024), "call_timeout_ms": (10, 600_000),
            "backoff_base_ms": (1, 600_000), "backoff_max_ms": (1, 3_600_000), "inbox_max": (1, 10_000_000),
            "inbound_requests_max": (1, 100_000), "inbound_per_source_max": (1, 100_000),
            "outbound_tasks_max": (1, 100_000), "connections_max": (1, 100_000), "want_ids_max": (0, IDS_PER_MESSAGE_MAX),
            "persist_timeout_ms": (100, 3_600_000), "first_write_wait_ms": (0, 600_000),
        }
        for name, (minimum, maximum) in bounds.items():
            value = getattr(self, name)
            if type(value) is not int or not minimum <= value <= maximum:
                raise ConfigError(f"gossip setting {name} must be an int in {minimum}..{maximum}, got {value!r}")
        if self.fanout is not None and (type(self.fanout) is not int or not 1 <= self.fanout <= 1_000):
            raise ConfigError(f"gossip setting fanout must be None (automatic) or an int in 1..1000, got {self.fanout!r}")
        if self.backoff_max_ms < self.backoff_base_ms:
            raise ConfigError("gossip setting backoff_max_ms must be >= backoff_base_ms")
        if self.inbox_max < self.batch_entries_max:
            raise ConfigError("gossip setting inbox_max must be >= batch_entries_max (one full batch must fit)")


def fanout_for(peer_count: int, fanout: int | None) -> int:
    """Peers an entry is pushed to: `fanout`, or ceil(ln N) + 1 for a cluster of N = peers + self."""
    if peer_count <= 0:
        return 0
    chosen = fanout if fanout is not None else math.ceil(math.log(peer_count + 1)) + 1
    return min(peer_count, chosen)


# --- wire messages ----------------------------------------------------------------------------------


def _bad(message: str) -> BadRequest:
    return BadRequest(f"malformed gossip message: {message}",
                      hint="gossip bodies are msgpack arrays [type, ...] as documented in node/gossip.py")


def _check_sender(sender: object) -> None:
    if not (sender == "" or is_node_id(sender)):
        raise _bad("sender must be a node id (16 lowercase hex) or empty")


# On the wire a sender is its node id's 8 raw bytes (or empty): half the size of the hex text, on
# every offer, push and sync (most of the messages).
def _sender_to_wire(sender: str) -> bytes:
    return bytes.fromhex(sender)


def _sender_from_wire(value: object) -> str:
    if not isinstance(value, bytes) or len(value) not in (0, 8):
        raise _bad("sender must be a node id as 8 bytes, or empty bytes")
    return value.hex()


def _check_ids(ids: object, limit: int = IDS_PER_MESSAGE_MAX) -> None:
    if not isinstance(ids, tuple) or len(ids) > limit or not all(map(is_entry_id, ids)):
        raise _bad(f"ids must be at most {limit} entry ids")


def _check_raws(raws: object) -> None:
    if not isinstance(raws, tuple) or len(raws) > IDS_PER_MESSAGE_MAX or not all(isinstance(raw, bytes) for raw in raws):
        raise _bad(f"entries must be a list of at most {IDS_PER_MESSAGE_MAX} byte strings")


def _ids_to_wire(ids: Iterable[str]) -> list[bytes]:
    return [bytes.fromhex(entry_id) for entry_id in ids]


def _ids_from_wire(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, bytes) and len(item) == ID_BYTES for item in value):
        raise _bad(f"ids must be a list of {ID_BYTES}-byte strings")
    return tuple(item.hex() for item in value)


def _raws_from_wire(value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(isinstance(item, bytes) for item in value):
        raise _bad("entries must be a list of byte strings")
    return tuple(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """"I hold these entries": the receiver answers with the ids it lacks (`Want`)."""

    sender: str
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_ids(self.ids)

    def encode(self) -> bytes:
        return _pack(["offer", _sender_to_wire(self.sender), _ids_to_wire(self.ids)])

    @classmethod
    def from_fields(cls, fields: list) -> "Offer":
        _expect_length(fields, 3)
        return cls(sender=_sender_from_wire(fields[1]), ids=_ids_from_wire(fields[2]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Want:
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_ids(self.ids)

    def encode(self) -> bytes:
        return _pack(["want", _ids_to_wire(self.ids)])

    @classmethod
    def from_fields(cls, fields: list) -> "Want":
        _expect_length(fields, 2)
        return cls(ids=_ids_from_wire(fields[1]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Push:
    """Entries in full (canonical bytes), in causal order."""

    sender: str
    raws: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_raws(self.raws)

    def encode(self) -> bytes:
        return _pack(["push", _sender_to_wire(self.sender), list(self.raws)])

    @classmethod
    def from_fields(cls, fields: list) -> "Push":
        _expect_length(fields, 3)
        return cls(sender=_sender_from_wire(fields[1]), raws=_raws_from_wire(fields[2]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Pushed:
    """The answer to a push: how many entries were new, duplicates, refused."""

    added: int
    duplicate: int
    refused: int

    def __post_init__(self) -> None:
        if not all(type(value) is int and 0 <= value <= IDS_PER_MESSAGE_MAX for value in (self.added, self.duplicate, self.refused)):
            raise _bad("pushed counts must be ints in range")

    def encode(self) -> bytes:
        return _pack(["pushed", self.added, self.duplicate, self.refused])

    @classmethod
    def from_fields(cls, fields: list) -> "Pushed":
        _expect_length(fields, 4)
        return cls(added=fields[1], duplicate=fields[2], refused=fields[3])


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync:
    """Anti-entropy request: my digest's hash, my full digest when pulling (else None), ids I miss."""

    sender: str
    digest_hash: bytes
    digest: dict | None
    want: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_digest(self.digest_hash, self.digest)
        _check_ids(self.want)

    def encode(self) -> bytes:
        return _pack(["sync", _sender_to_wire(self.sender), self.digest_hash, self.digest, _ids_to_wire(self.want)])

    @classmethod
    def from_fields(cls, fields: list) -> "Sync":
        _expect_length(fields, 5)
        return cls(sender=_sender_from_wire(fields[1]), digest_hash=fields[2], digest=fields[3], want=_ids_from_wire(fields[4]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Synced:
    """Anti-entropy answer: my full digest if our digests' hashes differ (else None: in sync), the
    entries asked for (by id, or missing from the sender's digest), and whether more are missing."""

    digest: dict | None
    raws: tuple[bytes, ...]
    more: bool

    def __post_init__(self) -> None:
        _check_digest_map(self.digest)
        _check_raws(self.raws)
        if type(self.more) is not bool:
            raise _bad("more must be a bool")

    def encode(self) -> bytes:
        return _pack(["synced", self.digest, list(self.raws), self.more])

    @classmethod
    def from_fields(cls, fields: list) -> "Synced":
        _expect_length(fields, 4)
        return cls(digest=fields[1], raws=_raws_from_wire(fields[2]), more=fields[3])


MESSAGE_TYPES: Mapping[str, Any] = {
    "offer": Offer, "want": Want, "push": Push, "pushed": Pushed, "sync": Sync, "synced": Synced,
}


_TYPE_NAMES: Mapping[type, str] = {message_type: name for name, message_type in MESSAGE_TYPES.items()}


def _check_digest(digest_hash: object, digest: object) -> None:
    if not isinstance(digest_hash, bytes) or len(digest_hash) != DIGEST_HASH_BYTES:
        raise _bad(f"digest hash must be {DIGEST_HASH_BYTES} bytes")
    _check_digest_map(digest)


def _check_digest_map(digest: object) -> None:
    if digest is not None:
        parse_digest(digest)  # raises BadRequest with what is wrong


def _expect_length(fields: list, length: int) -> None:
    if len(fields) != length:
        raise _bad(f"a {fields[0]!r} message has {length} elements, got {len(fields)}")


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def decode_message(body: bytes, expected: type, *, array_length_max: int) -> Any:
    """Parse an untrusted body into the message type `expected`, or raise BadRequest."""
    try:
        fields = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True, timestamp=0,
            max_bin_len=ENTRY_SIZE_MAX_BYTES, max_str_len=64, max_ext_len=0,
            max_array_len=max(array_length_max, DIGEST_LEAVES_MAX, 8), max_map_len=DIGEST_AUTHORS_MAX,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as error:
        raise _bad(f"not valid msgpack ({type(error).__name__})") from None
    if not isinstance(fields, list) or not fields or not isinstance(fields[0], str):
        raise _bad("a body is an array whose first element is the message type")
    if MESSAGE_TYPES.get(fields[0]) is not expected:
        raise _bad(f"expected a {_TYPE_NAMES[expected]!r} message, got {fields[0][:20]!r}")
    return expected.from_fields(fields)


def digest_hash_of(digest: Mapping[str, Any]) -> bytes:
    """A short hash of a digest: equal digests (same leaves) give equal hashes on every node."""
    return hashlib.sha256(_pack(sorted(digest.items()))).digest()[:DIGEST_HASH_BYTES]


# --- small bounded helpers --------------------------------------------------------------------------


class _BoundedMap(OrderedDict):
    """An LRU-bounded dict: remembering ids from the network must not grow memory without bound."""

    def __init__(self, size_max: int) -> None:
        super().__init__()
        self.size_max = size_max

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size_max:
            self.popitem(last=False)


class AppendOnlyFile(Protocol):
    """What gossip needs of node.logfile.LogFile: a blocking append that returns once fsynced."""

    def append(self, raws: Sequence[bytes]) -> None: ...


class _BodyTooLarge(Exception):
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


def _batches_by_size(entries: Sequence[Entry], *, count_max: int, size_max_bytes: int) -> list[list[Entry]]:
    """Split entries (kept in order) into batches of at most `count_max` entries and `size_max_bytes`."""
    batches: list[list[Entry]] = []
    current: list[Entry] = []
    current_bytes = 0
    for entry in entries:
        if current and (len(current) >= count_max or current_bytes + len(entry.raw) > size_max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(entry)
        current_bytes += len(entry.raw)
    if current:
        batches.append(current)
    return batches


def make_client_session(settings: GossipSettings, *, local_host: str | None = None) -> aiohttp.ClientSession:
    """The one HTTP client of a node's gossip: a bounded keep-alive pool, a timeout per call, minimal
    headers (every header is sent with every message). Call inside a running event loop; close it."""
    connector = aiohttp.TCPConnector(limit=settings.connections_max, limit_per_host=8,
                                     local_addr=(local_host, 0) if local_host else None)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=settings.call_timeout_ms / 1000),
                                 skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                                 headers={"Content-Type": CONTENT_TYPE})


@dataclass(slots=True)
class _Peer:
    node_id: str
    url: str
    up: bool = False               # the last call succeeded
    failures: int = 0              # consecutive failed calls
    retry_at_ms: int = 0           # in backoff until then
    syncing: bool = False          # an anti-entropy round with it is running


@dataclass(slots=True)
class _Ingested:
    added: int = 0
    duplicate: int = 0
    refused: int = 0
    pending: int = 0
    newly_visible: list[Entry] = field(default_factory=list)


class _PeerCallFailed(Exception):
    pass


class _GroupWriter:
    """LogFile.append on one dedicated thread (LogFile is not thread-safe and fsync blocks); callers
    waiting at the same time share one append + fsync (group commit)."""

    def __init__(self, logfile: AppendOnlyFile, timeout_ms: int) -> None:
        self._logfile = logfile
        self._timeout_s = timeout_ms / 1000
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gossip-logfile")
        self._queue: list[tuple[list[bytes], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def append(self, raws: list[bytes]) -> None:
        """Return once `raws` are on disk; raise Unavailable if the disk is failing or too slow."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._queue.append((raws, done))
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
            raws = [raw for batch_raws, _ in batch for raw in batch_raws]
            try:
                await loop.run_in_executor(self._executor, self._logfile.append, raws)
                error: BaseException | None = None
            except Exception as caught:  # an OSError from the disk, reported to every waiter
                error = Unavailable(f"cannot write the log file: {caught}", hint="check the node's disk (full, permissions)")
            for _, done in batch:
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
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.shield(self._writer)
            except TimeoutError:
                pass
        self._executor.shutdown(wait=True)


# --- the gossip component ---------------------------------------------------------------------------


class Gossip:
    """Spreads log entries between this node and its peers. See the module docstring for the design."""

    def __init__(self, *, log: CrdtLog, logfile: AppendOnlyFile, self_id: str, peers: Mapping[str, str], settings: GossipSettings,
                 rng: random.Random, now_ms: Callable[[], int], on_visible: Callable[[Sequence[Entry]], None],
                 metrics: Metrics, logger: logging.Logger, local_host: str | None = None) -> None:
        """`peers`: node_id -> base URL ("http://127.12.7.2:7000"), without this node. `local_host`: the
        address outbound calls leave from (this node's own address), so that receivers can limit
        requests per source even when every node of a local cluster shares one loopback interface."""
        if not is_node_id(self_id):
            raise ConfigError(f"gossip self_id must be a node id, got {self_id!r}")
        bad_peers = [node_id for node_id, url in peers.items()
                     if not is_node_id(node_id) or node_id == self_id or not str(url).startswith(("http://", "https://"))]
        if bad_peers:
            raise ConfigError(f"gossip peers must map other node ids to http(s) base URLs; bad: {bad_peers[:3]}")
        self._log = log
        self._self_id = self_id
        self._peers = {node_id: _Peer(node_id, str(url).rstrip("/")) for node_id, url in sorted(peers.items())}
        self._settings = settings
        self._rng = rng
        self._now_ms = now_ms
        self._on_visible = on_visible
        self._metrics = metrics
        self._logger = logger
        self._local_host = local_host
        self._fanout = fanout_for(len(self._peers), settings.fanout)
        self._writer = _GroupWriter(logfile, settings.persist_timeout_ms)
        self._publish_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._inbound_total = 0
        self._inbound_by_source: dict[str, int] = {}
        self._inbox_entries = 0
        self._persisting: set[str] = set()
        self._local_writes_broken: str | None = None
        # Before its first local write after start, a node makes sure it is not behind its own entries
        # (a wiped or restored data dir would make it reuse their sequence numbers: equivocation, which
        # voids its votes). See _await_own_entries.
        self._write_gate_deadline_ms: int | None = None
        self._heard_digest = not peers
        self._own_sequence_claimed = 0
        self._last_wanted_ms = -1 << 62     # when this node last asked for an offered entry (one is on its way)
        self._rounds_running = 0
        self._expected = _BoundedMap(settings.inbox_max)          # id -> deadline_ms (answered "want")
        self._holders = _BoundedMap(HOLDERS_MEMORY_MAX)           # id -> set of peer ids known to hold it
        self._visible_at_ns = _BoundedMap(VISIBILITY_MEMORY_MAX)  # id -> CLOCK_REALTIME ns
        self._metrics.set("gossip_peers_up", 0)
        self._metrics.set("gossip_fanout", self._fanout)

    # --- lifecycle ---------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """The gossip endpoints, for the node's one aiohttp application."""
        app.router.add_post(PATH_OFFER, self._handle_offer)
        app.router.add_post(PATH_PUSH, self._handle_push)
        app.router.add_post(PATH_SYNC, self._handle_sync)
        app.router.add_get(PATH_VISIBILITY, self._handle_visibility)

    async def start(self) -> None:
        """Open the shared HTTP client and start the anti-entropy task."""
        assert self._session is None, "Gossip.start() called twice"
        self._session = make_client_session(self._settings, local_host=self._local_host)
        self._loop_task = asyncio.get_running_loop().create_task(self._anti_entropy_loop(), name="gossip-anti-entropy")
        self._write_gate_deadline_ms = self._now_ms() + self._settings.first_write_wait_ms
        if self._peers:
            self.request_sync(self._rng.choice(list(self._peers)))

    async def stop(self) -> None:
        """Stop background work, wait for the last log writes, close the HTTP client."""
        self._stopping = True
        tasks = [task for task in [self._loop_task, *self._tasks] if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        self._tasks.clear()
        await self._writer.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- local entries and start-up ------------------------------------------------------------------

    def load(self, raws: Sequence[bytes]) -> int:
        """At start: re-verify the entries stored in the log file through CrdtLog.add (nothing on disk
        is trusted). Returns how many were accepted. Does NOT call on_visible: the caller reads
        log.visible() afterwards. Refusals are logged and counted in log_load_refused_total{reason}.
        Every check applies except the clock rule ("clock_future"): that is a rule about the present
        at the door, which these entries passed; applying it again after this host's clock stepped
        back would drop this node's own entries and let it reuse their sequence numbers."""
        accepted = 0
        for raw in raws:
            try:
                outcome = self._log.add(decode_entry(raw, entry_size_max_bytes=ENTRY_SIZE_MAX_BYTES), now_ms=WALL_MS_MAX)
            except EntryRefused as refusal:
                self._metrics.inc("log_load_refused_total", reason=refusal.reason)
                self._event(logging.WARNING, "gossip_load_refused", reason=refusal.reason, message=refusal.message)
                continue
            if outcome.status is not AddStatus.DUPLICATE:
                accepted += 1
            for _, reason in outcome.refused:
                self._metrics.inc("log_load_refused_total", reason=reason)
        self._event(logging.INFO, "gossip_loaded", stored=len(raws), accepted=accepted)
        return accepted

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

    def _behind_own_entries(self) -> bool:
        return not self._heard_digest or self._log.next_sequence(self._self_id) <= self._own_sequence_claimed

    async def _await_own_entries(self) -> None:
        """The first local writes after start wait (at most first_write_wait_ms from start) until one
        anti-entropy round with a peer has completed and this node holds every entry of its own that
        a peer's digest names: its sequence numbers continue after them instead of reusing them. The
        wait is bounded because digests are unauthenticated (a lying peer could claim anything) and
        because a node must be able to write when every peer is down; past it, writes go ahead and
        the gap, if any, is logged."""
        deadline_ms = self._write_gate_deadline_ms
        if deadline_ms is None:
            return
        while self._behind_own_entries() and self._now_ms() < deadline_ms and self._write_gate_deadline_ms is not None:
            await asyncio.sleep(WRITE_GATE_POLL_S)
        if self._write_gate_deadline_ms is None:  # a concurrent first write went through the gate already
            return
        self._write_gate_deadline_ms = None
        if not self._heard_digest:
            self._event(logging.WARNING, "gossip_first_write_unsynced", waited_ms=self._settings.first_write_wait_ms,
                        hint="no peer answered an anti-entropy round since start: if this node's data dir was wiped or "
                             "restored, its next entries may reuse sequence numbers of entries its peers hold")
        elif self._behind_own_entries():
            self._event(logging.WARNING, "gossip_own_entries_missing", holds=self._log.next_sequence(self._self_id) - 1,
                        peers_claim=self._own_sequence_claimed,
                        hint="a peer claims more entries of this node than it could pull in time; its next entries may "
                             "reuse their sequence numbers (equivocation)")

    def _note_digest(self, digest: Mapping[str, tuple] | None) -> None:
        """Remember the highest sequence of this node's own entries that a peer's digest names."""
        if digest is not None:
            own = max((sequence for sequence, _ in digest.get(self._self_id, ())), default=0)
            self._own_sequence_claimed = max(self._own_sequence_claimed, own)

    async def _publish_locked(self, entry: Entry) -> None:
        if self._local_writes_broken is not None:
            raise Unavailable(f"this node stopped writing local entries: {self._local_writes_broken}",
                              hint="restart the node: it re-reads its log file and continues after its last entry")
        if entry.author != self._self_id:
            raise BadRequest(f"publish() takes entries of this node ({self._self_id}), not of {entry.author}",
                             hint="entries of other nodes arrive through gossip")
        if entry.id in self._log:
            return
        expected_sequence = self._log.next_sequence(self._self_id)
        if entry.sequence != expected_sequence:
            raise Conflict(f"local entry has sequence {entry.sequence}, but this node's next sequence is {expected_sequence}",
                           hint="build the entry with CrdtLog.new_entry right before publishing, or use Gossip.publish_new")
        try:
            self._log.check(entry, now_ms=self._now_ms())
        except EntryRefused as refusal:
            self._metrics.inc("entries_refused_total", reason=refusal.reason)
            raise
        await self._writer.append([entry.raw])
        self._metrics.inc("gossip_entries_persisted_total")
        try:
            outcome = self._log.add(entry, now_ms=self._now_ms())
        except EntryRefused as refusal:  # e.g. log_full reached while persisting: the entry is on disk
            # Its sequence number is taken (on disk); writing another entry now would reuse it.
            self._local_writes_broken = f"entry #{entry.sequence} is on disk but the log refused it ({refusal.reason})"
            self._metrics.inc("entries_refused_total", reason=refusal.reason)
            raise
        self._metrics.inc("gossip_entries_published_total")
        self._became_visible(list(outcome.newly_visible))
        targets = self._choose_peers(self._fanout, exclude=set())
        for peer in targets:
            self._spawn(self._push_to(peer, [entry]))

    def _event(self, level: int, event: str, **fields: Any) -> None:
        """One structured log line (node/logging_setup.py): a snake_case event name and its fields."""
        self._logger.log(level, event, extra={"fields": fields})

    def peers_up(self) -> int:
        """Peers whose last call succeeded."""
        return sum(1 for peer in self._peers.values() if peer.up)

    def visible_at_ns(self, entry_id: str) -> int | None:
        """When the entry became visible on this node (CLOCK_REALTIME ns), if remembered."""
        return self._visible_at_ns.get(entry_id)

    # --- receiving entries ---------------------------------------------------------------------------

    async def _ingest(self, raws: Sequence[bytes], sender: _Peer | None) -> _Ingested:
        """Verify, persist, add; then forward what became visible. Never raises for a bad entry."""
        if self._inbox_entries + len(raws) > self._settings.inbox_max:
            self._metrics.inc("gossip_requests_refused_total", reason="inbox_full")
            raise Unavailable(f"this node is processing {self._inbox_entries} entries already (inbox_max "
                              f"{self._settings.inbox_max})", hint="retry later")
        self._inbox_entries += len(raws)
        try:
            result = _Ingested()
            fresh = self._admit(raws, sender, result)
            if fresh:
                await self._persist_fresh(fresh)
            self._add_fresh(fresh, result)
            for status in ("added", "pending", "duplicate"):
                self._metrics.inc("gossip_entries_received_total", getattr(result, status), status=status)
            if result.newly_visible:
                self._became_visible(result.newly_visible)
                self._forward(result.newly_visible, sender)
            return result
        finally:
            self._inbox_entries -= len(raws)

    def _admit(self, raws: Sequence[bytes], sender: _Peer | None, result: _Ingested) -> list[Entry]:
        fresh: list[Entry] = []
        now_ms = self._now_ms()
        for raw in raws:
            try:
                entry = decode_entry(raw, entry_size_max_bytes=ENTRY_SIZE_MAX_BYTES)
                if sender is not None:
                    self._note_holder(entry.id, sender.node_id)
                if entry.id in self._persisting or self._log.check(entry, now_ms=now_ms) is AddStatus.DUPLICATE:
                    result.duplicate += 1
                    continue
            except EntryRefused as refusal:
                result.refused += 1
                self._metrics.inc("entries_refused_total", reason=refusal.reason)
                continue
            self._persisting.add(entry.id)
            fresh.append(entry)
        return fresh

    async def _persist_fresh(self, fresh: list[Entry]) -> None:
        try:
            await self._writer.append([entry.raw for entry in fresh])
        except BaseException:
            self._persisting.difference_update(entry.id for entry in fresh)
            raise
        self._metrics.inc("gossip_entries_persisted_total", len(fresh))

    def _add_fresh(self, fresh: list[Entry], result: _Ingested) -> None:
        now_ms = self._now_ms()
        for entry in fresh:
            self._persisting.discard(entry.id)
            self._expected.pop(entry.id, None)
            try:
                outcome = self._log.add(entry, now_ms=now_ms)
            except EntryRefused as refusal:  # state changed while persisting (e.g. pending_full): on disk, not kept
                result.refused += 1
                self._metrics.inc("entries_refused_total", reason=refusal.reason)
                continue
            status = outcome.status
            result.added += status is AddStatus.ADDED
            result.pending += status is AddStatus.PENDING
            result.duplicate += status is AddStatus.DUPLICATE
            result.newly_visible.extend(outcome.newly_visible)
            for _, reason in outcome.refused:
                self._metrics.inc("entries_refused_total", reason=reason)

    def _became_visible(self, entries: list[Entry]) -> None:
        if not entries:
            return
        now_ns = time.time_ns()
        for entry in entries:
            self._visible_at_ns.put(entry.id, now_ns)
        try:
            self._on_visible(entries)
        except Exception:  # a consumer's bug must not stop gossip
            self._logger.exception("gossip_on_visible_failed", extra={"fields": {"entries": len(entries)}})

    def _note_holder(self, entry_id: str, peer_id: str) -> None:
        holders = self._holders.get(entry_id)
        if holders is None:
            self._holders.put(entry_id, {peer_id})
        else:
            holders.add(peer_id)

    # --- eager push ----------------------------------------------------------------------------------

    def _forward(self, entries: list[Entry], sender: _Peer | None) -> None:
        """Offer newly visible entries to `fanout` peers (first receipt only). A large burst (a node
        catching up) is not forwarded: the others most likely have it, and anti-entropy covers them."""
        if len(entries) > self._settings.batch_entries_max:
            return
        ids = [entry.id for entry in entries]
        exclude = {sender.node_id} if sender is not None else set()
        exclude.update(peer_id for peer_id in self._peers
                       if all(peer_id in self._holders.get(entry_id, ()) for entry_id in ids))
        for peer in self._choose_peers(self._fanout, exclude=exclude):
            self._spawn(self._offer_to(peer, entries))

    def _choose_peers(self, count: int, *, exclude: set[str]) -> list[_Peer]:
        now_ms = self._now_ms()
        eligible = [peer for peer in self._peers.values() if peer.node_id not in exclude and peer.retry_at_ms <= now_ms]
        return self._rng.sample(eligible, min(count, len(eligible)))

    async def _offer_to(self, peer: _Peer, entries: list[Entry]) -> None:
        reply = await self._call(peer, PATH_OFFER, Offer(sender=self._self_id, ids=tuple(e.id for e in entries)), Want)
        if reply is None:
            return
        wanted = set(reply.ids)
        for entry in entries:
            if entry.id not in wanted:
                self._note_holder(entry.id, peer.node_id)
        await self._push_to(peer, [entry for entry in entries if entry.id in wanted])

    async def _push_to(self, peer: _Peer, entries: list[Entry]) -> None:
        size_max_bytes = self._settings.request_body_max_bytes - MESSAGE_ENVELOPE_BYTES
        for batch in _batches_by_size(entries, count_max=self._settings.batch_entries_max, size_max_bytes=size_max_bytes):
            reply = await self._call(peer, PATH_PUSH, Push(sender=self._self_id, raws=tuple(e.raw for e in batch)), Pushed)
            if reply is None:
                return
            self._metrics.inc("gossip_entries_sent_total", len(batch))
            for entry in batch:
                self._note_holder(entry.id, peer.node_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> bool:
        """Run a background send, bounded: past outbound_tasks_max it is dropped (anti-entropy repairs).
        False when dropped."""
        if self._stopping or len(self._tasks) >= self._settings.outbound_tasks_max or self._session is None:
            self._metrics.inc("gossip_sends_dropped_total")
            coroutine.close()
            return False
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return True

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._logger.error("gossip_send_failed", exc_info=task.exception())

    # --- outbound calls ------------------------------------------------------------------------------

    async def _call(self, peer: _Peer, path: str, message: Any, reply_type: type) -> Any:
        """POST one message to a peer and decode its reply; None on any failure (counted, backoff)."""
        if self._session is None:
            return None
        body = message.encode()
        message_type = type(message).__name__.lower()
        self._metrics.inc("gossip_messages_sent_total", type=message_type)
        self._metrics.inc("gossip_bytes_sent_total", len(body), type=message_type)
        try:
            async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
                async with self._session.post(peer.url + path, data=body) as response:
                    if response.status in BUSY_STATUSES:  # alive but loaded: no backoff, anti-entropy retries
                        self._metrics.inc("gossip_calls_busy_total")
                        return None
                    if response.status != 200:
                        raise _PeerCallFailed(f"HTTP {response.status}")
                    reply_body = await _read_capped(response.content, response.content_length,
                                                    self._settings.request_body_max_bytes)
            reply_name = reply_type.__name__.lower()
            self._metrics.inc("gossip_messages_received_total", type=reply_name)
            self._metrics.inc("gossip_bytes_received_total", len(reply_body), type=reply_name)
            reply = decode_message(reply_body, reply_type, array_length_max=self._array_length_max())
        except (aiohttp.ClientError, OSError, TimeoutError, _PeerCallFailed, _BodyTooLarge, SynapseError) as error:
            self._peer_failed(peer, path, error)
            return None
        self._peer_ok(peer)
        return reply

    def _peer_ok(self, peer: _Peer) -> None:
        if not peer.up:
            self._event(logging.INFO, "gossip_peer_up", peer=peer.node_id)
        peer.up, peer.failures, peer.retry_at_ms = True, 0, 0
        self._metrics.set("gossip_peers_up", self.peers_up())

    def _peer_failed(self, peer: _Peer, path: str, error: BaseException) -> None:
        peer.failures += 1
        delay_ms = min(self._settings.backoff_max_ms, self._settings.backoff_base_ms * 2 ** min(peer.failures - 1, 30))
        peer.retry_at_ms = self._now_ms() + int(delay_ms * (0.5 + self._rng.random() / 2))
        if peer.up or peer.failures == 1:
            self._event(logging.WARNING, "gossip_peer_down", peer=peer.node_id, path=path, error=type(error).__name__,
                        detail=str(error)[:200], retry_in_ms=delay_ms)
        peer.up = False
        self._metrics.inc("gossip_call_failures_total")
        self._metrics.set("gossip_peers_up", self.peers_up())

    def _array_length_max(self) -> int:
        return max(self._settings.batch_entries_max, self._settings.want_ids_max, IDS_PER_MESSAGE_MAX)

    # --- anti-entropy --------------------------------------------------------------------------------

    async def _anti_entropy_loop(self) -> None:
        interval_s = self._settings.interval_ms / 1000
        skipped = False
        while not self._stopping:
            await asyncio.sleep(interval_s * (0.75 + self._rng.random() / 2))  # jitter: rounds do not synchronize
            now_ms = self._now_ms()
            # An entry is on its way to this node (it wanted one within the last period): a round now
            # would only meet it in flight and pay for full digests and a second copy. Skip ONE round;
            # the next runs whatever happens, so steady traffic never starves repair.
            if not skipped and now_ms - self._last_wanted_ms < self._settings.interval_ms:
                skipped = True
                self._metrics.inc("gossip_rounds_total", result="skipped_in_flight")
                continue
            skipped = False
            candidates = [peer for peer in self._peers.values() if peer.retry_at_ms <= now_ms and not peer.syncing]
            if candidates:
                self.request_sync(self._rng.choice(candidates).node_id)

    def request_sync(self, peer_id: str) -> None:
        """Start an anti-entropy round with one peer now (e.g. after it sent entries with missing
        parents). Rounds run in the background, at most ROUNDS_RUNNING_MAX at once, one per peer."""
        peer = self._peers.get(peer_id)
        if (peer is not None and not peer.syncing and peer.retry_at_ms <= self._now_ms()
                and self._rounds_running < ROUNDS_RUNNING_MAX):
            peer.syncing = True
            self._rounds_running += 1
            if not self._spawn(self._sync_with(peer)):
                peer.syncing = False
                self._rounds_running -= 1

    async def _sync_with(self, peer: _Peer) -> None:
        round_timeout_s = self._settings.call_timeout_ms / 1000 * (PULL_BATCHES_PER_ROUND_MAX + 3)
        try:
            async with asyncio.timeout(round_timeout_s):
                result = await self._sync_round(peer)
        except TimeoutError:
            result = "timeout"
        except SynapseError as error:  # e.g. our own disk is failing: Unavailable
            self._event(logging.WARNING, "gossip_round_failed", peer=peer.node_id, error=error.one_line())
            result = "error"
        finally:
            peer.syncing = False
            self._rounds_running -= 1
        self._metrics.inc("gossip_rounds_total", result=result)

    async def _sync_round(self, peer: _Peer) -> str:
        digest = self._log.digest()
        missing = sorted(self._log.missing_parents())
        want = tuple(self._rng.sample(missing, min(len(missing), self._settings.want_ids_max)))
        reply = await self._call(peer, PATH_SYNC, Sync(sender=self._self_id, digest_hash=digest_hash_of(digest),
                                                        digest=None, want=want), Synced)
        if reply is None:
            return "failed"
        if reply.raws:
            await self._ingest(reply.raws, peer)
        if reply.digest is None:
            self._heard_digest = True  # our digests were equal: nothing of ours is missing
            return "in_sync" if not reply.raws else "pulled"
        theirs = parse_digest(reply.digest)
        self._note_digest(theirs)
        lacking = self._log.entries_missing_from(reply.digest, limit=self._settings.batch_entries_max)
        if lacking:
            await self._push_to(peer, lacking)
        if _remote_may_have_more(self._log.digest(), theirs):
            await self._pull_from(peer)
            self._heard_digest = True
            return "pulled"
        self._heard_digest = True
        return "pushed" if lacking else "in_sync"

    async def _pull_from(self, peer: _Peer) -> None:
        for _ in range(PULL_BATCHES_PER_ROUND_MAX):
            digest = self._log.digest()
            reply = await self._call(peer, PATH_SYNC, Sync(sender=self._self_id, digest_hash=digest_hash_of(digest),
                                                            digest=digest, want=()), Synced)
            if reply is None or not reply.raws:
                return
            result = await self._ingest(reply.raws, peer)
            if not reply.more or result.added + result.pending == 0:
                return

    # --- inbound handlers ----------------------------------------------------------------------------

    async def _handle_offer(self, request: web.Request) -> web.Response:
        return await self._serve(request, Offer, self._answer_offer)

    async def _handle_push(self, request: web.Request) -> web.Response:
        return await self._serve(request, Push, self._answer_push)

    async def _handle_sync(self, request: web.Request) -> web.Response:
        return await self._serve(request, Sync, self._answer_sync)

    async def _serve(self, request: web.Request, message_type: type, answer: Callable[[Any], Awaitable[Any]]) -> web.Response:
        """Bounded, capped, timed: read one message, answer it, map every refusal to an HTTP status."""
        source = request.remote or "?"
        settings = self._settings
        if self._inbound_total >= settings.inbound_requests_max:
            return self._refuse_request("busy", Unavailable("this node is handling too many gossip requests", hint="retry later"))
        if self._inbound_by_source.get(source, 0) >= settings.inbound_per_source_max:
            return self._refuse_request("source_busy", SynapseError(
                f"too many concurrent gossip requests from {source} (at most {settings.inbound_per_source_max})",
                hint="wait for earlier requests to finish"), status=429)
        self._inbound_total += 1
        self._inbound_by_source[source] = self._inbound_by_source.get(source, 0) + 1
        try:
            return await self._serve_counted(request, message_type, answer)
        finally:
            self._inbound_total -= 1
            self._inbound_by_source[source] -= 1
            if not self._inbound_by_source[source]:
                del self._inbound_by_source[source]

    async def _serve_counted(self, request: web.Request, message_type: type, answer: Callable[[Any], Awaitable[Any]]) -> web.Response:
        name = message_type.__name__.lower()
        try:
            async with asyncio.timeout(self._settings.call_timeout_ms / 1000):
                body = await _read_capped(request.content, request.content_length, self._settings.request_body_max_bytes)
        except _BodyTooLarge:
            return self._refuse_request("too_large", BadRequest(
                f"gossip body exceeds {self._settings.request_body_max_bytes} bytes",
                hint="send smaller batches (batch_entries_max)"), status=413)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return self._refuse_request("slow_body", BadRequest("the gossip body did not arrive in time"), status=408)
        self._metrics.inc("gossip_messages_received_total", type=name)
        self._metrics.inc("gossip_bytes_received_total", len(body), type=name)
        try:
            message = decode_message(body, message_type, array_length_max=self._array_length_max())
            reply = await answer(message)
        except (BadRequest, EntryRefused) as error:
            return self._refuse_request("malformed", error)
        except SynapseError as error:
            return self._refuse_request("unavailable", error)
        payload = reply.encode()
        reply_name = type(reply).__name__.lower()
        self._metrics.inc("gossip_messages_sent_total", type=reply_name)
        self._metrics.inc("gossip_bytes_sent_total", len(payload), type=reply_name)
        return web.Response(body=payload, content_type=CONTENT_TYPE)

    def _refuse_request(self, reason: str, error: SynapseError, *, status: int | None = None) -> web.Response:
        self._metrics.inc("gossip_requests_refused_total", reason=reason)
        return web.json_response(error.to_dict(), status=status or error.http_status)

    def _sender(self, sender_id: str) -> _Peer | None:
        return self._peers.get(sender_id)

    async def _answer_offer(self, offer: Offer) -> Want:
        if len(offer.ids) > self._settings.batch_entries_max:
            raise BadRequest(f"an offer names at most {self._settings.batch_entries_max} entries, got {len(offer.ids)}",
                             hint="split offers into batches of batch_entries_max")
        sender = self._sender(offer.sender)
        now_ms = self._now_ms()
        wanted = []
        for entry_id in dict.fromkeys(offer.ids):
            if sender is not None:
                self._note_holder(entry_id, sender.node_id)
            if entry_id in self._log or entry_id in self._persisting or self._expected.get(entry_id, 0) > now_ms:
                continue
            wanted.append(entry_id)
            self._expected.put(entry_id, now_ms + self._settings.call_timeout_ms)
            self._last_wanted_ms = now_ms
        return Want(ids=tuple(wanted))

    async def _answer_push(self, push: Push) -> Pushed:
        if len(push.raws) > self._settings.batch_entries_max:
            raise BadRequest(f"a push carries at most {self._settings.batch_entries_max} entries, got {len(push.raws)}",
                             hint="split pushes into batches of batch_entries_max")
        sender = self._sender(push.sender)
        result = await self._ingest(push.raws, sender)
        if result.pending and sender is not None:
            self.request_sync(sender.node_id)  # pull the missing parents from the one who has the children
        return Pushed(added=result.added + result.pending, duplicate=result.duplicate, refused=result.refused)

    async def _answer_sync(self, sync: Sync) -> Synced:
        if len(sync.want) > max(self._settings.want_ids_max, self._settings.batch_entries_max):
            raise BadRequest(f"a sync asks for at most {self._settings.want_ids_max} ids, got {len(sync.want)}",
                             hint="ask for missing parents in batches of want_ids_max")
        digest = self._log.digest()
        digest_hash = digest_hash_of(digest)
        entries = [entry for entry in map(self._log.get, dict.fromkeys(sync.want)) if entry is not None]
        more = False
        if sync.digest is not None:
            self._note_digest(parse_digest(sync.digest))
            missing = self._log.entries_missing_from(sync.digest, limit=self._settings.batch_entries_max + 1)
            more = len(missing) > self._settings.batch_entries_max
            entries.extend(missing[: self._settings.batch_entries_max])
        size_max_bytes = self._settings.request_body_max_bytes - MESSAGE_ENVELOPE_BYTES - len(_pack(digest))
        batches = _batches_by_size(entries, count_max=self._settings.batch_entries_max, size_max_bytes=size_max_bytes)
        chosen = batches[0] if batches else []
        more = more or len(batches) > 1
        self._metrics.inc("gossip_entries_sent_total", len(chosen))
        send_digest = sync.digest is None and sync.digest_hash != digest_hash
        return Synced(digest=digest if send_digest else None,
                      raws=tuple(entry.raw for entry in chosen), more=more)

    async def _handle_visibility(self, request: web.Request) -> web.Response:
        """GET /gossip/visibility?ids=a,b,c -> {"node_id", "visible_at_ns": {id: ns | null}}."""
        ids = [entry_id for entry_id in request.query.get("ids", "").split(",") if entry_id]
        if len(ids) > VISIBILITY_QUERY_IDS_MAX or not all(map(is_entry_id, ids)):
            error = BadRequest(f"ids must be at most {VISIBILITY_QUERY_IDS_MAX} comma-separated entry ids (64 hex)",
                               hint="GET /gossip/visibility?ids=<id>,<id>")
            return web.json_response(error.to_dict(), status=400)
        return web.json_response({"node_id": self._self_id,
                                  "visible_at_ns": {entry_id: self._visible_at_ns.get(entry_id) for entry_id in ids}})


def _remote_may_have_more(mine: Mapping[str, list], theirs: Mapping[str, tuple]) -> bool:
    """Whether a remote digest shows entries this node lacks: an author it does not know, a leaf
    ahead of its own, or a leaf at a sequence it has with another id (a twin). Twins deeper in a
    chain are not detected here; the remote pushes them in its own rounds (entries_missing_from
    handles them exactly)."""
    for author, leaves in theirs.items():
        my_leaves = {(sequence, prefix.hex()) for sequence, prefix in mine.get(author, ())}
        my_top = max((sequence for sequence, _ in my_leaves), default=0)
        for sequence, prefix in leaves:
            if sequence > my_top or (prefix is not None and sequence == my_top and (sequence, prefix) not in my_leaves):
                return True
        if len(leaves) > len(my_leaves):
            return True
    return False
