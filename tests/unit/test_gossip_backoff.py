"""Anti-entropy backs off while the network is quiet and snaps back on any change
(node/core/gossip_backoff.py, driven by node/core/gossip_protocol.py).

Pure: cores are driven by hand with a fixed now_ms and a seeded random.Random; no sockets, no clock.
"""

from __future__ import annotations

import random

import pytest

from node.core.gossip_backoff import PACE_TRANSITIONS, QUIET_ROUNDS_AT_BASE, AntiEntropyPace, PaceEvent
from node.core.gossip_effects import Persist, Reply, Send, Wake
from node.core.gossip_messages import Push, Sync, Synced
from node.core.gossip_protocol import GossipCore
from node.core.gossip_settings import GossipSettings
from node.errors import ConfigError
from tests.logtools import NOW_MS, CountingVerify, forge, identities, new_log

PEOPLE = identities(4)
SETTINGS = GossipSettings(interval_ms=200, quiet_interval_max_ms=3_200, call_timeout_ms=1_000)


def make_core(index: int = 0, settings: GossipSettings = SETTINGS) -> GossipCore:
    return GossipCore(log=new_log(PEOPLE, verify=CountingVerify()), self_id=PEOPLE[index].node_id,
                      peer_ids=[person.node_id for person in PEOPLE if person is not PEOPLE[index]], settings=settings)


def of(effects: list, kind: type) -> list:
    return [effect for effect in effects if type(effect) is kind]


def quiet_round(core: GossipCore, peer: GossipCore, now_ms: int, rng: random.Random) -> list:
    """One anti-entropy round of `core` with `peer`, answered by the real peer core; returns every effect of `core`."""
    effects = core.tick(now_ms, rng)
    for send in of(effects, Send):
        answer = of(peer.receive(core.self_id, send.message, now_ms, rng, request_id=1), Reply)[0].message
        effects += core.receive_reply(send.call_id, answer, now_ms, rng)
    return effects


# --- the machine alone ----------------------------------------------------------------------------


def test_the_period_doubles_per_quiet_round_after_the_grace_and_is_bounded() -> None:
    pace = AntiEntropyPace(base_ms=200, max_ms=3_000)
    periods = []
    for _ in range(QUIET_ROUNDS_AT_BASE + 8):
        assert pace.on(PaceEvent.QUIET_ROUND) is False
        periods.append(pace.period_ms)
    assert periods[:QUIET_ROUNDS_AT_BASE] == [200] * QUIET_ROUNDS_AT_BASE
    assert periods[QUIET_ROUNDS_AT_BASE:QUIET_ROUNDS_AT_BASE + 4] == [400, 800, 1_600, 3_000]
    assert max(periods) == 3_000 and periods[-1] == 3_000   # bounded by max_ms, never above


def test_a_change_snaps_back_to_base_and_says_so_only_when_the_period_was_longer() -> None:
    pace = AntiEntropyPace(base_ms=200, max_ms=3_200)
    assert pace.on(PaceEvent.CHANGE) is False                  # already fast: nothing to wake
    for _ in range(QUIET_ROUNDS_AT_BASE + 3):
        pace.on(PaceEvent.QUIET_ROUND)
    assert pace.period_ms == 1_600
    assert pace.on(PaceEvent.CHANGE) is True and pace.period_ms == 200
    pace.on(PaceEvent.QUIET_ROUND)
    assert pace.period_ms == 200                               # the grace starts over after a change


def test_failed_or_skipped_rounds_leave_the_period_as_it_is() -> None:
    pace = AntiEntropyPace(base_ms=200, max_ms=3_200)
    for _ in range(QUIET_ROUNDS_AT_BASE + 2):
        pace.on(PaceEvent.QUIET_ROUND)
    before = pace.period_ms
    assert pace.on(PaceEvent.NO_NEWS) is False and pace.period_ms == before == 800
    assert set(PACE_TRANSITIONS) == set(PaceEvent)             # the table covers every event


def test_no_backoff_when_the_quiet_maximum_is_the_interval() -> None:
    pace = AntiEntropyPace(base_ms=200, max_ms=200)
    for _ in range(20):
        pace.on(PaceEvent.QUIET_ROUND)
    assert pace.period_ms == 200


@pytest.mark.parametrize("quiet_max, message", [(100, "from interval_ms (200)"), (700_000, "to 600000"), (2.5, "2.5")])
def test_the_quiet_maximum_is_validated(quiet_max: object, message: str) -> None:
    with pytest.raises(ConfigError, match="quiet_interval_max_ms") as raised:
        GossipSettings(interval_ms=200, quiet_interval_max_ms=quiet_max)
    assert message in raised.value.message


def test_the_automatic_quiet_maximum_is_sixteen_intervals() -> None:
    assert GossipSettings(interval_ms=200).quiet_period_max_ms == 3_200
    assert GossipSettings(interval_ms=100_000).quiet_period_max_ms == 600_000


# --- the protocol core ----------------------------------------------------------------------------


