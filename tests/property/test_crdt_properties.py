"""Property tests of the log CRDT (hypothesis; a failure prints the seed and the drawn example).

A "universe" is a history produced by a few authors writing on their own partial views of the log
(so entries name concurrent heads, clocks go backwards, and some authors equivocate). It is built
from a seed, once per seed (signing costs ~30 µs per entry), and replicas then receive its entries
in arbitrary ways. Properties:
  - merge (add everything of one log into another) is commutative, associative and idempotent, as
    sets AND as visible order;
  - any delivery order, with duplicates and drops, followed by anti-entropy (digest exchange through
    entries_missing_from, plus pulling missing parents by id as gossip does) converges to the same
    set and the same visible order on every replica, and that order is a causal order;
  - without equivocation, digest exchange alone converges (no pulls needed).
"""

from __future__ import annotations

import random
from functools import lru_cache

from hypothesis import given, settings, strategies as st

from node.core.crdt_log import AddStatus, CrdtLog, order_key
from node.core.entries import Entry, make_entry
from tests.logtools import NETWORK_ID, LATE_MS, NOW_MS, CountingVerify, identities, log_state, new_log, note_body

AUTHORS = identities(4)
VERIFY = CountingVerify()  # memoized: every replica checks signatures, the cost is paid once per entry
SETTINGS = settings(max_examples=60, deadline=None)


def replica() -> CrdtLog:
    return new_log(AUTHORS, verify=VERIFY, pending_max=100_000)


@lru_cache(maxsize=256)
def universe(seed: int, steps: int, twin_percent: int) -> tuple[Entry, ...]:
    """A valid history of `steps` actions by the authors, each on its own partial view."""
    rng = random.Random(seed)
    views = [replica() for _ in AUTHORS]
    clocks = [NOW_MS + rng.randrange(50) for _ in AUTHORS]
    history: list[Entry] = []
    for step in range(steps):
        index = rng.randrange(len(AUTHORS))
        author, view = AUTHORS[index], views[index]
        clocks[index] += rng.randrange(-3, 6)  # wall clocks drift and go backwards
        roll = rng.randrange(100)
        if roll < 30 and history:  # hear about some of what others wrote
            for entry in sorted(rng.sample(history, rng.randrange(1, len(history) + 1)), key=order_key):
                view.add(entry, now_ms=LATE_MS)
            continue
        latest = view.latest_of(author.node_id)
        if roll < 30 + twin_percent and latest is not None:  # equivocate: a twin of its latest entry
            entry = make_entry(network_id=NETWORK_ID, kind="NOTE", author=author.node_id, sequence=latest.sequence,
                               parents=latest.parents, hlc=latest.hlc, body=note_body(f"twin {step}"), sign=author.sign)
        else:
            entry = view.new_entry(kind="NOTE", author=author.node_id, body=note_body(f"{index}/{step}"),
                                   sign=author.sign, now_ms=clocks[index])
        assert view.add(entry, now_ms=LATE_MS).status is AddStatus.ADDED
        history.append(entry)
    return tuple(history)


def merged(*sources: CrdtLog) -> CrdtLog:
    target = replica()
    for source in sources:
        for entry in source.all_entries():
            target.add(entry, now_ms=LATE_MS)
    return target


def delivered(entries) -> CrdtLog:
    log = replica()
    for entry in entries:
        log.add(entry, now_ms=LATE_MS)
    return log


def anti_entropy(replicas: list[CrdtLog], rng: random.Random, *, limit: int, pulls: bool) -> None:
    """Random pairs exchange what the other lacks (both directions), until a full sweep changes nothing."""
    for _ in range(2000):
        changed = False
        pairs = [(a, b) for a in range(len(replicas)) for b in range(len(replicas)) if a != b]
        rng.shuffle(pairs)
        for receiver_index, sender_index in pairs:
            receiver, sender = replicas[receiver_index], replicas[sender_index]
            for entry in sender.entries_missing_from(receiver.digest(), limit=limit, salt=rng.getrandbits(64)):
                changed |= receiver.add(entry, now_ms=LATE_MS).status is not AddStatus.DUPLICATE
            if pulls:
                for parent_id in sorted(receiver.missing_parents())[:limit]:
                    parent = sender.get(parent_id)
                    if parent is not None:
                        changed |= receiver.add(parent, now_ms=LATE_MS).status is not AddStatus.DUPLICATE
        if not changed:
            return
    raise AssertionError("anti-entropy did not settle")


