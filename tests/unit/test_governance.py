"""Governance folded from real signed entries: proposals, reputation-weighted votes, the lifecycle table,
certificates, execution reports and rollbacks, and the rules the API enforces. Each test reads as a
sentence of the design: what a user or an attacker does, and what the network must conclude."""

import hashlib
import random
from collections import Counter
from datetime import datetime, timezone

import pytest

from node.core.certificates import build_certificate, certificate_statement
from node.core.closing import EMPTY_VOTES_DIGEST, pack_vote_ids, votes_digest
from node.core.entries import make_entry
from node.core.governance import Governance
from node.core.lifecycle import (
    APPROVED,
    EXECUTED,
    EXPIRED,
    FAILED,
    RATIFIED,
    REJECTED,
    ROLLED_BACK,
    STATUSES,
    TRANSITIONS,
    VOTING,
    derive_status,
    next_status,
)
from node.core.proposals import (
    GovernanceRules,
    make_proposal_id,
    new_proposal_body,
    new_vote_body,
    proposal_id_matches,
)
from node.core.tally import reputations_from_state
from node.core.utc import format_utc_ms, utc_parts
from node.core.hlc import Hlc
from node.errors import BadRequest, ConfigError, Conflict, HashFormatError, InvalidTransition, NotFound, VersionError
from node.identity import Identity, verify_signature

NETWORK = "net-test"
HASH = "ab" * 32
T0 = int(datetime(2025, 10, 3, 12, 0, 0, tzinfo=timezone.utc).timestamp() * 1000)
PERIOD_MS = 10_000
DEADLINE = T0 + PERIOD_MS


def identity(seed: str) -> Identity:
    return Identity.from_private_bytes(hashlib.sha256(seed.encode()).digest())


class Net:
    """A tiny network: named members with reputations, three validators, and an entry factory."""

    def __init__(self, reputations: dict[str, int], *, local: str = "a", rules: GovernanceRules | None = None):
        self.members = {name: identity(name) for name in [*reputations, "val0", "val1", "val2"]}
        self.validators = [self.members[f"val{i}"] for i in range(3)]
        self.sequences: Counter[str] = Counter()
        nodes = {self.members[name].node_id: {"reputation": reputation} for name, reputation in reputations.items()}
        nodes.update({v.node_id: {"reputation": 0} for v in self.validators})
        self.state = {"global": {"version": "1.0.0", "network_id": NETWORK, "nodes": nodes}}
        self.rules = rules or GovernanceRules(voting_period_ms=PERIOD_MS)
        self.local = self.members[local]
        self.governance = Governance(network_id=NETWORK, validators={v.node_id: v.public_key for v in self.validators},
                                     verify=verify_signature, local_node_id=self.local.node_id, rules=self.rules)

    def id(self, name: str) -> str:
        return self.member(name).node_id

    def member(self, name: str) -> Identity:
        if name not in self.members:
            self.members[name] = identity(name)
        return self.members[name]

    def entry(self, name: str, kind: str, body: dict, wall_ms: int, sequence: int | None = None):
        author = self.member(name)
        if sequence is None:
            self.sequences[name] += 1
            sequence = self.sequences[name]
        return make_entry(network_id=NETWORK, kind=kind, author=author.node_id, sequence=sequence, parents=(),
                          hlc=Hlc(wall_ms, 0), body=body, sign=author.sign)

    def propose(self, name: str = "a", *, version: str = "1.2.0", wall_ms: int = T0, action: str = "upgrade",
                target: str | None = None, apply: bool = True):
        self.member(name)
        self.sequences[name] += 1
        sequence = self.sequences[name]
        package = dict(package_url="https://example.org/p.wasm", package_hash=HASH, package_size=1000)
        if action == "rollback":
            package = dict(package_url=None, package_hash=None, package_size=None)
        body = new_proposal_body(action=action, title=f"to {version}", description="d", version=version,
                                 target_proposal_id=target, author=self.id(name), sequence=sequence, now_ms=wall_ms,
                                 rules=self.rules, **package)
        entry = self.entry(name, "PROPOSAL", body, wall_ms, sequence=sequence)
        if apply:
            self.governance.apply(entry)
        return entry

    def vote(self, name: str, proposal, choice: str = "approval", *, wall_ms: int = T0 + 1, sequence=None, apply=True):
        entry = self.entry(name, "VOTE", new_vote_body(proposal.body["proposal_id"], choice), wall_ms, sequence)
        if apply:
            self.governance.apply(entry)
        return entry

    def close(self, proposal, *, now_ms: int = T0 + 2, vote_ids=None, closers=("val0", "val1")):
        """The validators close voting as Raft fixed it: by default on the votes this node holds at
        now_ms (what honest validators who saw the same log name), if the close is due then."""
        proposal_id = proposal.body["proposal_id"]
        if vote_ids is None:
            candidates = self.governance.closing_candidates(state=self.state, now_ms=now_ms)
            if proposal_id not in candidates:
                return None
            vote_ids = candidates[proposal_id]
        packed = pack_vote_ids(vote_ids)
        body = {"proposal_id": proposal_id, "votes_digest": votes_digest(packed), "vote_ids": packed}
        for name in closers:
            self.governance.apply(self.entry(name, "CLOSE", body, now_ms))
        return body["votes_digest"]

    def execute(self, proposal, *, sequence: int = 1, signers=None, publisher: str = "val0", wall_ms: int = T0 + 5000,
                body_changes=None, apply=True):
        body = {key: proposal.body[key] for key in ("proposal_id", "action", "version", "package_url",
                                                    "package_hash", "package_size")}
        closed = self.governance.proposal(proposal.body["proposal_id"], state=self.state, now_ms=wall_ms).votes_digest \
            if proposal.body["proposal_id"] in {v.proposal_id for v in self.governance.proposals(state=self.state, now_ms=wall_ms)} else None
        body["votes_digest"] = closed or EMPTY_VOTES_DIGEST
        body.update(body_changes or {})
        statement = certificate_statement(NETWORK, body["proposal_id"], body["action"], body["package_hash"],
                                          body["version"], body["votes_digest"], sequence)
        signers = self.validators[:2] if signers is None else signers
        body.update(sequence=sequence, certificate=build_certificate({s.node_id: s.sign(statement) for s in signers}))
        entry = self.entry(publisher, "EXECUTE_UPGRADE", body, wall_ms)
        if apply:
            self.governance.apply(entry)
        return entry

    def report(self, name: str, proposal, *, success: bool = True, sequence: int = 1, state_hash: str = "sha256:aa",
               wall_ms: int = T0 + 6000, apply=True):
        body = {"proposal_id": proposal.body["proposal_id"], "sequence": sequence, "success": success,
                "version": proposal.body["version"], "state_hash": state_hash, "error": None if success else "trap"}
        entry = self.entry(name, "EXECUTION_REPORT", body, wall_ms)
        if apply:
            self.governance.apply(entry)
        return entry

    def view(self, proposal, now_ms: int = T0 + 2, *, close: bool = True):
        """The proposal as this node shows it at now_ms; with `close`, the validators first close
        voting if it is due by then (they hold the same votes as this node)."""
        if close:
            view = self.governance.proposal(proposal.body["proposal_id"], state=self.state, now_ms=now_ms)
            if not view.closed:
                self.close(proposal, now_ms=now_ms)
        return self.governance.proposal(proposal.body["proposal_id"], state=self.state, now_ms=now_ms)


