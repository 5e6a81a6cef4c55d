"""The planted backdated-vote hole (node/planted_bugs.py) is off unless a node's environment names it,
and when it is on it re-opens exactly the pre-fix behaviour: the same story as
test_governance.test_a_backdated_vote_cannot_revive_an_expired_proposal, with the opposite ending."""

import pytest

from node.core.governance import Governance
from node.core.lifecycle import APPROVED, EXPIRED
from node.errors import ConfigError
from node.identity import verify_signature
from node.planted_bugs import ENVIRONMENT_VARIABLE, planted_bugs_for
from tests.unit.test_governance import DEADLINE, FIVE_EQUAL, NETWORK, T0, Net


def test_no_planted_bug_unless_the_environment_names_one():
    assert planted_bugs_for({}) == frozenset()
    assert planted_bugs_for({ENVIRONMENT_VARIABLE: " backdated_vote , "}) == {"backdated_vote"}
    with pytest.raises(ConfigError, match="unknown planted bug"):
        planted_bugs_for({ENVIRONMENT_VARIABLE: "backdated_vote,typo"})


def test_the_planted_hole_lets_a_backdated_vote_revive_an_expired_proposal():
    net = Net(FIVE_EQUAL)
    net.governance = Governance(network_id=NETWORK, validators={v.node_id: v.public_key for v in net.validators},
                                verify=verify_signature, local_node_id=net.local.node_id, rules=net.rules,
                                planted_bugs=frozenset({"backdated_vote"}))
    proposal = net.propose()
    net.vote("a", proposal, wall_ms=T0 + 1)
    net.vote("b", proposal, wall_ms=T0 + 2)
    assert net.view(proposal, now_ms=DEADLINE + 1).status == EXPIRED
    net.vote("c", proposal, wall_ms=T0 + 1)          # arrives long after the close
    assert net.view(proposal, now_ms=DEADLINE + 60_000).status == APPROVED
