"""Hybrid logical clock (Kulkarni et al., 2014): wall-clock milliseconds plus a logical counter.

Why: the log orders entries by (hlc, author, id). Plain wall clocks go backwards and disagree across
hosts; plain Lamport counters lose the link to real time (deadlines are wall-clock). An HLC stays close
to the wall clock, never goes backwards, and is strictly greater than every clock it has seen, so an
entry stamped after its parents sorts after them: sorting by hlc is a causal order.

Pure: the caller passes `now_ms`; nothing here reads a clock.

Both fields are bounded (`WALL_MS_MAX`, `LOGICAL_MAX`) so that a hostile peer cannot push a counter
past what msgpack or other nodes can represent; when the logical counter would overflow, the clock
moves to the next millisecond instead, which keeps it strictly increasing.
"""

from __future__ import annotations

from dataclasses import dataclass

WALL_MS_MAX = 2**48 - 1  # about the year 10889: far beyond any honest clock, well inside msgpack's int64
LOGICAL_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True, order=True)
class Hlc:
    wall_ms: int
    logical: int

    def __post_init__(self) -> None:
        for name, value, maximum in (("wall_ms", self.wall_ms, WALL_MS_MAX), ("logical", self.logical, LOGICAL_MAX)):
            if type(value) is not int or not 0 <= value <= maximum:
                raise ValueError(f"hlc {name} must be an int in 0..{maximum}, got {value!r}")


HLC_ZERO = Hlc(0, 0)


def _after(wall_ms: int, logical: int) -> Hlc:
    """The smallest valid clock strictly greater than (wall_ms, logical - 1)."""
    if logical > LOGICAL_MAX:
        return Hlc(wall_ms + 1, 0)
    return Hlc(wall_ms, logical)


def _check_now(now_ms: int) -> None:
    if type(now_ms) is not int or not 0 <= now_ms <= WALL_MS_MAX:
        raise ValueError(f"now_ms must be an int in 0..{WALL_MS_MAX}, got {now_ms!r}")


def hlc_tick(previous: Hlc, now_ms: int) -> Hlc:
    """The clock for a local event (e.g. a new entry): strictly greater than `previous`."""
    _check_now(now_ms)
    if now_ms > previous.wall_ms:
        return Hlc(now_ms, 0)
    return _after(previous.wall_ms, previous.logical + 1)

