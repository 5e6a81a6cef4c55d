"""Scenario hooks that attack the validators' Raft port (node/raft_transport.py), as a stranger, as a
holder of the network's shared raft_secret, or as a holder of one validator's node key.

Why it works as it does:
- Every attack goes to a real node process over loopback, at the raft_address genesis gives it, and is
  bounded in bytes, connections and seconds. Secrets are read from the victims' data dirs, as a thief
  of that disk would (the cluster runs locally).
- A pickle attack carries a payload that would create a marker file beside the cluster's data dirs:
  the hook asserts the marker never appears and the node closes the connection.
- The handshake is played with the transport's own message types (node.raft_handshake), so the only
  thing wrong with an attack is what it is about: another validator's key, a wrong address, a pickle.
- What the node logs is read from its structured node.log (refusals name the claimed validator).
- What the rest of the network does meanwhile (ratify, execute, stay healthy) is asserted by the
  scenario's own steps, from the outside.

Use from a scenario:  do = "hook", hook = "hooks.raft_attacks:secret_pickle", args = { on = "node-1" }
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

ATTACK_WAIT_S = 5.0
FLOOD_BYTES_MAX = 256 << 20
CONNECTIONS_MAX = 512
UNAUTHENTICATED_CAP = 16             # RaftTransportLimits.unauthenticated_connections_max's default


class _Marker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one(driver: Any, selector: Any) -> int:
    indexes = driver.resolve(selector)
    if len(indexes) != 1:
        raise AssertionError(f"the selector {selector!r} names {len(indexes)} nodes; this hook needs exactly one")
    return indexes[0]


def _raft_address(driver: Any, index: int) -> tuple[str, int]:
    host, port = driver.handle(index).raft_address.rsplit(":", 1)
    return host, int(port)


def _marker(driver: Any, name: str) -> Path:
    marker = driver.handle(1).data_dir.parent / f"pwned-{name}"
    marker.unlink(missing_ok=True)
    return marker


def _connect(driver: Any, index: int, timeout_s: float = 2.0) -> socket.socket:
    sock = socket.socket()
    try:
        sock.settimeout(timeout_s)
        sock.connect(_raft_address(driver, index))
    except OSError:
        sock.close()
        raise
    return sock


def _closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
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


def _log_mentions(driver: Any, index: int, text: str, timeout_s: float = ATTACK_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in json.dumps(event) for event in driver.cluster.log_events(index - 1)):
            return True
        time.sleep(0.1)
    return False


def _key(driver: Any, index: int):
    """The node's own signing key, read from its data dir (what a thief of that disk would hold)."""
    from node.identity import Identity

    identity = Identity.load_or_create(driver.handle(index).data_dir / "node_key")
    assert identity.node_id == driver.handle(index).node_id, "the key file belongs to the node"
    return identity


def _handshake(driver: Any, target: int, *, key_of: int, claim: int, claim_address: str | None = None):
    """Our handshake as an initiator holding `key_of`'s node key and claiming to be validator `claim`.
    Returns (socket, session); session is None when the target refused before answering."""
    import msgpack
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from node.runtime import read_raft_password
    from node.raft_handshake import FRAME_HEADER, Hello, Session, handshake_statement, session_keys
    from node.raft_plain_data import pack_message

    sock = _connect(driver, target, timeout_s=ATTACK_WAIT_S)
    private = X25519PrivateKey.generate()
    hello = Hello(network_id=driver.cluster.network_id, node_id=driver.handle(claim).node_id,
                   address=claim_address or driver.handle(claim).raft_address, nonce=os.urandom(32),
                   ephemeral_key=private.public_key().public_bytes_raw())
    body = hello.to_frame()
    sock.sendall(FRAME_HEADER.pack(len(body)) + body)
    header = sock.recv(4, socket.MSG_WAITALL)
    if len(header) < 4:
        return sock, None
    answer = sock.recv(FRAME_HEADER.unpack(header)[0], socket.MSG_WAITALL)
    responder = Hello.from_body(msgpack.unpackb(answer, raw=False), signed=True)
    signature = _key(driver, key_of).sign(handshake_statement("initiator", hello, responder))
    auth = pack_message({"t": "auth", "signature": signature})
    sock.sendall(FRAME_HEADER.pack(len(auth)) + auth)
    password = read_raft_password(driver.handle(key_of).data_dir)
    to_responder, to_initiator = session_keys(private, responder.ephemeral_key, password, hello, responder)
    return sock, Session(to_responder, to_initiator)


# --- hooks ------------------------------------------------------------------------------------------


