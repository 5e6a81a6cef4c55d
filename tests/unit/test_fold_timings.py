"""vote -> ratified is timed from the moment this node first sees a valid certificate back to the
proposal's decision time, also when gossip brings the certificate before the proposal or its votes,
once per sequence, and never for a stored log replayed at start."""

from types import SimpleNamespace

from node.errors import NotFound
from node.governance_fold import GovernanceFold
from node.metrics import Metrics


class Governance:
    """What the fold's timing asks of the governance: one proposal's view (NotFound until it arrives)."""

    def __init__(self) -> None:
        self.views: dict[str, SimpleNamespace] = {}

    def proposal(self, proposal_id: str, *, state, now_ms: int) -> SimpleNamespace:
        if proposal_id not in self.views:
            raise NotFound(f"no proposal {proposal_id}")
        return self.views[proposal_id]


def fold_at(clock: list[int]) -> tuple[GovernanceFold, Governance, Metrics]:
    governance, metrics = Governance(), Metrics()
    fold = GovernanceFold(governance=governance, log=None, node_id="n", network_id="net", validators={}, metrics=metrics,
                          state=lambda: {}, now_ms=lambda: clock[0])
    return fold, governance, metrics


def certificate(sequence: int, proposal_id: str) -> SimpleNamespace:
    return SimpleNamespace(body={"sequence": sequence, "proposal_id": proposal_id})


def test_a_certificate_before_its_proposal_is_timed_once_the_decision_is_known():
    clock = [10_000]
    fold, governance, metrics = fold_at(clock)
    fold._time_ratification(certificate(1, "p"))
    fold._time_ratifications()
    assert metrics.histogram("vote_to_ratified_seconds") == (0, 0.0), "no decision known yet: nothing to time"
    clock[0] = 12_000
    governance.views["p"] = SimpleNamespace(decided_at_ms=None, closed=False)     # the proposal, not yet its votes
    fold._time_ratifications()
    assert metrics.histogram("vote_to_ratified_seconds") == (0, 0.0)
    governance.views["p"] = SimpleNamespace(decided_at_ms=7_500, closed=True)
    fold._time_ratifications()
    assert metrics.histogram("vote_to_ratified_seconds") == (1, 2.5), "from the decision to the moment it was seen"
    assert fold.certificate_seen_ms[1] == 10_000, "the executor times ratified -> executed from the same moment"
    fold._time_ratification(certificate(1, "p"))      # another validator's EXECUTE_UPGRADE for the same sequence
    fold._time_ratifications()
    assert metrics.histogram("vote_to_ratified_seconds") == (1, 2.5)


def test_a_replayed_certificate_is_not_timed_and_a_live_one_is(monkeypatch):
    monkeypatch.setattr("node.governance_fold.verify_certificate", lambda body, **_: None)    # a valid certificate
    clock = [10_000]
    fold, governance, metrics = fold_at(clock)
    governance.views["p"] = SimpleNamespace(decided_at_ms=7_500, closed=True)
    with fold.replaying():
        fold._check_execute(certificate(1, "p"))
    assert metrics.histogram("vote_to_ratified_seconds") == (0, 0.0) and 1 not in fold.certificate_seen_ms
    fold._check_execute(certificate(2, "p"))
    fold._time_ratifications()
    assert metrics.histogram("vote_to_ratified_seconds") == (1, 2.5) and fold.certificate_seen_ms[2] == 10_000


def test_a_decision_without_a_time_is_dropped_once_closed():
    clock = [10_000]
    fold, governance, metrics = fold_at(clock)
    fold._time_ratification(certificate(1, "p"))
    governance.views["p"] = SimpleNamespace(decided_at_ms=None, closed=True)
    fold._time_ratifications()
    assert not fold._ratification_untimed and metrics.histogram("vote_to_ratified_seconds") == (0, 0.0)
