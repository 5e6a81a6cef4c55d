"""The one way this node writes a local entry (notes, proposals, votes, closes, certificates, reports).

Why it works as it does: an entry is signed over its author sequence and parents, so it can only be
built once its sequence is known, and a PROPOSAL's id is itself derived from that sequence. So the
body is made from the sequence (`make_body(sequence)`), checked, signed and published under one lock,
so two concurrent requests never sign two entries with one sequence (that would be equivocation).
Should an entry still lose its sequence (gossip refuses with Conflict, nothing written), it is built
again, a bounded number of times. Publishing returns once the entry is on disk (fsync) and visible in
the log. Every call is bounded by `append_timeout_ms`, waiting for the lock included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from node.core.crdt_log import CrdtLog
from node.core.entries import Entry
from node.errors import Conflict, Unavailable
from node.limits import LOCAL_PUBLISH_ATTEMPTS_MAX


Body = Mapping[str, Any] | Callable[[int], Mapping[str, Any]]


class LocalAuthor:
    """Signs and publishes this node's entries: `await author.append(kind, body_or_make_body, check)`."""

    def __init__(self, *, node_id: str, log: CrdtLog, sign: Callable[[bytes], bytes],
                 publish: Callable[[Entry], Awaitable[None]], now_ms: Callable[[], int],
                 append_timeout_ms: int = 30_000) -> None:
        self._node_id = node_id
        self._log = log
        self._sign = sign
        self._publish = publish
        self._now_ms = now_ms
        self._append_timeout_ms = append_timeout_ms
        self._lock = asyncio.Lock()

    def clock_floor_ms(self) -> int:
        """The wall time the next local entry's HLC is at least at (CrdtLog.clock_floor): ahead of this
        node's clock when a peer's clock runs ahead."""
        return self._log.clock_floor(self._node_id).wall_ms

    async def append(self, kind: str, body: Body, check: Callable[[Mapping[str, Any]], None] | None = None) -> Entry:
        """Build (with this node's next sequence when `body` is a function of it), check, sign, persist
        and publish one local entry. Raises what `check` raises, with nothing written."""
        async with asyncio.timeout(self._append_timeout_ms / 1000), self._lock:
            for _attempt in range(LOCAL_PUBLISH_ATTEMPTS_MAX):
                sequence = self._log.next_sequence(self._node_id)
                made = body(sequence) if callable(body) else body
                if check is not None:
                    check(made)
                entry = self._log.new_entry(kind=kind, author=self._node_id, body=made, sign=self._sign,
                                            now_ms=self._now_ms())
                try:
                    await self._publish(entry)
                except Conflict:
                    if entry.sequence == self._log.next_sequence(self._node_id):
                        raise
                    continue
                return entry
        raise Unavailable(f"could not publish a {kind} entry: {LOCAL_PUBLISH_ATTEMPTS_MAX} other local entries took its sequence",
                          hint="retry when the node is less busy")
