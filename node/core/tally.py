"""The reputation-weighted tally of one proposal's votes (pure; tests/unit/test_tally_reference.py
compares it with a brute-force twin).

Why it works as it does:
  * Votes are counted in the log's canonical order (hlc, author, id), which every node computes
    identically from the same set of entries. One live vote per voter: a vote with a higher author
    sequence replaces the earlier one. A voter who equivocated loses its vote (both entries are void).
  * Weight is the voter's integer reputation in the CURRENT network state; keys absent from the state
    or with zero reputation weigh nothing.
  * Approval: approval weight EXCEEDS threshold_pct% of the cast weight AND the cast weight reaches
    quorum_pct% of the total reputation. Early decision: once the outcome can no longer change, later
    votes are "after_decision". Integer arithmetic only (node/core/quorum.py).
  * Which ballots may count is decided by the validators' close (`counted_ids`); without it the count
    is provisional and judges ballots by their own, voter-chosen, clocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node.core.lifecycle import APPROVED, EXPIRED, REJECTED, VOTING
from node.core.quorum import share_exceeds, share_reaches

def tally_outcome(*, approval_weight: int, rejection_weight: int, total_weight: int, threshold_pct: int,
                  quorum_pct: int, deadline_passed: bool) -> str:
    """VOTING, APPROVED, REJECTED or EXPIRED for the live votes. `total_weight` is the reputation of
    every member, voters and non-voters alike; the weight that has not voted may still vote either way
    (or not at all) until the deadline. Percentages are compared cross-multiplied, in integers."""
    assert 0 <= approval_weight and 0 <= rejection_weight and approval_weight + rejection_weight <= total_weight
    cast_weight = approval_weight + rejection_weight
    remaining_weight = total_weight - cast_weight
    quorum_reached = share_reaches(cast_weight, total_weight, quorum_pct)
    # Certain approval: even if all the remaining weight rejected, approval would still exceed the
    # threshold; and even if nobody else voted, the quorum is already there.
    if share_exceeds(approval_weight, total_weight, threshold_pct) and quorum_reached:
        return APPROVED
    # Certain rejection: even if all the remaining weight approved, it would not exceed the threshold.
    if not share_exceeds(approval_weight + remaining_weight, total_weight, threshold_pct):
        return REJECTED
    if not deadline_passed:
        return VOTING
    if not quorum_reached:
        return EXPIRED
    return APPROVED if share_exceeds(approval_weight, cast_weight, threshold_pct) else REJECTED


@dataclass(frozen=True, slots=True, kw_only=True)
class Tally:
    approval_weight: int
    rejection_weight: int
    total_weight: int
    outcome: str
    decided_early: bool          # decided before the deadline because the outcome could no longer change

    @property
    def cast_weight(self) -> int:
        return self.approval_weight + self.rejection_weight


@dataclass(frozen=True, slots=True, kw_only=True)
class Ballot:
    """One VOTE entry, reduced to what counting needs."""
    voter: str
    choice: str                  # "approval" | "rejection"
    author_sequence: int
    order_key: tuple             # (wall_ms, logical, author, entry_id): the log's canonical order
    entry_id: str

    @property
    def wall_ms(self) -> int:
        return self.order_key[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRecord:
    """One row per voter: the vote that counts, or the latest one with the reason it does not."""
    voter: str
    vote: str
    weight: int
    counted: bool
    reason: str | None           # None | after_deadline | not_counted | unknown_voter | zero_reputation | equivocation | after_decision
    entry_id: str
    author_sequence: int
    cast_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteCount:
    tally: Tally
    votes: tuple[VoteRecord, ...]
    decided_at_ms: int | None    # hlc wall time of the vote that decided early, or the deadline;
                                 # None while voting, or when decided before any vote


def reputations_from_state(state: Mapping) -> dict[str, int]:
    """{node_id: reputation} of the members in state["global"]["nodes"]; anything but a non-negative
    int counts as 0 (a malformed state never gives anyone weight)."""
    global_state = state.get("global") if isinstance(state, Mapping) else None
    nodes = global_state.get("nodes") if isinstance(global_state, Mapping) else None
    if not isinstance(nodes, Mapping):
        return {}
    reputations = {}
    for node_id, info in nodes.items():
        reputation = info.get("reputation") if isinstance(info, Mapping) else None
        reputations[str(node_id)] = reputation if type(reputation) is int and reputation > 0 else 0
    return reputations


def _ballot_refusal(ballot: Ballot, reputations: Mapping[str, int], disqualified: set[str],
                    deadline_ms: int, decided: bool, counted_ids: frozenset[str] | None) -> str | None:
    if ballot.voter in disqualified:
        return "equivocation"
    if counted_ids is not None and ballot.entry_id not in counted_ids:
        return "not_counted"
    if counted_ids is None and ballot.wall_ms > deadline_ms:
        return "after_deadline"
    if ballot.voter not in reputations:
        return "unknown_voter"
    if reputations[ballot.voter] <= 0:
        return "zero_reputation"
    return "after_decision" if decided else None


def count_votes(ballots: Iterable[Ballot], *, reputations: Mapping[str, int], disqualified: set[str],
                deadline_ms: int, now_ms: int, threshold_pct: int, quorum_pct: int,
                counted_ids: frozenset[str] | None = None) -> VoteCount:
    """Count one proposal's ballots in canonical order, stopping at an early decision. With
    `counted_ids` (voting closed by the validators), exactly those ballots may count, whatever their
    timestamps, and the deadline has passed; without it the count is provisional: ballots are
    judged by their own (voter-chosen) clocks against `now_ms`."""
    if counted_ids is not None:
        now_ms = deadline_ms + 1
    total_weight = sum(reputations.values())
    weights = {"approval": 0, "rejection": 0}
    live: dict[str, Ballot] = {}
    rows: dict[str, VoteRecord] = {}
    # Decided before any vote when nothing could pass (e.g. no member has reputation).
    decided = _outcome(weights, total_weight, threshold_pct, quorum_pct, deadline_passed=False) != VOTING
    decided_at_ms: int | None = None
    for ballot in sorted(ballots, key=lambda b: b.order_key):
        reason = _ballot_refusal(ballot, reputations, disqualified, deadline_ms, decided, counted_ids)
        previous = live.get(ballot.voter)
        if reason is None and previous is not None and previous.author_sequence >= ballot.author_sequence:
            reason = "superseded"
        weight = reputations.get(ballot.voter, 0)
        row = VoteRecord(voter=ballot.voter, vote=ballot.choice, weight=weight, counted=reason is None, reason=reason,
                         entry_id=ballot.entry_id, author_sequence=ballot.author_sequence, cast_ms=ballot.wall_ms)
        if reason is not None:
            if ballot.voter not in rows or not rows[ballot.voter].counted:
                rows[ballot.voter] = row
            continue
        if previous is not None:
            weights[previous.choice] -= weight
        weights[ballot.choice] += weight
        live[ballot.voter], rows[ballot.voter] = ballot, row
        if _outcome(weights, total_weight, threshold_pct, quorum_pct, deadline_passed=False) != VOTING:
            decided, decided_at_ms = True, ballot.wall_ms
    outcome = _outcome(weights, total_weight, threshold_pct, quorum_pct, deadline_passed=now_ms > deadline_ms)
    if decided_at_ms is None and outcome != VOTING and not decided:
        decided_at_ms = deadline_ms
    tally = Tally(approval_weight=weights["approval"], rejection_weight=weights["rejection"], total_weight=total_weight,
                  outcome=outcome, decided_early=decided)
    return VoteCount(tally=tally, votes=tuple(rows[voter] for voter in sorted(rows)), decided_at_ms=decided_at_ms)


def _outcome(weights: Mapping[str, int], total_weight: int, threshold_pct: int, quorum_pct: int, *,
             deadline_passed: bool) -> str:
    return tally_outcome(approval_weight=weights["approval"], rejection_weight=weights["rejection"],
                         total_weight=total_weight, threshold_pct=threshold_pct, quorum_pct=quorum_pct,
                         deadline_passed=deadline_passed)
