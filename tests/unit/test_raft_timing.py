"""The Raft tick's wake-up rule and the leader-lost election window (node/core/raft_timing.py)."""

import random

import pytest

from node.core.raft_timing import WAKE_SLACK_S, LeaderLostWindow, call_timeout_s, leader_lost_deadline_s, retry_wait_s, tick_wait_s
from cluster.faults import raft_delay_note
from node.config import Limits
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


# --- the timing a network's limits ask for (raft_heartbeat_ms, raft_election_timeout_min_ms / _max_ms) ---


def test_the_default_limits_give_the_lan_timing_unchanged():
    limits = Limits()
    assert RaftTiming.for_network(heartbeat_ms=limits.raft_heartbeat_ms, election_timeout_min_ms=limits.raft_election_timeout_min_ms,
                                  election_timeout_max_ms=limits.raft_election_timeout_max_ms) == RaftTiming()


def test_a_wan_timing_stretches_everything_that_waits_on_a_round_trip():
    # 200 ms each way between validators (scenarios/validator_links_delay.toml): elections at 5-10 round trips.
    timing = RaftTiming.for_network(heartbeat_ms=100, election_timeout_min_ms=2_000, election_timeout_max_ms=4_000)
    assert (timing.append_entries_period_s, timing.raft_min_timeout_s, timing.raft_max_timeout_s) == (0.1, 2.0, 4.0)
    # A follower that lost its leader's connection waits 1-2 s, not 0.15-0.3 s: a live leader redials
    # (TCP and the authenticated handshake: two to three round trips) before anyone stands.
    assert timing.leader_lost_window() == LeaderLostWindow(timeout_min_s=1.0, timeout_max_s=2.0)
    assert timing.connection_timeout_s >= 4.0 and timing.leader_fallback_timeout_s > 4.0
    assert timing.call_attempt_timeout_s >= 4.0, "an attempt must outlast a commit that crosses slow links several times"


def test_every_timing_the_limits_accept_is_one_raft_accepts_and_the_limits_refuse_the_rest():
    rng = random.Random(5)
    accepted = 0
    for _ in range(2_000):
        heartbeat_ms, minimum_ms = rng.randint(10, 2_000), rng.randint(100, 20_000)
        maximum_ms = minimum_ms + rng.randint(-50, 20_000)
        try:
            Limits(raft_heartbeat_ms=heartbeat_ms, raft_election_timeout_min_ms=minimum_ms, raft_election_timeout_max_ms=maximum_ms)
        except ConfigError:
            assert not (3 * heartbeat_ms < minimum_ms < maximum_ms), (heartbeat_ms, minimum_ms, maximum_ms)
            continue
        timing = RaftTiming.for_network(heartbeat_ms=heartbeat_ms, election_timeout_min_ms=minimum_ms,
                                        election_timeout_max_ms=maximum_ms)     # RaftTiming's own checks pass
        window = timing.leader_lost_window()
        assert 3 * timing.append_entries_period_s <= window.timeout_min_s + 1e-9 < window.timeout_max_s <= timing.raft_min_timeout_s
        accepted += 1
    assert 300 < accepted < 1_900, "both branches were exercised"


@pytest.mark.parametrize("limits, message, hint", [
    ({"raft_election_timeout_min_ms": 600, "raft_election_timeout_max_ms": 600}, "raft_election_timeout_min_ms .600. must be below",
     "round trip between validators"),
    ({"raft_heartbeat_ms": 100, "raft_election_timeout_min_ms": 300}, "raft_heartbeat_ms .100. must be below a third",
     "against a live leader"),
    ({"raft_heartbeat_ms": 5}, "raft_heartbeat_ms is 5", "configuration file"),
])
def test_the_limits_refuse_a_raft_timing_that_would_elect_against_a_live_leader(limits, message, hint):
    with pytest.raises(ConfigError, match=message) as refused:
        Limits(**limits)
    assert hint in refused.value.hint


def test_a_delay_step_between_validators_says_when_raft_needs_wan_timing():
    validators = {1, 2, 3}
    note = raft_delay_note(sources=[1, 2, 3], destinations=[1, 2, 3], validators=validators, one_way_ms=180,
                           election_timeout_min_ms=Limits().raft_election_timeout_min_ms)
    assert note is not None and ">= 360 ms" in note and "raft_election_timeout_min_ms" in note   # delayed both ways
    one_way = raft_delay_note(sources=[1], destinations=[2], validators=validators, one_way_ms=180, election_timeout_min_ms=300)
    assert one_way is not None and ">= 180 ms" in one_way
    # The WAN timing of scenarios/validator_links_delay.toml: 2 s is more than 10 round trips of 180 ms.
    assert raft_delay_note(sources=[1], destinations=[2], validators=validators, one_way_ms=180, election_timeout_min_ms=2_000) is None
    assert raft_delay_note(sources=[1, 2, 3], destinations=[1, 2, 3], validators=validators, one_way_ms=180,
                           election_timeout_min_ms=3_600) is None
    # Links that no two validators share: Raft does not cross them.
    assert raft_delay_note(sources=[4, 5], destinations=[1, 2, 3, 4, 5], validators=validators, one_way_ms=500,
                           election_timeout_min_ms=300) is None
    assert raft_delay_note(sources=[1], destinations=[1], validators=validators, one_way_ms=500, election_timeout_min_ms=300) is None


def test_a_call_on_slow_links_keeps_room_for_three_attempts_and_the_lan_keeps_its_ten_seconds():
    lan = RaftTiming()
    assert call_timeout_s(configured_s=10.0, attempt_s=lan.call_attempt_timeout_s) == 10.0
    wan = RaftTiming.for_network(heartbeat_ms=100, election_timeout_min_ms=4_000, election_timeout_max_ms=8_000)
    assert call_timeout_s(configured_s=10.0, attempt_s=wan.call_attempt_timeout_s) == 3 * 8.0
