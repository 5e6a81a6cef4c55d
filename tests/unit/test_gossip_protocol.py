"""The gossip protocol core (node/core/gossip_protocol.py), one sentence of its design per test.

Pure: cores are driven by hand with a fixed now_ms and a seeded random.Random; no sockets, no clock.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from node.core.gossip_effects import Count, Persist, Refuse, Reply, Send, Visible
from node.core.gossip_messages import Offer, Push, Pushed, Sync, Synced, Want
from node.core.gossip_protocol import GossipCore
from node.core.gossip_settings import GossipSettings
from node.errors import BadRequest, ConfigError, Unavailable
from node.core.hlc import Hlc
from tests.logtools import NOW_MS, CountingVerify, forge, identities, new_log, report_body

PEOPLE = identities(10)
VERIFY = CountingVerify()
SETTINGS = GossipSettings(interval_ms=200, call_timeout_ms=1_000, backoff_base_ms=500, backoff_max_ms=4_000,
                          batch_entries_max=8, inbox_max=16)


def make_core(index: int = 0, count: int = 10, settings: GossipSettings = SETTINGS) -> GossipCore:
    people = PEOPLE[:count]
    return GossipCore(log=new_log(people, verify=VERIFY), self_id=people[index].node_id,
                      peer_ids=[person.node_id for person in people if person is not people[index]], settings=settings)


def of(effects: list, kind: type) -> list:
    return [effect for effect in effects if type(effect) is kind]


def counted(effects: list, name: str, **labels: str) -> int:
    return sum(effect.amount for effect in of(effects, Count) if effect.name == name and dict(effect.labels) == labels)


def persist_all(core: GossipCore, effects: list, rng: random.Random, now_ms: int = NOW_MS) -> list:
    """The transport's part: every Persist succeeds; returns what the core did next."""
    after = []
    for persist in of(effects, Persist):
        after.extend(core.persisted(persist.batch_id, now_ms, rng))
    return after


def test_a_new_local_entry_is_pushed_in_full_to_fanout_peers_once_it_is_on_disk() -> None:
    core, rng = make_core(), random.Random(1)
    entry = core.log.new_entry(kind="NOTE", author=core.self_id, body={"text": "hi"}, sign=PEOPLE[0].sign, now_ms=NOW_MS)
    effects = core.publish(entry, NOW_MS, rng, request_id=7)
    assert [type(effect) for effect in effects] == [Persist] and entry.id not in core.log  # nothing visible before the disk
    after = persist_all(core, effects, rng)
    sends = of(after, Send)
    assert core.fanout == 4 and len(sends) == 4 and len({send.peer_id for send in sends}) == 4
    assert all(type(send.message) is Push and send.message.raws == (entry.raw,) for send in sends)
    assert of(after, Visible)[0].entries == (entry,) and of(after, Reply) == [Reply(request_id=7, message=None)]
    for send in sends:  # the peers answer: nothing more is sent
        assert of(core.receive_reply(send.call_id, Pushed(added=1, duplicate=0, refused=0), NOW_MS, rng), Send) == []


@pytest.mark.parametrize("inline_bytes_max, message_type", [(16 * 1024, Push), (0, Offer)], ids=["inline", "offer"])
def test_a_received_entry_is_forwarded_once_never_back_to_its_sender(inline_bytes_max: int, message_type: type) -> None:
    core, rng = make_core(settings=replace(SETTINGS, push_inline_bytes_max=inline_bytes_max)), random.Random(2)
    entry, sender = forge(PEOPLE[1], sequence=1), PEOPLE[1].node_id
    effects = core.receive(sender, Push(sender=sender, raws=(entry.raw,)), NOW_MS, rng, request_id=1)
    assert of(effects, Reply) == [] and len(of(effects, Persist)) == 1   # answered only once on disk
    after = persist_all(core, effects, rng)
    assert of(after, Reply) == [Reply(request_id=1, message=Pushed(added=1, duplicate=0, refused=0))]
    forwards = of(after, Send)
    assert len(forwards) == core.fanout and all(type(send.message) is message_type and send.peer_id != sender for send in forwards)
    if message_type is Push:   # a small entry goes inline: its bytes, not its id
        assert all(send.message.raws == (entry.raw,) for send in forwards)
    again = core.receive(PEOPLE[2].node_id, Push(sender=PEOPLE[2].node_id, raws=(entry.raw,)), NOW_MS, rng, request_id=2)
    assert of(again, Send) == [] and of(again, Persist) == []
    assert of(again, Reply)[0].message == Pushed(added=0, duplicate=1, refused=0)


