"""The CRDT log: admission, every refusal reason, pending, equivocation, order, digest and delta.

Each refusal test also checks that a refused entry changed nothing a user could observe.
"""

import pytest

from node.core.crdt_log import DIGEST_LEAVES_MAX, AddStatus, CrdtLog, LogLimits, order_key
from node.core.entries import decode_entry, make_entry
from node.core.hlc import Hlc
from node.errors import BadRequest, ConfigError, EntryRefused
from node.identity import Identity
from tests.logtools import (
    NETWORK_ID,
    LATE_MS, NOW_MS, CountingVerify, forge, identities, log_state, members_of, new_log, note_body, write,
)

ALICE, BOB, CAROL = identities(3)
PEOPLE = (ALICE, BOB, CAROL)


def refused(log: CrdtLog, entry, *, now_ms: int = NOW_MS) -> str:
    before = log_state(log), log.digest(), len(log), log.pending_count()
    with pytest.raises(EntryRefused) as caught:
        log.add(entry, now_ms=now_ms)
    assert (log_state(log), log.digest(), len(log), log.pending_count()) == before, "a refusal changed the log"
    assert entry.id not in log and log.get(entry.id) is None
    assert caught.value.message and caught.value.definite
    return caught.value.reason


def chain(who: Identity, length: int, *, start_ms: int = NOW_MS) -> list:
    """`length` entries of `who` alone, each naming the previous one."""
    entries = []
    for sequence in range(1, length + 1):
        parents = (entries[-1].id,) if entries else ()
        entries.append(forge(who, sequence=sequence, parents=parents, hlc=Hlc(start_ms + sequence, 0),
                             body=note_body(f"{who.node_id} {sequence}")))
    return entries


def highest_sequences(log: CrdtLog) -> dict[str, int]:
    """author -> highest visible sequence: the plain digest of older peers, from the log's public API."""
    return {who.node_id: log.next_sequence(who.node_id) - 1 for who in PEOPLE if log.next_sequence(who.node_id) > 1}


# --- adding and reading ----------------------------------------------------------------------------


def test_local_entries_chain_and_become_visible_in_order():
    log = new_log(PEOPLE)
    first = write(log, ALICE)
    second = write(log, BOB)
    third = write(log, ALICE, now_ms=NOW_MS - 5_000)  # the wall clock went back: the hlc did not
    assert [e.id for e in log.visible()] == [first.id, second.id, third.id]
    assert third.sequence == 2 and first.id in third.parents and second.id in third.parents
    assert third.hlc > second.hlc > first.hlc
    assert log.heads() == (third.id,) and log.next_sequence(ALICE.node_id) == 3 and log.next_sequence(CAROL.node_id) == 1
    assert highest_sequences(log) == {ALICE.node_id: 2, BOB.node_id: 1}
    assert len(log) == log.visible_count() == 3 and log.pending_count() == 0
    assert log.get(first.id) == first and first.id in log and "0" * 64 not in log
    for garbage in ([], {}, None, 5, b"id"):  # hostile ids from a parsed request never raise
        assert garbage not in log and log.get(garbage) is None and not log.is_visible(garbage)


def test_a_duplicate_changes_nothing_and_is_not_verified_again():
    verify = CountingVerify()
    log = new_log(PEOPLE, verify=verify)
    entry = write(log, ALICE)
    before = log_state(log)
    for copy in (entry, decode_entry(entry.raw, entry_size_max_bytes=65536)):
        outcome = log.add(copy, now_ms=NOW_MS)
        assert outcome.status is AddStatus.DUPLICATE and outcome.newly_visible == ()
    assert log_state(log) == before and verify.calls == 1


def test_check_says_what_add_would_do_without_storing_and_verifies_once():
    verify = CountingVerify()
    log = new_log(PEOPLE, verify=verify)
    first, second = chain(ALICE, 2)
    assert log.check(second, now_ms=NOW_MS) is AddStatus.PENDING
    assert log.check(first, now_ms=NOW_MS) is AddStatus.ADDED
    assert len(log) == 0 and second.id not in log
    assert log.add(first, now_ms=NOW_MS).status is AddStatus.ADDED
    assert log.check(first, now_ms=NOW_MS) is AddStatus.DUPLICATE
    assert verify.calls == 2  # once per entry, although each was checked and/or added twice
    assert refused(log, forge(BOB, sequence=1, author=ALICE.node_id)) == "bad_signature"


