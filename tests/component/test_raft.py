"""Three real PySyncObj validators in one process, on a loopback block owned by this test (so
`pytest -n auto` never collides): a majority ratifies and gets sequences 1 then 2, a minority cannot,
the cluster survives losing its leader, and a restart from journal + dump keeps what was assigned.
Every SyncObj is destroyed at the end, even when a test fails."""

import contextlib
import dataclasses
import hashlib
import logging
import socket
import threading

import pytest

from cluster.addresses import acquire_block
from node.core.certificates import verify_certificate
from node.core.closing import EMPTY_VOTES_DIGEST
from node.core.ratification import (
    CERTIFIED,
    CLOSING,
    COLLECTING,
    CertificateCompleted,
    SequenceAssigned,
    VotingClosed,
    execute_upgrade_body,
)
from node.errors import ConfigError, Unavailable
from node.identity import Identity, verify_signature
from node.raft import DUMP_FILE_NAME, ValidatorRaft, ValidatorRaftConfig
from tests.polling import poll_until_async

# PySyncObj 0.3.17 reads its journal's .meta file with open(...).read() and never closes it
# (pysyncobj/journal.py, MetaStorer.getMeta): a ResourceWarning on every restart. Ignore exactly that one.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO name='[^']*raft.journal.meta':pytest.PytestUnraisableExceptionWarning")

RAFT_PORT = 9000
NETWORK = "net-raft-test"
PASSWORD = "correct horse battery staple 0123456789"
HASH = "ab" * 32
WAIT_S = 15.0


def identity(seed: str) -> Identity:
    return Identity.from_private_bytes(hashlib.sha256(seed.encode()).digest())


class Cluster:
    """Three validators; index i runs at 127.A.B.(i+1):RAFT_PORT with its own data dir."""

    def __init__(self, block, tmp_path):
        self.identities = [identity(f"raft-validator-{i}") for i in range(3)]
        self.addresses = [f"{block.host(i + 1)}:{RAFT_PORT}" for i in range(3)]
        self.validators = {v.node_id: v.public_key for v in self.identities}
        self.tmp_path = tmp_path
        self.members: dict[int, ValidatorRaft] = {}
        self.events: dict[int, list] = {i: [] for i in range(3)}

    def config(self, index: int, password: str = PASSWORD) -> ValidatorRaftConfig:
        return ValidatorRaftConfig(
            self_address=self.addresses[index],
            partner_addresses=tuple(a for i, a in enumerate(self.addresses) if i != index),
            data_dir=self.tmp_path / f"validator-{index}", password=password, network_id=NETWORK,
            validator_id=self.identities[index].node_id, validators=self.validators, **self._addresses_if_supported())

    def _addresses_if_supported(self) -> dict:
        # validator_addresses came with the per-validator transport; without it (an older checkout, to
        # show that the attack tests fail there) the same Cluster still starts.
        if "validator_addresses" not in {f.name for f in dataclasses.fields(ValidatorRaftConfig)}:
            return {}
        return {"validator_addresses": {v.node_id: a for v, a in zip(self.identities, self.addresses)}}

    async def start(self, index: int, password: str = PASSWORD) -> ValidatorRaft:
        member = ValidatorRaft(self.config(index, password), sign=self.identities[index].sign, verify=verify_signature,
                               on_change=self.events[index].extend)
        await member.start()
        self.members[index] = member
        return member

    async def start_all(self) -> None:
        """All three members, then a leader known to each."""
        for index in range(3):
            await self.start(index)
        await self.wait_for_leader()

    async def stop(self, index: int) -> None:
        await self.members.pop(index).stop()

    async def stop_all(self) -> None:
        for index in list(self.members):
            await self.stop(index)

    async def wait_for(self, predicate, what: str, timeout_s: float = WAIT_S) -> None:
        await poll_until_async(predicate, what=what, timeout_s=timeout_s, interval_s=0.05,
                               describe=lambda: f"raft status: { {i: m.status() for i, m in self.members.items()} }")

    async def wait_for_leader(self) -> None:
        await self.wait_for(lambda: all(m.has_leader() for m in self.members.values()), "a leader on every member")

    async def close_voting(self, index: int, proposal_id: str, timeout_s: float = WAIT_S) -> None:
        """Validator `index`, then the others, close voting (no votes) until the close is decided."""
        for closer in [index, *(other for other in sorted(self.members) if other != index)]:
            outcome = await self.members[closer].close(proposal_id=proposal_id, vote_ids=(), timeout_s=timeout_s)
            if outcome.status == "voting_closed":
                return

    async def ratify(self, index: int, proposal_id: str, version: str = "1.2.0", timeout_s: float = WAIT_S):
        record = self.members[index].snapshot().by_proposal(proposal_id)
        if record is None or record.phase == CLOSING:
            await self.close_voting(index, proposal_id, timeout_s)
        return await self.members[index].ratify(proposal_id=proposal_id, action="upgrade", package_hash=HASH,
                                                version=version, votes_digest=EMPTY_VOTES_DIGEST, timeout_s=timeout_s)

    async def certify(self, index: int, proposal_id: str, sequence: int, version: str = "1.2.0"):
        return await self.members[index].certify(proposal_id=proposal_id, sequence=sequence, action="upgrade",
                                                 package_hash=HASH, version=version, votes_digest=EMPTY_VOTES_DIGEST,
                                                 timeout_s=WAIT_S)