def assert_causal_total_order(visible: list[Entry]) -> None:
    assert visible == sorted(visible, key=order_key)
    position = {entry.id: index for index, entry in enumerate(visible)}
    for entry in visible:
        assert all(position[parent] < position[entry.id] for parent in entry.parents)


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@SETTINGS
@given(seed=seeds, steps=st.integers(5, 30), twin_percent=st.sampled_from([0, 10]), data=st.data())
def test_merge_is_commutative_associative_and_idempotent(seed, steps, twin_percent, data):
    history = universe(seed, steps, twin_percent)
    subsets = [data.draw(st.lists(st.sampled_from(history), max_size=len(history)), label=f"replica {n}") for n in range(3)]
    a, b, c = (delivered(subset) for subset in subsets)
    assert log_state(merged(a, b)) == log_state(merged(b, a))
    assert log_state(merged(merged(a, b), c)) == log_state(merged(a, merged(b, c)))
    assert log_state(merged(a, a)) == log_state(a) == log_state(merged(a))
    assert_causal_total_order(merged(a, b, c).visible())


@SETTINGS
@given(seed=seeds, steps=st.integers(5, 40), twin_percent=st.sampled_from([0, 10, 25]), replicas_count=st.integers(2, 4),
       limit=st.integers(1, 8), delivery_seed=seeds)
def test_any_delivery_then_anti_entropy_converges(seed, steps, twin_percent, replicas_count, limit, delivery_seed):
    history = universe(seed, steps, twin_percent)
    rng = random.Random(delivery_seed)
    inboxes: list[list[Entry]] = [[] for _ in range(replicas_count)]
    for entry in history:  # each entry reaches at least one replica; others may get it, twice, or never
        for index in {rng.randrange(replicas_count)} | {i for i in range(replicas_count) if rng.random() < 0.3}:
            inboxes[index].extend([entry] * rng.choice([1, 1, 2]))
    for inbox in inboxes:
        rng.shuffle(inbox)
    replicas = [delivered(inbox) for inbox in inboxes]
    anti_entropy(replicas, rng, limit=limit, pulls=True)
    expected_ids = frozenset(entry.id for entry in history)
    states = [log_state(log) for log in replicas]
    assert all(state == states[0] for state in states)
    assert states[0][0] == expected_ids and replicas[0].pending_count() == 0
    assert list(states[0][1]) == [entry.id for entry in sorted(history, key=order_key)]
    assert_causal_total_order(replicas[0].visible())
    twins = {(entry.author, entry.sequence) for entry in history}
    assert (len(replicas[0].equivocations()) == 0) == (len(twins) == len(history))


@SETTINGS
@given(seed=seeds, steps=st.integers(5, 40), replicas_count=st.integers(2, 4), limit=st.integers(1, 8), delivery_seed=seeds)
def test_without_equivocation_digest_exchange_alone_converges(seed, steps, replicas_count, limit, delivery_seed):
    history = universe(seed, steps, 0)
    rng = random.Random(delivery_seed)
    inboxes: list[list[Entry]] = [[] for _ in range(replicas_count)]
    for entry in history:
        inboxes[rng.randrange(replicas_count)].append(entry)
    for inbox in inboxes:
        rng.shuffle(inbox)
    replicas = [delivered(inbox) for inbox in inboxes]
    anti_entropy(replicas, rng, limit=limit, pulls=False)
    assert all(log_state(log) == log_state(replicas[0]) for log in replicas)
    assert [entry.id for entry in replicas[0].visible()] == [entry.id for entry in sorted(history, key=order_key)]
