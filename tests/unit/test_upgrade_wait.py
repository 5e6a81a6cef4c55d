"""How `synapse upgrade ... --wait` reads one node's view of a proposal (cluster/upgrade_client.node_stage):
one line per node, a failure with its reason, or done; and when a proposal id says it was made (a vote
waits for gossip only for an id that could still be in transit and open)."""

from cluster.upgrade_client import node_stage, node_stage_done

ME = "aa" * 8
TALLY = {"approval_weight": 0, "rejection_weight": 200, "total_weight": 300, "outcome": "rejected"}


def view(status: str, *reports: dict) -> dict:
    return {"status": status, "tally": TALLY, "reports": list(reports)}


def report(node_id: str = ME, success: bool = True, error=None) -> dict:
    return {"node_id": node_id, "success": success, "version": "1.2.0", "state_hash": "sha256:" + "f" * 64, "error": error}


def test_a_proposal_not_received_yet_is_pending_not_failed():
    assert node_stage(None, ME, "executed") == ("not received yet", None, False)


def test_approved_and_beyond_reach_approved_but_not_executed():
    for status in ("approved", "ratified", "executed"):
        line, failure, done = node_stage(view(status), ME, "approved")
        assert (failure, done) == (None, True) and node_stage_done(line, "approved")
    assert node_stage(view("ratified"), ME, "executed")[2] is False


def test_executed_means_this_nodes_own_report_succeeded():
    assert node_stage(view("executed", report(node_id="bb" * 8)), ME, "executed")[2] is False
    line, failure, done = node_stage(view("executed", report()), ME, "executed")
    assert done and failure is None and line.startswith("executed 1.2.0") and node_stage_done(line, "executed")


def test_a_failed_report_names_the_error():
    error = {"error": "FuelExhausted", "message": "upgrade() ran out of fuel"}
    line, failure, done = node_stage(view("failed", report(success=False, error=error)), ME, "executed")
    assert not done and failure == "failed: FuelExhausted upgrade() ran out of fuel" and line == failure


def test_a_dead_end_status_fails_with_the_tally():
    for status in ("rejected", "expired", "rolled_back"):
        _line, failure, done = node_stage(view(status), ME, "approved")
        assert not done and failure == f"{status} (approval 0, rejection 200 of 300)"


def test_voting_shows_the_provisional_outcome():
    assert node_stage(view("voting"), ME, "approved") == ("voting (provisional outcome rejected)", None, False)


def test_a_proposal_id_names_the_second_it_was_made():
    from node.core.proposals import make_proposal_id, proposal_id_time_ms

    for now_ms in (0, 951_782_400_000, 1_796_428_600_393, 4_102_444_799_999):      # 1970, 2000-02-29, 2026, 2099
        assert proposal_id_time_ms(make_proposal_id("rollback", now_ms, "ab" * 8, 3)) == now_ms // 1000 * 1000
    assert proposal_id_time_ms("upgrade_20261399_000000_00000000") is None
    assert proposal_id_time_ms("not an id") is None


def test_a_vote_refused_because_the_outcome_is_settled_is_skipped_and_any_other_refusal_raises(monkeypatch):
    import pytest

    from cluster import upgrade_client
    from cluster.upgrade_client import ApiError, Target

    refusal = {"error": "Conflict", "message": "voting on p is decided (approved)", "hint": "see GET /proposals/p"}
    views = {"decided": {"status": "voting", "tally": {"outcome": "approved"}},
             "open": {"status": "voting", "tally": {"outcome": "voting"}}}

    def refusing_call(target, method, path, body=None):
        if method == "POST":
            raise ApiError(409, refusal, "", "POST")
        return views[target.name]

    monkeypatch.setattr(upgrade_client, "call", refusing_call)
    skipped = upgrade_client.vote(Target("decided", "http://127.0.0.1:9", None), "p", "approval")
    assert skipped["skipped"].startswith("voting is already decided (voting, outcome approved)")
    assert skipped["error"]["message"] == refusal["message"]
    with pytest.raises(ApiError):
        upgrade_client.vote(Target("open", "http://127.0.0.1:9", None), "p", "approval")