def _raft_threads() -> int:
    return sum(1 for thread in threading.enumerate() if "_autoTickThread" in repr(getattr(thread, "_target", None)))


@contextlib.asynccontextmanager
async def running_cluster(tmp_path, *, with_stranger: bool = False):
    """A Cluster on a leased block (a fourth host for a stranger when asked), every member stopped at
    the end and no tick thread left behind."""
    with acquire_block(hosts=4 if with_stranger else 3, ports=[RAFT_PORT]) as lease:
        cluster = Cluster(lease.block, tmp_path)
        if with_stranger:
            cluster.stranger_host = lease.block.host(4)
        try:
            yield cluster
        finally:
            await cluster.stop_all()
    assert _raft_threads() == 0, "a PySyncObj tick thread outlived its test"


@pytest.fixture
async def cluster(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        yield cluster


async def test_a_majority_ratifies_and_sequences_are_assigned_in_order(cluster):
    for index in range(3):
        await cluster.start(index)
    await cluster.wait_for_leader()
    first = await cluster.ratify(0, "upgrade_a")
    assert first.status == "ratification_recorded" and first.sequence is None
    assigned = await cluster.ratify(1, "upgrade_a")
    assert assigned.status == "sequence_assigned" and assigned.sequence == 1
    await cluster.ratify(1, "upgrade_b", "1.3.0")
    assert (await cluster.ratify(2, "upgrade_b", "1.3.0")).sequence == 2
    # Every validator applies the same commands and tells its node, on the event loop.
    await cluster.wait_for(lambda: all([e.sequence for e in cluster.events[i] if isinstance(e, SequenceAssigned)] == [1, 2]
                                       for i in range(3)), "SequenceAssigned 1 and 2 on every member")
    assert (await cluster.certify(2, "upgrade_a", 1)).status == "signature_recorded"
    assert (await cluster.certify(0, "upgrade_a", 1)).status == "certificate_complete"
    await cluster.wait_for(lambda: all(m.snapshot().by_sequence(1).phase == CERTIFIED for m in cluster.members.values()),
                           "the certificate replicated to every member")
    # The snapshot changes on the tick thread first; the event reaches the loop a moment later.
    await cluster.wait_for(lambda: all(any(isinstance(e, CertificateCompleted) for e in cluster.events[i]) for i in range(3)),
                           "CertificateCompleted delivered to every member's node")
    record = cluster.members[1].snapshot().by_sequence(1)
    body = execute_upgrade_body(record, package_url="https://example.org/p.wasm", package_size=10)
    verify_certificate(body, network_id=NETWORK, validators=cluster.validators, verify=verify_signature)
    views = [m.snapshot() for m in cluster.members.values()]
    assert views[0] == views[1] == views[2] and views[0].next_sequence == 3


async def test_a_minority_cannot_ratify(cluster, caplog):
    for index in range(3):
        await cluster.start(index)
    await cluster.wait_for_leader()
    outcome = await cluster.ratify(0, "upgrade_a")
    assert outcome.status == "ratification_recorded"
    assert (await cluster.ratify(0, "upgrade_a")).status == "already_ratified"
    await cluster.wait_for(lambda: all(m.snapshot().by_proposal("upgrade_a") is not None for m in cluster.members.values()),
                           "the ratification replicated")
    for member in cluster.members.values():
        view = member.snapshot()
        assert view.by_proposal("upgrade_a").phase == COLLECTING and view.next_sequence == 1
    # With two of three validators gone nothing can commit: the call fails, indefinitely, after its timeout.
    await cluster.stop(1)
    await cluster.stop(2)
    caplog.set_level(logging.INFO, logger="node.raft")
    with pytest.raises(Unavailable) as failed:
        await cluster.ratify(0, "upgrade_b", timeout_s=2.0)
    assert failed.value.definite is False and "did not commit" in str(failed.value)
    retries = [record.fields for record in caplog.records if record.getMessage() == "raft_call_retry"]
    assert retries and all(fields["method"] in ("close", "ratify") and fields["proposal_id"] == "upgrade_b" and fields["failure"]
                           and fields["attempt_ms"] >= 0 for fields in retries), "each retried attempt says why"
    assert cluster.members[0].snapshot().by_proposal("upgrade_b") is None


async def test_ratification_completes_with_two_of_three_after_the_leader_dies(cluster):
    for index in range(3):
        await cluster.start(index)
    await cluster.wait_for_leader()
    await cluster.ratify(0, "upgrade_a")
    assert (await cluster.ratify(1, "upgrade_a")).sequence == 1
    leader = cluster.members[0].leader()
    leader_index = cluster.addresses.index(leader)
    await cluster.stop(leader_index)                         # destroy(): the leader is gone
    survivors = sorted(cluster.members)
    await cluster.ratify(survivors[0], "upgrade_b", "1.3.0")
    outcome = await cluster.ratify(survivors[1], "upgrade_b", "1.3.0")
    assert outcome.status == "sequence_assigned" and outcome.sequence == 2
    await cluster.wait_for(lambda: cluster.members[survivors[0]].leader() not in (None, leader), "a new leader")


async def test_restart_from_journal_and_dump_keeps_assigned_sequences(cluster):
    for index in range(3):
        await cluster.start(index)
    await cluster.wait_for_leader()
    await cluster.ratify(0, "upgrade_a")
    assert (await cluster.ratify(1, "upgrade_a")).sequence == 1
    await cluster.wait_for(lambda: all(m.snapshot().next_sequence == 2 for m in cluster.members.values()),
                           "sequence 1 applied everywhere")
    for index in (0, 1):
        cluster.members[index].compact()                    # validators 0 and 1 restart from a dump, 2 from its journal
    await cluster.wait_for(lambda: all((cluster.tmp_path / f"validator-{i}" / DUMP_FILE_NAME).exists() for i in (0, 1)),
                           "full dumps written")
    await cluster.stop_all()
    for index in range(3):
        cluster.events[index].clear()
        await cluster.start(index)
    await cluster.wait_for(lambda: all(m.snapshot().next_sequence == 2 for m in cluster.members.values()),
                           "sequence 1 restored on every member")
    assert all(m.snapshot().by_sequence(1).proposal_id == "upgrade_a" for m in cluster.members.values())
    await cluster.wait_for_leader()
    await cluster.ratify(2, "upgrade_b", "1.3.0")
    assert (await cluster.ratify(0, "upgrade_b", "1.3.0")).sequence == 2
    assert (await cluster.ratify(1, "upgrade_a")).status == "already_ratified"


async def test_a_member_with_the_wrong_password_learns_nothing(cluster):
    await cluster.start(0)
    await cluster.start(1)
    stranger = await cluster.start(2, password="not the network password, sorry")
    await cluster.wait_for(lambda: cluster.members[0].has_leader() and cluster.members[1].has_leader(), "a leader")
    await cluster.ratify(0, "upgrade_a")
    assert (await cluster.ratify(1, "upgrade_a")).sequence == 1

    def unreadable_frames() -> int:
        return sum(((member.status().get("transport") or {}).get("refusals") or {}).get("frame_not_authentic", 0)
                   for member in cluster.members.values())

    # The stranger passes the handshake (its node key is genuine) but its session keys differ: each side
    # refuses the other's frames. Twice means it came back after a refusal and still learned nothing.
    await cluster.wait_for(lambda: unreadable_frames() >= 2, "the stranger's frames refused twice (frame_not_authentic)")
    assert stranger.snapshot().next_sequence == 1 and not stranger.has_leader()
    with pytest.raises(Unavailable):
        await cluster.ratify(2, "upgrade_b", timeout_s=1.5)


async def test_an_address_in_use_is_a_clear_error(cluster):
    host, port = cluster.addresses[0].split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((host, int(port)))
        squatter.listen(1)
        with pytest.raises(ConfigError, match="cannot bind the Raft address"):
            await cluster.start(0)
    assert 0 not in cluster.members


def test_config_refuses_wildcard_addresses_and_mismatched_sets(tmp_path):
    validators = {identity(f"v{i}").node_id: identity(f"v{i}").public_key for i in range(3)}
    addresses = dict(zip(validators, ("127.0.0.1:9000", "127.0.0.2:9000", "127.0.0.3:9000")))
    common = dict(data_dir=tmp_path, password=PASSWORD, network_id=NETWORK, validators=validators,
                  validator_id=next(iter(validators)), validator_addresses=addresses)
    with pytest.raises(ConfigError, match="own host"):
        ValidatorRaftConfig(self_address="0.0.0.0:9000", partner_addresses=("127.0.0.2:9000", "127.0.0.3:9000"), **common)
    with pytest.raises(ConfigError, match="validator set"):
        ValidatorRaftConfig(self_address="127.0.0.1:9000", partner_addresses=("127.0.0.2:9000",), **common)
    with pytest.raises(ConfigError, match="password"):
        ValidatorRaftConfig(self_address="127.0.0.1:9000", partner_addresses=("127.0.0.2:9000", "127.0.0.3:9000"),
                            **{**common, "password": "short"})
    # Each validator must prove the address genesis gives it: the map must match the addresses given.
    swapped = dict(zip(validators, ("127.0.0.2:9000", "127.0.0.1:9000", "127.0.0.3:9000")))
    with pytest.raises(ConfigError, match="validator_addresses"):
        ValidatorRaftConfig(self_address="127.0.0.1:9000", partner_addresses=("127.0.0.2:9000", "127.0.0.3:9000"),
                            **{**common, "validator_addresses": swapped})


def test_transport_limits_refuse_a_frame_cap_below_what_pysyncobj_sends():
    from node.raft_transport import RaftTransportLimits

    with pytest.raises(ConfigError, match="raft_frame_max_bytes"):
        RaftTransportLimits(raft_frame_max_bytes=100_000)
