"""The records the gossip core (node/core/gossip_protocol.py) keeps: its peers, the entries of a message
waiting for the disk, the calls in flight with their continuations. Pure data, no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from node.core.entries import Entry
from node.errors import SynapseError


class Random(Protocol):
    """What the core needs of random.Random (passed in, seeded by the caller)."""

    def random(self) -> float: ...
    def choice(self, seq: Sequence[Any]) -> Any: ...
    def sample(self, population: Sequence[Any], k: int) -> list: ...


@dataclass(slots=True)
class PeerState:
    node_id: str
    up: bool = False               # the last call succeeded
    failures: int = 0              # consecutive failed calls
    retry_at_ms: int = 0           # in backoff until then
    syncing: bool = False          # an anti-entropy round with it is running


@dataclass(slots=True)
class Ingested:
    added: int = 0
    duplicate: int = 0
    refused: int = 0
    pending: int = 0
    newly_visible: list[Entry] = field(default_factory=list)


Then = Callable[[], None]            # what a flow does next, once a step is done or failed


@dataclass(slots=True)
class Ingestion:
    """Entries of one message waiting for their Persist; then `done` or `failed` continues."""

    sender_id: str | None
    raws_count: int
    fresh: list[Entry]
    result: Ingested
    done: Callable[[Ingested, int, Random], None]
    failed: Callable[[SynapseError], None]
    local: bool = False                 # this node's own entry: added by `done`, never forwarded


@dataclass(slots=True)
class Call:
    """An outbound call in flight and what to do with its reply (`on_reply`) or failure (`on_failure`)."""

    peer_id: str
    on_reply: Callable[[Any, int, Random], None]
    on_failure: Then
