"""Folding a proposal costs the same whatever the history (issue 11): the fold keeps the orphan count
and each author's sorted voting deadlines instead of scanning every bucket and every earlier proposal.
The verdicts must not change: a random history (proposals out of order, twins of one sequence, orphan
votes, full limits) folds to exactly what the scanning fold of before gives."""

from __future__ import annotations

import hashlib
import os
import random

from node.core.entries import make_entry
from node.core.governance import Governance, _Bucket
from node.core.hlc import Hlc
from node.core.proposals import GovernanceRules, new_proposal_body, new_vote_body

NETWORK = "net-history"
T0 = 1_760_000_000_000
AUTHORS = [hashlib.sha256(f"author-{index}".encode()).hexdigest()[:16] for index in range(4)]
VALIDATORS = {hashlib.sha256(f"validator-{index}".encode()).hexdigest()[:16]: bytes(32) for index in range(3)}


class ScanningGovernance(Governance):
    """The fold as it was before issue 11: both limits judged by a scan of the history."""

    def _bucket(self, proposal_id, entry):
        bucket = self._buckets.get(proposal_id)
        if bucket is not None:
            return bucket
        orphans = sum(1 for b in self._buckets.values() if b.proposal is None)
        full = (len(self._buckets) - orphans >= self._rules.proposals_max if entry.kind == "PROPOSAL"
                else orphans >= self._rules.orphan_proposals_max)
        if full:
            self._problem("full", f"too many proposals are tracked: {entry.kind} for {proposal_id!r} ignored",
                          entry.id, entry.author)
            return None
        self._orphans += 1  # kept only so that _apply_proposal's bookkeeping stays consistent
        bucket = self._buckets[proposal_id] = _Bucket()
        return bucket

    def _open_proposals_refusal(self, entry):
        created_ms = entry.hlc.wall_ms
        open_count = sum(1 for earlier in self._proposals_by_author.get(entry.author, ())
                         if earlier.sequence < entry.sequence and earlier.body["voting_deadline_ms"] >= created_ms
                         and earlier.id not in self._void)
        if open_count < self._rules.open_proposals_per_author_max:
            return None
        return ("too_many_open_proposals", f"author {entry.author} already has {open_count} proposals open for voting; "
                f"at most {self._rules.open_proposals_per_author_max} may overlap (proposal {entry.body['proposal_id']})")


def entry(author: str, kind: str, body: dict, sequence: int, wall_ms: int, salt: int = 0):
    return make_entry(network_id=NETWORK, kind=kind, author=author, sequence=sequence, parents=(),
                      hlc=Hlc(wall_ms, salt), body=body, sign=lambda _: bytes(64))


def random_history(rng: random.Random, rules: GovernanceRules) -> tuple[list, list]:
    """Entries of 4 authors (proposals with random voting periods, votes, orphan votes, twins), shuffled
    locally, and the equivocation pairs among them."""
    entries, pairs, proposal_ids = [], [], []
    sequences = dict.fromkeys(AUTHORS, 0)
    wall_ms = T0
    for _ in range(400):
        wall_ms += 1_000 * rng.randint(1, 4)  # whole seconds: deadlines often equal a later creation time
        author = rng.choice(AUTHORS)
        sequences[author] += 1
        sequence = sequences[author]
        if rng.random() < 0.5:
            period = GovernanceRules(voting_period_ms=1_000 * rng.randint(1, 40))
            body = new_proposal_body(action="upgrade", title="t", description="d", version=f"1.{sequence}.0",
                                     package_url="https://example.org/p.wasm", package_hash="ab" * 32, package_size=10,
                                     target_proposal_id=None, author=author, sequence=sequence, now_ms=wall_ms, rules=period)
            proposal_ids.append(body["proposal_id"])
            made = entry(author, "PROPOSAL", body, sequence, wall_ms)
            entries.append(made)
            if rng.random() < 0.15:  # a twin: same author and sequence, other content
                twin = entry(author, "PROPOSAL", {**body, "title": "twin"}, sequence, wall_ms, salt=1)
                entries.append(twin)
                pairs.append((made.id, twin.id))
        else:
            target = rng.choice(proposal_ids) if proposal_ids and rng.random() < 0.8 else f"upgrade_20251003_120000_{rng.getrandbits(32):08x}"
            entries.append(entry(author, "VOTE", new_vote_body(target, "approval"), sequence, wall_ms))
    for start in range(0, len(entries), 10):  # arrival out of order, within a window
        window = entries[start:start + 10]
        rng.shuffle(window)
        entries[start:start + 10] = window
    return entries, pairs


def test_the_kept_counts_fold_a_random_history_exactly_as_the_scans_did():
    seed = int(os.environ.get("SYNAPSE_GOVERNANCE_SEED", random.SystemRandom().randrange(2**32)))
    print(f"governance history seed: {seed} (replay with SYNAPSE_GOVERNANCE_SEED={seed})")
    rng = random.Random(seed)
    reasons = set()
    for _run in range(12):
        rules = GovernanceRules(open_proposals_per_author_max=rng.randint(1, 4), orphan_proposals_max=rng.randint(1, 6),
                                proposals_max=rng.randint(20, 120))
        entries, pairs = random_history(rng, rules)
        kept, scanning = (cls(network_id=NETWORK, validators=VALIDATORS, verify=lambda *_: True,
                              local_node_id=AUTHORS[0], rules=rules) for cls in (Governance, ScanningGovernance))
        for number, item in enumerate(entries):
            kept.apply(item)
            scanning.apply(item)
            if pairs and rng.random() < 0.2:
                noted = pairs[: rng.randint(1, len(pairs))]
                kept.note_equivocations(noted)
                scanning.note_equivocations(noted)
            assert kept.problems() == scanning.problems(), f"entry {number}"
        state = {"global": {"version": "1.0.0", "nodes": {author: {"reputation": 10} for author in AUTHORS}}}
        now_ms = entries[-1].hlc.wall_ms
        assert kept.proposals(state=state, now_ms=now_ms) == scanning.proposals(state=state, now_ms=now_ms)
        reasons |= set(kept.problem_counts())
    assert {"too_many_open_proposals", "full"} <= reasons   # both limits were reached


def proposal(author: str, sequence: int, wall_ms: int, *, title: str = "t", period_ms: int = 60_000):
    body = new_proposal_body(action="upgrade", title=title, description="d", version=f"1.{sequence}.0",
                             package_url="https://example.org/p.wasm", package_hash="ab" * 32, package_size=10,
                             target_proposal_id=None, author=author, sequence=sequence, now_ms=wall_ms,
                             rules=GovernanceRules(voting_period_ms=period_ms))
    return entry(author, "PROPOSAL", body, sequence, wall_ms, salt=0 if title == "t" else 1)


def test_a_void_open_proposal_no_longer_counts_against_its_authors_limit():
    rules = GovernanceRules(open_proposals_per_author_max=1)
    governance = Governance(network_id=NETWORK, validators=VALIDATORS, verify=lambda *_: True, local_node_id=AUTHORS[0],
                            rules=rules)
    author = AUTHORS[1]
    first, twin = proposal(author, 1, T0), proposal(author, 1, T0, title="twin")
    governance.apply(first)
    governance.note_equivocations([(first.id, twin.id)])         # both void: the author equivocated
    governance.apply(proposal(author, 2, T0 + 1_000))            # within the first one's voting period
    assert "too_many_open_proposals" not in governance.problem_counts()
    governance.apply(proposal(author, 3, T0 + 2_000))            # the second one is open and not void
    assert governance.problem_counts()["too_many_open_proposals"] == 1