FOUR_EQUAL = {"a": 10, "b": 10, "c": 10, "d": 10}


# --- proposal ids and time ------------------------------------------------------------------------


def test_proposal_id_has_the_spec_form_and_an_author_sequence_suffix():
    author = identity("a").node_id
    proposal_id = make_proposal_id("upgrade", T0, author, 5)
    assert proposal_id == "upgrade_20251003_120000_" + hashlib.sha256(f"{author}:5".encode()).hexdigest()[:8]
    assert make_proposal_id("rollback", T0 + 61_999, author, 5).startswith("rollback_20251003_120101_")
    assert proposal_id_matches(proposal_id, action="upgrade", author=author, sequence=5)
    assert not proposal_id_matches(proposal_id, action="upgrade", author=author, sequence=6)
    assert not proposal_id_matches(proposal_id, action="rollback", author=author, sequence=5)
    assert make_proposal_id("upgrade", T0, author, 6) != proposal_id


@pytest.mark.parametrize("arguments", [("delete", T0, "a" * 16, 1), ("upgrade", -1, "a" * 16, 1),
                                       ("upgrade", T0, "not-a-node", 1), ("upgrade", T0, "a" * 16, 0),
                                       ("upgrade", 1.5, "a" * 16, 1)])
def test_proposal_id_refuses_bad_input(arguments):
    with pytest.raises(BadRequest):
        make_proposal_id(*arguments)


def test_utc_parts_agree_with_datetime():
    rng = random.Random(7)
    samples = [0, 951_782_400_000, 951_868_799_999, 4_107_542_400_000, 253_402_300_799_999]
    samples += [rng.randrange(0, 253_402_300_800_000) for _ in range(2000)]
    for ms in samples:
        expected = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
        assert utc_parts(ms) == (expected.year, expected.month, expected.day, expected.hour, expected.minute,
                                 expected.second), ms
    assert format_utc_ms(T0) == "2025-10-03T12:00:00Z"


# --- votes and the tally ----------------------------------------------------------------------------


def test_approval_is_decided_early_once_it_cannot_change_and_voting_closes():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    net.vote("a", proposal, wall_ms=T0 + 1)
    net.vote("b", proposal, wall_ms=T0 + 2)
    assert net.view(proposal).status == VOTING          # 20 of 40: not yet more than half of everyone
    net.vote("c", proposal, wall_ms=T0 + 3)
    net.vote("d", proposal, "rejection", wall_ms=T0 + 4)
    view = net.view(proposal, now_ms=T0 + 5)
    assert view.status == APPROVED and view.tally.decided_early and view.decided_at_ms == T0 + 3
    assert (view.tally.approval_weight, view.tally.rejection_weight, view.tally.total_weight) == (30, 0, 40)
    rows = {row.voter: row for row in view.votes}
    assert rows[net.id("d")].counted is False and rows[net.id("d")].reason == "after_decision"
    with pytest.raises(Conflict, match="already approved"):
        net.governance.check_can_vote(view.proposal_id, state=net.state, now_ms=T0 + 5)


