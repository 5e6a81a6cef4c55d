"""Gossip settings and the fan-out rule: pure values the protocol core, the transports and the
node's config share.

Why: every limit of gossip is here, validated once when the settings are built (a bad value is a
ConfigError that names the setting and its range), so neither the core nor a transport re-checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from node.core.entries import KINDS
from node.core.gossip_messages import IDS_PER_MESSAGE_MAX
from node.errors import ConfigError

QUIET_INTERVAL_FACTOR = 16            # automatic quiet_interval_max_ms: 200 ms -> 3.2 s
QUIET_INTERVAL_MAX_MS = 600_000
# With persist_queue_max_bytes = None: this many full request bodies may wait for the disk at once.
PERSIST_QUEUE_REQUEST_BODIES = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipSettings:
    fanout: int | None = None            # None -> ceil(ln N) + 1, N = cluster size
    interval_ms: int = 200               # anti-entropy period (one random peer per period)
    # While rounds find nothing to exchange, the period doubles up to this; any change snaps it back to
    # interval_ms (gossip_backoff.py). None -> QUIET_INTERVAL_FACTOR x interval_ms; = interval_ms: no backoff.
    quiet_interval_max_ms: int | None = None
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
    # Calls go over one websocket per peer (node/gossip_stream.py; ~6x less CPU per call than a POST).
    streams_max: int = 256               # streams this node opens (LRU beyond); 0: every call over HTTP
    stream_calls_max: int = 8            # calls in flight on one stream (more: over HTTP, like limit_per_host)
    # A stream unused this long is closed (the server: 2x this). Long, because opening and closing a
    # stream is what costs: peers are chosen at random, so at N = 100 a node meets a given peer again
    # only after tens of seconds; with 20 s, streams closed and reopened all the time and cost more CPU
    # than POSTs after an upgrade (0.26-0.28 cores for 100 nodes against 0.13-0.21); with 5 minutes,
    # 0.13 cores.
    stream_idle_ms: int = 300_000
    stream_fallback_ms: int = 30_000     # a peer that refused a stream is called over HTTP this long
    # A call whose message is larger goes as a POST. The answering side buffers a whole frame before it
    # can look at it, and strangers may hold inbound_streams_max streams: this bounds what they can pin
    # (512 x 64 KiB = 32 MiB, where POST bodies are read as a stream under inbound_requests_max). Eager
    # pushes, offers and digests are far smaller; a large catch-up push is rare.
    stream_request_max_bytes: int = 64 * 1024
    inbound_streams_max: int = 512       # streams others open here (503 beyond)
    inbound_streams_per_source_max: int = 4  # ... from one source address (429 beyond)
    # A stream opened with a signed hello carries the calls of both ends (node/core/stream_hello.py):
    # its time may differ from this node's clock by this much (clocks of other machines; a replay of the
    # hello is refused by its nonce within the window, by its time after it), and this many accepted
    # hellos are remembered (beyond it, new hellos are refused until old ones expire).
    stream_hello_skew_ms: int = 60_000
    stream_hellos_remembered_max: int = 4_096
    want_ids_max: int = 64               # missing parents asked for per anti-entropy round
    # A forward wave sends a peer its entries inline (one push) when they weigh at most this many bytes
    # together; heavier sets are offered first (offer -> want -> push). 0: always offer.
    push_inline_bytes_max: int = 16 * 1024
    # Kinds that only their author pushes: nobody forwards them eagerly, anti-entropy carries them (one
    # exchange carries all a peer lacks). For entries nothing network-wide waits for: N EXECUTION_REPORTs
    # (every node writes one at once) forwarded eagerly cost N x N x fanout messages; RATIFY entries are
    # the validators' audit copies of signatures the EXECUTE_UPGRADE's certificate already carries; each
    # validator's CLOSE lists the counted votes whose digest the certificate signs (three CLOSE floods
    # were 40% of an upgrade's pushes at N = 100). A forward wave carries the lazy parents of its
    # entries along, so an eager child never waits for them.
    lazy_kinds: tuple[str, ...] = ("EXECUTION_REPORT", "RATIFY", "CLOSE")
    # An EXECUTION_REPORT is held this long after its author wrote it (its HLC wall time) before this
    # node sends it to anyone (its author's push and every anti-entropy exchange wait; an explicit
    # `want` of it is answered at once, so a later entry of the same author never waits on it). 0: not
    # held. For many nodes on one machine (`synapse cluster up` sets it there): the N x N report
    # deliveries of an upgrade then come after the N executions instead of competing with them for
    # the same cores (at N = 100 on 2 cores they were about two thirds of the CPU until the last one).
    report_hold_ms: int = 0
    persist_timeout_ms: int = 30_000     # LogFile.append + fsync
    # Entry bytes waiting for (or in) LogFile.append; beyond it a write is refused at once (Unavailable:
    # peers retry by anti-entropy, a local writer gets 503). None -> 16 x request_body_max_bytes.
    persist_queue_max_bytes: int | None = None
    first_write_wait_ms: int = 3_000     # after start, local writes wait up to this long to learn this node's own entries from a peer

    def __post_init__(self) -> None:
        bounds = {
            "interval_ms": (10, 600_000), "batch_entries_max": (1, IDS_PER_MESSAGE_MAX),
            "request_body_max_bytes": (2048, 256 * 1024 * 1024), "call_timeout_ms": (10, 600_000),
            "backoff_base_ms": (1, 600_000), "backoff_max_ms": (1, 3_600_000), "inbox_max": (1, 10_000_000),
            "inbound_requests_max": (1, 100_000), "inbound_per_source_max": (1, 100_000),
            "outbound_tasks_max": (1, 100_000), "connections_max": (1, 100_000), "want_ids_max": (0, IDS_PER_MESSAGE_MAX),
            "persist_timeout_ms": (100, 3_600_000), "first_write_wait_ms": (0, 600_000),
            "push_inline_bytes_max": (0, 256 * 1024 * 1024), "report_hold_ms": (0, 600_000),
            "streams_max": (0, 100_000), "stream_calls_max": (1, 10_000), "stream_idle_ms": (100, 3_600_000),
            "stream_fallback_ms": (0, 3_600_000), "inbound_streams_max": (0, 100_000),
            "inbound_streams_per_source_max": (1, 10_000), "stream_request_max_bytes": (1_024, 256 * 1024 * 1024),
            "stream_hello_skew_ms": (1_000, 3_600_000), "stream_hellos_remembered_max": (1, 1_000_000),
        }
        for name, (minimum, maximum) in bounds.items():
            value = getattr(self, name)
            if type(value) is not int or not minimum <= value <= maximum:
                raise ConfigError(f"gossip setting {name} must be an int in {minimum}..{maximum}, got {value!r}")
        if self.fanout is not None and (type(self.fanout) is not int or not 1 <= self.fanout <= 1_000):
            raise ConfigError(f"gossip setting fanout must be None (automatic) or an int in 1..1000, got {self.fanout!r}")
        if self.quiet_interval_max_ms is not None and (
                type(self.quiet_interval_max_ms) is not int
                or not self.interval_ms <= self.quiet_interval_max_ms <= QUIET_INTERVAL_MAX_MS):
            raise ConfigError(f"gossip setting quiet_interval_max_ms must be None (automatic: {QUIET_INTERVAL_FACTOR} x "
                              f"interval_ms) or an int from interval_ms ({self.interval_ms}) to {QUIET_INTERVAL_MAX_MS}, "
                              f"got {self.quiet_interval_max_ms!r}")
        if self.backoff_max_ms < self.backoff_base_ms:
            raise ConfigError("gossip setting backoff_max_ms must be >= backoff_base_ms")
        if (type(self.lazy_kinds) is not tuple or len(self.lazy_kinds) > len(KINDS)
                or any(kind not in KINDS for kind in self.lazy_kinds)):
            raise ConfigError(f"gossip setting lazy_kinds must be a tuple of entry kinds ({', '.join(KINDS)}), "
                              f"got {self.lazy_kinds!r}")
        if self.inbox_max < self.batch_entries_max:
            raise ConfigError("gossip setting inbox_max must be >= batch_entries_max (one full batch must fit)")
        if self.persist_queue_max_bytes is not None and (
                type(self.persist_queue_max_bytes) is not int
                or not self.request_body_max_bytes <= self.persist_queue_max_bytes <= 64 * 1024**3):
            raise ConfigError(f"gossip setting persist_queue_max_bytes must be None (automatic) or an int from "
                              f"request_body_max_bytes ({self.request_body_max_bytes}: one full push must fit) to 64 GiB, "
                              f"got {self.persist_queue_max_bytes!r}")

    @property
    def quiet_period_max_ms(self) -> int:
        """quiet_interval_max_ms, or its automatic value (never below interval_ms)."""
        if self.quiet_interval_max_ms is not None:
            return self.quiet_interval_max_ms
        return max(self.interval_ms, min(QUIET_INTERVAL_MAX_MS, QUIET_INTERVAL_FACTOR * self.interval_ms))

    @property
    def persist_queue_limit_bytes(self) -> int:
        """persist_queue_max_bytes, or its automatic value."""
        if self.persist_queue_max_bytes is not None:
            return self.persist_queue_max_bytes
        return PERSIST_QUEUE_REQUEST_BODIES * self.request_body_max_bytes


def fanout_for(peer_count: int, fanout: int | None) -> int:
    """Peers an entry is pushed to: `fanout`, or ceil(ln N) + 1 for a cluster of N = peers + self."""
    if peer_count <= 0:
        return 0
    chosen = fanout if fanout is not None else math.ceil(math.log(peer_count + 1)) + 1
    return min(peer_count, chosen)
