"""The pure parts of the operator's tools: the watch table (cluster/cli_watch.py) and the scenario labels
of `scenario run -j` (cluster/scenario_parallel.py)."""

from cluster.cli_watch import NodeRow, agreed_leader, as_document, render
from cluster.scenario_parallel import labels_for


def rows(leaders: tuple[str | None, str | None]) -> list[NodeRow]:
    return [NodeRow(node="node-1", node_id="a" * 16, role="validator", health="ok", version="1.2.0", state_hash="0123456789ab",
                    raft_leader=leaders[0], entries=7, open_proposals=1),
            NodeRow(node="node-2", node_id="b" * 16, role="validator", health="ok", version="1.2.0", state_hash="0123456789ab",
                    raft_leader=leaders[1], entries=7, open_proposals=1, open_proposals_truncated=True),
            NodeRow(node="node-3", node_id="c" * 16, role="member", health="unreachable")]


def test_the_table_shows_each_column_and_what_is_unknown():
    title, header, first, second, third = render(rows(("node-1", "node-1")), "net", 0.0)
    assert title == "00:00:00 UTC  net  2/3 healthy  raft leader: node-1"
    assert header.split("  ")[0] == "node" and "state hash" in header and "open proposals" in header
    assert first.split() == ["node-1", "a" * 16, "validator", "1.2.0", "0123456789ab", "node-1", "7", "1", "ok"]
    assert second.split()[-2] == "1+", "a truncated proposal list is shown as a lower bound"
    assert third.split() == ["node-3", "c" * 16, "member", "-", "-", "-", "-", "-", "unreachable"]


def test_the_leader_is_only_named_when_the_validators_agree():
    assert agreed_leader(rows(("node-1", "node-2"))) is None
    assert "raft leader: none agreed" in render(rows(("node-1", "node-2")), "net", 0.0)[0]
    assert as_document(rows(("node-2", "node-2")), "net", 0.0)["raft_leader"] == "node-2"


def test_scenario_labels_are_printable_short_and_unique():
    assert labels_for(["a", "a", "b\x1b[31m", "x" * 100, ""]) == ["a", "a#2", "b?[31m", "x" * 40, "scenario"]