def test_rejection_is_decided_early_when_approval_became_impossible():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    net.vote("a", proposal, "rejection")
    net.vote("b", proposal, "rejection", wall_ms=T0 + 2)
    view = net.view(proposal, now_ms=T0 + 3)
    assert view.status == REJECTED and view.tally.decided_early


def test_without_quorum_the_proposal_expires_at_the_deadline():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    net.vote("a", proposal)
    assert net.view(proposal, now_ms=DEADLINE).status == VOTING
    view = net.view(proposal, now_ms=DEADLINE + 1)
    assert view.status == EXPIRED and view.decided_at_ms == DEADLINE and not view.tally.decided_early


def test_at_the_deadline_approval_must_exceed_the_threshold_of_the_cast_weight():
    net = Net({"a": 10, "b": 6, "c": 4, "d": 20})
    proposal = net.propose()
    net.vote("a", proposal)
    net.vote("b", proposal, "rejection", wall_ms=T0 + 2)
    net.vote("c", proposal, wall_ms=T0 + 3)
    assert net.view(proposal, now_ms=DEADLINE).status == VOTING
    assert net.view(proposal, now_ms=DEADLINE + 1).status == APPROVED     # 14 > 50% of 20, quorum 20 of 40
    tie = Net({"a": 10, "b": 10, "d": 20})
    proposal = tie.propose()
    tie.vote("a", proposal)
    tie.vote("b", proposal, "rejection", wall_ms=T0 + 2)
    assert tie.view(proposal, now_ms=DEADLINE + 1).status == REJECTED      # 10 does not EXCEED 50% of 20


def test_votes_cast_after_the_deadline_do_not_count_and_are_refused():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    net.vote("a", proposal, wall_ms=DEADLINE + 1)
    net.vote("b", proposal, wall_ms=DEADLINE + 2)
    net.vote("c", proposal, wall_ms=DEADLINE + 3)
    provisional = net.view(proposal, now_ms=DEADLINE + 10, close=False)
    assert provisional.status == VOTING and {row.reason for row in provisional.votes} == {"after_deadline"}
    assert any("waiting for the validators" in note for note in provisional.notes)
    net.close(proposal, now_ms=DEADLINE + 10, vote_ids=())         # the validators received none of them in time
    view = net.view(proposal, now_ms=DEADLINE + 10)
    assert view.status == EXPIRED and view.tally.cast_weight == 0 and view.closed
    assert {row.reason for row in view.votes} == {"not_counted"}
    with pytest.raises(Conflict) as closed:
        net.governance.check_can_vote(view.proposal_id, state=net.state, now_ms=DEADLINE + 10)
    assert "2025-10-03T12:00:10Z" in str(closed.value) and str(DEADLINE) in str(closed.value)


def test_a_later_vote_replaces_the_earlier_one():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    net.vote("a", proposal, "approval", wall_ms=T0 + 1)
    net.vote("a", proposal, "rejection", wall_ms=T0 + 2)
    view = net.view(proposal, now_ms=T0 + 3)
    assert (view.tally.approval_weight, view.tally.rejection_weight) == (0, 10)
    (row,) = view.votes
    assert row.vote == "rejection" and row.counted and row.author_sequence == 3


def test_equivocation_voids_both_votes_and_is_reported():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    first = net.vote("b", proposal, "approval", wall_ms=T0 + 1, sequence=1)
    second = net.vote("b", proposal, "rejection", wall_ms=T0 + 2, sequence=1)
    net.governance.note_equivocations([(first.id, second.id)])
    net.governance.note_equivocations([(second.id, first.id)])        # reported again: counted once
    view = net.view(proposal, now_ms=T0 + 3)
    assert view.tally.cast_weight == 0
    (row,) = view.votes
    assert row.counted is False and row.reason == "equivocation"
    problems = [p for p in net.governance.problems() if p.reason == "equivocation"]
    assert len(problems) == 1 and problems[0].author == net.id("b")
    assert net.governance.problem_counts()["equivocation"] == 1


def test_sybils_with_no_reputation_cannot_pass_a_proposal():
    net = Net({"a": 10, "b": 10, "zero1": 0, "zero2": 0})
    proposal = net.propose("zero1")
    for index in range(60):
        net.vote(f"sybil{index}", proposal, wall_ms=T0 + 1 + index)     # keys unknown to the network state
    net.vote("zero1", proposal, wall_ms=T0 + 100)
    net.vote("zero2", proposal, wall_ms=T0 + 101)
    net.vote("a", proposal, "rejection", wall_ms=T0 + 102)
    view = net.view(proposal, now_ms=DEADLINE + 1)
    assert view.status == REJECTED and view.tally.approval_weight == 0
    reasons = Counter(row.reason for row in view.votes)
    assert reasons == {"unknown_voter": 60, "zero_reputation": 2, None: 1}


