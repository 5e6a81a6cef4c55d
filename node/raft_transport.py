"""The validators' Raft transport: plain data, authenticated per validator, bounded before buffering.

Why it exists (issue 8, items 2-4). PySyncObj's own TCP transport unpickles what peers send; the
network's shared password only keeps strangers out, so any validator (or anyone holding its Raft
secret) could run code on every other validator. It also trusts a frame's declared length (a stranger
declaring 2 GiB made the node buffer what it streamed, on the tick thread), never times out an idle
connection, and its listener unbinds for good after one failed accept (EMFILE). This module replaces
that transport through PySyncObj's own hook (`SyncObj(transportClass=...)`, a TCPTransport subclass)
and closes the holes where PySyncObj decodes data:

  * On the wire: msgpack only (no extension types), never pickle. A message must be a map with a
    string "type"; anything else closes the connection.
  * Each peer proves itself with its own ed25519 node key (genesis: node_id -> public key, node_id ->
    raft_address) in a handshake BEFORE any frame reaches PySyncObj. Both sides send a fresh nonce and
    an ephemeral X25519 key; each signs a statement binding a domain tag, the network id, both nonces,
    both ephemeral keys, both node ids and both raft addresses, and its role. A peer whose claimed
    address is not its genesis address, or whose signature does not verify with the key of the node
    it claims to be, is refused and logged by name. The session keys come from HKDF over the X25519
    secret, salted with the network's shared Raft password: the password stays as an outer layer (a
    stranger who got one node key from a backup still needs the network secret; configs and genesis
    keep writing raft_secret unchanged), but it no longer grants anything on its own. Every frame is
    ChaCha20-Poly1305 with a per-direction counter (no replay, no reordering, no splicing).
  * What PySyncObj itself pickles (replicated commands in the log, the journal's meta file, a large
    entry sent in pieces) is decoded by an unpickler that refuses EVERY global, and written with pickle
    protocol 4, which encodes bytes, tuples, lists, dicts, sets natively (protocol 2, PySyncObj's
    default, needs the global `_codecs.encode` for bytes). Without globals a pickle can only build
    plain data: no callable is reachable. A command that is refused is applied as a no-op, the same on
    every honest validator, and logged; it never runs.
  * The full dump is our own plain format (msgpack of the machine's to_plain data and PySyncObj's two
    last log entries), written through PySyncObj's serializer hook: its default dump pickles node
    objects and a set, which a no-globals unpickler could not read.
  * Limits, in bytes and seconds, checked before buffering: a frame's declared length is checked
    against raft_frame_max_bytes (handshake frames: handshake_frame_max_bytes) as soon as its 4-byte
    header is read; each poll event reads at most read_per_event_max_bytes; at most
    unauthenticated_connections_max connections may be in handshake (a new one evicts the oldest) and
    each has handshake_timeout_ms to finish.
  * Why the handshake runs on the tick thread: PySyncObj's poller is the tick thread's, and moving the
    handshake elsewhere would mean a second poller and handing sockets across threads. Instead, the
    work an unauthenticated peer can cause per poll event is O(1) and small: one recv of at most one
    handshake frame's worth, at most one X25519 exchange and one ed25519 sign or verify (~0.3 ms here),
    and at most accepts_per_event_max accepts. With unauthenticated_connections_max = 16 a poll costs at
    most ~5 ms of handshakes, a tenth of append_entries_period_s: a tick never waits on a stranger, and
    heartbeats keep their schedule (tests/component/test_raft_transport.py floods two validators while
    the cluster commits and watches the term).
  * The listener notices a failed accept, logs it, closes the pending unauthenticated connections (the
    likely cause of EMFILE), and rebinds from the tick (every listener_rebind_delay_ms until it works);
    status() reports it for GET /health.

The job is split by seam: node/raft_plain_data.py (the codecs: no-globals pickles, msgpack messages,
the dump), node/raft_handshake.py (the handshake's values and the session crypto), node/raft_listener.py
(the listening socket) and this module (the connection's state machine and PySyncObj's transport glue).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, set_keepalive
from pysyncobj.transport import TCPTransport

from node.errors import ConfigError
from node.raft_handshake import (FRAME_HEADER, NONCE_BYTES, ROLE_INITIATOR, ROLE_RESPONDER, HandshakeRefused, Hello,
                                 Session, handshake_statement, hello_fields, session_keys)
from node.raft_listener import GuardedListener
from node.raft_plain_data import RaftDataRefused, pack_message, refuse_extension, unpack_message
from node.limits import RAFT_REFUSAL_LOG_INTERVAL_MS

logger = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True, kw_only=True)
class RaftTransportLimits:
    """Every limit of the transport. The frame limit must hold PySyncObj's largest message: a batch of
    log entries (appendEntriesBatchSizeBytes, 64 KiB) or a chunk of the full dump
    (logCompactionBatchSize, 64 KiB) plus their framing; 1 MiB leaves room for both."""
    raft_frame_max_bytes: int = 1 << 20
    handshake_frame_max_bytes: int = 1024
    handshake_timeout_ms: int = 2_000
    unauthenticated_connections_max: int = 16
    accepts_per_event_max: int = 4
    read_per_event_max_bytes: int = 1 << 20
    listener_rebind_delay_ms: int = 200
    listener_rebind_delay_max_ms: int = 2_000
    pysyncobj_batch_max_bytes: int = 1 << 16     # appendEntriesBatchSizeBytes and logCompactionBatchSize

    def __post_init__(self) -> None:
        if self.raft_frame_max_bytes < 4 * self.pysyncobj_batch_max_bytes:
            raise ConfigError(f"raft_frame_max_bytes ({self.raft_frame_max_bytes}) must be at least 4x the "
                              f"PySyncObj batch size ({self.pysyncobj_batch_max_bytes}): a full-dump chunk or an "
                              "entry batch would be refused and followers could never catch up")
        if not 256 <= self.handshake_frame_max_bytes <= 65536:
            raise ConfigError("handshake_frame_max_bytes must be 256..65536")
        if self.handshake_timeout_ms <= 0 or self.unauthenticated_connections_max < 1 or self.accepts_per_event_max < 1:
            raise ConfigError("raft transport: handshake_timeout_ms > 0, unauthenticated_connections_max >= 1 "
                              "and accepts_per_event_max >= 1 are required")
        if self.read_per_event_max_bytes < self.raft_frame_max_bytes // 16 or self.listener_rebind_delay_ms <= 0:
            raise ConfigError("raft transport: read_per_event_max_bytes too small or listener_rebind_delay_ms <= 0")
        if self.listener_rebind_delay_max_ms < self.listener_rebind_delay_ms:
            raise ConfigError("raft transport: listener_rebind_delay_max_ms must be >= listener_rebind_delay_ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportIdentity:
    """Who this validator is, and whom it will talk to (all from genesis)."""
    network_id: str
    node_id: str
    address: str                                 # this validator's raft_address
    sign: Callable[[bytes], bytes]               # this node's ed25519 key
    verify: Callable[[bytes, bytes, bytes], bool]  # (public_key, message, signature) -> bool
    validator_keys: Mapping[str, bytes]          # node_id -> raw ed25519 public key
    validator_addresses: Mapping[str, str]       # node_id -> raft_address
    password: str                                # the network's shared Raft secret: an outer layer only
    source_host: str | None = None               # bind outgoing connections to this host (cluster faults)

    def node_at(self, address: str) -> str | None:
        for node_id, node_address in self.validator_addresses.items():
            if node_address == address:
                return node_id
        return None


# --- one connection ----------------------------------------------------------------------------------


class SecureConnection:
    """A TCP connection with the same interface as pysyncobj.tcp_connection.TcpConnection (what
    TCPTransport uses), that authenticates its peer before it delivers any message. `state` reads
    CONNECTING until the handshake is complete, so PySyncObj sends nothing before."""

    def __init__(self, transport: "SecureTransport", *, sock: socket.socket | None = None,
                 peer_label: str = "?", expected_node: str | None = None) -> None:
        self._transport = transport
        self._poller = transport.poller
        self._limits = transport.limits
        self._identity = transport.identity
        self._socket = sock
        self._fileno: int | None = None
        self._read = bytearray()
        self._write = bytearray()
        self._state = CONNECTION_STATE.DISCONNECTED
        self._authenticated = False
        self._session: Session | None = None
        self._private_key: X25519PrivateKey | None = None
        self._own_hello: Hello | None = None
        self._peer_hello: Hello | None = None
        self._initiator = sock is None
        self._expected_node = expected_node       # outgoing: the validator we dialed
        self.peer_label = peer_label
        self.peer_node: str | None = None
        self.peer_address: str | None = None
        self.started_at = monotonic_time()
        self._last_read_at = self.started_at
        self._on_message: Callable[[dict], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._on_disconnected: Callable[[], None] | None = None
        self.ended_authenticated = False          # read by the transport's disconnect handler
        self.encryptor = None                     # read by TCPTransport; ours is the session
        if sock is not None:
            self._fileno = sock.fileno()
            self._state = CONNECTION_STATE.CONNECTING
            self._poller.subscribe(self._fileno, self._on_event, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    # interface used by TCPTransport
    def setOnConnectedCallback(self, callback):  # noqa: N802 - PySyncObj's names
        self._on_connected = callback

    def setOnMessageReceivedCallback(self, callback):  # noqa: N802
        self._on_message = callback

    def setOnDisconnectedCallback(self, callback):  # noqa: N802
        self._on_disconnected = callback

    @property
    def state(self) -> int:
        if self._state == CONNECTION_STATE.CONNECTED and not self._authenticated:
            return CONNECTION_STATE.CONNECTING
        return self._state

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def incoming(self) -> bool:
        return not self._initiator

    def fileno(self) -> int | None:
        return self._fileno

    def getSendBufferSize(self) -> int:  # noqa: N802
        return len(self._write)

    def connect(self, host: str | None, port: int) -> bool:
        self._reset()
        self._initiator = True
        self.ended_authenticated = False
        self.started_at = self._last_read_at = monotonic_time()
        if host is None:
            # PySyncObj passes its resolver's answer: None while a peer's DNS name does not resolve (a pod
            # not yet published). socket.connect((None, port)) raised TypeError, which aborted the whole
            # Raft tick and leaked the socket, at every retry.
            logger.warning("raft: cannot open a connection to port %s: the peer's host name does not resolve (yet)", port)
            return False
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as error:
            logger.warning("raft: cannot open a connection to %s:%s: %s", host, port, error.strerror)
            return False
        try:
            if self._identity.source_host:
                sock.bind((self._identity.source_host, 0))
            self._transport.configure_socket(sock)
            sock.connect((host, port))
        except BlockingIOError:
            pass
        except OSError as error:
            if error.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                sock.close()
                return False
        self._socket, self._fileno = sock, sock.fileno()
        self._state = CONNECTION_STATE.CONNECTING
        self._poller.subscribe(self._fileno, self._on_event,
                               POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        self._transport.handshake_started(self)
        return True

    def send(self, message: object) -> None:
        if not self._authenticated or self._session is None:
            return
        plain = pack_message(message)
        if len(plain) + 16 > self._limits.raft_frame_max_bytes:
            # The peer would refuse the frame and drop the connection, again on every retry: say so once here.
            logger.error("raft: not sending a %r message of %d bytes to %s: over raft_frame_max_bytes (%d); raise "
                         "the limit on every validator if this is legitimate", message.get("type"), len(plain),
                         self.peer_node, self._limits.raft_frame_max_bytes)
            return
        self._write += self._session.seal(plain)
        self._flush()

    def disconnect(self) -> None:
        notify = self._on_disconnected is not None and self._state != CONNECTION_STATE.DISCONNECTED
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        self.ended_authenticated = self._authenticated
        self._reset()
        self._transport.handshake_ended(self)
        if notify:
            self._on_disconnected()

    def _reset(self) -> None:
        self._read, self._write = bytearray(), bytearray()
        self._state = CONNECTION_STATE.DISCONNECTED
        self._authenticated, self._session = False, None
        self._private_key = self._own_hello = self._peer_hello = None

    # events
    def _on_event(self, descriptor: int, event: int) -> None:
        if descriptor != self._fileno:
            self._poller.unsubscribe(descriptor)
            return
        if event & POLL_EVENT_TYPE.ERROR:
            self.disconnect()
            return
        # Only a connection in handshake is judged by its silence here. An authenticated link between two
        # followers carries nothing while the leader lives: judged idle at its first event, it was cut
        # exactly when a candidate's request_vote (or the answer) went through it, so the first election
        # after a leader died split and a second one cost another timeout (issue 11). An authenticated
        # peer's liveness is Raft's business (election timeout, leaderFallbackTimeout) and TCP keepalive's.
        if not self._authenticated and monotonic_time() - self._last_read_at > self._transport.connection_timeout_s:
            self.disconnect()
            return
        if self._state == CONNECTION_STATE.CONNECTING and self._initiator:
            if self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()
                return
            self._state = CONNECTION_STATE.CONNECTED
            self._last_read_at = monotonic_time()
            self._send_hello(signature_for=None)
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
        if event & POLL_EVENT_TYPE.WRITE:
            self._flush()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
        if event & POLL_EVENT_TYPE.READ:
            self._receive()
        if self._state != CONNECTION_STATE.DISCONNECTED:
            mask = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR | (POLL_EVENT_TYPE.WRITE if self._write else 0)
            self._poller.subscribe(self._fileno, self._on_event, mask)

    def _flush(self) -> None:
        while self._write and self._socket is not None:
            try:
                sent = self._socket.send(self._write)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.disconnect()
                return
            if sent <= 0:
                return
            del self._write[:sent]

    def _frame_limit(self) -> int:
        return self._limits.raft_frame_max_bytes if self._authenticated else self._limits.handshake_frame_max_bytes

    def _receive(self) -> None:
        """Read at most read_per_event_max_bytes (one handshake frame before authentication), check
        each frame's declared length BEFORE buffering its body, and deliver complete frames."""
        budget = self._limits.read_per_event_max_bytes if self._authenticated else self._limits.handshake_frame_max_bytes + 4
        while budget > 0 and self._socket is not None:
            try:
                chunk = self._socket.recv(min(budget, 65536))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.disconnect()
                return
            if not chunk:
                self.disconnect()
                return
            budget -= len(chunk)
            self._read += chunk
            self._last_read_at = monotonic_time()
            if not self._deliver_frames():
                return

    def _deliver_frames(self) -> bool:
        """Deliver every complete frame in the buffer; False once the connection is closed."""
        while len(self._read) >= 4:
            (length,) = FRAME_HEADER.unpack_from(self._read)
            if length > self._frame_limit():
                self._transport.refuse(self, "frame_too_large",
                                       f"declared a {length}-byte frame, over the {self._frame_limit()}-byte limit")
                return False
            if len(self._read) < 4 + length:
                return True
            header, body = bytes(self._read[:4]), bytes(self._read[4:4 + length])
            del self._read[:4 + length]
            if not self._handle_frame(header, body):
                return False
        return True

    def _handle_frame(self, header: bytes, body: bytes) -> bool:
        if self._authenticated:
            try:
                message = unpack_message(self._session.open(header, body), max_bytes=self._limits.raft_frame_max_bytes)
            except InvalidTag:
                self._transport.refuse(self, "frame_not_authentic", "sent a frame that does not authenticate "
                                       "(a different raft_secret, or tampering on the way)")
                return False
            except RaftDataRefused as refused:
                self._transport.refuse(self, "not_plain_data", str(refused))
                return False
            if self._on_message is not None:
                try:
                    self._on_message(message)
                except Exception as error:  # noqa: BLE001 - PySyncObj choked on a plain-data message: drop the peer
                    logger.debug("raft message handling failed", exc_info=True)
                    self._transport.refuse(self, "message_refused", f"sent a {message.get('type')!r} message that "
                                           f"could not be processed: {error}")
                    return False
            return self._state != CONNECTION_STATE.DISCONNECTED
        try:
            body_data = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=refuse_extension)
            self._handshake_step(body_data)
        except HandshakeRefused as refused:
            self._transport.refuse(self, refused.reason, str(refused))
            return False
        except RaftDataRefused as refused:
            self._transport.refuse(self, "handshake_malformed", str(refused))
            return False
        except Exception as error:  # noqa: BLE001 - malformed handshake bytes from a stranger
            logger.debug("malformed raft handshake", exc_info=True)
            self._transport.refuse(self, "handshake_malformed", f"sent a malformed handshake ({type(error).__name__})")
            return False
        return self._state != CONNECTION_STATE.DISCONNECTED

    # the handshake, one step per frame
    def _send_hello(self, *, signature_for: Hello | None) -> None:
        identity = self._identity
        self._private_key = X25519PrivateKey.generate()
        hello = Hello(network_id=identity.network_id, node_id=identity.node_id, address=identity.address,
                       nonce=os.urandom(NONCE_BYTES), ephemeral_key=self._private_key.public_key().public_bytes_raw())
        if signature_for is not None:             # the responder signs at once: it has both hellos
            statement = handshake_statement(ROLE_RESPONDER, signature_for, hello)
            hello = Hello(**{**hello_fields(hello), "signature": identity.sign(statement)})
        self._own_hello = hello
        self._write_frame(hello.to_frame())

    def _write_frame(self, body: bytes) -> None:
        self._write += FRAME_HEADER.pack(len(body)) + body
        self._flush()

    def _handshake_step(self, body: object) -> None:
        if not self._initiator and self._peer_hello is None:
            initiator = Hello.from_body(body, signed=False)
            self._check_claim(initiator)
            self._peer_hello = initiator
            self._send_hello(signature_for=initiator)
            return
        if self._initiator and self._peer_hello is None:
            responder = Hello.from_body(body, signed=True)
            self._check_claim(responder)
            if responder.node_id != self._expected_node:
                raise HandshakeRefused(f"answered as validator {responder.node_id} at {responder.address}, "
                                        f"but we dialed validator {self._expected_node}", "unexpected_peer")
            self._check_signature(responder, handshake_statement(ROLE_RESPONDER, self._own_hello, responder))
            self._peer_hello = responder
            statement = handshake_statement(ROLE_INITIATOR, self._own_hello, responder)
            self._write_frame(pack_message({"t": "auth", "signature": self._identity.sign(statement)}))
            self._authenticate(self._own_hello, responder)
            return
        if not self._initiator and not self._authenticated:
            if not isinstance(body, dict) or body.get("t") != "auth" or not isinstance(body.get("signature"), bytes):
                raise HandshakeRefused("the second frame is not the handshake's auth")
            signed = Hello(**{**hello_fields(self._peer_hello), "signature": body["signature"]})
            self._check_signature(signed, handshake_statement(ROLE_INITIATOR, self._peer_hello, self._own_hello))
            self._authenticate(self._peer_hello, self._own_hello)
            return
        raise HandshakeRefused("sent a handshake frame after the handshake")

    def _check_claim(self, hello: Hello) -> None:
        identity = self._identity
        claim = f"claims to be validator {hello.node_id} at {hello.address} on network {hello.network_id!r}"
        self.peer_node, self.peer_address = hello.node_id, hello.address
        if hello.network_id != identity.network_id:
            raise HandshakeRefused(f"{claim}: not this network ({identity.network_id!r})", "wrong_network")
        if hello.node_id not in identity.validator_keys or hello.node_id == identity.node_id:
            raise HandshakeRefused(f"{claim}: not another validator of this network", "not_a_validator")
        if identity.validator_addresses.get(hello.node_id) != hello.address:
            raise HandshakeRefused(f"{claim}: genesis gives that validator the raft address "
                                    f"{identity.validator_addresses.get(hello.node_id)}", "wrong_address")

    def _check_signature(self, hello: Hello, statement: bytes) -> None:
        key = self._identity.validator_keys[hello.node_id]
        if not self._identity.verify(key, statement, hello.signature):
            raise HandshakeRefused(f"claims to be validator {hello.node_id} at {hello.address}, but its handshake "
                                    "signature does not verify with that validator's key (impersonation, or a "
                                    "replaced node key)", "impersonation")

    def _authenticate(self, initiator: Hello, responder: Hello) -> None:
        peer = responder if self._initiator else initiator
        to_responder, to_initiator = session_keys(self._private_key, peer.ephemeral_key, self._identity.password,
                                                   initiator, responder)
        send_key, receive_key = (to_responder, to_initiator) if self._initiator else (to_initiator, to_responder)
        self._session = Session(send_key, receive_key)
        self._private_key = None
        self._state = CONNECTION_STATE.CONNECTED
        self._authenticated = True
        self._transport.session_established()
        self.peer_node, self.peer_address = peer.node_id, peer.address
        self._transport.handshake_ended(self)
        if self._initiator:
            if self._on_connected is not None:
                self._on_connected()
        else:
            self._transport.incoming_authenticated(self)




