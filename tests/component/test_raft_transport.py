"""The validators' Raft transport under attack (issue 8, items 2-4): three real PySyncObj validators in
one process, and attackers on loopback sockets. Each test ends with the cluster still committing.

What a holder of the shared raft_secret, of one validator's key, or of nothing at all can do: send
pickles (never executed: the marker file never appears), impersonate another validator (refused and
named in the log), declare a 2 GiB frame (closed at the header: memory and elections unaffected), hold
idle connections (capped and timed out), and a listener whose accept fails with EMFILE rebinds and says
so in status(). The attacks are bounded in bytes, connections and seconds; every wait is a bounded poll
on a condition. Run against a checkout without node/raft_transport.py, every test here fails."""

import asyncio
import logging
import os
import pickle
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

from tests.component.test_raft import HASH, NETWORK, PASSWORD, RAFT_PORT, Cluster, running_cluster

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO name='[^']*raft.journal.meta':pytest.PytestUnraisableExceptionWarning")

ATTACK_WAIT_S = 5.0


class _Evil:
    """A pickle whose loading runs a shell command (it creates the marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_pickle(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(_Evil(marker), protocol)


@pytest.fixture
async def cluster(tmp_path):
    async with running_cluster(tmp_path, with_stranger=True) as cluster:
        yield cluster


async def still_ratifies(cluster: Cluster, proposal_id: str) -> None:
    first, second = sorted(cluster.members)[:2]
    await cluster.ratify(first, proposal_id)
    outcome = await cluster.ratify(second, proposal_id)
    assert outcome.status == "sequence_assigned", outcome


def host_port(address: str) -> tuple[str, int]:
    host, port = address.split(":")
    return host, int(port)


def connect(cluster: Cluster, index: int, timeout_s: float = 2.0) -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((cluster.stranger_host, 0))
        sock.settimeout(timeout_s)
        sock.connect(host_port(cluster.addresses[index]))
    except OSError:
        sock.close()
        raise
    return sock


def closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """True once the peer closed (EOF or reset) within timeout_s; data it sends is read and dropped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (socket.timeout, TimeoutError):
            return False
    return False