def test_weights_come_from_the_current_state():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    net.vote("a", proposal)
    net.vote("b", proposal, "rejection", wall_ms=T0 + 2)
    assert net.view(proposal, now_ms=DEADLINE + 1).status == REJECTED
    net.state["global"]["nodes"][net.id("a")]["reputation"] = 30     # an executed upgrade changed reputations
    assert net.view(proposal, now_ms=DEADLINE + 1).status == APPROVED
    assert reputations_from_state({"global": {"nodes": {"x": {"reputation": -5}, "y": {"reputation": 1.5},
                                                        "z": "junk"}}}) == {"x": 0, "y": 0, "z": 0}
    assert reputations_from_state({"global": []}) == {} and reputations_from_state(None) == {}


def test_a_vote_may_arrive_before_its_proposal():
    net = Net(FOUR_EQUAL)
    proposal = net.propose(apply=False)
    for name in "abc":
        net.vote(name, proposal)
    with pytest.raises(NotFound):
        net.view(proposal)
    net.governance.apply(proposal)
    assert net.view(proposal).status == APPROVED


def test_fold_is_insensitive_to_delivery_order():
    net = Net({"a": 10, "b": 7, "c": 3, "d": 5}, local="b")
    entries = []
    first = net.propose("a", apply=False)
    second = net.propose("c", version="1.3.0", wall_ms=T0 + 10, apply=False)
    entries += [first, second]
    entries += [net.vote(n, p, c, wall_ms=T0 + 20 + i, apply=False)
                for i, (n, p, c) in enumerate([("a", first, "approval"), ("b", first, "approval"),
                                               ("c", second, "rejection"), ("d", second, "approval"),
                                               ("b", second, "approval"), ("b", second, "rejection")])]
    entries.append(net.execute(first, apply=False))
    entries.append(net.report("b", first, apply=False))
    entries.append(net.report("d", first, success=False, apply=False))
    rng = random.Random(11)
    results = set()
    for _shuffle in range(25):
        rng.shuffle(entries)
        governance = Governance(network_id=NETWORK, validators={v.node_id: v.public_key for v in net.validators},
                                verify=verify_signature, local_node_id=net.id("b"), rules=net.rules)
        for entry in entries + entries[:3]:                         # duplicates are harmless
            governance.apply(entry)
        views = governance.proposals(state=net.state, now_ms=DEADLINE + 1)
        results.add(repr(views))
    assert len(results) == 1
    (summary,) = results
    assert "status='executed'" in summary


# --- proposals refused at fold time -----------------------------------------------------------------


def test_a_proposal_cannot_squat_another_authors_id():
    net = Net(FOUR_EQUAL)
    victim_id = make_proposal_id("upgrade", T0, net.id("b"), 1)
    body = new_proposal_body(action="upgrade", title="t", description="", version="1.2.0",
                             package_url="https://x/p.wasm", package_hash=HASH, package_size=None,
                             target_proposal_id=None, author=net.id("b"), sequence=1, now_ms=T0, rules=net.rules)
    assert body["proposal_id"] == victim_id
    squatter = net.entry("a", "PROPOSAL", body, T0)
    net.governance.apply(squatter)
    with pytest.raises(NotFound):
        net.governance.proposal(victim_id, state=net.state, now_ms=T0)
    (problem,) = net.governance.problems()
    assert problem.reason == "proposal_id_mismatch" and problem.entry_id == squatter.id


@pytest.mark.parametrize("deadline_offset_ms", [0, -1, 30 * 86_400_000 + 1])
def test_a_proposal_with_a_deadline_outside_the_voting_window_is_refused(deadline_offset_ms):
    net = Net(FOUR_EQUAL)
    proposal = net.propose(apply=False)
    body = {**proposal.body, "voting_deadline_ms": T0 + deadline_offset_ms}
    net.governance.apply(net.entry("a", "PROPOSAL", body, T0, sequence=proposal.sequence))
    assert net.governance.proposals(state=net.state, now_ms=T0) == []
    assert net.governance.problems()[0].reason == "bad_deadline"


def test_equivocating_proposals_are_both_void():
    net = Net(FOUR_EQUAL)
    one = net.propose(apply=False)
    two = net.entry("a", "PROPOSAL", {**one.body, "title": "other"}, T0 + 1, sequence=one.sequence)
    titles = set()
    for order in ([one, two], [two, one]):      # before the log reports the pair: the first in log order wins
        governance = Governance(network_id=NETWORK, validators={v.node_id: v.public_key for v in net.validators},
                                verify=verify_signature, local_node_id=net.id("a"), rules=net.rules)
        for entry in order:
            governance.apply(entry)
        titles.update(view.title for view in governance.proposals(state=net.state, now_ms=T0 + 2))
        assert [p.reason for p in governance.problems()] == ["duplicate_proposal"]
    assert titles == {"to 1.2.0"}
    governance.note_equivocations([(one.id, two.id)])
    assert governance.proposals(state=net.state, now_ms=T0 + 2) == []


