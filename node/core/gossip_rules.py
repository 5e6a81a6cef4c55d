"""Stateless rules of gossip: how entries are cut into batches, whether a peer's digest shows
entries this node lacks, which reports are still held (report_hold_ms), and a bounded memory for ids
learnt from the network.

Why separate: these are leaf functions (pure, table-testable) that the protocol core
(gossip_protocol.py) composes; keeping them apart keeps the state machine's file about state.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

from node.core.entries import Entry


class BoundedMap(OrderedDict):
    """An LRU-bounded dict: remembering ids from the network must not grow memory without bound."""

    def __init__(self, size_max: int) -> None:
        super().__init__()
        self.size_max = size_max

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size_max:
            self.popitem(last=False)


def batches_by_size(entries: Sequence[Entry], *, count_max: int, size_max_bytes: int) -> list[list[Entry]]:
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


def remote_may_have_more(mine: Mapping[str, list], theirs: Mapping[str, tuple]) -> bool:
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


HELD_KIND = "EXECUTION_REPORT"       # the kind GossipSettings.report_hold_ms holds


def held_report(entry: Entry, now_ms: int, hold_ms: int) -> bool:
    """An EXECUTION_REPORT younger than `hold_ms` by its author's HLC: nobody sends it yet. An author
    with a clock ahead only holds its own report longer (admission bounds how far ahead)."""
    return hold_ms > 0 and entry.kind == HELD_KIND and now_ms < entry.hlc.wall_ms + hold_ms


def not_held(entries: Sequence[Entry], now_ms: int, hold_ms: int) -> list[Entry]:
    """`entries` without the held reports, in their order."""
    if not hold_ms:
        return list(entries)
    return [entry for entry in entries if not held_report(entry, now_ms, hold_ms)]
