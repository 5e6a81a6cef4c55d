"""Forward waves of the gossip core (node/core/gossip_protocol.py): which newly visible entries wait,
and when the next wave may leave. Pure: no clock (now_ms is passed in), no I/O.

Why: forwarding each entry on its own costs one message per entry per chosen peer. Batching as Nagle's
algorithm and group commit do: an entry that becomes visible while no wave is open leaves at once (an
idle network pays no delay); entries that become visible while one is open wait and leave together in
the next, one message per chosen peer. The busier the node, the longer a wave stays open and the more
it carries. A wave is open until each of its calls was answered (or failed); one stuck on a dead or
partitioned peer stops holding the next after `patience_ms` (the anti-entropy period).
"""

from __future__ import annotations

from typing import Callable, Iterable

from node.core.entries import Entry


class ForwardWaves:
    """The queue of entries waiting for the next wave (bounded), and the open wave's unanswered calls."""

    def __init__(self, *, queue_max: int, patience_ms: int) -> None:
        self.queue_max = queue_max
        self.patience_ms = patience_ms
        self._queue: dict[str, tuple[Entry, str | None]] = {}    # id -> (entry, the peer it came from)
        self._wave = 0                # the current wave's number
        self._open = 0                # its calls not answered yet
        self._started_ms = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, entries: Iterable[Entry], sender_id: str | None) -> int:
        """Queue entries (each once); returns how many were dropped because the queue was full."""
        dropped = 0
        for entry in entries:
            if entry.id in self._queue:
                continue
            if len(self._queue) >= self.queue_max:
                dropped += 1
                continue
            self._queue[entry.id] = (entry, sender_id)
        return dropped

    def may_leave(self, now_ms: int) -> bool:
        """Entries wait, and no wave is open (or the open one has waited `patience_ms`)."""
        return bool(self._queue) and (not self._open or now_ms - self._started_ms >= self.patience_ms)

    def leave(self, now_ms: int) -> list[tuple[Entry, str | None]]:
        """Start the next wave with everything queued: the (entry, sender) pairs, in arrival order."""
        waiting = list(self._queue.values())
        self._queue.clear()
        self._wave += 1
        self._open, self._started_ms = 0, now_ms
        return waiting

    def call_sent(self) -> Callable[[], None]:
        """Count one call of the current wave as open; the returned callback closes it, once, and only
        while that wave is still the current one (a late answer never closes a slot of a later wave)."""
        self._open += 1
        wave, pending = self._wave, [True]

        def answered() -> None:
            if pending[0] and wave == self._wave:
                self._open -= 1
            pending[0] = False
        return answered


def peers_holding_all(waiting: list[tuple[Entry, str | None]], holders_of: Callable[[str], Iterable[str]]) -> set[str]:
    """The peers known to hold (or to have sent) every waiting entry: no point choosing them."""
    common: set[str] | None = None
    for entry, sender_id in waiting:
        holding = set(holders_of(entry.id))
        if sender_id is not None:
            holding.add(sender_id)
        common = holding if common is None else common & holding
        if not common:
            return set()
    return common or set()
