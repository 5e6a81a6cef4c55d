"""The tally against a dumb reference twin (etcd-io/raft's quick-check style), over thousands of random cases.

The reference knows nothing of the cross-multiplied shortcuts: it uses exact fractions, and decides
"the outcome can no longer change" by ENUMERATING every way the members who have not voted could still
vote (approve, reject or abstain). The real tally must agree on every case. The seed is printed;
replay a failure with SYNAPSE_TALLY_SEED=<seed>.
"""

import itertools
import os
import random
from fractions import Fraction

from node.core.lifecycle import APPROVED, EXPIRED, REJECTED, VOTING
from node.core.tally import Ballot, count_votes, tally_outcome

CASES = 3000
SCAN_CASES = 1500


def _seed() -> int:
    seed = int(os.environ.get("SYNAPSE_TALLY_SEED", random.SystemRandom().randrange(2**32)))
    print(f"tally reference seed: {seed} (replay with SYNAPSE_TALLY_SEED={seed})")
    return seed


def reference_final(votes: dict, reputations: dict, threshold_pct: int, quorum_pct: int) -> str:
    """The outcome at the deadline, by the definition, in exact fractions."""
    total = sum(reputations.values())
    cast = sum(reputations[voter] for voter in votes)
    approval = sum(reputations[voter] for voter, choice in votes.items() if choice == "approval")
    quorum_reached = total == 0 or Fraction(cast, total) >= Fraction(quorum_pct, 100)
    if not quorum_reached:
        return EXPIRED
    approved = cast > 0 and Fraction(approval, cast) > Fraction(threshold_pct, 100)
    return APPROVED if approved else REJECTED


def reference_outcome(votes: dict, reputations: dict, threshold_pct: int, quorum_pct: int, deadline_passed: bool) -> str:
    counted = {voter: choice for voter, choice in votes.items() if reputations.get(voter, 0) > 0}
    remaining = [voter for voter, weight in reputations.items() if weight > 0 and voter not in counted]
    possible = set()
    for choices in itertools.product(("approval", "rejection", None), repeat=len(remaining)):
        completion = dict(counted)
        completion.update({voter: choice for voter, choice in zip(remaining, choices) if choice is not None})
        possible.add(reference_final(completion, reputations, threshold_pct, quorum_pct))
    if possible == {APPROVED}:
        return APPROVED
    if APPROVED not in possible:
        return REJECTED
    if not deadline_passed:
        return VOTING
    return reference_final(counted, reputations, threshold_pct, quorum_pct)


def random_electorate(rng: random.Random) -> dict:
    size = rng.randint(0, 6)
    return {f"n{i}": rng.choice((0, 0, 1, 1, 2, 3, 5, 10, rng.randint(0, 1000))) for i in range(size)}


def random_thresholds(rng: random.Random) -> tuple[int, int]:
    return rng.choice((0, 1, 33, 50, 50, 51, 66, 67, 99, 100, rng.randint(0, 100))), \
           rng.choice((0, 1, 25, 50, 50, 51, 75, 100, rng.randint(0, 100)))


def test_tally_matches_the_reference_on_random_cases():
    rng = random.Random(_seed())
    outcomes = set()
    for _case in range(CASES):
        reputations = random_electorate(rng)
        threshold_pct, quorum_pct = random_thresholds(rng)
        voters = list(reputations) + ["sybil-a", "sybil-b"]   # unknown voters weigh nothing
        votes = {voter: rng.choice(("approval", "rejection")) for voter in voters if rng.random() < 0.5}
        deadline_passed = rng.random() < 0.5
        counted = {voter: choice for voter, choice in votes.items() if reputations.get(voter, 0) > 0}
        approval = sum(reputations[v] for v, c in counted.items() if c == "approval")
        rejection = sum(reputations[v] for v, c in counted.items() if c == "rejection")
        actual = tally_outcome(approval_weight=approval, rejection_weight=rejection,
                               total_weight=sum(reputations.values()), threshold_pct=threshold_pct,
                               quorum_pct=quorum_pct, deadline_passed=deadline_passed)
        expected = reference_outcome(votes, reputations, threshold_pct, quorum_pct, deadline_passed)
        assert actual == expected, (reputations, votes, threshold_pct, quorum_pct, deadline_passed)
        outcomes.add(actual)
    assert outcomes == {VOTING, APPROVED, REJECTED, EXPIRED}, "the random cases must reach every outcome"


