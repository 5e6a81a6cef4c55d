"""Crash points stay inert unless both switches are on (the environment variable and the armed file);
the kill itself is proven with real node processes in tests/integration/test_governance_e2e.py."""

import pytest

from node.fault_points import FILE_NAME, arm, fault_point_for


def test_without_the_environment_switch_there_is_no_fault_point(tmp_path):
    arm(tmp_path, "committed")
    assert fault_point_for(tmp_path, {}) is None
    assert fault_point_for(tmp_path, {"SYNAPSE_FAULT_POINTS": "yes"}) is None


def test_an_enabled_node_ignores_points_it_was_not_armed_for(tmp_path):
    point = fault_point_for(tmp_path, {"SYNAPSE_FAULT_POINTS": "1"})
    point("committed")                      # nothing armed: returns
    arm(tmp_path, "before_report")
    point("committed")                      # another point: returns, stays armed
    assert (tmp_path / FILE_NAME).read_text() == "before_report\n"


@pytest.mark.parametrize("name", ["", "two\nlines", "x" * 300])
def test_arming_refuses_names_that_cannot_match(tmp_path, name):
    with pytest.raises(ValueError, match="one line"):
        arm(tmp_path, name)
    assert not (tmp_path / FILE_NAME).exists()
