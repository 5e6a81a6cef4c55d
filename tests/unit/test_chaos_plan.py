"""The chaos schedule is pure and bounded: same seed and options, same bytes (through the CLI, twice);
every fault is healed before the end; never more faults at once than allowed."""

import json
import random

import pytest
from click.testing import CliRunner

from cluster.chaos_plan import ADVERSARY_KINDS, FAULT_KINDS, HEAL_MARGIN_MS, ChaosOptions, PlanError, make_schedule, parse_kinds, \
    parse_schedule, plan, schedule_lines, version_ladder
from cluster.cli import main
from cluster.chaos_plan import CRASH_POINTS
from node import fault_points

HEALS = {"kill": "restart", "pause": "resume", "crash_at": "recover", "partition": "heal", "cut": "heal"}
ARGUMENTS = ["chaos", "plan", "--seed", "42", "--nodes", "5", "--validators", "3", "--duration", "90s"]


def test_plan_prints_byte_identical_lines_for_the_same_seed():
    first = CliRunner().invoke(main, ARGUMENTS)
    second = CliRunner().invoke(main, ARGUMENTS)
    assert first.exit_code == 0, first.output
    assert first.output == second.output
    assert len(first.output.splitlines()) > 20


def test_another_seed_gives_another_schedule():
    assert schedule_lines(make_schedule(ChaosOptions(seed=1))) != schedule_lines(make_schedule(ChaosOptions(seed=2)))


def test_plan_takes_its_randomness_from_the_generator_passed_in():
    options = ChaosOptions(seed=5, duration_ms=60_000)
    assert plan(options, random.Random(5)) == make_schedule(options)
    assert plan(options, random.Random(6)) != make_schedule(options)


@pytest.mark.parametrize("seed", range(40))
def test_faults_are_bounded_paired_and_healed_before_the_end(seed):
    options = ChaosOptions(seed=seed, nodes=5, validators=3, duration_ms=120_000, faults_at_once_max=2)
    schedule = make_schedule(options)
    starts, heals = {}, {}
    for item in schedule.items:
        if item.source == "nemesis":
            (starts if item.op in HEALS else heals)[item.value["fault"]] = item
    assert starts and set(starts) == set(heals)
    for fault, start in starts.items():
        assert heals[fault].op == HEALS[start.op] and start.at_ms <= heals[fault].at_ms <= options.duration_ms - HEAL_MARGIN_MS
    windows = [(start.at_ms, heals[fault].at_ms, start) for fault, start in starts.items()]
    for moment, _end, _start in windows:
        active = [start for begin, end, start in windows if begin <= moment < end]
        assert len(active) <= options.faults_at_once_max
        assert sum(start.op in ("partition", "cut") for start in active) <= 1
        process_nodes = [node for start in active if start.op not in ("partition", "cut") for node in start.nodes]
        assert len(process_nodes) == len(set(process_nodes))


def test_the_schedule_holds_every_source_and_item_ids_in_time_order():
    schedule = make_schedule(ChaosOptions(seed=11, duration_ms=120_000))
    assert {item.source for item in schedule.items} == {"nemesis", "workload", "adversary"}
    assert [item.at_ms for item in schedule.items] == sorted(item.at_ms for item in schedule.items)
    assert [item.id for item in schedule.items] == list(range(1, len(schedule.items) + 1))
    adversary = [item for item in schedule.items if item.source == "adversary"]
    assert all(item.nodes == (5,) for item in adversary if item.op in ("backdated_vote", "equivocating_vote", "flood"))
    assert all(5 not in item.nodes for item in schedule.items if item.source == "workload")


def test_proposals_get_increasing_versions_from_the_ladder():
    schedule = make_schedule(ChaosOptions(seed=3))
    versions = [item.value["version"] for item in schedule.items if item.op == "propose"]
    assert versions == version_ladder(len(versions))
    assert all(len(version) == 5 for version in versions)


def test_schedule_lines_round_trip():
    schedule = make_schedule(ChaosOptions(seed=9, duration_ms=60_000, faults=("kill",), adversary=("flood",)))
    assert parse_schedule(schedule_lines(schedule)) == schedule


