"""The scenario format: every shipped scenario parses, and every mistake is named by its TOML path."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cluster.scenario import Selector, load_scenario, parse_duration_ms, parse_scenario
from node.errors import ScenarioFormatError

REPOSITORY = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPOSITORY / "scenarios").glob("*.toml"))

HEADER = """
[scenario]
name = "test"

[cluster]
nodes = 5
validators = 3

[[packages]]
name = "flag"
source = "examples/wat/feature_flag.wat"
"""


def parse(text: str):
    return parse_scenario(tomllib.loads(HEADER + text), base_dirs=(REPOSITORY,))


def error_of(text: str, *, header: str = HEADER) -> ScenarioFormatError:
    with pytest.raises(ScenarioFormatError) as caught:
        parse_scenario(tomllib.loads(header + text), base_dirs=(REPOSITORY,))
    return caught.value


def test_the_shipped_scenarios_exist_and_parse():
    assert SCENARIOS, "scenarios/ holds at least one scenario"
    for path in SCENARIOS:
        scenario = load_scenario(path, repository=REPOSITORY)
        assert scenario.steps and scenario.name


def test_a_full_scenario_parses_into_steps_with_resolved_references():
    scenario = parse("""
[[steps]]
do = "propose"
package = "flag"
version = "1.2.0"
via = "ipfs"
save_as = "up1"

[[steps]]
do = "vote"
proposal = "up1"
vote = "approval"
by = ["validators", 4]

[[steps]]
do = "assert"
check = "proposal_status"
proposal = "up1"
equals = "executed"
within = "30s"