# --- the transport ----------------------------------------------------------------------------------


class SecureTransport(TCPTransport):
    """PySyncObj's TCPTransport with SecureConnection and GuardedListener. PySyncObj creates it:
    `SyncObj(..., transportClass=SecureTransport.factory(identity, limits, on_created))`."""

    def __init__(self, sync_obj, self_node, other_nodes, *, identity: TransportIdentity, limits: RaftTransportLimits,
                 on_created: Callable[["SecureTransport"], None]) -> None:
        # Set before TCPTransport.__init__, which already calls addNode and _createServer.
        self.identity, self.limits = identity, limits
        self._handshaking: dict[int, SecureConnection] = {}
        self._refusals: dict[str, int] = {}
        self._sessions_established = 0
        self._refusal_logged_at: dict[tuple, float] = {}
        self._counters_lock = threading.Lock()
        on_created(self)
        super().__init__(sync_obj, self_node, other_nodes)

    @classmethod
    def factory(cls, identity: TransportIdentity, limits: RaftTransportLimits,
                on_created: Callable[["SecureTransport"], None]) -> Callable:
        """What SyncObj(transportClass=...) calls with (syncObj, selfNode, otherNodes)."""
        return functools.partial(cls, identity=identity, limits=limits, on_created=on_created)

    @property
    def poller(self):
        return self._syncObj._poller

    @property
    def connection_timeout_s(self) -> float:
        return self._syncObj.conf.connectionTimeout

    # PySyncObj's hooks
    def _createServer(self):  # noqa: N802
        host, port = self._syncObj.conf.bindAddress.rsplit(":", 1)
        self._server = GuardedListener(self, host, int(port))

    def addNode(self, node):  # noqa: N802
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conn = SecureConnection(self, peer_label=node.address, expected_node=self.identity.node_at(node.address))
            conn.setOnConnectedCallback(lambda: self._onOutgoingConnected(conn))
            conn.setOnMessageReceivedCallback(lambda message: self._onMessageReceived(node, message))
            conn.setOnDisconnectedCallback(lambda: self._onDisconnected(conn))
            self._connections[node] = conn

    def _onOutgoingConnected(self, conn):  # noqa: N802 - called once the handshake authenticated the peer
        node = self._connToNode(conn)
        if node is not None:
            self._onNodeConnected(node)

    def _onDisconnected(self, conn):  # noqa: N802
        # Only the end of an authenticated session with a partner we map tells the Raft member that a
        # peer is gone (raft.py may then stand for election sooner if it was the leader): a stranger can
        # open and fail connections of its own, never end a validator's session without its keys.
        node = self._connToNode(conn)
        session_ended = node is not None and node in self._nodes and conn.ended_authenticated
        super()._onDisconnected(conn)          # may redial on the same connection object
        peer_lost = getattr(self._syncObj, "authenticated_peer_lost", None)
        if session_ended and peer_lost is not None:
            peer_lost(node)

    def _onTick(self):  # noqa: N802
        super()._onTick()
        self._server.maintain()
        self._expire_handshakes()

    # our connections
    def incoming_socket(self, sock: socket.socket, peer: tuple) -> None:
        incoming = [conn for conn in self._handshaking.values() if conn.incoming]
        if len(incoming) >= self.limits.unauthenticated_connections_max:
            oldest = min(incoming, key=lambda conn: conn.started_at)
            self.refuse(oldest, "unauthenticated_cap", "evicted: too many connections in handshake "
                        f"(limit {self.limits.unauthenticated_connections_max})")
        try:
            self.configure_socket(sock)
        except OSError:
            sock.close()
            return
        conn = SecureConnection(self, sock=sock, peer_label=f"{peer[0]}:{peer[1]}")
        conn.setOnDisconnectedCallback(lambda: self._onDisconnected(conn))
        self._unknownConnections.add(conn)
        self.handshake_started(conn)

    def incoming_authenticated(self, conn: SecureConnection) -> None:
        node = self._nodeAddrToNode.get(conn.peer_address)
        if node is None or self._shouldConnect(node):
            # A validator with a lower address than ours never dials us (we dial it): refusing keeps
            # PySyncObj's one-connection-per-node bookkeeping intact.
            self.refuse(conn, "unexpected_direction", "dialed us although we dial it (or it is not a partner)")
            return
        self._unknownConnections.discard(conn)
        previous = self._connections.get(node)
        self._connections[node] = conn
        conn.setOnMessageReceivedCallback(lambda message: self._onMessageReceived(node, message))
        if previous is not None and previous is not conn:
            previous.disconnect()                  # not mapped any more: no disconnect callback for the node
        self._onNodeConnected(node)

    def configure_socket(self, sock: socket.socket) -> None:
        """Non-blocking, no Nagle, and PySyncObj's TCP keepalive (a silent peer is noticed even on an
        idle link: follower-to-follower connections carry no traffic)."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keepalive = self._syncObj.conf.tcp_keepalive
        if keepalive is not None:
            set_keepalive(sock, *keepalive)
        sock.setblocking(False)

    def handshake_started(self, conn: SecureConnection) -> None:
        self._handshaking[id(conn)] = conn

    def handshake_ended(self, conn: SecureConnection) -> None:
        self._handshaking.pop(id(conn), None)

    def _expire_handshakes(self) -> None:
        deadline = monotonic_time() - self.limits.handshake_timeout_ms / 1000
        for conn in [c for c in self._handshaking.values() if c.started_at < deadline]:
            self.refuse(conn, "handshake_timeout", f"did not finish the handshake within {self.limits.handshake_timeout_ms} ms")

    def close_unauthenticated(self) -> int:
        pending = list(self._handshaking.values())
        for conn in pending:
            conn.disconnect()
        return len(pending)

    def session_established(self) -> None:
        with self._counters_lock:
            self._sessions_established += 1

    def refuse(self, conn: SecureConnection, reason: str, detail: str) -> None:
        """Close a connection and say why, naming what the peer claimed (rate-limited per reason)."""
        with self._counters_lock:
            self._refusals[reason] = self._refusals.get(reason, 0) + 1
        # Rate-limited per (reason, claimed validator): a flood cannot fill the log, and each validator
        # named in a refusal is logged at least every RAFT_REFUSAL_LOG_INTERVAL_MS.
        known = conn.peer_node if conn.peer_node in self.identity.validator_keys else None
        now, key = monotonic_time(), (reason, known)
        if now - self._refusal_logged_at.get(key, -1e9) >= RAFT_REFUSAL_LOG_INTERVAL_MS / 1000:
            self._refusal_logged_at[key] = now
            who = f"{conn.peer_label} (authenticated validator {conn.peer_node} at {conn.peer_address})" \
                if conn.authenticated else conn.peer_label
            logger.warning("raft connection refused [%s]: peer %s %s (refusals so far: %d)", reason, who, detail,
                           self._refusals[reason])
        conn.disconnect()

    def destroy(self):
        super().destroy()
        self._server.stop_rebinding()

    def status(self) -> dict:
        server = self._server
        with self._counters_lock:
            refusals, sessions = dict(self._refusals), self._sessions_established
        return {"listening": bool(server is not None and server.listening),
                "listener_failures": server.failures if server else 0,
                "listener_rebinds": server.rebinds if server else 0,
                "listener_last_error": server.last_error if server else None,
                "unauthenticated_connections": len(self._handshaking), "refusals": refusals,
                "sessions_established": sessions}