def test_removing_a_fault_start_removes_its_heal():
    schedule = make_schedule(ChaosOptions(seed=9, duration_ms=60_000))
    start = next(item for item in schedule.items if item.source == "nemesis")
    smaller = schedule.without([start.id])
    assert not [item for item in smaller.items if item.source == "nemesis" and item.value["fault"] == start.value["fault"]]
    assert len(smaller.items) == len(schedule.items) - 2


def test_no_faults_and_no_adversary_leave_the_workload_alone():
    schedule = make_schedule(ChaosOptions(seed=4, faults=(), adversary=()))
    assert {item.source for item in schedule.items} == {"workload"}
    full = make_schedule(ChaosOptions(seed=4))
    assert [item.value for item in schedule.items] == [item.value for item in full.items if item.source == "workload"]


def test_kind_lists():
    assert parse_kinds("all", FAULT_KINDS, "--faults") == FAULT_KINDS
    assert parse_kinds("none", ADVERSARY_KINDS, "--adversary") == ()
    assert parse_kinds("kill,pause,kill", FAULT_KINDS, "--faults") == ("kill", "pause")
    with pytest.raises(PlanError, match="unknown kind.*explode"):
        parse_kinds("kill,explode", FAULT_KINDS, "--faults")


@pytest.mark.parametrize(("arguments", "message"), [
    (["--nodes", "2"], "--nodes must be 3..9"), (["--validators", "7"], "--validators must be 1..5"),
    (["--duration", "5s"], "--duration must be"), (["--faults", "meteor"], "unknown kind"), ([], "needs --seed")])
def test_plan_refuses_bad_options_and_says_what_to_do(arguments, message):
    result = CliRunner().invoke(main, ["chaos", "plan"] + (["--seed", "1"] if arguments else []) + arguments)
    assert result.exit_code == 2 and message in result.output


# --- opt-in faults: clock skew (any provider), delay and loss (netns only) ----------------------

OPT_IN = ("skew", "delay", "loss")


def _nemesis(schedule):
    return [item for item in schedule.items if item.source == "nemesis"]


def test_opt_in_faults_are_never_drawn_unless_named():
    assert not set(OPT_IN) & set(parse_kinds("all", FAULT_KINDS, "--faults", optional=OPT_IN))
    for seed in range(20):
        ops = {item.op for item in _nemesis(make_schedule(ChaosOptions(seed=seed, provider="netns")))}
        assert not ops & {"skew", "unskew", "delay", "loss"}, (seed, ops)
    assert parse_kinds("all,skew", FAULT_KINDS, "--faults", optional=OPT_IN) == FAULT_KINDS + ("skew",)
    with pytest.raises(PlanError, match="unknown kind.*skew"):
        parse_kinds("skew", FAULT_KINDS, "--faults")   # a list without the optional kinds refuses them


def test_the_default_schedule_of_a_seed_is_unchanged_by_the_provider_option():
    # The header names the provider only when it is not loopback: schedules written before stay byte-identical.
    assert schedule_lines(make_schedule(ChaosOptions(seed=42))) == schedule_lines(make_schedule(ChaosOptions(seed=42, provider="loopback")))
    assert "provider" not in schedule_lines(make_schedule(ChaosOptions(seed=42)))[0]


@pytest.mark.parametrize("seed", range(10))
def test_skews_are_bounded_and_each_is_undone_on_its_node_before_the_end(seed):
    schedule = make_schedule(ChaosOptions(seed=seed, duration_ms=60_000, faults=("skew",), adversary=()))
    nemesis = _nemesis(schedule)
    starts = [item for item in nemesis if item.op == "skew"]
    assert starts and {item.op for item in nemesis} == {"skew", "unskew"}
    for start in starts:
        assert 500 <= abs(start.value["ms"]) <= 20_000 and len(start.nodes) == 1
        (undo,) = [item for item in nemesis if item.op == "unskew" and item.value["fault"] == start.value["fault"]]
        assert undo.nodes == start.nodes and start.at_ms < undo.at_ms <= 60_000 - HEAL_MARGIN_MS
    assert parse_schedule(schedule_lines(schedule)) == schedule