# --- every refusal reason --------------------------------------------------------------------------


def test_oversized():
    log = new_log(PEOPLE, entry_size_max_bytes=300)
    assert refused(log, forge(ALICE, sequence=1, body=note_body("x" * 300))) == "oversized"
    assert log.add(forge(ALICE, sequence=1, body=note_body("x" * 10)), now_ms=NOW_MS).status is AddStatus.ADDED


def test_unknown_author():
    stranger = Identity.from_private_bytes(b"\x07" * 32)
    assert refused(new_log(PEOPLE), forge(stranger, sequence=1)) == "unknown_author"


def test_bad_signature_from_another_key_or_tampered_bytes():
    log = new_log(PEOPLE)
    assert refused(log, forge(BOB, sequence=1, author=ALICE.node_id)) == "bad_signature"
    genuine = forge(ALICE, sequence=1)
    tampered = make_entry(network_id=NETWORK_ID, kind="NOTE", author=ALICE.node_id, sequence=1, parents=(),
                          hlc=genuine.hlc, body=note_body("changed"), sign=lambda message: genuine.signature)
    assert refused(log, tampered) == "bad_signature"
    assert log.add(genuine, now_ms=NOW_MS).status is AddStatus.ADDED


def test_an_entry_signed_for_another_network_is_refused_at_the_door_and_valid_at_home():
    # A member that reuses its key in network "other-net": what it signs there is no entry here.
    elsewhere = forge(ALICE, sequence=1, network_id="other-net")
    assert refused(new_log(PEOPLE), elsewhere) == "bad_signature"
    assert new_log(PEOPLE, network_id="other-net").add(elsewhere, now_ms=NOW_MS).status is AddStatus.ADDED
    # ... and a log of this network signs its own entries for this network.
    home = new_log(PEOPLE)
    entry = home.new_entry(kind="NOTE", author=ALICE.node_id, body=note_body(), sign=ALICE.sign, now_ms=NOW_MS)
    assert home.add(entry, now_ms=NOW_MS).status is AddStatus.ADDED
    assert refused(new_log(PEOPLE, network_id="other-net"), entry) == "bad_signature"


def test_clock_too_far_in_the_future_is_refused_but_not_remembered():
    log = new_log(PEOPLE, clock_skew_max_ms=30_000)
    entry = forge(ALICE, sequence=1, hlc=Hlc(NOW_MS + 30_001, 0))
    assert refused(log, entry, now_ms=NOW_MS) == "clock_future"
    assert log.add(entry, now_ms=NOW_MS + 1).status is AddStatus.ADDED  # later, it is fine


def test_too_many_parents():
    log = new_log(PEOPLE, parents_max=2)
    heads = [write(log, who).id for who in PEOPLE]
    assert refused(log, forge(ALICE, sequence=2, parents=heads, hlc=Hlc(NOW_MS + 9, 0))) == "too_many_parents"


def test_bad_sequence_breaks_of_the_author_chain():
    log = new_log(PEOPLE)
    one, two, three = chain(ALICE, 3)
    bob_one = write(log, BOB)
    log.add(one, now_ms=NOW_MS)
    log.add(two, now_ms=NOW_MS)
    later = Hlc(NOW_MS + 100, 0)
    cases = [
        forge(ALICE, sequence=3, parents=(bob_one.id,), hlc=later),          # does not name its own #2
        forge(ALICE, sequence=3, parents=(one.id,), hlc=later),              # names #1 instead of #2
        forge(ALICE, sequence=3, parents=(one.id, two.id), hlc=later),       # names two of its own
        forge(ALICE, sequence=1, parents=(two.id,), hlc=later),              # #1 with an own parent
        forge(ALICE, sequence=4, parents=(two.id,), hlc=later),              # skips #3
        forge(ALICE, sequence=2, parents=(), hlc=later),                     # #2 with no parent at all
    ]
    for entry in cases:
        assert refused(log, entry) == "bad_sequence", entry
    assert log.add(three, now_ms=NOW_MS).status is AddStatus.ADDED


