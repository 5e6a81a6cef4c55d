"""The chaos schedule is pure and bounded: same seed and options, same bytes (through the CLI, twice);
every fault is healed before the end; never more faults at once than allowed."""

import random

import pytest
from click.testing import CliRunner

from cluster.chaos_plan import ADVERSARY_KINDS, FAULT_KINDS, HEAL_MARGIN_MS, ChaosOptions, PlanError, make_schedule, parse_kinds, \
    parse_schedule, plan, schedule_lines, version_ladder
from cluster.cli import main

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