@pytest.mark.parametrize("seed", range(10))
def test_delay_and_loss_hit_one_nodes_links_with_bounded_values_and_are_healed(seed):
    options = ChaosOptions(seed=seed, nodes=4, validators=3, duration_ms=60_000, faults=("delay", "loss", "kill"), provider="netns")
    schedule = make_schedule(options)
    nemesis = _nemesis(schedule)
    links = [item for item in nemesis if item.op in ("delay", "loss")]
    assert links
    for start in links:
        (node,) = start.value["links_of"]
        assert 1 <= node <= 4
        if start.op == "delay":
            assert 50 <= start.value["ms"] <= 300 and 0 <= start.value["jitter_ms"] <= 50
        else:
            assert 5 <= start.value["percent"] <= 30
        (heal,) = [item for item in nemesis if item.op == "heal" and item.value["fault"] == start.value["fault"]]
        assert start.at_ms < heal.at_ms
    parsed = parse_schedule(schedule_lines(schedule))
    assert parsed == schedule and parsed.options.provider == "netns"
    assert schedule_lines(make_schedule(options)) == schedule_lines(schedule)   # same seed, same bytes


def test_removing_a_skew_takes_its_undo_with_it_and_shrinking_never_removes_an_undo_alone():
    from cluster.chaos_shrink import fault_ids, removable_ids

    schedule = make_schedule(ChaosOptions(seed=5, duration_ms=60_000, faults=("skew",), adversary=()))
    undos = {item.id for item in schedule.items if item.op == "unskew"}
    assert undos and not undos & set(removable_ids(schedule))
    start = next(item for item in schedule.items if item.op == "skew")
    assert start.id in fault_ids(schedule)
    smaller = schedule.without([start.id])
    assert not [item for item in smaller.items if item.value.get("fault") == start.value["fault"]]


@pytest.mark.parametrize("faults", ["delay", "kill,loss", "all,delay,loss"])
def test_delay_and_loss_are_refused_on_loopback_at_option_time(faults):
    result = CliRunner().invoke(main, ARGUMENTS + ["--faults", faults])
    assert result.exit_code == 2 and "cannot delay or drop packets" in result.output and "--provider netns" in result.output
    assert CliRunner().invoke(main, ARGUMENTS + ["--faults", faults, "--provider", "netns"]).exit_code == 0
    with pytest.raises(PlanError, match="--provider netns"):
        ChaosOptions(seed=1, faults=("loss",))


@pytest.mark.parametrize(("op", "value", "nodes"), [
    ("skew", {"ms": 86_400_000}, [1]), ("skew", {"ms": "5"}, [1]), ("skew", {"ms": 1000}, [9]),
    ("delay", {"links_of": [1], "ms": 60_000, "jitter_ms": 0}, []), ("loss", {"links_of": [1], "percent": 100}, []),
    ("loss", {"links_of": [7], "percent": 10}, [])])
def test_a_hand_edited_schedule_with_out_of_bound_faults_is_refused(op, value, nodes):
    lines = schedule_lines(make_schedule(ChaosOptions(seed=1, nodes=3, faults=(), adversary=(), provider="netns")))
    lines.append(json.dumps({"id": 999, "at_ms": 5_000, "source": "nemesis", "op": op, "nodes": nodes, "value": value}))
    with pytest.raises(PlanError, match="out of bounds"):
        parse_schedule(lines)


def test_crash_points_are_the_nodes_own_and_a_validator_only_point_is_aimed_at_validators():
    assert CRASH_POINTS == fault_points.POINTS, "the planner draws from the points nodes have, so a new one is not forgotten"
    drawn: dict[str, set[int]] = {}
    for seed in range(60):
        options = ChaosOptions(seed=seed, nodes=7, validators=3, duration_ms=300_000, faults=("crash_at",), adversary=())
        for item in make_schedule(options).items:
            if item.op == "crash_at":
                drawn.setdefault(item.value["point"], set()).update(item.nodes)
    assert set(drawn) == set(fault_points.POINTS), f"every point is drawn by some seed; drawn: {sorted(drawn)}"
    for point in fault_points.VALIDATOR_POINTS:
        assert drawn[point] <= {1, 2, 3}, f"{point} only fires on a validator, but was aimed at {sorted(drawn[point])}"
    assert drawn["committed"] & {4, 5, 6, 7}, "the other points still hit members"
