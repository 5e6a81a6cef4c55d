"""`synapse cluster fault KIND --KEY VALUE ...` speaks a scenario step's language: the options become the
step's table and go through the scenario parser, so the CLI accepts exactly the keys and values a
scenario file does, and names a mistake by its option (cluster/cli_fault.py, cluster/scenario.py)."""

import pytest

from cluster.cli_fault import KINDS, LINK_KINDS, options_table
from cluster.scenario import ACTIONS, Selector, parse_fault_step
from node.errors import ScenarioFormatError


@pytest.mark.parametrize("arguments, table", [
    (["--nodes", "node-2", "--ms", "20000"], {"do": "skew", "nodes": "node-2", "ms": 20000}),
    (["--nodes=1,3", "--ms=-20000"], {"do": "skew", "nodes": [1, 3], "ms": -20000}),
    (["--nodes", "random@validators", "--ms", "+5"], {"do": "skew", "nodes": "random@validators", "ms": 5}),
])
def test_options_become_the_step_table(arguments, table):
    assert options_table("skew", arguments) == table


def test_groups_repeat_one_group_each_and_parse_like_a_scenario_file():
    table = options_table("partition", ["--groups", "1,2,node-4", "--groups", "rest"])
    assert table == {"do": "partition", "groups": [[1, 2, "node-4"], "rest"]}
    step = parse_fault_step(table, nodes=5)
    assert step.params["groups"] == (Selector(indexes=(1, 2, 4), text="[1, 2, 'node-4']"), Selector(groups=("rest",), text="rest"))


def test_the_scenario_file_and_the_cli_give_the_same_step():
    from_cli = parse_fault_step(options_table("cut", ["--from", "validators", "--to", "5"]), nodes=5)
    from_file = parse_fault_step({"do": "cut", "from": "validators", "to": 5}, nodes=5)
    assert from_cli == from_file


@pytest.mark.parametrize("arguments, message", [
    (["--nodes", "1", "--nodes", "2"], "--nodes is given twice"),
    (["nodes", "1"], "is not an option"),
    (["--ms"], "--ms needs a value"),
    (["--within", "5s"], "--within: not an option of a fault"),
])
def test_malformed_options_are_refused(arguments, message):
    with pytest.raises(ScenarioFormatError, match=message):
        options_table("skew", arguments)


@pytest.mark.parametrize("table, message", [
    ({"do": "skew", "nodes": 6, "ms": 1}, "--nodes: node 6 does not exist"),
    ({"do": "skew", "nodes": 1, "ms": 1.5}, "--ms: must be an integer"),
    ({"do": "skew", "nodes": 1, "ms": 1, "jitter_ms": 2}, "--jitter-ms: unknown key"),
    ({"do": "skew", "nodes": 1}, "missing key 'ms'"),
    ({"do": "pause", "nodes": "everyone"}, "--nodes: 'everyone' is not a node selector"),
])
def test_the_scenario_validators_judge_the_values_and_name_the_option(table, message):
    with pytest.raises(ScenarioFormatError, match=message):
        parse_fault_step(table, nodes=5)


def test_every_loopback_kind_is_a_scenario_step():
    assert set(KINDS) - set(LINK_KINDS) <= set(ACTIONS)
