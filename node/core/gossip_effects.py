"""What the gossip protocol core asks its transport to do: frozen effects, executed in order.

Why effects: the core (gossip_protocol.py) decides and the transport acts, as in etcd's raft `Ready`
and h11's events, so one core runs over HTTP (node/gossip.py) and in memory on a virtual clock
(node/gossip_inmem.py) with the same decisions. Each effect that needs an answer names an id the
transport hands back: a `Send`'s call_id comes back through `receive_reply` or `call_failed`, a
`Persist`'s batch_id through `persisted` or `persist_failed`; `Reply` and `Refuse` answer the
request_id the transport gave `receive` or `publish`. Persist before anything else: the core only
emits `Visible` and forwards an entry after its `Persist` was confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.core.entries import Entry
from node.errors import SynapseError


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """POST `message` to peer `peer_id`; hand its reply (or failure) back with `call_id`."""

    call_id: int
    peer_id: str
    message: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Answer the request `request_id` with `message` (None: a local publish is done)."""

    request_id: int
    message: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    """Refuse the request `request_id` with `error`; `reason` labels gossip_requests_refused_total
    ("" for a local publish, which is not a gossip request)."""

    request_id: int
    error: SynapseError
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    """Append `raws` to the log file, and fsync it when `durable`; then report back with `batch_id`.

    This node's own entries are durable before anyone sees them: after a power loss the node must
    not sign another entry at the same sequence. Entries received from peers are written, not
    fsynced: their authors and the peers hold them, a node that lost them learns them again by
    anti-entropy, and the next durable append (or the kernel's writeback) flushes them with it, since
    an fsync covers the whole file. That saves an fsync on every hop of every entry."""

    batch_id: int
    raws: tuple[bytes, ...]
    durable: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Visible:
    """These entries became visible here (in causal order): hand them to the node."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Count:
    """Add `amount` to the counter `name` with `labels`."""

    name: str
    amount: int = 1
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Gauge:
    name: str
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One structured log line: `level` is "info", "warning" or "error"."""

    level: str
    name: str
    fields: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Wake:
    """The anti-entropy period snapped back (gossip_backoff.py): the tick scheduled with the longer, quiet
    period is too far away. Reschedule it after next_tick_delay_ms()."""


Effect = Send | Reply | Refuse | Persist | Visible | Count | Gauge | Event | Wake


def count(name: str, amount: int = 1, **labels: str) -> Count:
    return Count(name=name, amount=amount, labels=tuple(labels.items()))


def event(level: str, name: str, **fields: Any) -> Event:
    return Event(level=level, name=name, fields=tuple(fields.items()))