def test_bad_hlc_not_above_a_parent():
    log = new_log(PEOPLE)
    parent = write(log, ALICE)
    for clock in (parent.hlc, Hlc(parent.hlc.wall_ms - 1, 99)):
        assert refused(log, forge(BOB, sequence=1, parents=(parent.id,), hlc=clock)) == "bad_hlc"
    assert log.add(forge(BOB, sequence=1, parents=(parent.id,), hlc=Hlc(parent.hlc.wall_ms, parent.hlc.logical + 1)),
                   now_ms=NOW_MS).status is AddStatus.ADDED


def test_refused_entries_are_remembered_and_their_descendants_refused_without_verifying():
    verify = CountingVerify()
    log = new_log(PEOPLE, verify=verify)
    forged = forge(BOB, sequence=1, author=ALICE.node_id)
    assert refused(log, forged) == "bad_signature"
    calls = verify.calls
    assert refused(log, forged) == "bad_signature"
    child = forge(BOB, sequence=1, parents=(forged.id,), hlc=Hlc(NOW_MS + 1, 0))
    assert refused(log, child) == "refused_parent"
    assert verify.calls == calls


def test_a_parent_refused_after_its_child_arrived_is_no_longer_asked_for():
    log = new_log(PEOPLE)
    forged = forge(BOB, sequence=1, author=ALICE.node_id)
    child = forge(CAROL, sequence=1, parents=(forged.id,), hlc=Hlc(NOW_MS + 1, 0))
    assert log.add(child, now_ms=NOW_MS).status is AddStatus.PENDING
    assert log.missing_parents() == {forged.id}
    with pytest.raises(EntryRefused) as caught:
        log.add(forged, now_ms=NOW_MS)
    assert caught.value.reason == "bad_signature"
    assert log.missing_parents() == set()  # gossip stops pulling what every honest node refuses


def test_log_full():
    log = new_log(PEOPLE, entries_max=2)
    write(log, ALICE)
    write(log, BOB)
    assert refused(log, forge(CAROL, sequence=1)) == "log_full"


def test_not_an_entry_is_malformed():
    with pytest.raises(EntryRefused) as caught:
        new_log(PEOPLE).add(b"raw bytes", now_ms=NOW_MS)
    assert caught.value.reason == "malformed"


# --- pending ---------------------------------------------------------------------------------------


def test_entries_wait_for_their_parents_then_appear_in_causal_order():
    log = new_log(PEOPLE)
    entries = chain(ALICE, 4)
    for entry in reversed(entries[1:]):
        outcome = log.add(entry, now_ms=NOW_MS)
        assert outcome.status is AddStatus.PENDING and outcome.newly_visible == ()
    assert log.visible() == [] and log.pending_count() == 3 and len(log) == 3
    assert log.missing_parents() == {entries[0].id}  # pending parents are held, not missing
    assert log.digest() == {} and log.entries_missing_from({}, limit=10) == []  # pending entries are not offered
    outcome = log.add(entries[0], now_ms=NOW_MS)
    assert outcome.status is AddStatus.ADDED and list(outcome.newly_visible) == entries
    assert log.visible() == entries and log.pending_count() == 0 and log.missing_parents() == set()


def test_an_entry_with_several_missing_parents_waits_for_all():
    log = new_log(PEOPLE)
    alice, bob = forge(ALICE, sequence=1), forge(BOB, sequence=1)
    child = forge(CAROL, sequence=1, parents=(alice.id, bob.id), hlc=Hlc(NOW_MS + 1, 0))
    assert log.add(child, now_ms=NOW_MS).status is AddStatus.PENDING
    assert log.missing_parents() == {alice.id, bob.id}
    assert log.add(alice, now_ms=NOW_MS).newly_visible == (alice,)
    assert log.missing_parents() == {bob.id}
    assert log.add(bob, now_ms=NOW_MS).newly_visible == (bob, child)


