"""The Raft tick's wake-up rule and the leader-lost election window (node/core/raft_timing.py)."""

import random

import pytest

from node.core.raft_timing import WAKE_SLACK_S, LeaderLostWindow, leader_lost_deadline_s, retry_wait_s, tick_wait_s
from node.errors import ConfigError
from node.raft import RaftTiming

PERIOD_S = 0.05
WINDOW = LeaderLostWindow(timeout_min_s=0.15, timeout_max_s=0.3)


def test_the_tick_sleeps_until_a_deadline_due_within_the_period_and_just_past_it():
    assert tick_wait_s(period_s=PERIOD_S, now_s=10.0, due_s=10.02) == pytest.approx(0.02 + WAKE_SLACK_S)


def test_the_tick_sleeps_one_period_when_the_deadline_is_further():
    assert tick_wait_s(period_s=PERIOD_S, now_s=10.0, due_s=10.4) == PERIOD_S


@pytest.mark.parametrize("due_s", [10.0, 9.9, 0.0])
def test_a_deadline_already_due_never_makes_the_tick_spin(due_s):
    # A follower connected to nobody leaves its deadline in the past: a zero wait would busy-loop.
    assert tick_wait_s(period_s=PERIOD_S, now_s=10.0, due_s=due_s) == PERIOD_S


def test_the_wait_never_exceeds_the_period_nor_reaches_zero_over_random_cases():
    rng = random.Random(11)
    print("seed 11")
    for _ in range(10_000):
        now_s, due_s = rng.uniform(0, 100), rng.uniform(0, 100)
        wait_s = tick_wait_s(period_s=PERIOD_S, now_s=now_s, due_s=due_s)
        assert 0 < wait_s <= PERIOD_S
        if now_s < due_s < now_s + PERIOD_S - WAKE_SLACK_S:
            assert now_s + wait_s > due_s        # the next tick finds the deadline due


def test_losing_the_leader_brings_the_deadline_into_the_window():
    now_s, far_deadline_s = 100.0, 100.5
    earliest = leader_lost_deadline_s(window=WINDOW, now_s=now_s, deadline_s=far_deadline_s, random_fraction=0.0)
    latest = leader_lost_deadline_s(window=WINDOW, now_s=now_s, deadline_s=far_deadline_s, random_fraction=0.999999)
    assert earliest == pytest.approx(100.15)
    assert 100.15 < latest < 100.3


def test_losing_the_leader_never_pushes_a_sooner_deadline_back():
    assert leader_lost_deadline_s(window=WINDOW, now_s=100.0, deadline_s=100.05, random_fraction=0.5) == 100.05


def test_two_followers_that_lose_the_leader_together_stand_at_different_times():
    # Both survivors see a dead leader's connection end in the same millisecond; the random point in the
    # window is what keeps them from splitting the vote. Different draws, different deadlines.
    deadlines = {leader_lost_deadline_s(window=WINDOW, now_s=100.0, deadline_s=101.0, random_fraction=fraction)
                 for fraction in (0.1, 0.6)}
    assert len(deadlines) == 2


def test_the_window_must_leave_a_live_leader_three_heartbeats_and_stay_below_the_election_timeout():
    assert LeaderLostWindow.checked(timeout_min_s=0.15, timeout_max_s=0.3, heartbeat_period_s=0.05,
                                    election_timeout_min_s=0.3) == WINDOW
    with pytest.raises(ConfigError, match="3 heartbeat periods"):
        LeaderLostWindow.checked(timeout_min_s=0.1, timeout_max_s=0.3, heartbeat_period_s=0.05,
                                 election_timeout_min_s=0.3)
    with pytest.raises(ConfigError, match="must not exceed the election timeout"):
        LeaderLostWindow.checked(timeout_min_s=0.15, timeout_max_s=0.4, heartbeat_period_s=0.05,
                                 election_timeout_min_s=0.3)
    with pytest.raises(ConfigError, match="timeout_min_s < timeout_max_s"):
        LeaderLostWindow(timeout_min_s=0.3, timeout_max_s=0.3)


def test_raft_timing_checks_the_window_against_its_own_heartbeat_and_election_timeout():
    assert RaftTiming().leader_lost_window() == WINDOW
    with pytest.raises(ConfigError, match="heartbeat periods"):
        RaftTiming(append_entries_period_s=0.09, leader_lost_timeout_min_s=0.2)
    with pytest.raises(ConfigError, match="election timeout"):
        RaftTiming(raft_min_timeout_s=0.25, raft_max_timeout_s=0.5)


def test_a_call_is_resubmitted_at_once_after_a_leader_change_and_after_the_backoff_otherwise():
    assert retry_wait_s(leader_changed=True, backoff_s=0.4) == 0.0
    assert retry_wait_s(leader_changed=False, backoff_s=0.4) == 0.4
