"""The pace of anti-entropy: fast while the log changes, backing off while the network is quiet.

Why it works as it does:

- Anti-entropy only repairs what eager push missed. In a quiet network every round finds the digests
  equal and costs an HTTP exchange on both sides for nothing: at 5 rounds/s per node that was most of
  an idle cluster's CPU (issue 11). So after QUIET_ROUNDS_AT_BASE rounds in a row that found nothing
  to exchange, the period doubles at each further quiet round, from `base_ms` (the gossip setting
  interval_ms) up to `max_ms` (quiet_interval_max_ms).

- Any sign of change snaps the period back to `base_ms` at once: a new entry here (local or received),
  a peer whose digest differs from ours (it asked us, or it answered our round), a round that pushed
  or pulled. A node that missed an eager push learns it when a node that has the entry (fast again,
  since the entry is new there) starts a round with it: the digests differ, so it snaps back too and
  pulls. `change()` says whether the period was longer than `base_ms`: then the transport's sleep
  until the next tick is too long, and the core asks it to wake (the `Wake` effect).

- The grace of QUIET_ROUNDS_AT_BASE rounds keeps the repair of a fresh entry as fast as before:
  right after a change, every node keeps the base rate for a few rounds, so a node that push missed
  is contacted at the same rate as without backoff.

- A failed or skipped round says nothing about the log: the period stays as it is.

One state machine, one table (`PACE_TRANSITIONS`); pure: no clock here, the caller counts rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping

QUIET_ROUNDS_AT_BASE = 3      # quiet rounds at interval_ms after a change before the period grows


class PaceEvent(Enum):
    QUIET_ROUND = "quiet_round"      # a round found the digests equal: nothing exchanged
    CHANGE = "change"                # a new entry, a digest mismatch, a round that pushed or pulled
    NO_NEWS = "no_news"              # a round failed, timed out or was skipped: says nothing


class PaceStep(Enum):
    SLOW_DOWN = "slow_down"          # count the quiet round; double the period past the grace
    SNAP_BACK = "snap_back"          # the period is base_ms again, the grace starts over
    KEEP = "keep"


PACE_TRANSITIONS: Mapping[PaceEvent, PaceStep] = {
    PaceEvent.QUIET_ROUND: PaceStep.SLOW_DOWN,
    PaceEvent.CHANGE: PaceStep.SNAP_BACK,
    PaceEvent.NO_NEWS: PaceStep.KEEP,
}


@dataclass(slots=True)
class AntiEntropyPace:
    """The current anti-entropy period. `base_ms` <= `period_ms` <= `max_ms` at all times."""

    base_ms: int
    max_ms: int
    period_ms: int = 0
    quiet_rounds: int = 0            # quiet rounds in a row since the last change

    def __post_init__(self) -> None:
        assert 0 < self.base_ms <= self.max_ms, "GossipSettings validates base and max"
        self.period_ms = self.base_ms

    def on(self, event: PaceEvent) -> bool:
        """Apply one event. True when the period was cut short (it was longer than base_ms): a tick
        scheduled with the old period is too far away."""
        step = PACE_TRANSITIONS[event]
        if step is PaceStep.SNAP_BACK:
            was_slow = self.period_ms > self.base_ms
            self.period_ms, self.quiet_rounds = self.base_ms, 0
            return was_slow
        if step is PaceStep.SLOW_DOWN:
            self.quiet_rounds += 1
            if self.quiet_rounds > QUIET_ROUNDS_AT_BASE:
                self.period_ms = min(self.max_ms, self.period_ms * 2)
        return False