def test_a_pending_entry_found_invalid_is_dropped_with_its_descendants():
    log = new_log(PEOPLE)
    parent = forge(ALICE, sequence=1, hlc=Hlc(NOW_MS + 50, 0))
    bad_clock = forge(BOB, sequence=1, parents=(parent.id,), hlc=Hlc(NOW_MS + 50, 0))  # not above its parent
    grandchild = forge(CAROL, sequence=1, parents=(bad_clock.id,), hlc=Hlc(NOW_MS + 60, 0))
    bad_chain = forge(ALICE, sequence=3, parents=(parent.id,), hlc=Hlc(NOW_MS + 70, 0))  # #3 naming #1
    for entry in (grandchild, bad_clock, bad_chain):
        assert log.add(entry, now_ms=NOW_MS).status is AddStatus.PENDING
    outcome = log.add(parent, now_ms=NOW_MS)
    assert outcome.newly_visible == (parent,)
    assert sorted(outcome.refused) == sorted([(bad_clock.id, "bad_hlc"), (grandchild.id, "refused_parent"),
                                              (bad_chain.id, "bad_sequence")])
    assert [e.id for e in log.all_entries()] == [parent.id] and log.pending_count() == 0
    assert log.missing_parents() == set()
    for entry, reason in ((bad_clock, "bad_hlc"), (grandchild, "refused_parent")):
        assert refused(log, entry) == reason  # remembered: a replay is refused at the door


def test_pending_is_bounded_in_total_and_per_author():
    log = new_log(PEOPLE, pending_max=4)  # 3 members: at most 2 pending per author
    orphans = {who.node_id: [forge(who, sequence=n, parents=(f"{n:064x}",), hlc=Hlc(NOW_MS + n, 0)) for n in range(2, 5)]
               for who in PEOPLE}
    for entry in orphans[ALICE.node_id][:2]:
        assert log.add(entry, now_ms=NOW_MS).status is AddStatus.PENDING
    assert refused(log, orphans[ALICE.node_id][2]) == "pending_full"  # Alice's share is used up
    for entry in orphans[BOB.node_id][:2]:
        assert log.add(entry, now_ms=NOW_MS).status is AddStatus.PENDING
    assert refused(log, orphans[CAROL.node_id][0]) == "pending_full"  # the total is used up
    assert log.pending_count() == 4
    assert log.add(forge(CAROL, sequence=1), now_ms=NOW_MS).status is AddStatus.ADDED  # visible entries still come in


# --- equivocation ----------------------------------------------------------------------------------


def test_equivocation_is_kept_as_evidence_on_both_sides():
    log = new_log(PEOPLE)
    first = write(log, ALICE)
    twin_a = forge(ALICE, sequence=2, parents=(first.id,), hlc=Hlc(NOW_MS + 10, 0), body=note_body("yes"))
    twin_b = forge(ALICE, sequence=2, parents=(first.id,), hlc=Hlc(NOW_MS + 10, 0), body=note_body("no"))
    assert log.add(twin_a, now_ms=NOW_MS).status is AddStatus.ADDED
    assert log.add(twin_b, now_ms=NOW_MS).status is AddStatus.ADDED
    assert log.equivocations() == [tuple(sorted((twin_a.id, twin_b.id)))]
    assert {twin_a.id, twin_b.id} <= {e.id for e in log.visible()}
    twin_c = forge(ALICE, sequence=2, parents=(first.id,), hlc=Hlc(NOW_MS + 10, 0), body=note_body("maybe"))
    log.add(twin_c, now_ms=NOW_MS)
    smallest, *others = sorted((twin_a.id, twin_b.id, twin_c.id))
    assert log.equivocations() == [(smallest, other) for other in others]
    # The author's next entry names exactly one of its twins, as the chain rule requires.
    after = write(log, ALICE, now_ms=NOW_MS + 20)
    assert after.sequence == 3 and sum(p in (twin_a.id, twin_b.id, twin_c.id) for p in after.parents) == 1


# --- order -------------------------------------------------------------------------------------------


def test_visible_order_is_the_same_whatever_the_arrival_order():
    source = new_log(PEOPLE)
    for step in range(12):
        write(source, PEOPLE[step % 3], now_ms=NOW_MS + (step * 7) % 5)
    entries = source.visible()
    forward, backward = new_log(PEOPLE), new_log(PEOPLE)
    for entry in entries:
        forward.add(entry, now_ms=NOW_MS)
    for entry in reversed(entries):
        backward.add(entry, now_ms=NOW_MS)
    assert forward.visible() == backward.visible() == entries == sorted(entries, key=order_key)
    positions = {entry.id: index for index, entry in enumerate(entries)}
    assert all(positions[p] < positions[entry.id] for entry in entries for p in entry.parents)