def receive_one(core: GossipCore, entry, sender: str, rng: random.Random, request_id: int, now_ms: int = NOW_MS) -> list:
    """`sender` pushes `entry`; the disk succeeds; what the core sent next."""
    return of(persist_all(core, core.receive(sender, Push(sender=sender, raws=(entry.raw,)), now_ms, rng,
                                             request_id=request_id), rng, now_ms), Send)


def test_entries_visible_while_a_wave_is_open_leave_together_in_the_next_one_message_per_peer() -> None:
    core, rng = make_core(), random.Random(3)
    first = forge(PEOPLE[1], sequence=1)
    wave = receive_one(core, first, PEOPLE[1].node_id, rng, 1)
    assert len(wave) == core.fanout
    later = [forge(PEOPLE[author], sequence=1) for author in (2, 3, 4)]
    for number, entry in enumerate(later):   # the wave is open: nothing leaves
        assert receive_one(core, entry, PEOPLE[2 + number].node_id, rng, 10 + number) == []
    for send in wave[:-1]:                   # all but one peer answered: still open
        assert of(core.receive_reply(send.call_id, Pushed(added=1, duplicate=0, refused=0), NOW_MS, rng), Send) == []
    following = of(core.receive_reply(wave[-1].call_id, Pushed(added=1, duplicate=0, refused=0), NOW_MS, rng), Send)
    assert len(following) == core.fanout and len({send.peer_id for send in following}) == core.fanout
    for send in following:                   # one message each, never an entry back to the peer it came from
        expected = {entry.raw for number, entry in enumerate(later) if PEOPLE[2 + number].node_id != send.peer_id}
        assert type(send.message) is Push and set(send.message.raws) == expected


def test_a_wave_stuck_on_a_silent_peer_holds_the_next_for_one_interval_only() -> None:
    core, rng = make_core(), random.Random(4)
    wave = receive_one(core, forge(PEOPLE[1], sequence=1), PEOPLE[1].node_id, rng, 1)
    for send in wave[1:]:                    # one peer never answers
        core.receive_reply(send.call_id, Pushed(added=1, duplicate=0, refused=0), NOW_MS, rng)
    assert receive_one(core, forge(PEOPLE[2], sequence=1), PEOPLE[2].node_id, rng, 2) == []
    early = core.tick(NOW_MS + SETTINGS.interval_ms - 1, rng)   # (an anti-entropy round may start: a Sync)
    assert [send for send in of(early, Send) if type(send.message) is Push] == []
    effects = core.tick(NOW_MS + SETTINGS.interval_ms, rng)
    forwards = [send for send in of(effects, Send) if type(send.message) is Push]
    assert len(forwards) == core.fanout
    later_ms = NOW_MS + SETTINGS.interval_ms
    for send in forwards[1:]:                # the new wave: all but one answered
        core.receive_reply(send.call_id, Pushed(added=1, duplicate=0, refused=0), later_ms, rng)
    # the late answer of the old wave does not close the new wave's last open slot
    core.receive_reply(wave[0].call_id, Pushed(added=1, duplicate=0, refused=0), later_ms, rng)
    assert receive_one(core, forge(PEOPLE[3], sequence=1), PEOPLE[3].node_id, rng, 3, NOW_MS + SETTINGS.interval_ms) == []


def test_a_bulk_kind_is_pushed_by_its_author_but_never_forwarded() -> None:
    core, rng = make_core(), random.Random(7)
    report = forge(PEOPLE[1], sequence=1, kind="EXECUTION_REPORT", body=report_body())
    assert receive_one(core, report, PEOPLE[1].node_id, rng, 1) == [] and core.log.is_visible(report.id)
    note = forge(PEOPLE[2], sequence=1)
    assert [set(send.message.raws) for send in receive_one(core, note, PEOPLE[2].node_id, rng, 2)] == [{note.raw}] * core.fanout
    own = core.log.new_entry(kind="EXECUTION_REPORT", author=core.self_id, body=report_body(), sign=PEOPLE[0].sign, now_ms=NOW_MS)
    pushed = of(persist_all(core, core.publish(own, NOW_MS, rng, request_id=3), rng), Send)
    assert len(pushed) == core.fanout and all(send.message.raws[-1] == own.raw for send in pushed)   # (with its lazy parent)
    eager = make_core(settings=replace(SETTINGS, lazy_kinds=()))
    assert len(receive_one(eager, report, PEOPLE[1].node_id, rng, 1)) == eager.fanout


