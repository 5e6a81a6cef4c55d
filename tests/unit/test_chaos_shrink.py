"""Shrinking, without clusters: the candidate choice is pure, and a Shrinker driven by a fake run
(invalid exactly when two given operations are both in the schedule) finds those two."""

from cluster.chaos_plan import ChaosOptions, make_schedule
from cluster.chaos_shrink import HEAL_OPS, Shrinker, removable_ids, removal_candidates


def test_removal_candidates_split_into_even_contiguous_chunks():
    assert removal_candidates([1, 2, 3, 4, 5], 2) == [(1, 2, 3), (4, 5)]
    assert removal_candidates([1, 2, 3], 5) == [(1,), (2,), (3,)]
    assert removal_candidates([7], 1) == [(7,)]


def test_heals_are_never_removed_on_their_own():
    schedule = make_schedule(ChaosOptions(seed=2, duration_ms=60_000))
    heals = {item.id for item in schedule.items if item.source == "nemesis" and item.op in HEAL_OPS}
    assert heals and not heals & set(removable_ids(schedule))


def test_the_shrinker_keeps_only_what_the_failure_needs_within_its_run_budget():
    schedule = make_schedule(ChaosOptions(seed=2, duration_ms=60_000))
    workload = [item.id for item in schedule.items if item.source == "workload"]
    needed = {workload[3], workload[-2]}
    runs = []

    def attempt(candidate, label):
        runs.append(label)
        return frozenset({"no adversary action took effect"}) if needed <= {item.id for item in candidate.items} else frozenset()

    shrinker = Shrinker(schedule=schedule, failing=frozenset({"no adversary action took effect"}), attempt=attempt, runs_max=100,
                        echo=lambda line: None)
    smallest = shrinker.run()
    assert {item.id for item in smallest.items} == needed
    assert len(runs) == shrinker.runs <= 100 and runs[0] == "trial-1"


def test_the_shrinker_stops_at_its_run_budget_and_never_keeps_a_passing_candidate():
    schedule = make_schedule(ChaosOptions(seed=2, duration_ms=60_000))
    shrinker = Shrinker(schedule=schedule, failing=frozenset({"x"}), attempt=lambda candidate, label: frozenset({"other check"}),
                        runs_max=3, echo=lambda line: None)
    assert shrinker.run() == schedule and shrinker.runs == 3