def secret_pickle(driver: Any, on: Any, secret_of: Any = "node-1") -> str:
    """PySyncObj's own framing (Fernet with the shared raft_secret around a pickle whose loading would
    run a shell command), sent to `on`'s Raft port: the connection is closed, nothing runs."""
    from pysyncobj.encryptor import getEncryptor
    from pysyncobj.monotonic import monotonic

    from node.runtime import read_raft_password

    target, holder = _one(driver, on), _one(driver, secret_of)
    marker = _marker(driver, f"secret-{target}")
    password = read_raft_password(driver.handle(holder).data_dir)
    sealed = getEncryptor(password).encrypt_at_time(zlib.compress(pickle.dumps(_Marker(marker), 2), 3),
                                                    int(monotonic()))
    sock = _connect(driver, target)
    try:
        sock.sendall(struct.pack("i", len(sealed)) + sealed)
        closed = _closed_by_peer(sock, ATTACK_WAIT_S)
    finally:
        sock.close()
    if marker.exists():
        raise AssertionError(f"{driver.label(target)} ran the pickle's shell command")
    if not closed:
        raise AssertionError(f"{driver.label(target)} kept the pickle sender's connection open")
    return f"{driver.label(target)} closed the connection; no marker"


def impersonate(driver: Any, key_of: Any, claim: Any, on: Any) -> str:
    """With `key_of`'s node key, claim to be validator `claim` at `on`: refused, and `on`'s log names
    the validator claimed. (`claim` must have a higher raft address than `on`: only those dial it.)"""
    holder, claimed, target = _one(driver, key_of), _one(driver, claim), _one(driver, on)
    sock, _ = _handshake(driver, target, key_of=holder, claim=claimed)
    try:
        closed = _closed_by_peer(sock, ATTACK_WAIT_S)
    finally:
        sock.close()
    if not closed:
        raise AssertionError(f"{driver.label(target)} kept an impersonator's connection open")
    claimed_id = driver.handle(claimed).node_id
    if not _log_mentions(driver, target, f"claims to be validator {claimed_id}"):
        raise AssertionError(f"{driver.label(target)}'s log does not name the claimed validator {claimed_id}")
    return f"{driver.label(target)} refused {driver.label(holder)}'s key claiming {driver.label(claimed)}, and logged it"


def key_holder_pickle(driver: Any, key_of: Any, on: Any) -> str:
    """Authenticate honestly with `key_of`'s key (what its holder CAN do), then send a pickle in an
    authenticated frame: refused as not plain data, the connection closed, nothing runs."""
    holder, target = _one(driver, key_of), _one(driver, on)
    marker = _marker(driver, f"validator-{target}")
    sock, session = _handshake(driver, target, key_of=holder, claim=holder)
    try:
        if session is None:
            raise AssertionError(f"{driver.label(target)} refused {driver.label(holder)}'s own key")
        sock.sendall(session.seal(pickle.dumps(_Marker(marker), 4)))
        closed = _closed_by_peer(sock, ATTACK_WAIT_S)
    finally:
        sock.close()
    if marker.exists():
        raise AssertionError(f"{driver.label(target)} ran the pickle's shell command")
    if not closed or not _log_mentions(driver, target, "not_plain_data"):
        raise AssertionError(f"{driver.label(target)} did not refuse the pickle frame (closed={closed})")
    return f"{driver.label(target)} authenticated {driver.label(holder)}, then refused its pickle frame"


def _stream(address: tuple[str, int], bytes_max: int, seconds: float) -> tuple[int, bool]:
    """Declare a 2 GiB frame and stream zeros; (bytes sent, whether the node cut the connection)."""
    sent, chunk, deadline = 0, b"\0" * (1 << 20), time.monotonic() + seconds
    try:
        with socket.create_connection(address, timeout=2.0) as sock:
            sock.sendall(struct.pack("<i", 2**31 - 1))           # a 2 GiB frame, declared
            while sent < bytes_max and time.monotonic() < deadline:
                sock.sendall(chunk)
                sent += len(chunk)
    except OSError:
        return sent, True
    return sent, False


def stranger_flood(driver: Any, on: Any = "validators", megabytes: int = 96, seconds: float = 20.0,
                   cut_off_within_megabytes: int = 32) -> str:
    """A stranger declares a 2 GiB frame at each node of `on` and streams zeros (bounded by `megabytes`
    and `seconds`): each node must cut the connection before `cut_off_within_megabytes` were sent (what
    the kernel's socket buffers absorb), i.e. without reading the frame's body."""
    targets = driver.resolve(on)
    bytes_max = min(megabytes << 20, FLOOD_BYTES_MAX)
    results: dict[int, tuple[int, bool]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _stream(_raft_address(driver, i), bytes_max,
                                                                                   seconds)), daemon=True)
               for i in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 5.0)
    seen = {driver.label(i): results.get(i, (bytes_max, False)) for i in targets}
    kept = {label: sent for label, (sent, cut) in seen.items() if not cut or sent >= cut_off_within_megabytes << 20}
    if kept:
        raise AssertionError(f"nodes kept reading a declared 2 GiB frame (bytes sent, cut off): {seen}")
    return f"cut off after (bytes sent, mostly kernel buffers) {({label: sent for label, (sent, _) in seen.items()})}"


