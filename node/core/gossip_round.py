"""One anti-entropy round's phases, as one transition table (used by gossip_protocol.py).

Why its own file: a round is a state machine of its own (ask -> take -> push -> pull -> over), and
STYLE.md keeps one state machine per file with its table. The protocol core drives the rounds; this
file only says which phase may follow which, and refuses anything else as a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping

PULL_BATCHES_PER_ROUND_MAX = 64      # a restarted node catches up with up to 64 batches per round


class RoundPhase(Enum):
    ASKED = "asked"        # (1) my digest's hash sent
    TAKING = "taking"      # the answer carried entries: on their way to disk
    PUSHING = "pushing"    # (2) pushing what the peer's digest lacks
    PULLING = "pulling"    # (3) pulling batches while the peer has more
    OVER = "over"          # a result was counted; late answers are ignored


# The one table of an anti-entropy round; any phase may also end (OVER) on failure or timeout.
ROUND_TRANSITIONS: Mapping[RoundPhase, frozenset[RoundPhase]] = {
    RoundPhase.ASKED: frozenset({RoundPhase.TAKING, RoundPhase.PUSHING, RoundPhase.OVER}),
    RoundPhase.TAKING: frozenset({RoundPhase.PUSHING, RoundPhase.OVER}),
    RoundPhase.PUSHING: frozenset({RoundPhase.PULLING, RoundPhase.OVER}),
    RoundPhase.PULLING: frozenset({RoundPhase.PULLING, RoundPhase.OVER}),
    RoundPhase.OVER: frozenset(),
}


@dataclass(slots=True)
class Round:
    peer_id: str
    deadline_ms: int
    phase: RoundPhase = RoundPhase.ASKED
    lacking: bool = False
    theirs: Mapping[str, tuple] | None = None
    pulls_left: int = PULL_BATCHES_PER_ROUND_MAX


def enter(round_: Round, phase: RoundPhase) -> None:
    """Move `round_` to `phase`; an impossible transition is a bug in the protocol core, never the peer's doing."""
    if phase not in ROUND_TRANSITIONS[round_.phase]:
        raise AssertionError(f"an anti-entropy round cannot go from {round_.phase.value} to {phase.value}")
    round_.phase = phase