def test_limits_bound_what_the_fold_keeps():
    rules = GovernanceRules(voting_period_ms=PERIOD_MS, votes_per_proposal_max=2, orphan_proposals_max=1)
    net = Net(FOUR_EQUAL, rules=rules)
    proposal = net.propose()
    for name in "abc":
        net.vote(name, proposal)
    orphan_a = net.propose("b", apply=False)
    orphan_b = net.propose("c", version="1.3.0", apply=False)
    net.vote("a", orphan_a)
    net.vote("a", orphan_b)
    assert net.governance.problem_counts() == {"full": 2}
    assert len(net.view(proposal).votes) == 2
    net.governance.apply(orphan_b)              # a proposal is bounded by proposals_max, not by the orphan limit
    assert net.view(orphan_b).proposal_id == orphan_b.body["proposal_id"]
    capped = Net(FOUR_EQUAL, rules=GovernanceRules(voting_period_ms=PERIOD_MS, proposals_max=1))
    capped.propose()
    capped.propose("b", version="1.3.0")
    assert len(capped.governance.proposals(state=capped.state, now_ms=T0)) == 1
    assert capped.governance.problems()[-1].reason == "full"


# --- lifecycle after the vote ----------------------------------------------------------------------


def approved_net(local: str = "a") -> tuple[Net, object]:
    net = Net(FOUR_EQUAL, local=local)
    proposal = net.propose()
    for name in "abc":
        net.vote(name, proposal)
    return net, proposal


def test_approved_proposals_need_ratification_until_certified():
    net, proposal = approved_net()
    assert net.governance.needing_ratification(state=net.state, now_ms=T0 + 2) == []    # decided, not closed
    digest = net.close(proposal)
    waiting = net.governance.needing_ratification(state=net.state, now_ms=T0 + 2)
    assert [(view.proposal_id, view.votes_digest) for view in waiting] == [(proposal.body["proposal_id"], digest)]
    net.execute(proposal)
    assert net.governance.needing_ratification(state=net.state, now_ms=T0 + 2) == []
    view = net.view(proposal)
    assert view.status == RATIFIED and view.execution.sequence == 1
    assert view.execution.certificate_signers == tuple(sorted(v.node_id for v in net.validators[:2]))


def test_execution_reports_of_this_node_decide_executed_or_failed():
    net, proposal = approved_net(local="b")
    net.execute(proposal)
    net.report("a", proposal, success=False)                 # another node's failure: shown, not our status
    assert net.view(proposal).status == RATIFIED
    net.report("b", proposal)
    view = net.view(proposal)
    assert view.status == EXECUTED
    assert {(r.node_id, r.success) for r in view.reports} == {(net.id("a"), False), (net.id("b"), True)}
    failed_net, failed_proposal = approved_net(local="c")
    failed_net.execute(failed_proposal)
    failed_net.report("c", failed_proposal, success=False)
    assert failed_net.view(failed_proposal).status == FAILED


def test_a_local_rollback_entry_rolls_back_an_executed_or_failed_upgrade():
    net, proposal = approved_net()
    net.execute(proposal)
    net.report("a", proposal)
    body = {"proposal_id": proposal.body["proposal_id"], "restored_version": "1.0.0", "previous_version": "1.2.0",
            "state_hash": "sha256:bb", "reason": "operator"}
    net.governance.apply(net.entry("a", "ROLLBACK", body, T0 + 7000))
    view = net.view(proposal)
    assert view.status == ROLLED_BACK and view.rollbacks[0].node_id == net.id("a")


def test_a_certificate_of_a_minority_is_refused():
    net, proposal = approved_net()
    net.execute(proposal, signers=net.validators[:1])
    assert net.view(proposal).status == APPROVED and net.governance.certified_executions() == []
    assert "1 of 3 validators" in net.governance.problems()[-1].message


def test_a_certificate_for_other_package_fields_does_not_ratify_the_proposal():
    net, proposal = approved_net()
    net.execute(proposal, body_changes={"version": "9.9.9"})
    view = net.view(proposal)
    assert view.status == APPROVED and any("another action, version or package hash" in n for n in view.notes)


def test_a_valid_certificate_is_the_networks_decision_even_if_the_local_tally_lags():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    net.execute(proposal)
    view = net.view(proposal)
    assert view.status == RATIFIED and any("CLOSE entries naming the counted votes have not all reached" in note
                                           for note in view.notes)
    net.close(proposal, vote_ids=())      # the counted votes, once here, do not approve: that is shown
    view = net.view(proposal, close=False)
    assert view.status == RATIFIED and any("although this node's tally says expired" in note for note in view.notes)