def _raft_status(driver: Any, index: int) -> dict:
    response = driver.api(index).get("/upgrades/status")
    if response.status != 200 or not isinstance(response.data, dict) or not response.data.get("raft"):
        raise AssertionError(f"{driver.label(index)}: GET /upgrades/status has no raft status ({response.status})")
    return response.data["raft"]


def raft_terms(driver: Any, save_as: str, on: Any = "validators") -> str:
    terms = {index: _raft_status(driver, index)["term"] for index in driver.resolve(on)}
    driver.saved[save_as] = terms
    return f"terms {terms}"


def raft_terms_bounded(driver: Any, saved: str, increase_max: int = 2, on: Any = "validators") -> str:
    """No election storm: each validator's Raft term grew by at most `increase_max` since `saved`."""
    before = driver.saved[saved]
    now = {index: _raft_status(driver, index)["term"] for index in driver.resolve(on)}
    grown = {driver.label(i): now[i] - before[i] for i in now if i in before}
    if any(growth > increase_max for growth in grown.values()):
        raise AssertionError(f"Raft terms grew by {grown} (at most {increase_max} allowed): elections under attack")
    return f"term growth {grown}"


def idle_connections(driver: Any, on: Any, count: int = 64, hold_s: float = 4.0) -> str:
    """Open `count` connections to `on`'s Raft port and say nothing: the node keeps at most its cap in
    handshake (reported in /upgrades/status) and closes every one within its handshake timeout."""
    target = _one(driver, on)
    sockets, peak = [], 0
    try:
        for _ in range(min(count, CONNECTIONS_MAX)):
            try:
                sockets.append(_connect(driver, target))
            except OSError:
                break
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline:
            transport = _raft_status(driver, target).get("transport") or {}
            peak = max(peak, transport.get("unauthenticated_connections", 0))
            time.sleep(0.1)
        still_open = sum(1 for sock in sockets if not _closed_by_peer(sock, 0.05))
    finally:
        for sock in sockets:
            sock.close()
    if still_open:
        raise AssertionError(f"{still_open} of {len(sockets)} idle connections were still open after {hold_s} s")
    if not 0 < peak <= UNAUTHENTICATED_CAP:
        raise AssertionError(f"{peak} connections in handshake at once (the node's cap is {UNAUTHENTICATED_CAP})")
    return f"{len(sockets)} idle connections: at most {peak} in handshake at once, all closed"


def fd_exhaustion(driver: Any, on: Any, headroom: int = 6, connections: int = 48) -> str:
    """Lower `on`'s RLIMIT_NOFILE to its open descriptors + `headroom`, then open `connections` to its
    Raft port (more than the headroom): an accept fails with EMFILE. The limit is restored at the end."""
    target = _one(driver, on)
    pid = driver.handle(target).pid
    if pid is None:
        raise AssertionError(f"{driver.label(target)} is not running")
    original = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    open_now = len(os.listdir(f"/proc/{pid}/fd"))
    sockets = []
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_now + headroom, original[1]))
        for _ in range(min(connections, CONNECTIONS_MAX)):
            try:
                sockets.append(_connect(driver, target, timeout_s=0.5))
            except OSError:
                pass
            time.sleep(0.01)
        time.sleep(0.5)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
        for sock in sockets:
            sock.close()
    return f"{driver.label(target)}: soft limit {open_now + headroom} for {connections} connections, restored to {original[0]}"


def raft_listener(driver: Any, on: Any = "validators", failures_min: int = 0) -> str:
    """GET /health on each node: the Raft listener is up, and failed at least `failures_min` times."""
    seen = {}
    for index in driver.resolve(on):
        response = driver.api(index).get("/health")
        document = response.data if isinstance(response.data, dict) else {}
        seen[driver.label(index)] = (document.get("raft_listening"), document.get("raft_listener_failures"))
        if document.get("raft_listening") is not True or (document.get("raft_listener_failures") or 0) < failures_min:
            raise AssertionError(f"{driver.label(index)}: raft_listening={document.get('raft_listening')}, "
                                 f"raft_listener_failures={document.get('raft_listener_failures')} "
                                 f"(want listening, failures >= {failures_min})")
    return f"(listening, failures) {seen}"
