"""How `synapse upgrade ... --wait` reads one node's view of a proposal (cluster/upgrade_client.node_stage):
one line per node, a failure with its reason, or done."""

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
