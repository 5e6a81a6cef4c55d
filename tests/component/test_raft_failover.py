"""Failover (issue 11): a follower whose authenticated session with its leader ends stands for election
within the short leader-lost window (node/core/raft_timing.py), and nothing else brings an election
forward: not a follower that goes, not a stranger's connections. Three real validators in one process;
every wait is on the members' reported state, never a sleep. (With SIGKILL, in real processes:
tests/integration/test_raft_kill.py.)"""

import asyncio
import socket

import pytest

from tests.component.test_raft import Cluster, running_cluster

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO name='[^']*raft.journal.meta':pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
async def cluster(tmp_path):
    async with running_cluster(tmp_path, with_stranger=True) as cluster:
        yield cluster


async def started(cluster: Cluster) -> int:
    """All three up, one commit through; returns the leader's index."""
    await cluster.start_all()
    await cluster.ratify(0, "warm_up")
    return cluster.addresses.index(cluster.members[0].leader())


def sessions_lost(cluster: Cluster, index: int) -> int:
    return cluster.members[index].status()["leader_sessions_lost"]


async def test_followers_stand_soon_when_the_leaders_session_ends_and_elect_a_new_leader(cluster):
    leader = await started(cluster)
    old_leader = cluster.addresses[leader]
    survivors = [i for i in range(3) if i != leader]
    await cluster.stop(leader)                    # its sockets close, as a killed process's do
    await cluster.wait_for(lambda: all(sessions_lost(cluster, i) == 1 for i in survivors),
                           "both survivors saw their leader's authenticated session end")
    await cluster.wait_for(lambda: cluster.members[survivors[0]].leader() not in (None, old_leader) and
                           cluster.members[survivors[0]].leader() == cluster.members[survivors[1]].leader(),
                           "the survivors agree on a new leader")
    await cluster.ratify(survivors[0], "after_failover")
    outcome = await cluster.ratify(survivors[1], "after_failover")
    assert outcome.status == "sequence_assigned"


async def test_a_follower_that_goes_brings_no_election_forward(cluster):
    leader = await started(cluster)
    follower, other = [i for i in range(3) if i != leader]
    term = cluster.members[leader].status()["term"]
    await cluster.stop(follower)
    await cluster.wait_for(lambda: all(cluster.members[i].status()["partners_connected"] == 1 for i in (leader, other)),
                           "the leader and the other follower saw the follower's session end")
    await cluster.ratify(other, "after_follower_left")          # a commit after the loss: the leader still leads
    assert sessions_lost(cluster, other) == 0 and sessions_lost(cluster, leader) == 0
    assert cluster.members[leader].status()["term"] == term and cluster.members[other].leader() == cluster.addresses[leader]


def _stranger_connections(cluster: Cluster, index: int) -> None:
    """Connect to validator `index` from a stranger's address: once sending junk, once closing at once."""
    host, port = cluster.addresses[index].split(":")
    for payload in (b"\x00\x00\x00\x08not a hello", b""):
        with socket.socket() as sock:
            sock.bind((cluster.stranger_host, 0))
            sock.settimeout(2.0)
            sock.connect((host, int(port)))
            if payload:
                sock.sendall(payload)


async def test_a_strangers_connections_bring_no_election_forward(cluster):
    leader = await started(cluster)
    follower = next(i for i in range(3) if i != leader)
    term = cluster.members[follower].status()["term"]

    def refused() -> int:
        return sum(cluster.members[follower].status()["transport"]["refusals"].values())

    await asyncio.to_thread(_stranger_connections, cluster, follower)
    await cluster.wait_for(lambda: refused() >= 1, "the follower refused the stranger's junk")
    await cluster.ratify(follower, "after_stranger")
    assert sessions_lost(cluster, follower) == 0
    assert cluster.members[follower].status()["term"] == term
    assert cluster.members[follower].leader() == cluster.addresses[leader]


def sessions_established(cluster: Cluster, index: int) -> int:
    return cluster.members[index].status()["transport"]["sessions_established"]


def age_the_link(cluster: Cluster, index: int, partner: int, idle_s: float) -> None:
    """Make validator `index`'s session with `partner` look idle for `idle_s` (white box: as if the
    cluster had run that long; a link between followers carries nothing while the leader lives)."""
    transport = cluster.members[index]._transport
    node = transport._nodeAddrToNode[cluster.addresses[partner]]
    transport._connections[node]._last_read_at -= idle_s


async def test_an_idle_link_between_followers_carries_the_vote_when_the_leader_dies(cluster):
    leader = await started(cluster)
    old_leader = cluster.addresses[leader]
    first, second = [i for i in range(3) if i != leader]
    idle_s = 10 * cluster.members[first].config.timing.connection_timeout_s
    age_the_link(cluster, first, second, idle_s)
    age_the_link(cluster, second, first, idle_s)
    before = {i: sessions_established(cluster, i) for i in (first, second)}
    await cluster.stop(leader)
    await cluster.wait_for(lambda: cluster.members[first].leader() not in (None, old_leader) and
                           cluster.members[first].leader() == cluster.members[second].leader(),
                           "the survivors agree on a new leader")
    await cluster.ratify(first, "after_failover")
    # The vote went through the old session: it was not cut for its silence and dialed again.
    assert {i: sessions_established(cluster, i) for i in (first, second)} == before