def test_a_report_without_a_certificate_changes_nothing():
    net, proposal = approved_net()
    net.report("a", proposal)
    view = net.view(proposal)
    assert view.status == APPROVED and any("not this proposal's certified sequence" in n for n in view.notes)


def test_disagreeing_state_hashes_are_reported_loudly():
    net, proposal = approved_net()
    net.execute(proposal)
    net.report("a", proposal, state_hash="sha256:aa")
    net.report("b", proposal, state_hash="sha256:bb")
    assert any("disagree on the resulting state hash" in note for note in net.view(proposal).notes)


def test_certified_executions_are_deduplicated_by_sequence():
    net, proposal = approved_net()
    net.execute(proposal, publisher="val0", wall_ms=T0 + 5000)
    net.execute(proposal, publisher="val1", wall_ms=T0 + 5001)
    (execution,) = net.governance.certified_executions()
    assert execution.sequence == 1 and execution.proposal_id == proposal.body["proposal_id"]
    assert net.view(proposal).execution.published_by == tuple(sorted((net.id("val0"), net.id("val1"))))
    assert net.governance.certified_sequences() == {1}


def test_ratify_audit_entries_are_checked_against_the_proposal():
    net, proposal = approved_net()
    validator = net.validators[0]
    digest = net.close(proposal)
    good = certificate_statement(NETWORK, proposal.body["proposal_id"], "upgrade", HASH, "1.2.0", digest, 1)
    wrong = certificate_statement(NETWORK, proposal.body["proposal_id"], "upgrade", HASH, "1.2.0", digest, 2)
    for statement, sequence in ((good, 1), (wrong, 1)):
        body = {"proposal_id": proposal.body["proposal_id"], "sequence": sequence, "statement": statement,
                "signature": validator.sign(statement)}
        net.governance.apply(net.entry("val0", "RATIFY", body, T0 + 4000))
    outsider_body = {"proposal_id": proposal.body["proposal_id"], "sequence": 1, "statement": good,
                     "signature": net.member("a").sign(good)}
    net.governance.apply(net.entry("a", "RATIFY", outsider_body, T0 + 4001))
    assert sorted(r.valid for r in net.view(proposal).ratifications) == [False, True]
    assert net.governance.problems()[-1].reason == "bad_ratify"


def test_an_executed_rollback_proposal_rolls_back_its_target():
    net, upgrade = approved_net()
    net.execute(upgrade)
    net.report("a", upgrade)
    net.state["global"]["version"] = "1.2.0"
    rollback = net.propose("b", action="rollback", version="1.0.0", target=upgrade.body["proposal_id"],
                           wall_ms=T0 + 8000, apply=False)
    net.governance.check_can_propose(rollback.body, state=net.state, now_ms=T0 + 8001)
    net.governance.apply(rollback)
    for name in "abc":
        net.vote(name, rollback, wall_ms=T0 + 8001)
    net.execute(rollback, sequence=2, wall_ms=T0 + 9000)
    assert net.view(upgrade, now_ms=T0 + 9001).status == EXECUTED
    net.report("a", rollback, sequence=2, wall_ms=T0 + 9500)
    assert net.view(rollback, now_ms=T0 + 9501).status == EXECUTED
    view = net.view(upgrade, now_ms=T0 + 9501)
    assert view.status == ROLLED_BACK and view.rollbacks[-1].rollback_proposal_id == rollback.body["proposal_id"]
    statuses = {v.proposal_id: v.status for v in net.governance.proposals(state=net.state, now_ms=T0 + 9501)}
    assert statuses == {upgrade.body["proposal_id"]: ROLLED_BACK, rollback.body["proposal_id"]: EXECUTED}


# --- the one transition table ------------------------------------------------------------------------


def test_transition_table_allows_exactly_the_lifecycle():
    events = sorted({event for _status, event in TRANSITIONS})
    for status in STATUSES:
        for event in events:
            if (status, event) in TRANSITIONS:
                assert next_status(status, event) == TRANSITIONS[(status, event)]
            else:
                with pytest.raises(InvalidTransition):
                    next_status(status, event)
    assert next_status(next_status(next_status(VOTING, "approve"), "ratify"), "execute") == EXECUTED


def test_facts_that_do_not_fit_the_table_become_notes():
    status, notes = derive_status(outcome=REJECTED, certified=False, local_report_success=True, rolled_back=True)
    assert status == REJECTED and len(notes) == 2
    status, notes = derive_status(outcome=APPROVED, certified=True, local_report_success=None, rolled_back=False)
    assert (status, notes) == (RATIFIED, ())


# --- rules the API enforces ---------------------------------------------------------------------------


def test_a_version_already_proposed_is_a_conflict_until_that_proposal_ends():
    net = Net(FOUR_EQUAL)
    first = net.propose()
    second = net.propose("b", apply=False)
    with pytest.raises(Conflict, match="already proposed"):
        net.governance.check_can_propose(second.body, state=net.state, now_ms=T0 + 1)
    net.vote("a", first, "rejection")
    net.vote("b", first, "rejection", wall_ms=T0 + 2)
    with pytest.raises(Conflict, match="already proposed"):          # decided, but not closed yet
        net.governance.check_can_propose(second.body, state=net.state, now_ms=T0 + 3)
    assert net.view(first, now_ms=T0 + 3).status == REJECTED         # the validators closed it
    net.governance.check_can_propose(second.body, state=net.state, now_ms=T0 + 3)


