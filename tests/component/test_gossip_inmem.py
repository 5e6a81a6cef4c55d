"""Fifty nodes' gossip in one process over the in-memory twin of the transport (node/gossip_inmem.py).

What a user checks: with 10% of messages lost, 10% of requests delivered twice and 20% held back
(reordered), every node writing entries, all fifty logs end identical (tests/logtools.log_state:
same entries, same order, no equivocation, nothing pending) within a bounded number of virtual
anti-entropy rounds; nothing became visible before it was on that node's disk; and a run replays
exactly from its printed seed (GOSSIP_SEED=<seed> reruns one).
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest

from node.core.gossip_settings import GossipSettings
from node.gossip_inmem import Faults, InmemNetwork
from tests.logtools import NOW_MS, CountingVerify, identities, log_state, new_log, report_body

pytestmark = pytest.mark.timeout(120)

NODES = 50
ENTRIES_PER_NODE = 3
WRITES_SPREAD_MS = 2_000                     # every node writes its entries within the first 2 s
SETTINGS = GossipSettings(interval_ms=200, call_timeout_ms=1_000, backoff_base_ms=100, backoff_max_ms=1_000)
FAULTS = Faults(drop_probability=0.1, duplicate_probability=0.1, reorder_probability=0.2,
                latency_ms_min=1, latency_ms_max=5, reorder_delay_ms_max=150, persist_ms=1)
ROUNDS_MAX = 20                               # anti-entropy periods after the last write (25 seeds: at most 8)
PEOPLE = identities(NODES)
VERIFY = CountingVerify()                     # memoized: each signature costs ~100 µs once, not once per node


def seed_of_this_run() -> int:
    seed = int(os.environ["GOSSIP_SEED"]) if "GOSSIP_SEED" in os.environ else random.randrange(2**32)
    print(f"in-memory gossip seed: {seed} (rerun with GOSSIP_SEED={seed})")
    return seed


def run(seed: int, *, nodes: int = NODES, faults: Faults = FAULTS) -> tuple[InmemNetwork, bool, int]:
    """Build the network, schedule the writes, run to convergence. Returns (network, converged, rounds)."""
    people = PEOPLE[:nodes]
    network = InmemNetwork(seed=seed, settings=SETTINGS, faults=faults, now_ms=NOW_MS)
    for person in people:
        network.add_node(node_id=person.node_id, log=new_log(people, verify=VERIFY),
                         peer_ids=[other.node_id for other in people if other is not person])
    workload = random.Random(seed ^ 0x5EED)
    last_write_ms = 0
    for person in people:
        node = network.nodes[person.node_id]
        for number in range(ENTRIES_PER_NODE):
            write_ms = workload.randrange(WRITES_SPREAD_MS)
            last_write_ms = max(last_write_ms, write_ms)
            network.at(write_ms, network.publish, node, kind="NOTE", body={"text": f"{person.node_id} #{number}"}, sign=person.sign)
    network.start()
    expected = nodes * ENTRIES_PER_NODE

    def converged() -> bool:
        states = {log_state(node.core.log) for node in network.nodes.values()}
        return len(states) == 1 and len(next(iter(states))[1]) == expected and not next(iter(states))[3]

    done = network.run(until=converged, check_every_ms=SETTINGS.interval_ms,
                       virtual_ms_max=WRITES_SPREAD_MS + (ROUNDS_MAX + 1) * SETTINGS.interval_ms)
    rounds = -(-(network.now_ms - NOW_MS - last_write_ms) // SETTINGS.interval_ms)  # periods, rounded up
    return network, done, rounds


def test_fifty_nodes_converge_over_a_lossy_duplicating_reordering_network() -> None:
    seed = seed_of_this_run()
    network, converged, rounds = run(seed)
    print(f"converged={converged} after {network.now_ms - NOW_MS} virtual ms, {rounds} rounds after the last write; "
          f"messages {dict(network.delivered)}")
    assert converged, f"seed {seed}: logs still differ {ROUNDS_MAX} anti-entropy rounds after the last write"
    assert rounds <= ROUNDS_MAX
    assert network.delivered["dropped"] > 0 and network.delivered["duplicated"] > 0 and network.delivered["reordered"] > 0
    for node in network.nodes.values():
        on_disk = set(node.disk)
        assert all(entry.raw in on_disk for entry in node.visible), f"{node.node_id}: visible before it was on disk"
        assert len(node.visible) == NODES * ENTRIES_PER_NODE  # each entry reported visible exactly once
        assert node.core.log.equivocations() == []
        assert all(isinstance(answer, type(None)) for answer in node.answers.values()), "a local write was refused"


def test_a_run_replays_exactly_from_its_seed() -> None:
    seed = seed_of_this_run()
    first, _, _ = run(seed, nodes=12)
    second, _, _ = run(seed, nodes=12)
    assert first.now_ms == second.now_ms and first.delivered == second.delivered
    assert [log_state(node.core.log) for node in first.nodes.values()] == [log_state(node.core.log) for node in second.nodes.values()]
    assert [node.metrics for node in first.nodes.values()] == [node.metrics for node in second.nodes.values()]


def rounds_started(network: InmemNetwork) -> int:
    return sum(amount for node in network.nodes.values() for (name, labels), amount in node.metrics.items()
               if name == "gossip_rounds_total" and dict(labels).get("result") != "skipped_in_flight")


def test_a_quiet_network_backs_off_and_a_new_entry_still_reaches_everyone_in_time() -> None:
    """Issue 11: once nothing changes, each node runs an anti-entropy round about every
    quiet_interval_max_ms instead of every interval_ms; one new entry, on the same lossy network, still
    reaches every node within ROUNDS_MAX base periods (eager push, then repair at the fast rate)."""
    seed, nodes = seed_of_this_run(), 20
    network, converged, _ = run(seed, nodes=nodes)
    assert converged
    network.run(until=lambda: False, check_every_ms=1_000, virtual_ms_max=20_000)      # quiet: the period grows
    before, window_ms = rounds_started(network), 10_000
    network.run(until=lambda: False, check_every_ms=1_000, virtual_ms_max=window_ms)
    per_node_per_s = (rounds_started(network) - before) / nodes / (window_ms / 1000)
    quiet_max_ms = SETTINGS.quiet_period_max_ms
    assert per_node_per_s <= 1.25 * 1000 / (0.75 * quiet_max_ms), f"{per_node_per_s:.2f} rounds/s per node while quiet"
    assert all(node.core.pace.period_ms == quiet_max_ms for node in network.nodes.values())
    author, person = network.nodes[PEOPLE[7].node_id], PEOPLE[7]
    network.publish(author, kind="NOTE", body={"text": "after a long quiet"}, sign=person.sign)
    expected = nodes * ENTRIES_PER_NODE + 1
    started_ms = network.now_ms
    reached = network.run(until=lambda: all(node.core.log.visible_count() == expected for node in network.nodes.values()),
                          check_every_ms=50, virtual_ms_max=ROUNDS_MAX * SETTINGS.interval_ms)
    assert reached, f"seed {seed}: the new entry did not reach every node within {ROUNDS_MAX} base periods"
    print(f"quiet: {per_node_per_s:.2f} rounds/s per node; the new entry reached all in {network.now_ms - started_ms} virtual ms")


@pytest.mark.parametrize("hold_ms", [0, 2_000])
def test_a_held_execution_report_reaches_no_one_before_report_hold_ms_and_everyone_soon_after(hold_ms) -> None:
    """report_hold_ms (set by `cluster up` for many nodes on one machine): nobody sends an
    EXECUTION_REPORT until that long after its author wrote it; other kinds spread as before."""
    people = PEOPLE[:10]
    network = InmemNetwork(seed=7, settings=dataclasses.replace(SETTINGS, report_hold_ms=hold_ms), faults=Faults(), now_ms=NOW_MS)
    for person in people:
        network.add_node(node_id=person.node_id, log=new_log(people, verify=VERIFY),
                         peer_ids=[other.node_id for other in people if other is not person])
    author, noter = (network.nodes[person.node_id] for person in people[:2])
    network.at(100, network.publish, author, kind="EXECUTION_REPORT", body=report_body(), sign=people[0].sign)
    network.at(100, network.publish, noter, kind="NOTE", body={"text": "not held"}, sign=people[1].sign)
    network.start()

    def holding(kind: str) -> int:
        return sum(any(entry.kind == kind for entry in node.core.log.visible()) for node in network.nodes.values())

    network.run(until=lambda: False, check_every_ms=50, virtual_ms_max=100 + 1_900)   # just before the hold ends
    assert holding("NOTE") == 10, "entries of other kinds are not held"
    assert holding("EXECUTION_REPORT") == (1 if hold_ms else 10), "held: only its author has it yet"
    reached = network.run(until=lambda: holding("EXECUTION_REPORT") == 10, check_every_ms=50,
                          virtual_ms_max=5 * SETTINGS.interval_ms)
    assert reached, "once the hold passed, the author's push and anti-entropy carry it to everyone"