def test_a_wave_carries_the_lazy_parents_of_its_entries_to_peers_not_known_to_hold_them() -> None:
    core, rng = make_core(), random.Random(11)
    report = forge(PEOPLE[1], sequence=1, kind="EXECUTION_REPORT", body=report_body())
    assert receive_one(core, report, PEOPLE[1].node_id, rng, 1) == []            # lazy: not forwarded by itself
    child = forge(PEOPLE[1], sequence=2, parents=(report.id,), hlc=Hlc(NOW_MS + 1, 0))
    sends = receive_one(core, child, PEOPLE[2].node_id, rng, 2)
    assert len(sends) == core.fanout
    for send in sends:       # in causal order, so the child is visible at once where it lands; not to its sender
        assert send.message.raws == ((child.raw,) if send.peer_id == PEOPLE[1].node_id else (report.raw, child.raw))
    other_report = forge(PEOPLE[3], sequence=1, kind="EXECUTION_REPORT", body=report_body(), hlc=Hlc(NOW_MS + 2, 0))
    receive_one(core, other_report, PEOPLE[3].node_id, rng, 3)
    own = core.log.new_entry(kind="NOTE", author=core.self_id, body={"text": "mine"}, sign=PEOPLE[0].sign, now_ms=NOW_MS + 3)
    assert other_report.id in own.parents
    sends = of(persist_all(core, core.publish(own, NOW_MS + 3, rng, request_id=4), rng), Send)
    assert len(sends) == core.fanout
    for send in sends:       # this node's own entry carries its lazy parent too
        assert send.message.raws == ((own.raw,) if send.peer_id == PEOPLE[3].node_id else (other_report.raw, own.raw))
    lazy_parentless = make_core(settings=replace(SETTINGS, lazy_kinds=()))       # an eager parent was forwarded itself
    receive_one(lazy_parentless, report, PEOPLE[1].node_id, rng, 1)
    assert all(send.message.raws == (child.raw,) for send in receive_one(lazy_parentless, child, PEOPLE[2].node_id, rng, 2)
               if type(send.message) is Push)


def test_lazy_kinds_must_be_entry_kinds() -> None:
    with pytest.raises(ConfigError, match="lazy_kinds must be a tuple of entry kinds"):
        GossipSettings(lazy_kinds=("REPORT",))
    with pytest.raises(ConfigError, match="lazy_kinds"):
        GossipSettings(lazy_kinds=["EXECUTION_REPORT"])


def test_a_heavy_wave_is_offered_first_and_only_wanted_entries_are_pushed() -> None:
    core, rng = make_core(settings=replace(SETTINGS, push_inline_bytes_max=1)), random.Random(5)
    entry = forge(PEOPLE[1], sequence=1)
    offers = receive_one(core, entry, PEOPLE[1].node_id, rng, 1)
    assert len(offers) == core.fanout and all(send.message == Offer(sender=core.self_id, ids=(entry.id,)) for send in offers)
    pushes = of(core.receive_reply(offers[0].call_id, Want(ids=(entry.id,)), NOW_MS, rng), Send)
    assert [send.message for send in pushes] == [Push(sender=core.self_id, raws=(entry.raw,))]
    assert of(core.receive_reply(offers[1].call_id, Want(ids=()), NOW_MS, rng), Send) == []   # "have": nothing pushed


def test_the_forward_queue_is_bounded_and_drops_are_counted() -> None:
    core, rng = make_core(), random.Random(6)
    receive_one(core, forge(PEOPLE[1], sequence=1), PEOPLE[1].node_id, rng, 1)   # a wave is open
    dropped, parents = 0, ()
    for sequence in range(1, SETTINGS.batch_entries_max + 3):
        entry = forge(PEOPLE[2], sequence=sequence, parents=parents, hlc=Hlc(NOW_MS, sequence))
        parents = (entry.id,)
        effects = core.receive(PEOPLE[3].node_id, Push(sender=PEOPLE[3].node_id, raws=(entry.raw,)), NOW_MS, rng,
                               request_id=100 + sequence)
        dropped += counted(persist_all(core, effects, rng), "gossip_forwards_dropped_total")
    assert dropped == 2 and len(core.waves) == SETTINGS.batch_entries_max


