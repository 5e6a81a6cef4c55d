"""The fold flags a state divergence (metric and log line) as soon as a second state hash appears among
an upgrade's reports, and does not rebuild the proposal's view for every report until then (N views per
node per upgrade at N nodes)."""

import logging

from node.governance_fold import GovernanceFold
from node.metrics import Metrics
from tests.unit.test_governance import FOUR_EQUAL, Net


class Log:
    def equivocations(self):
        return ()


def test_reports_with_one_state_hash_build_no_view_and_a_second_hash_is_flagged(caplog):
    caplog.set_level(logging.ERROR, logger="synapse.governance")
    net = Net(FOUR_EQUAL)
    proposal = net.propose()
    for name in "abc":
        net.vote(name, proposal)
    net.close(proposal)
    net.execute(proposal)
    metrics = Metrics()
    fold = GovernanceFold(governance=net.governance, log=Log(), node_id=net.id("a"), network_id="net", validators={},
                          metrics=metrics, state=lambda: net.state, now_ms=lambda: 10**13)
    views = []
    original = net.governance.proposal
    net.governance.proposal = lambda *args, **kwargs: (views.append(args), original(*args, **kwargs))[1]
    fold.on_visible([net.report("a", proposal, state_hash="sha256:aa", apply=False)])
    fold.on_visible([net.report("b", proposal, state_hash="sha256:aa", apply=False)])
    assert views == [] and metrics.get("state_divergences_total", this_node="false") == 0
    fold.on_visible([net.report("c", proposal, state_hash="sha256:bb", apply=False)])
    assert metrics.get("state_divergences_total", this_node="false") == 1
    [line] = [record for record in caplog.records if record.getMessage() == "state_diverged"]
    assert line.fields["diverged_nodes"] == [net.id("c")] and line.fields["majority_state_hash"] == "sha256:aa"