@pytest.mark.parametrize("first_version, again", [("1.2.0", "1.2.0+build.1"), ("1.2.0+build.1", "1.2.0"),
                                                    ("1.2.0+a", "1.2.0+b")])
def test_a_version_differing_only_in_build_metadata_is_already_proposed(first_version, again):
    # Semver precedence ignores build metadata: 1.2.0+build.1 IS 1.2.0, so it may not run beside it.
    net = Net(FOUR_EQUAL)
    net.propose(version=first_version)
    with pytest.raises(Conflict, match="already proposed"):
        net.governance.check_can_propose(net.propose("b", version=again, apply=False).body, state=net.state, now_ms=T0 + 1)


def test_a_version_not_above_the_current_one_is_refused():
    net = Net(FOUR_EQUAL)
    net.state["global"]["version"] = "1.2.0"
    with pytest.raises(VersionError):
        net.governance.check_can_propose(net.propose(apply=False).body, state=net.state, now_ms=T0)


def test_rollback_proposals_need_the_latest_executed_upgrade_as_target():
    net, upgrade = approved_net()
    unknown = net.propose("b", action="rollback", version="1.0.0", target="upgrade_20250101_000000_00000000",
                          apply=False)
    with pytest.raises(NotFound):
        net.governance.check_can_propose(unknown.body, state=net.state, now_ms=T0 + 3)
    rollback = net.propose("b", action="rollback", version="1.0.0", target=upgrade.body["proposal_id"], apply=False)
    with pytest.raises(Conflict, match="only an executed upgrade"):
        net.governance.check_can_propose(rollback.body, state=net.state, now_ms=T0 + 3)
    net.execute(upgrade)
    net.report("a", upgrade)
    with pytest.raises(Conflict, match="latest executed upgrade"):
        net.governance.check_can_propose(rollback.body, state=net.state, now_ms=T0 + 3)
    net.state["global"]["version"] = "1.2.0"
    net.governance.check_can_propose(rollback.body, state=net.state, now_ms=T0 + 3)
    newer = net.propose("b", action="rollback", version="1.3.0", target=upgrade.body["proposal_id"], apply=False)
    with pytest.raises(VersionError):
        net.governance.check_can_propose(newer.body, state=net.state, now_ms=T0 + 3)


def test_voting_on_an_unknown_proposal_is_not_found():
    net = Net(FOUR_EQUAL)
    with pytest.raises(NotFound) as missing:
        net.governance.check_can_vote("upgrade_20250101_000000_00000000", state=net.state, now_ms=T0)
    assert missing.value.http_status == 404 and missing.value.hint


def test_new_proposal_body_validates_user_input():
    rules = GovernanceRules(voting_period_ms=PERIOD_MS)
    common = dict(title="t", description="", version="1.2.0", package_url="https://x/p.wasm", package_size=None,
                  target_proposal_id=None, author="a" * 16, sequence=3, now_ms=T0, rules=rules)
    body = new_proposal_body(action="upgrade", package_hash="sha256:" + "AB" * 32, **common)
    assert body["package_hash"] == HASH and body["voting_deadline_ms"] == T0 + PERIOD_MS
    with pytest.raises(HashFormatError):
        new_proposal_body(action="upgrade", package_hash="md5:1234", **common)
    with pytest.raises(BadRequest, match="title"):
        new_proposal_body(action="upgrade", package_hash=HASH, **{**common, "title": ""})
    with pytest.raises(BadRequest, match="not semver"):
        new_proposal_body(action="upgrade", package_hash=HASH, **{**common, "version": "v2"})
    with pytest.raises(BadRequest, match="no package"):
        new_proposal_body(action="rollback", package_hash=HASH, **common)
    with pytest.raises(BadRequest):
        new_vote_body("upgrade_x", "maybe")


def test_rules_are_validated():
    with pytest.raises(ConfigError):
        GovernanceRules(approval_threshold_pct=101)
    with pytest.raises(ConfigError):
        GovernanceRules(voting_period_ms=0)


# --- the deadline is the validators' close, not the voter's clock (trust holes, item 1) -----------------

FIVE_EQUAL = {"a": 10, "b": 10, "c": 10, "d": 10, "e": 10}