def test_an_offered_entry_is_wanted_once_while_its_first_copy_is_on_its_way() -> None:
    core, rng = make_core(), random.Random(3)
    offer = Offer(sender=PEOPLE[1].node_id, ids=("ef" * 32,))
    first = core.receive(PEOPLE[1].node_id, offer, NOW_MS, rng, request_id=1)
    second = core.receive(PEOPLE[2].node_id, offer, NOW_MS + 10, rng, request_id=2)
    later = core.receive(PEOPLE[2].node_id, offer, NOW_MS + SETTINGS.call_timeout_ms + 1, rng, request_id=3)
    assert [of(effects, Reply)[0].message.ids for effects in (first, second, later)] == [("ef" * 32,), (), ("ef" * 32,)]


def test_anti_entropy_skips_one_round_while_a_wanted_entry_is_in_flight() -> None:
    core, rng = make_core(), random.Random(4)
    core.receive(PEOPLE[1].node_id, Offer(sender=PEOPLE[1].node_id, ids=("ef" * 32,)), NOW_MS, rng, request_id=1)
    skipped = core.tick(NOW_MS + 50, rng)
    assert of(skipped, Send) == [] and counted(skipped, "gossip_rounds_total", result="skipped_in_flight") == 1
    next_round = of(core.tick(NOW_MS + 100, rng), Send)  # only ONE round is skipped
    assert len(next_round) == 1 and type(next_round[0].message) is Sync and next_round[0].message.digest is None


def test_anti_entropy_pulls_what_this_node_lacks_and_pushes_what_the_peer_lacks() -> None:
    rng = random.Random(5)
    mine, theirs = make_core(0, count=2), make_core(1, count=2)
    their_entry = theirs.log.new_entry(kind="NOTE", author=theirs.self_id, body={"text": "theirs"}, sign=PEOPLE[1].sign, now_ms=NOW_MS)
    persist_all(theirs, theirs.publish(their_entry, NOW_MS, rng, request_id=1), rng)
    my_entry = mine.log.new_entry(kind="NOTE", author=mine.self_id, body={"text": "mine"}, sign=PEOPLE[0].sign, now_ms=NOW_MS)
    for send in of(persist_all(mine, mine.publish(my_entry, NOW_MS, rng, request_id=1), rng), Send):
        mine.call_failed(send.call_id, NOW_MS, rng, busy=True)  # eager push lost: anti-entropy must repair
    sends, exchanges = of(mine.tick(NOW_MS + 1_000, rng), Send), []
    for _ in range(10):  # pump the round: each request to the peer, each answer back
        if not sends:
            break
        send = sends.pop(0)
        answer = theirs.receive(mine.self_id, send.message, NOW_MS + 1_000, rng, request_id=send.call_id)
        answer += persist_all(theirs, answer, rng, NOW_MS + 1_000)
        reply = of(answer, Reply)[0].message
        exchanges.append(type(send.message).__name__ + ("+digest" if type(send.message) is Sync and send.message.digest else ""))
        effects = mine.receive_reply(send.call_id, reply, NOW_MS + 1_000, rng)
        effects += persist_all(mine, effects, rng, NOW_MS + 1_000)
        sends += [send for send in of(effects, Send) if type(send.message) in (Sync, Push)]
    assert exchanges == ["Sync", "Push", "Sync+digest"]
    assert mine.log.is_visible(their_entry.id) and theirs.log.is_visible(my_entry.id)
    assert mine.heard_digest and not mine.behind_own_entries()


def test_a_failed_peer_is_left_alone_for_a_jittered_exponential_backoff() -> None:
    core, rng = make_core(0, count=2), random.Random(6)
    send = of(core.tick(NOW_MS, rng), Send)[0]
    core.call_failed(send.call_id, NOW_MS, rng, error_type="ClientError")
    retry_at_ms = core.peers[PEOPLE[1].node_id].retry_at_ms
    assert NOW_MS + 250 <= retry_at_ms <= NOW_MS + 500 and core.peers_up() == 0
    assert of(core.tick(retry_at_ms - 1, rng), Send) == []
    assert len(of(core.tick(retry_at_ms, rng), Send)) == 1


@pytest.mark.parametrize("seed", range(20))
def test_a_failed_peer_is_asked_first_once_its_backoff_ends(seed: int) -> None:
    # Left to the random choice among 9 peers, a peer that failed at start-up could stay "down" for a
    # minute of quiet rounds (CI saw it); now the first round after its backoff goes to it.
    core, rng = make_core(0, count=10), random.Random(seed)
    for peer in core.peers.values():
        peer.up = True
    send = of(core.tick(NOW_MS, rng), Send)[0]
    core.call_failed(send.call_id, NOW_MS, rng, error_type="ClientConnectorError")
    retry_at_ms = core.peers[send.peer_id].retry_at_ms
    retried = of(core.tick(retry_at_ms, rng), Send)
    assert [(type(call.message), call.peer_id) for call in retried] == [(Sync, send.peer_id)]