def test_a_late_entry_with_a_smaller_clock_is_sorted_into_place():
    early = forge(BOB, sequence=1, hlc=Hlc(NOW_MS, 0))
    late = forge(ALICE, sequence=1, hlc=Hlc(NOW_MS + 100, 0))
    log = new_log(PEOPLE)
    log.add(late, now_ms=NOW_MS)
    assert log.visible() == [late]
    outcome = log.add(early, now_ms=NOW_MS)
    assert outcome.newly_visible == (early,)
    assert log.visible() == [early, late]
    copy = log.visible()
    copy.clear()
    assert log.visible() == [early, late]  # callers get a copy


def test_heads_are_bounded_and_always_include_the_authors_latest_entry():
    people = identities(6)
    log, unbounded = new_log(people, parents_max=3), new_log(people)
    own = write(log, people[0])
    unbounded.add(own, now_ms=NOW_MS)
    for who in people[1:]:  # five concurrent entries that nobody names yet
        for target in (log, unbounded):
            target.add(forge(who, sequence=1, hlc=Hlc(NOW_MS + 1, 0)), now_ms=NOW_MS)
    assert len(unbounded.heads()) == 6
    heads = log.heads(people[0].node_id)
    assert len(heads) == 3 and own.id in heads and list(heads) == sorted(heads)
    assert len(log.heads()) == 3 and own.id not in log.heads()  # without an author: the most recent heads
    entry = log.new_entry(kind="NOTE", author=people[0].node_id, body=note_body(), sign=people[0].sign, now_ms=NOW_MS)
    assert log.add(entry, now_ms=NOW_MS).status is AddStatus.ADDED


def test_new_entry_clock_is_above_parents_and_the_given_clock():
    log = new_log(PEOPLE)
    ahead = forge(BOB, sequence=1, hlc=Hlc(NOW_MS + 20_000, 3))
    log.add(ahead, now_ms=NOW_MS)
    entry = log.new_entry(kind="NOTE", author=ALICE.node_id, body=note_body(), sign=ALICE.sign, now_ms=NOW_MS)
    assert entry.hlc == Hlc(NOW_MS + 20_000, 4)
    entry = log.new_entry(kind="NOTE", author=ALICE.node_id, body=note_body(), sign=ALICE.sign, now_ms=NOW_MS,
                          clock=Hlc(NOW_MS + 25_000, 0))
    assert entry.hlc == Hlc(NOW_MS + 25_000, 1)


def test_clock_floor_is_what_the_next_entry_must_be_above():
    """A body that dates itself (a proposal's deadline) counts from clock_floor: a peer 20 s ahead (inside
    the bound) pulls it 20 s past this node's clock, and the entry's hlc is above it."""
    log = new_log(PEOPLE)
    assert log.clock_floor(ALICE.node_id) == Hlc(0, 0)
    mine = write(log, ALICE)
    assert log.clock_floor(ALICE.node_id) == mine.hlc
    log.add(forge(BOB, sequence=1, hlc=Hlc(NOW_MS + 20_000, 3)), now_ms=NOW_MS)
    floor = log.clock_floor(ALICE.node_id)
    assert floor == Hlc(NOW_MS + 20_000, 3)
    entry = log.new_entry(kind="NOTE", author=ALICE.node_id, body=note_body(), sign=ALICE.sign, now_ms=NOW_MS)
    assert entry.hlc > floor and entry.hlc.wall_ms == floor.wall_ms


# --- digest and delta ---------------------------------------------------------------------------------