def refusals(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- 2: nothing from Raft deserializes into code ---------------------------------------------------


async def test_a_holder_of_the_shared_secret_cannot_run_code_with_a_pysyncobj_pickle(cluster, tmp_path, caplog):
    """PySyncObj's own framing: Fernet with the network password around a zlib'd pickle."""
    from pysyncobj.encryptor import getEncryptor
    from pysyncobj.monotonic import monotonic

    caplog.set_level(logging.WARNING)
    await cluster.start_all()
    marker = tmp_path / "pwned-by-secret"
    sealed = getEncryptor(PASSWORD).encrypt_at_time(zlib.compress(evil_pickle(marker), 3), int(monotonic()))
    sock = connect(cluster, 0)
    try:
        sock.sendall(struct.pack("i", len(sealed)) + sealed)
        closed = closed_by_peer(sock, ATTACK_WAIT_S)
    finally:
        sock.close()
    assert not marker.exists(), "the pickle ran a shell command on the validator"
    assert closed, "the validator kept the connection of a pickle sender open"
    assert refusals(caplog, "raft connection refused"), "the refusal was not logged"
    await still_ratifies(cluster, "after_secret_pickle")
    assert not marker.exists()


def _attacker_handshake(cluster: Cluster, target: int, *, key_of: int, claim: int, claim_address: str | None = None):
    """Run our handshake as an initiator holding validator `key_of`'s key and claiming to be `claim`.
    Returns (socket, session) if the target answered, else (socket, None)."""
    import msgpack
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from node.raft_handshake import FRAME_HEADER, Hello, Session, handshake_statement, session_keys
    from node.raft_plain_data import pack_message

    def send_frame(sock, body):
        sock.sendall(FRAME_HEADER.pack(len(body)) + body)

    def read_frame(sock):
        header = sock.recv(4, socket.MSG_WAITALL)
        if len(header) < 4:
            return None
        (length,) = FRAME_HEADER.unpack(header)
        return sock.recv(length, socket.MSG_WAITALL)

    sock = connect(cluster, target, timeout_s=ATTACK_WAIT_S)
    private = X25519PrivateKey.generate()
    hello = Hello(network_id=NETWORK, node_id=cluster.identities[claim].node_id,
                   address=claim_address or cluster.addresses[claim], nonce=os.urandom(32),
                   ephemeral_key=private.public_key().public_bytes_raw())
    send_frame(sock, hello.to_frame())
    body = read_frame(sock)
    if not body:
        return sock, None
    responder = Hello.from_body(msgpack.unpackb(body, raw=False), signed=True)
    signature = cluster.identities[key_of].sign(handshake_statement("initiator", hello, responder))
    send_frame(sock, pack_message({"t": "auth", "signature": signature}))
    to_responder, to_initiator = session_keys(private, responder.ephemeral_key, PASSWORD, hello, responder)
    return sock, Session(to_responder, to_initiator)


async def test_a_validator_key_cannot_impersonate_another_validator(cluster, caplog):
    caplog.set_level(logging.WARNING)
    await cluster.start_all()
    impostor = cluster.identities[2].node_id
    # Validator 1's key, claiming to be validator 2 (whose address dials validator 0).
    sock, _ = await asyncio.to_thread(_attacker_handshake, cluster, 0, key_of=1, claim=2)
    try:
        assert closed_by_peer(sock, ATTACK_WAIT_S), "an impersonator's connection stayed open"
    finally:
        sock.close()
    named = refusals(caplog, f"claims to be validator {impostor}")
    assert any("does not verify with that validator's key" in line for line in named), named
    # Validator 2's own key, but from an address that is not its raft address in genesis.
    sock, session = await asyncio.to_thread(_attacker_handshake, cluster, 0, key_of=2, claim=2,
                                            claim_address=f"{cluster.stranger_host}:{RAFT_PORT}")
    try:
        assert session is None and closed_by_peer(sock, ATTACK_WAIT_S)
    finally:
        sock.close()
    assert any("genesis gives that validator the raft address" in line for line in refusals(caplog, impostor))
    await still_ratifies(cluster, "after_impersonation")


async def test_a_validator_key_holder_cannot_make_a_peer_unpickle_a_frame(cluster, tmp_path, caplog):
    """What a holder of validator 2's key (and the shared secret) CAN do: authenticate as validator 2.
    What it cannot: make another validator unpickle what it sends."""
    caplog.set_level(logging.WARNING)
    await cluster.start_all()
    marker = tmp_path / "pwned-by-validator"
    # A pickle inside an authenticated frame: not msgpack, refused, the connection closed.
    sock, session = await asyncio.to_thread(_attacker_handshake, cluster, 0, key_of=2, claim=2)
    try:
        assert session is not None, "validator 2's own key should pass the handshake"
        sock.sendall(session.seal(evil_pickle(marker, protocol=4)))
        assert closed_by_peer(sock, ATTACK_WAIT_S)
    finally:
        sock.close()
    assert refusals(caplog, "[not_plain_data]")
    assert not marker.exists()
    await still_ratifies(cluster, "after_key_holder_frame")


async def test_a_pickled_log_entry_is_refused_by_every_validator_and_on_journal_replay(cluster, tmp_path, caplog):
    """A compromised LEADER (what a key holder that wins an election is) appends a log entry whose
    command is a global-referencing pickle; a follower forwards commands to the leader, the same path.
    Every validator refuses to apply it (a logged no-op, the same on all), and again on journal replay."""
    caplog.set_level(logging.WARNING)
    await cluster.start_all()
    marker = tmp_path / "pwned-by-log-entry"
    leader = cluster.members[cluster.addresses.index(cluster.members[0].leader())]
    leader._sync._applyCommand(b"\x00" + evil_pickle(marker), None)
    await cluster.wait_for(lambda: marker.exists() or len(refusals(caplog, "raft log entry refused and skipped")) >= 3,
                           "every validator refusing the pickled log entry", timeout_s=10.0)
    assert not marker.exists(), "a pickle from Raft ran a shell command"
    await still_ratifies(cluster, "after_key_holder")
    # The entry is in the journal: a restart re-applies the journal and refuses it again.
    before = len(refusals(caplog, "raft log entry refused and skipped"))
    await cluster.stop(2)
    await cluster.start(2)
    await cluster.wait_for(lambda: len(refusals(caplog, "raft log entry refused and skipped")) > before,
                           "the restarted validator refusing the journal's pickled entry", timeout_s=10.0)
    assert not marker.exists()
    await cluster.wait_for(lambda: all(m.snapshot() == cluster.members[0].snapshot() for m in cluster.members.values()),
                           "identical state on every validator")
    assert cluster.members[2].snapshot().by_proposal("after_key_holder") is not None


def test_pickles_and_dumps_that_name_a_global_are_refused(tmp_path):
    import gzip

    from node.errors import SynapseError
    from node.raft_plain_data import PlainDump, RaftDataRefused, plain_dumps, plain_loads

    marker = tmp_path / "pwned-by-file"
    for protocol in (2, 4):
        with pytest.raises(RaftDataRefused, match="refers to the global"):
            plain_loads(evil_pickle(marker, protocol))
    assert not marker.exists()
    command = ("ratify", ("p", "upgrade", HASH, "1.2.0", "v", b"\x01" * 64))
    assert plain_loads(plain_dumps(command)) == command          # what PySyncObj writes: no globals needed
    assert plain_loads(pickle.dumps({"votedFor": "a", "term": 3}, 2)) == {"votedFor": "a", "term": 3}
    loaded = []
    dump = PlainDump(state_to_plain=lambda: {"format": 1, "records": [[b"x", None]]}, state_from_plain=loaded.append,
                     dump_max_bytes=1 << 20)
    entries = ((b"\x00cmd", 7, 2), (b"\x01", 6, 2), ("127.0.0.1:9000",))
    dump.serialize(str(tmp_path / "good.dump"), entries)
    assert dump.deserialize(str(tmp_path / "good.dump")) == entries and loaded == [{"format": 1, "records": [[b"x", None]]}]
    # PySyncObj's own dump format (a gzip'd pickle), holding a global: refused, with what to do.
    with gzip.open(tmp_path / "pickled.dump", "wb") as file:
        file.write(evil_pickle(marker))
    with pytest.raises(RaftDataRefused) as refused:
        dump.deserialize(str(tmp_path / "pickled.dump"))
    assert "not in Synapse's plain format" in str(refused.value) and isinstance(refused.value, SynapseError)
    assert "catches up from the leader" in refused.value.hint
    assert not marker.exists() and len(loaded) == 1


# --- 3: a stranger cannot stall Raft -------------------------------------------------------------------


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _stream_giant_frame(cluster: Cluster, index: int, stop: threading.Event, sent_bytes_max: int) -> int:
    """Declare a 2 GiB frame, then stream zeros until the node closes or sent_bytes_max; bytes sent."""
    sock = connect(cluster, index)
    sent = 0
    chunk = b"\0" * (1 << 20)
    try:
        sock.sendall(struct.pack("<i", 2**31 - 1))
        while sent < sent_bytes_max and not stop.is_set():
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    finally:
        sock.close()
    return sent


async def test_a_stranger_declaring_a_2_gib_frame_is_cut_off_before_buffering(cluster):
    await cluster.start_all()
    await still_ratifies(cluster, "before_flood")
    leader = cluster.addresses.index(cluster.members[0].leader())
    follower = next(i for i in range(3) if i != leader)
    term_before = cluster.members[leader].status()["term"]
    rss_before = _rss_bytes()
    stop = threading.Event()
    sent_bytes_max = 48 << 20
    streams = [asyncio.create_task(asyncio.to_thread(_stream_giant_frame, cluster, i, stop, sent_bytes_max))
               for i in (leader, follower)]
    try:
        committed = 0
        for n in range(10):                                      # the cluster keeps committing meanwhile
            await still_ratifies(cluster, f"during_flood_{n}")
            committed += 1
        sent = await asyncio.wait_for(asyncio.gather(*streams), 30.0)
    finally:
        stop.set()
        await asyncio.gather(*streams, return_exceptions=True)
    assert committed == 10
    assert all(s < sent_bytes_max for s in sent), f"a node accepted {sent} bytes of one declared 2 GiB frame"
    assert _rss_bytes() - rss_before < 24 << 20, "memory grew with what the stranger streamed"
    assert cluster.members[leader].status()["term"] - term_before <= 1, "elections under a stranger's stream"
    assert cluster.members[leader].status()["transport"]["refusals"].get("frame_too_large", 0) >= 1


# --- 4 and 3: idle connections, and a listener whose accept fails ---------------------------------------


async def test_idle_unauthenticated_connections_are_capped_and_timed_out(cluster):
    await cluster.start_all()
    limits = getattr(cluster.members[0].config, "transport_limits", None)
    cap = limits.unauthenticated_connections_max if limits else 16
    timeout_s = limits.handshake_timeout_ms / 1000 if limits else 2.0
    connections_count = cap + 24
    sockets = []
    peak = 0

    def unauthenticated() -> int:
        return (cluster.members[0].status().get("transport") or {}).get("unauthenticated_connections", 0)

    try:
        for _ in range(connections_count):
            sockets.append(await asyncio.to_thread(connect, cluster, 0))
        closing = asyncio.create_task(asyncio.to_thread(
            lambda: [closed_by_peer(s, timeout_s + 3.0) for s in sockets]))
        while not closing.done():                                # bounded: each socket waits at most timeout_s + 3 s
            peak = max(peak, unauthenticated())
            await asyncio.sleep(0.02)
        closed = await closing
    finally:
        for sock in sockets:
            sock.close()
    assert all(closed), f"{closed.count(False)} of {connections_count} idle connections were never closed"
    assert 0 < peak <= cap, f"{peak} connections in handshake at once (cap {cap})"
    refused = cluster.members[0].status()["transport"]["refusals"]
    assert refused.get("unauthenticated_cap", 0) >= 24 - limits.accepts_per_event_max
    assert refused.get("handshake_timeout", 0) >= 1
    await still_ratifies(cluster, "after_idle_connections")


async def test_a_listener_whose_accept_fails_with_emfile_rebinds_and_says_so(cluster, monkeypatch, caplog):
    import errno

    caplog.set_level(logging.WARNING)
    await cluster.start_all()
    target = host_port(cluster.addresses[0])
    failed = threading.Event()
    real_accept = socket.socket.accept

    def accept_failing_once(self):
        if not failed.is_set() and self.getsockname() == target:
            failed.set()
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_accept(self)

    def knock() -> None:                                         # the connection whose accept fails
        try:
            connect(cluster, 0).close()
        except OSError:
            pass                                                 # reset when the listener closes: expected

    monkeypatch.setattr(socket.socket, "accept", accept_failing_once)
    await asyncio.to_thread(knock)
    await cluster.wait_for(failed.is_set, "the failing accept")
    await cluster.wait_for(lambda: (cluster.members[0].status().get("transport") or {}).get("listener_rebinds", 0) >= 1,
                           "the listener rebinding")
    transport = cluster.members[0].status()["transport"]
    assert transport["listening"] and transport["listener_failures"] == 1 and "EMFILE" in transport["listener_last_error"]
    assert refusals(caplog, "stopped: accept failed: EMFILE") and refusals(caplog, "is listening again")
    # Validator 1 dials validator 0: after a restart it can only reconnect through the rebound listener.
    await cluster.stop(1)
    await cluster.start(1)
    await cluster.wait_for(lambda: cluster.members[0].status()["partners_connected"] == 2,
                           "validator 1 reconnected to validator 0")
    await still_ratifies(cluster, "after_rebind")