@pytest.mark.parametrize("message, what", [
    (Offer(sender="", ids=tuple(f"{n:064x}" for n in range(9))), "an offer names at most 8 entries"),
    (Push(sender="", raws=(b"x",) * 9), "a push carries at most 8 entries"),
    (Sync(sender="", digest_hash=b"\x00" * 8, digest=None, want=tuple(f"{n:064x}" for n in range(65))), "a sync asks for at most"),
    (Want(ids=()), "is a reply, not a request"),
])
def test_oversized_requests_are_refused_as_malformed_and_change_nothing(message: object, what: str) -> None:
    core, rng = make_core(), random.Random(7)
    effects = core.receive("", message, NOW_MS, rng, request_id=9)
    assert [type(effect) for effect in effects] == [Refuse]
    assert effects[0].reason == "malformed" and isinstance(effects[0].error, BadRequest) and what in effects[0].error.message
    assert len(core.log) == 0


def test_garbage_entries_are_refused_at_the_door_never_persisted_nor_forwarded() -> None:
    core, rng = make_core(), random.Random(8)
    forged = forge(PEOPLE[2], sequence=1, author=PEOPLE[1].node_id)
    effects = core.receive("", Push(sender="", raws=(b"\x98" + b"\xff" * 100, forged.raw)), NOW_MS, rng, request_id=1)
    assert of(effects, Persist) == [] and of(effects, Send) == [] and of(effects, Visible) == []
    assert of(effects, Reply)[0].message == Pushed(added=0, duplicate=0, refused=2)
    assert counted(effects, "entries_refused_total", reason="malformed") == 1
    assert counted(effects, "entries_refused_total", reason="bad_signature") == 1


def test_a_full_inbox_refuses_a_push_as_unavailable() -> None:
    core, rng = make_core(settings=GossipSettings(batch_entries_max=8, inbox_max=10)), random.Random(9)
    entries = [forge(PEOPLE[n], sequence=1) for n in range(1, 9)]
    first = core.receive("", Push(sender="", raws=tuple(entry.raw for entry in entries)), NOW_MS, rng, request_id=1)
    second = core.receive("", Push(sender="", raws=tuple(entry.raw for entry in entries[:3])), NOW_MS, rng, request_id=2)
    assert len(of(first, Persist)) == 1  # 8 entries held while on their way to disk; 8 + 3 > inbox_max 10
    refusal = of(second, Refuse)[0]
    assert refusal.reason == "unavailable" and isinstance(refusal.error, Unavailable)
    assert counted(second, "gossip_requests_refused_total", reason="inbox_full") == 1


def test_a_failed_disk_makes_nothing_visible_and_refuses_the_push() -> None:
    core, rng = make_core(), random.Random(10)
    entry = forge(PEOPLE[1], sequence=1)
    persist = of(core.receive("", Push(sender="", raws=(entry.raw,)), NOW_MS, rng, request_id=1), Persist)[0]
    effects = core.persist_failed(persist.batch_id, Unavailable("cannot write the log file: disk full"))
    assert [type(effect) for effect in effects] == [Refuse] and entry.id not in core.log
    retry = core.receive("", Push(sender="", raws=(entry.raw,)), NOW_MS, rng, request_id=2)
    assert len(of(retry, Persist)) == 1  # not mistaken for a duplicate afterwards


def test_a_round_moves_only_along_its_table_and_ignores_answers_once_over() -> None:
    from node.core.gossip_round import ROUND_TRANSITIONS, Round as _Round, RoundPhase
    assert all(RoundPhase.OVER in targets for phase, targets in ROUND_TRANSITIONS.items() if phase is not RoundPhase.OVER)
    with pytest.raises(AssertionError, match="cannot go from over to pulling"):
        GossipCore._enter(_Round("0123456789abcdef", 0, RoundPhase.OVER), RoundPhase.PULLING)
    core, rng = make_core(0, count=2), random.Random(11)
    send = of(core.tick(NOW_MS, rng), Send)[0]
    timed_out = core.tick(NOW_MS + SETTINGS.call_timeout_ms * 67, rng)   # the round's deadline passed
    assert counted(timed_out, "gossip_rounds_total", result="timeout") == 1
    late = core.receive_reply(send.call_id, Synced(digest={}, raws=(), more=False), NOW_MS, rng)
    assert of(late, Send) == [] and counted(late, "gossip_rounds_total", result="in_sync") == 0