def test_a_quiet_core_ticks_less_and_less_often_up_to_the_maximum() -> None:
    core, peer, rng = make_core(0), make_core(1), random.Random(1)
    delays, now_ms = [], NOW_MS
    for _ in range(QUIET_ROUNDS_AT_BASE + 6):
        effects = quiet_round(core, peer, now_ms, rng)
        assert of(effects, Wake) == []
        delays.append(core.pace.period_ms)
        now_ms += core.pace.period_ms
    assert delays[:QUIET_ROUNDS_AT_BASE] == [200] * QUIET_ROUNDS_AT_BASE and delays[-1] == 3_200
    assert 0.75 * 3_200 <= core.next_tick_delay_ms(rng) <= 1.25 * 3_200    # jittered around the period


def backed_off(core: GossipCore, peer: GossipCore, rng: random.Random) -> None:
    for number in range(QUIET_ROUNDS_AT_BASE + 6):
        quiet_round(core, peer, NOW_MS + number, rng)
    assert core.pace.period_ms == 3_200


def test_a_new_local_entry_snaps_back_and_wakes_the_transport() -> None:
    core, rng = make_core(0), random.Random(2)
    backed_off(core, make_core(1), rng)
    entry = core.log.new_entry(kind="NOTE", author=core.self_id, body={"text": "hi"}, sign=PEOPLE[0].sign, now_ms=NOW_MS)
    persist = of(core.publish(entry, NOW_MS, rng, request_id=1), Persist)[0]
    after = core.persisted(persist.batch_id, NOW_MS, rng)
    assert of(after, Wake) == [Wake()] and core.pace.period_ms == 200
    assert 150 <= core.next_tick_delay_ms(rng) <= 250


def test_a_new_entry_from_a_peer_snaps_back() -> None:
    core, rng = make_core(0), random.Random(3)
    backed_off(core, make_core(1), rng)
    entry = forge(PEOPLE[2], sequence=1)
    effects = core.receive(PEOPLE[2].node_id, Push(sender=PEOPLE[2].node_id, raws=(entry.raw,)), NOW_MS, rng, request_id=5)
    after = core.persisted(of(effects, Persist)[0].batch_id, NOW_MS, rng)
    assert of(after, Wake) == [Wake()] and core.pace.period_ms == 200


def test_a_duplicate_entry_is_no_news() -> None:
    core, rng = make_core(0), random.Random(4)
    entry = forge(PEOPLE[2], sequence=1)
    effects = core.receive(PEOPLE[2].node_id, Push(sender=PEOPLE[2].node_id, raws=(entry.raw,)), NOW_MS, rng, request_id=5)
    core.persisted(of(effects, Persist)[0].batch_id, NOW_MS, rng)
    peer = make_core(1)  # holds the entry too, so the rounds with it are quiet
    peer_effects = peer.receive(PEOPLE[2].node_id, Push(sender=PEOPLE[2].node_id, raws=(entry.raw,)), NOW_MS, rng, request_id=6)
    peer.persisted(of(peer_effects, Persist)[0].batch_id, NOW_MS, rng)
    backed_off(core, peer, rng)
    again = core.receive(PEOPLE[3].node_id, Push(sender=PEOPLE[3].node_id, raws=(entry.raw,)), NOW_MS, rng, request_id=7)
    assert of(again, Wake) == [] and of(again, Persist) == [] and core.pace.period_ms == 3_200


def test_a_peer_whose_digest_differs_snaps_back_the_node_it_asks() -> None:
    """The node that eager push missed learns of the entry from a node that has it: its Sync's hash differs."""
    behind, ahead, rng = make_core(0), make_core(1), random.Random(5)
    backed_off(behind, make_core(2), rng)
    entry = ahead.log.new_entry(kind="NOTE", author=ahead.self_id, body={"text": "new"}, sign=PEOPLE[1].sign, now_ms=NOW_MS)
    ahead.persisted(of(ahead.publish(entry, NOW_MS, rng, request_id=1), Persist)[0].batch_id, NOW_MS, rng)
    ask = of(ahead.tick(NOW_MS + 300, rng), Send)[0].message
    assert type(ask) is Sync
    answer = behind.receive(ahead.self_id, ask, NOW_MS + 300, rng, request_id=9)
    assert of(answer, Wake) == [Wake()] and behind.pace.period_ms == 200
    assert of(answer, Reply)[0].message.digest is not None   # and it answers its digest, as before


def test_a_mismatch_in_the_answer_to_our_round_snaps_back() -> None:
    core, ahead, rng = make_core(0), make_core(1), random.Random(6)
    backed_off(core, make_core(2), rng)
    entry = ahead.log.new_entry(kind="NOTE", author=ahead.self_id, body={"text": "new"}, sign=PEOPLE[1].sign, now_ms=NOW_MS)
    ahead.persisted(of(ahead.publish(entry, NOW_MS, rng, request_id=1), Persist)[0].batch_id, NOW_MS, rng)
    send = of(core.tick(NOW_MS + 10_000, rng), Send)[0]
    reply = Synced(digest=ahead.log.digest(), raws=(), more=False)
    effects = core.receive_reply(send.call_id, reply, NOW_MS + 10_000, rng)
    assert of(effects, Wake) == [Wake()] and core.pace.period_ms == 200


def test_a_failing_peer_does_not_change_the_pace() -> None:
    core, rng = make_core(0), random.Random(7)
    backed_off(core, make_core(1), rng)
    send = of(core.tick(NOW_MS + 10_000, rng), Send)[0]
    effects = core.call_failed(send.call_id, NOW_MS + 10_000, rng, error_type="TimeoutError")
    assert of(effects, Wake) == [] and core.pace.period_ms == 3_200