def synced(*logs: CrdtLog, limit: int = 1000, pulls: bool = True) -> None:
    """Digest exchange (and missing-parent pulls) between every pair until nothing changes."""
    for _ in range(100):
        changed = False
        for receiver in logs:
            for sender in logs:
                if sender is receiver:
                    continue
                for entry in sender.entries_missing_from(receiver.digest(), limit=limit):
                    changed |= receiver.add(entry, now_ms=LATE_MS).status is not AddStatus.DUPLICATE
                for parent in (receiver.missing_parents() if pulls else ()):
                    if sender.get(parent) is not None:
                        changed |= receiver.add(sender.get(parent), now_ms=LATE_MS).status is not AddStatus.DUPLICATE
        if not changed:
            return
    pytest.fail("anti-entropy did not settle")


def test_digest_is_one_leaf_per_honest_author():
    log = new_log(PEOPLE)
    write(log, ALICE)
    last = write(log, ALICE)
    write(log, BOB)
    digest = log.digest()
    assert digest[ALICE.node_id] == [[2, bytes.fromhex(last.id[:32])]] and set(digest) == {ALICE.node_id, BOB.node_id}


def test_entries_missing_from_sends_exactly_what_is_missing_in_causal_order_and_bounded():
    full, partial = new_log(PEOPLE), new_log(PEOPLE)
    for step in range(9):
        entry = write(full, PEOPLE[step % 3], now_ms=NOW_MS + step)
        if step < 4:
            partial.add(entry, now_ms=NOW_MS)
    missing = full.entries_missing_from(partial.digest(), limit=100)
    assert missing == full.visible()[4:]
    assert full.entries_missing_from(partial.digest(), limit=2) == full.visible()[4:6]
    assert full.entries_missing_from(full.digest(), limit=100) == []
    assert partial.entries_missing_from(full.digest(), limit=100) == []
    assert full.entries_missing_from({}, limit=100) == full.visible()
    # A plain highest-sequence digest (older peers) also works.
    assert full.entries_missing_from(highest_sequences(partial), limit=100) == missing


def test_a_twin_of_a_sequence_the_remote_already_has_is_sent():
    first = forge(ALICE, sequence=1)
    twin_a = forge(ALICE, sequence=2, parents=(first.id,), hlc=Hlc(NOW_MS + 1, 0), body=note_body("a"))
    twin_b = forge(ALICE, sequence=2, parents=(first.id,), hlc=Hlc(NOW_MS + 1, 0), body=note_body("b"))
    left, right = new_log(PEOPLE), new_log(PEOPLE)
    for entry in (first, twin_a, twin_b):
        left.add(entry, now_ms=NOW_MS)
    for entry in (first, twin_a):
        right.add(entry, now_ms=NOW_MS)
    assert highest_sequences(left) == highest_sequences(right)  # a highest-sequence digest would see no difference
    assert left.entries_missing_from(right.digest(), limit=10) == [twin_b]
    assert right.entries_missing_from(left.digest(), limit=10) == []


def test_nodes_holding_different_twins_exchange_them():
    first = forge(ALICE, sequence=1)
    twin_a = forge(ALICE, sequence=2, parents=(first.id,), hlc=Hlc(NOW_MS + 1, 0), body=note_body("a"))
    twin_b = forge(ALICE, sequence=2, parents=(first.id,), hlc=Hlc(NOW_MS + 1, 0), body=note_body("b"))
    left, right = new_log(PEOPLE), new_log(PEOPLE)
    for log, twin in ((left, twin_a), (right, twin_b)):
        log.add(first, now_ms=NOW_MS)
        log.add(twin, now_ms=NOW_MS)
    assert left.entries_missing_from(right.digest(), limit=10) == [twin_a]
    assert right.entries_missing_from(left.digest(), limit=10) == [twin_b]
    synced(left, right, pulls=False)
    assert log_state(left) == log_state(right) and len(left.equivocations()) == 1


def test_a_deep_fork_converges_with_missing_parent_pulls():
    base = chain(ALICE, 2)
    branch_a, branch_b = [base[-1]], [base[-1]]
    for sequence in range(3, 9):
        for branch, tag in ((branch_a, "a"), (branch_b, "b")):
            branch.append(forge(ALICE, sequence=sequence, parents=(branch[-1].id,), hlc=Hlc(NOW_MS + sequence, 0),
                                body=note_body(f"{tag}{sequence}")))
    left, right = new_log(PEOPLE), new_log(PEOPLE)
    for entry in base + branch_a[1:]:
        left.add(entry, now_ms=NOW_MS)
    for entry in base + branch_b[1:5]:
        right.add(entry, now_ms=NOW_MS)
    synced(left, right, limit=3)
    assert log_state(left) == log_state(right)
    assert len(left.visible()) == 2 + 6 + 4 and len(left.equivocations()) == 4