[[steps]]
do = "partition"
groups = [["node-1", "node-2"], "rest"]
""")
    propose, vote, status, partition = scenario.steps
    assert propose.params["save_as"] == "up1" and propose.params["via"] == "ipfs"
    assert vote.params["by"] == Selector(indexes=(4,), groups=("validators",), text="['validators', 4]")
    assert status.within_ms == 30_000 and status.check == "proposal_status"
    assert [selector.groups for selector in partition.params["groups"]] == [(), ("rest",)]
    assert scenario.package("flag").source == REPOSITORY / "examples/wat/feature_flag.wat"
    assert partition.label == "partition ['node-1', 'node-2'] | rest"


@pytest.mark.parametrize(("text", "milliseconds"), [("250ms", 250), ("10s", 10_000), ("1.5s", 1_500), ("2m", 120_000), ("60m", 3_600_000)])
def test_durations(text, milliseconds):
    assert parse_duration_ms(text) == milliseconds


@pytest.mark.parametrize("text", ["10", "10 s", "-1s", "0s", "1h", "61m", "s", "", "1e3s"])
def test_bad_durations_are_refused_in_place(text):
    error = error_of(f'[[steps]]\ndo = "wait"\nduration = "{text}"\n')
    assert error.message.startswith("steps[0].duration:")
    assert "500ms" in error.hint or "60m" in error.hint


@pytest.mark.parametrize(("steps", "where", "says"), [
    ('[[steps]]\ndo = "jump"\n', "steps[0].do", "is not an action"),
    ('[[steps]]\nnodes = 1\n', "steps[0].do", "missing"),
    ('[[steps]]\ndo = "kill"\nnodes = 1\nwithin = "1s"\n', "steps[0].within", "unknown key"),
    ('[[steps]]\ndo = "kill"\nnode = 1\n', "steps[0].node", "unknown key"),
    ('[[steps]]\ndo = "kill"\nnodes = 6\n', "steps[0].nodes", "does not exist"),
    ('[[steps]]\ndo = "kill"\nnodes = "node-0"\n', "steps[0].nodes", "does not exist"),
    ('[[steps]]\ndo = "kill"\nnodes = "everyone"\n', "steps[0].nodes", "not a node selector"),
    ('[[steps]]\ndo = "kill"\nnodes = "rest"\n', "steps[0].nodes", "only allowed in partition groups"),
    ('[[steps]]\ndo = "kill"\nnodes = []\n', "steps[0].nodes", "1 to"),
    ('[[steps]]\ndo = "kill"\nnodes = "random:9"\n', "steps[0].nodes", "picks 9 nodes of 5"),
    ('[[steps]]\ndo = "kill"\nnodes = "random@rest"\n', "steps[0].nodes", "unknown group 'rest'"),
    ('[[steps]]\ndo = "kill"\nnodes = "random@everyone"\n', "steps[0].nodes", "unknown group"),
    ('[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "1.2.0"\nsave_as = "p"\non = "random:2"\n', "steps[0].on", "exactly one"),
    ('[[steps]]\ndo = "partition"\ngroups = ["all"]\n', "steps[0].groups", "2 to"),
    ('[[steps]]\ndo = "partition"\ngroups = ["rest", ["rest"]]\n', "steps[0].groups", "one group only"),
    ('[[steps]]\ndo = "vote"\nproposal = "up1"\nvote = "approval"\n', "steps[0].proposal", "not saved by an earlier step"),
    ('[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "1.2.0"\n', "steps[0]", "needs save_as"),
    ('[[steps]]\ndo = "propose"\npackage = "nope"\nversion = "1.2.0"\nsave_as = "p"\n', "steps[0].package", "not a declared package"),
    ('[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "1.2"\nsave_as = "p"\n', "steps[0].version", "not a semantic version"),
    ('[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "1.2.0"\nsave_as = "2p"\n', "steps[0].save_as", "not a name"),
    ('[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "1.2.0"\nsave_as = "p"\non = "validators"\n', "steps[0].on", "exactly one node"),
    ('[[steps]]\ndo = "vote"\nproposal = "p"\nvote = "yes"\n', "steps[0].proposal", "not saved"),
    ('[[steps]]\ndo = "assert"\n', "steps[0].check", "missing"),
    ('[[steps]]\ndo = "assert"\ncheck = "vibes"\n', "steps[0].check", "is not a check"),
    ('[[steps]]\ndo = "assert"\ncheck = "metric"\nmetric = "x"\n', "steps[0]", "needs one of equals, at_least, at_most"),
    ('[[steps]]\ndo = "assert"\ncheck = "metric"\nmetric = "a b"\nequals = 1\n', "steps[0].metric", "not a metric name"),
    ('[[steps]]\ndo = "assert"\ncheck = "healthy"\nwithin = "1s"\nduring = "1s"\n', "steps[0]", "not both"),
    ('[[steps]]\ndo = "assert"\ncheck = "state_field"\npath = "global..x"\nexists = true\n', "steps[0].path", "not a state path"),
    ('[[steps]]\ndo = "assert"\ncheck = "log_contains"\nkind = "GOSSIP"\n', "steps[0].kind", "must be one of"),
    ('[[steps]]\ndo = "assert"\ncheck = "version"\nequals = "1.2.0"\nsave_as = "v"\n', "steps[0].save_as", "unknown key"),
    ('[[steps]]\ndo = "hook"\nhook = "no_colon"\n', "steps[0].hook", "not 'module:function'"),
    ('[[steps]]\ndo = "note"\ntext = 5\n', "steps[0].text", "must be a string"),
    ('[[steps]]\ndo = "crash_at"\nnodes = "node-2"\npoint = "somewhere"\n', "steps[0].point", "must be one of"),
    ('[[steps]]\ndo = "crash_at"\npoint = "committed"\n', "steps[0]", "missing key 'nodes'"),
    ('[[steps]]\ndo = "assert"\ncheck = "crashed"\n', "steps[0]", "missing key 'on'"),
    ('[[steps]]\ndo = "note"\ntext = "a"\nexpect_error = 200\n', "steps[0].expect_error", "400 to 599"),
    ('[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "1.2.0\\n"\nsave_as = "p"\n', "steps[0].version", "not a semantic version"),
    ('[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "' + "1" * 65 + '"\nexpect_error = 400\n', "steps[0].version", "at most 64"),
    ('[[steps]]\ndo = "assert"\ncheck = "log_contains"\nkind = "NOTE"\ncount_max = 0\n', "steps[0].count_max", "1"),
])
def test_each_mistake_names_its_toml_path(steps, where, says):
    error = error_of(steps)
    assert error.message.startswith(where + ":"), error.message
    assert says in error.message + " " + (error.hint or ""), error.message


def test_a_name_saved_twice_or_of_the_wrong_kind_is_refused():
    error = error_of('[[steps]]\ndo = "note"\ntext = "a"\nsave_as = "n"\n\n[[steps]]\ndo = "note"\ntext = "b"\nsave_as = "n"\n')
    assert error.message.startswith("steps[1].save_as:") and "already saved" in error.message
    error = error_of('[[steps]]\ndo = "note"\ntext = "a"\nsave_as = "n"\n\n[[steps]]\ndo = "vote"\nproposal = "n"\nvote = "approval"\n')
    assert error.message.startswith("steps[1].proposal:") and "names a notes, not a proposal" in error.message


@pytest.mark.parametrize(("header", "where"), [
    ('[scenario]\nname = "x"\ncolour = "red"\n', "scenario.colour"),
    ('[scenario]\nname = 3\n', "scenario.name"),
    ('[scenario]\nname = "x"\ntimeout = "forever"\n', "scenario.timeout"),
    ('[scenario]\nname = "x"\nseed = -1\n', "scenario.seed"),
    ('[scenario]\nname = "x"\n[cluster]\nnodes = 0\n', "cluster.nodes"),
    ('[scenario]\nname = "x"\n[cluster]\nnodes = 257\n', "cluster.nodes"),
    ('[scenario]\nname = "x"\n[cluster]\nnodes = 3\nvalidators = 4\n', "cluster.validators"),
    ('[scenario]\nname = "x"\n[cluster]\nnodes = 2\nreputations = [1]\n', "cluster.reputations"),
    ('[scenario]\nname = "x"\n[cluster.governance]\nvoting_period = "500ms"\n', "cluster.governance.voting_period"),
    ('[scenario]\nname = "x"\n[cluster.governance]\nquorum = 50\n', "cluster.governance.quorum"),
    ('[scenario]\nname = "x"\n[cluster.governance]\napproval_threshold_pct = 100\n', "cluster.governance.approval_threshold_pct"),
    ('[scenario]\nname = "x"\n[cluster.limits]\ngossip_speed = 1\n', "cluster.limits.gossip_speed"),
    ('[scenario]\nname = "x"\n[cluster.limits]\ngossip_interval_ms = 1\n', "cluster.limits.gossip_interval_ms"),
    ('[scenario]\nname = "x"\n[[packages]]\nname = "p"\nsource = "p.txt"\n', "packages[0].source"),
    ('[scenario]\nname = "x"\n[[packages]]\nname = "p"\n', "packages[0]"),
    ('[scenario]\nname = "x"\n[[packages]]\nname = "p"\nsource = "a.wat"\n[[packages]]\nname = "p"\nsource = "b.wat"\n', "packages[1].name"),
    ('[scenario]\nname = "x"\n[extras]\n', "extras"),
    ('[scenario]\nname = "x"\n[cluster]\nallow_private_addresses = "no"\n', "cluster.allow_private_addresses"),
    ('[cluster]\nnodes = 3\n', "[scenario]"),
])
def test_header_cluster_and_package_mistakes_are_named(header, where):
    error = error_of('[[steps]]\ndo = "heal"\n', header=header)
    assert error.message.startswith(where), error.message


def test_random_picks_parse_with_count_and_group():
    (step,) = parse('[[steps]]\ndo = "kill"\nnodes = ["random@validators", "random:2", 5]\n').steps
    assert step.params["nodes"].random_picks == ((1, "validators"), (2, None)) and step.params["nodes"].indexes == (5,)
    (step,) = parse('[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "1.2.0"\nsave_as = "p"\non = "random@validators"\n').steps
    assert step.params["on"].random_picks == ((1, "validators"),)


def test_a_step_must_be_a_table():
    with pytest.raises(ScenarioFormatError, match=r"^steps\[0\]: a step must be a table"):
        parse_scenario(tomllib.loads('steps = [1]\n[scenario]\nname = "x"\n'))


def test_a_metric_check_with_a_step_name():
    (step,) = parse('[[steps]]\nname = "no refusals"\ndo = "assert"\ncheck = "metric"\n'
                    "metric = 'synapse_entries_refused_total{reason=\"bad_signature\"}'\nat_most = 0\n").steps
    assert step.label == "no refusals" and step.params["metric"] == 'synapse_entries_refused_total{reason="bad_signature"}'


def test_a_scenario_needs_steps():
    with pytest.raises(ScenarioFormatError, match=r"^steps: a scenario needs 1 to"):
        parse_scenario(tomllib.loads('[scenario]\nname = "x"\n'))


def test_load_scenario_names_the_file_and_the_line_of_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[scenario]\nname = "x"\n\n[[steps]]\ndo = "heal\n')
    with pytest.raises(ScenarioFormatError) as caught:
        load_scenario(path)
    assert str(path) in caught.value.message and "line 5" in caught.value.message
    path.write_text('[scenario]\nname = "x"\n[[steps]]\ndo = "wait"\nduration = "ever"\n')
    with pytest.raises(ScenarioFormatError, match=r"bad\.toml: steps\[0\]\.duration: 'ever' is not a duration"):
        load_scenario(path)
    with pytest.raises(ScenarioFormatError, match="cannot read the scenario file"):
        load_scenario(tmp_path / "missing.toml")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioFormatError, match="not UTF-8"):
        load_scenario(path)


def test_package_sources_are_found_beside_the_scenario_first(tmp_path):
    (tmp_path / "mine.wat").write_text("(module)")
    path = tmp_path / "s.toml"
    path.write_text('[scenario]\nname = "x"\n[[packages]]\nname = "a"\nsource = "mine.wat"\n'
                    '[[packages]]\nname = "b"\nsource = "examples/wat/feature_flag.wat"\n[[steps]]\ndo = "heal"\n')
    scenario = load_scenario(path, repository=REPOSITORY)
    assert scenario.package("a").source == (tmp_path / "mine.wat").resolve()
    assert scenario.package("b").source == REPOSITORY / "examples/wat/feature_flag.wat"


def test_defaults_are_what_the_docs_say():
    scenario = parse('[[steps]]\ndo = "assert"\ncheck = "healthy"\n')
    assert scenario.timeout_ms == 600_000 and scenario.settle_ms == 30_000 and scenario.seed is None
    (step,) = scenario.steps
    assert step.within_ms == 0 and step.during_ms == 0 and step.label == "assert healthy"
    assert parse_scenario(tomllib.loads('[scenario]\nname = "x"\n[[steps]]\ndo = "heal"\n')).cluster.validators == 3
    assert scenario.cluster.allow_private_addresses is True   # a local cluster's packages are on loopback


def test_a_refused_proposal_may_carry_an_odd_version_and_the_policy_may_be_public_only():
    header = HEADER.replace("validators = 3\n", "validators = 3\nallow_private_addresses = false\n")
    scenario = parse_scenario(tomllib.loads(header + '[[steps]]\ndo = "propose"\npackage = "flag"\nversion = "3.1.0\\n"\n'
                                                     'expect_error = 400\n'), base_dirs=(REPOSITORY,))
    assert scenario.steps[0].params["version"] == "3.1.0\n" and scenario.cluster.allow_private_addresses is False