def reference_scan(ballots, reputations, disqualified, deadline_ms, now_ms, threshold_pct, quorum_pct):
    """Recompute the live votes from scratch after each ballot; freeze at the first certain outcome."""
    ordered = sorted(ballots, key=lambda b: b.order_key)

    def live_votes(prefix):
        latest = {}
        for ballot in prefix:
            eligible = (ballot.voter not in disqualified and ballot.wall_ms <= deadline_ms
                        and reputations.get(ballot.voter, 0) > 0)
            if eligible and (ballot.voter not in latest or latest[ballot.voter].author_sequence < ballot.author_sequence):
                latest[ballot.voter] = ballot
        return {voter: ballot.choice for voter, ballot in latest.items()}

    for count in range(len(ordered) + 1):   # the outcome may be certain before any vote
        votes = live_votes(ordered[:count])
        if reference_outcome(votes, reputations, threshold_pct, quorum_pct, False) != VOTING:
            return votes, reference_outcome(votes, reputations, threshold_pct, quorum_pct, now_ms > deadline_ms)
    votes = live_votes(ordered)
    return votes, reference_outcome(votes, reputations, threshold_pct, quorum_pct, now_ms > deadline_ms)


def random_ballots(rng: random.Random, voters: list[str], deadline_ms: int) -> list[Ballot]:
    ballots = []
    for voter in voters:
        wall_ms = rng.randint(0, deadline_ms + 50)
        for sequence in range(1, rng.randint(1, 3) + 1):    # 2nd and 3rd ballots replace the earlier ones
            wall_ms += rng.randint(1, 40)
            ballots.append(Ballot(voter=voter, choice=rng.choice(("approval", "rejection")), author_sequence=sequence,
                                  order_key=(wall_ms, 0, voter, f"{voter}-{sequence}"), entry_id=f"{voter}-{sequence}"))
    rng.shuffle(ballots)
    return ballots


def test_vote_counting_with_replacement_deadline_and_early_decision_matches_the_reference():
    rng = random.Random(_seed())
    deadline_ms = 100
    for _case in range(SCAN_CASES):
        reputations = random_electorate(rng)
        threshold_pct, quorum_pct = random_thresholds(rng)
        voters = [voter for voter in list(reputations) + ["sybil"] if rng.random() < 0.8]
        ballots = random_ballots(rng, voters, deadline_ms)
        disqualified = {voter for voter in voters if rng.random() < 0.1}
        now_ms = rng.choice((deadline_ms - 1, deadline_ms, deadline_ms + 1))
        result = count_votes(ballots, reputations=reputations, disqualified=disqualified, deadline_ms=deadline_ms,
                             now_ms=now_ms, threshold_pct=threshold_pct, quorum_pct=quorum_pct)
        votes, outcome = reference_scan(ballots, reputations, disqualified, deadline_ms, now_ms, threshold_pct, quorum_pct)
        context = (reputations, sorted(ballots, key=lambda b: b.order_key), disqualified, now_ms, threshold_pct, quorum_pct)
        assert result.tally.outcome == outcome, context
        assert {row.voter: row.vote for row in result.votes if row.counted} == votes, context
        assert result.tally.approval_weight == sum(reputations[v] for v, c in votes.items() if c == "approval"), context
        assert result.tally.rejection_weight == sum(reputations[v] for v, c in votes.items() if c == "rejection"), context