def twins_of_first_entry(who: Identity, count: int) -> list:
    """`count` entries of `who`, all with sequence 1 (an equivocation storm), oldest clocks of the log."""
    return [forge(who, sequence=1, hlc=Hlc(NOW_MS - 1000, 0), body=note_body(f"twin {n}")) for n in range(count)]


def test_an_equivocation_storm_cannot_crowd_honest_entries_out_of_a_batch():
    """An author with more leaves than a digest lists: the remote may hold the unlisted ones, so
    they must not fill every batch (they have the smallest clocks) and starve everybody else."""
    storm = twins_of_first_entry(BOB, DIGEST_LEAVES_MAX + 20)
    sender, receiver = new_log(PEOPLE), new_log(PEOPLE)
    for entry in storm:
        sender.add(entry, now_ms=NOW_MS)
        receiver.add(entry, now_ms=NOW_MS)
    honest = write(sender, ALICE)
    assert len(receiver.digest()[BOB.node_id]) == DIGEST_LEAVES_MAX
    assert sender.entries_missing_from(receiver.digest(), limit=1) == [honest]
    assert sender.entries_missing_from(receiver.digest(), limit=1, salt=7) == [honest]


def test_uncertain_entries_fill_the_room_left_and_rotate_with_the_salt():
    storm = twins_of_first_entry(BOB, DIGEST_LEAVES_MAX + 20)
    sender, receiver = new_log(PEOPLE), new_log(PEOPLE)
    for entry in storm:
        sender.add(entry, now_ms=NOW_MS)
    for entry in storm[:-3]:  # the receiver lacks three twins, which its full digest cannot show
        receiver.add(entry, now_ms=NOW_MS)
    batches = [sender.entries_missing_from(receiver.digest(), limit=5, salt=salt) for salt in range(60)]
    assert all(len(batch) == 5 and batch == sorted(batch, key=order_key) for batch in batches)
    assert set(storm[-3:]) <= {entry for batch in batches for entry in batch}  # each is offered sooner or later
    for batch in batches:
        for entry in batch:
            receiver.add(entry, now_ms=NOW_MS)
    assert log_state(receiver) == log_state(sender)


@pytest.mark.parametrize("digest", [
    [], "digest", {"alice": 3}, {ALICE.node_id: -1}, {ALICE.node_id: 2**60}, {ALICE.node_id: "3"},
    {ALICE.node_id: [[0, b"x" * 16]]}, {ALICE.node_id: [[1, b"x" * 15]]}, {ALICE.node_id: [[1]]},
    {ALICE.node_id: [[1, b"x" * 16]] * (DIGEST_LEAVES_MAX + 1)}, {ALICE.node_id: [[True, b"x" * 16]]}, {ALICE.node_id: 1.5},
])
def test_a_malformed_digest_is_a_bad_request(digest):
    log = new_log(PEOPLE)
    write(log, ALICE)
    with pytest.raises(BadRequest) as caught:
        log.entries_missing_from(digest, limit=10)
    assert "digest" in caught.value.message


def test_digest_of_unknown_authors_is_ignored():
    log = new_log(PEOPLE)
    entry = write(log, ALICE)
    assert log.entries_missing_from({"0123456789abcdef": [[5, b"x" * 16]]}, limit=10) == [entry]


# --- configuration ---------------------------------------------------------------------------------


def test_limits_and_members_are_validated():
    for bad in (dict(pending_max=0), dict(parents_max=65), dict(entry_size_max_bytes="64k"), dict(clock_skew_max_ms=-1)):
        with pytest.raises(ConfigError):
            LogLimits(**bad)
    members = members_of(PEOPLE)
    members[ALICE.node_id] = BOB.public_key
    with pytest.raises(ConfigError, match="does not match"):
        CrdtLog(network_id=NETWORK_ID, members=members, verify=lambda *_: True)
