"""The Raft handshake and session crypto: who the peer is, and the keys that seal each frame.

Why it exists: the transport (node/raft_transport.py) drives sockets on PySyncObj's tick thread; what it
proves and derives is here, as plain values and functions with no socket in them, so a test or a
scenario (scenarios/hooks/raft_attacks.py) can play either side of the handshake with the same code.

  * Each side sends a Hello: network id, node id, raft address, a fresh 32-byte nonce and an ephemeral
    X25519 key. Each signs `handshake_statement(role, initiator, responder)` with its ed25519 node key:
    a domain tag, the network, both nonces, both ephemeral keys, both node ids and addresses and the
    signer's role, so a signature can be replayed in no other session or role.
  * The session keys come from HKDF over the X25519 secret, salted with the network's shared Raft
    password (an outer layer: it grants nothing on its own), one key per direction.
  * Every frame after the handshake is ChaCha20-Poly1305 with a per-direction counter as the nonce and
    the 4-byte length header as associated data: no replay, no reordering, no splicing.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.raft_plain_data import pack_message

HANDSHAKE_DOMAIN = b"synapse-ng/raft-handshake/v1"
SESSION_KEY_INFO = b"synapse-ng/raft-session/v1"
FRAME_HEADER = struct.Struct(">I")              # every frame: its body's length in bytes, big-endian
NONCE_BYTES = 32
_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
ROLE_INITIATOR = "initiator"
ROLE_RESPONDER = "responder"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    network_id: str
    node_id: str
    address: str
    nonce: bytes
    ephemeral_key: bytes
    signature: bytes | None = None

    def to_frame(self) -> bytes:
        body = {"t": "hello", "network": self.network_id, "node": self.node_id, "address": self.address,
                "nonce": self.nonce, "key": self.ephemeral_key}
        if self.signature is not None:
            body["signature"] = self.signature
        return pack_message(body)

    @classmethod
    def from_body(cls, body: object, *, signed: bool) -> "Hello":
        if not isinstance(body, dict) or body.get("t") != "hello":
            raise HandshakeRefused("the first frame is not a handshake hello")
        fields = dict(network_id=body.get("network"), node_id=body.get("node"), address=body.get("address"),
                      nonce=body.get("nonce"), ephemeral_key=body.get("key"), signature=body.get("signature"))
        for name in ("network_id", "node_id", "address"):
            if not isinstance(fields[name], str) or len(fields[name]) > 200:
                raise HandshakeRefused(f"the hello's {name} is not a short string")
        if not isinstance(fields["nonce"], bytes) or len(fields["nonce"]) != NONCE_BYTES:
            raise HandshakeRefused("the hello's nonce is not 32 bytes")
        if not isinstance(fields["ephemeral_key"], bytes) or len(fields["ephemeral_key"]) != _KEY_BYTES:
            raise HandshakeRefused("the hello's ephemeral key is not 32 bytes")
        if signed != isinstance(fields["signature"], bytes) or (signed and len(fields["signature"]) != _SIGNATURE_BYTES):
            raise HandshakeRefused("the hello's signature is missing or malformed")
        return cls(**fields)


class HandshakeRefused(Exception):
    """A peer failed the handshake; the message names what it claimed, `reason` is the counter's name."""

    def __init__(self, message: str, reason: str = "handshake_malformed") -> None:
        super().__init__(message)
        self.reason = reason


def handshake_statement(role: str, initiator: Hello, responder: Hello) -> bytes:
    """What each side signs: the domain, the network, both hellos (nonces, ephemeral keys, node ids,
    raft addresses) and the signer's role, so a signature can be replayed in no other session or role."""
    return HANDSHAKE_DOMAIN + pack_message([
        role, initiator.network_id, initiator.nonce, responder.nonce, initiator.ephemeral_key, responder.ephemeral_key,
        initiator.node_id, initiator.address, responder.node_id, responder.address])


def session_keys(private_key: X25519PrivateKey, peer_key: bytes, password: str, initiator: Hello,
                  responder: Hello) -> tuple[bytes, bytes]:
    """(initiator -> responder key, responder -> initiator key)."""
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_key))
    transcript = hashlib.sha256(handshake_statement("keys", initiator, responder)).digest()
    material = HKDF(algorithm=hashes.SHA256(), length=64, salt=hashlib.sha256(password.encode()).digest(),
                    info=SESSION_KEY_INFO + transcript).derive(shared)
    return material[:32], material[32:]


class Session:
    """ChaCha20-Poly1305 per frame; the nonce is a per-direction counter, the frame header is the AAD."""

    __slots__ = ("_send", "_receive", "_send_counter", "_receive_counter")

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._send, self._receive = ChaCha20Poly1305(send_key), ChaCha20Poly1305(receive_key)
        self._send_counter = self._receive_counter = 0

    def seal(self, plain: bytes) -> bytes:
        header = FRAME_HEADER.pack(len(plain) + 16)
        nonce = b"\0\0\0\0" + self._send_counter.to_bytes(8, "big")
        self._send_counter += 1
        return header + self._send.encrypt(nonce, plain, header)

    def open(self, header: bytes, sealed: bytes) -> bytes:
        nonce = b"\0\0\0\0" + self._receive_counter.to_bytes(8, "big")
        self._receive_counter += 1
        return self._receive.decrypt(nonce, sealed, header)


def hello_fields(hello: Hello) -> dict:
    return dict(network_id=hello.network_id, node_id=hello.node_id, address=hello.address, nonce=hello.nonce,
                ephemeral_key=hello.ephemeral_key, signature=hello.signature)