def test_a_backdated_vote_cannot_revive_an_expired_proposal():
    """2 of 5 equal members approve (below the 50% quorum); the validators close at the deadline. Then a
    member signs a vote whose clock says "one tick after the proposal": it is kept, never counted."""
    net = Net(FIVE_EQUAL)
    proposal = net.propose()
    net.vote("a", proposal, wall_ms=T0 + 1)
    net.vote("b", proposal, wall_ms=T0 + 2)
    assert net.view(proposal, now_ms=DEADLINE + 1).status == EXPIRED
    backdated = net.vote("c", proposal, wall_ms=T0 + 1)          # arrives long after the close
    view = net.view(proposal, now_ms=DEADLINE + 60_000)
    assert view.status == EXPIRED and view.tally.approval_weight == 20
    row = next(row for row in view.votes if row.entry_id == backdated.id)
    assert row.reason == "not_counted" and not row.counted
    assert net.governance.needing_ratification(state=net.state, now_ms=DEADLINE + 60_000) == []


def test_only_a_set_published_by_a_majority_of_validators_closes_a_proposal():
    net = Net(FIVE_EQUAL)
    proposal = net.propose()
    votes = [net.vote(name, proposal, wall_ms=T0 + 1) for name in "abc"]
    # One compromised validator publishes a set with the backdated vote; alone it closes nothing.
    net.close(proposal, now_ms=DEADLINE + 1, vote_ids=[v.id for v in votes], closers=("val2",))
    assert not net.view(proposal, now_ms=DEADLINE + 1, close=False).closed
    net.close(proposal, now_ms=DEADLINE + 1, vote_ids=[v.id for v in votes[:2]], closers=("val0", "val1"))
    view = net.view(proposal, now_ms=DEADLINE + 1, close=False)
    assert view.closed and view.status == EXPIRED and view.closed_by == tuple(sorted(
        net.id(name) for name in ("val0", "val1")))
    # A CLOSE by a non-validator, or whose digest does not match its ids, is refused as evidence.
    body = {"proposal_id": proposal.body["proposal_id"], "votes_digest": "ab" * 32, "vote_ids": b""}
    net.governance.apply(net.entry("val0", "CLOSE", body, DEADLINE + 2))
    net.governance.apply(net.entry("a", "CLOSE", {**body, "votes_digest": EMPTY_VOTES_DIGEST}, DEADLINE + 2))
    assert [p.reason for p in net.governance.problems()[-2:]] == ["bad_close", "bad_close"]


def test_a_counted_vote_this_node_lacks_keeps_the_proposal_voting_until_it_arrives():
    net = Net(FIVE_EQUAL)
    proposal = net.propose()
    late = net.vote("a", proposal, wall_ms=T0 + 1, apply=False)
    net.vote("b", proposal, wall_ms=T0 + 1)
    net.vote("c", proposal, wall_ms=T0 + 1)
    ids = sorted(entry_id for entry_id in [late.id, *net.governance.closing_candidates(
        state=net.state, now_ms=DEADLINE + 1)[proposal.body["proposal_id"]]])
    net.close(proposal, now_ms=DEADLINE + 1, vote_ids=ids)
    waiting = net.view(proposal, now_ms=DEADLINE + 1, close=False)
    assert waiting.status == VOTING and any("have not reached this node" in note for note in waiting.notes)
    net.governance.apply(late)
    assert net.view(proposal, now_ms=DEADLINE + 1, close=False).status == APPROVED


def test_validators_close_early_once_the_tally_is_decided_and_name_each_voters_latest_vote():
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    net.vote("a", proposal, "rejection", wall_ms=T0 + 1)
    latest = net.vote("a", proposal, "approval", wall_ms=T0 + 2)
    assert net.governance.closing_candidates(state=net.state, now_ms=T0 + 3) == {}       # not decided yet
    second, third = net.vote("b", proposal, wall_ms=T0 + 3), net.vote("c", proposal, wall_ms=T0 + 4)
    candidates = net.governance.closing_candidates(state=net.state, now_ms=T0 + 5)
    assert candidates == {proposal.body["proposal_id"]: tuple(sorted((latest.id, second.id, third.id)))}


# --- one member cannot fill the proposal table (trust holes, found by reading) --------------------------


def test_one_member_holds_a_bounded_number_of_open_proposals():
    rules = GovernanceRules(voting_period_ms=PERIOD_MS, open_proposals_per_author_max=2)
    net = Net(FOUR_EQUAL, rules=rules)
    first, second = net.propose(version="1.2.0"), net.propose(version="1.3.0", wall_ms=T0 + 1)
    third = net.propose(version="1.4.0", wall_ms=T0 + 2, apply=False)
    with pytest.raises(Conflict, match="at most 2 per member"):
        net.governance.check_can_propose(third.body, state=net.state, now_ms=T0 + 2, author=net.id("a"))
    net.governance.apply(third)                                  # pushed by gossip all the same
    assert net.governance.problems()[-1].reason == "too_many_open_proposals"
    with pytest.raises(NotFound):
        net.view(third)
    net.propose("b", version="1.5.0", wall_ms=T0 + 2)           # another member is not affected
    later = net.propose(version="1.6.0", wall_ms=DEADLINE + 5)   # once the first two closed, a slot is free
    assert net.view(later, now_ms=DEADLINE + 6, close=False).status == VOTING
    assert {net.view(p, now_ms=DEADLINE + 6).status for p in (first, second)} == {EXPIRED}
