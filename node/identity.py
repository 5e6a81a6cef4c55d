"""A node's identity: an ed25519 key pair kept in its data directory, and signature checks.

Why it works as it does:
- ed25519 (via `cryptography`): small keys and signatures, deterministic signing (no nonce to get
  wrong), ~30 µs to sign and ~100 µs to verify on this machine.
- node_id = the first 16 hex digits of sha256(raw public key): short enough for logs and URLs, and
  64 bits is far from any collision among the members of a network (ids are only compared against
  the member list of genesis, never trusted on their own: the public key is what verifies).
- The private key file holds the raw 32-byte seed, mode 0600. It is created with
  os.open(O_CREAT | O_EXCL | O_NOFOLLOW, 0o600) under a temporary name, fsynced, then hard-linked into
  place, so a crash never leaves a half-written key under the real name and two processes starting at
  once agree on one key. A key file that group or others can read is refused (like ssh does): a
  leaked key lets anyone vote and sign as this node.
- `verify_signature` never raises on hostile input: it answers True or False.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from node.fsutil import fsync_directory, read_private_file
from node.errors import ConfigError

PRIVATE_KEY_LENGTH_BYTES = 32
PUBLIC_KEY_LENGTH_BYTES = 32
SIGNATURE_LENGTH_BYTES = 64
NODE_ID_LENGTH = 16


def node_id_for(public_key: bytes) -> str:
    """The node id of a raw 32-byte ed25519 public key."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_LENGTH_BYTES:
        raise ConfigError(f"a public key is {PUBLIC_KEY_LENGTH_BYTES} raw bytes, got {type(public_key).__name__} "
                          f"of length {len(public_key) if isinstance(public_key, bytes) else '?'}",
                          hint="give ed25519 public keys as 32 raw bytes (64 hex digits in genesis)")
    return hashlib.sha256(public_key).hexdigest()[:NODE_ID_LENGTH]


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is a valid ed25519 signature of `message` by `public_key`. Never raises."""
    if not (isinstance(public_key, bytes) and isinstance(message, bytes) and isinstance(signature, bytes)):
        return False
    if len(public_key) != PUBLIC_KEY_LENGTH_BYTES or len(signature) != SIGNATURE_LENGTH_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """A node's own key pair. `node_id` and `public_key` are public; the private key never leaves."""

    __slots__ = ("_private_key", "public_key", "node_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes_raw()
        self.node_id: str = node_id_for(self.public_key)

    def __repr__(self) -> str:
        return f"Identity(node_id={self.node_id})"

    def sign(self, message: bytes) -> bytes:
        """The 64-byte ed25519 signature of `message`."""
        return self._private_key.sign(message)

    def private_bytes(self) -> bytes:
        """The raw 32-byte private seed (what the key file holds)."""
        return self._private_key.private_bytes_raw()

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "Identity":
        if not isinstance(raw, bytes) or len(raw) != PRIVATE_KEY_LENGTH_BYTES:
            raise ConfigError(f"an ed25519 private key is {PRIVATE_KEY_LENGTH_BYTES} raw bytes",
                              hint="delete the key file to create a new identity, or restore it from a backup")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def load_or_create(cls, key_path: Path) -> "Identity":
        """Load the key at `key_path`, creating it (mode 0600) if it does not exist.

        Raises ConfigError if the file is readable or writable by group or others, is not a regular
        file, or does not hold a 32-byte key."""
        key_path = Path(key_path)
        try:
            return cls._load(key_path)
        except FileNotFoundError:
            pass
        if not key_path.parent.is_dir():
            raise ConfigError(f"cannot create key file {key_path}: directory {key_path.parent} does not exist",
                              hint="create the node's data directory first")
        identity = cls.generate()
        if _write_new_key(key_path, identity.private_bytes()):
            return identity
        return cls._load(key_path)  # another process created it first: use theirs

    @classmethod
    def _load(cls, key_path: Path) -> "Identity":
        raw = read_private_file(key_path, what="key file", size_max_bytes=PRIVATE_KEY_LENGTH_BYTES,
                                missing_hint="the key file must be a regular file (not a symlink) readable by the node's user")
        if len(raw) != PRIVATE_KEY_LENGTH_BYTES:
            raise ConfigError(f"key file {key_path} holds {len(raw)} bytes, not a {PRIVATE_KEY_LENGTH_BYTES}-byte ed25519 key",
                              hint="restore the key file from a backup, or delete it to create a new identity (a new node id)")
        return cls.from_private_bytes(raw)


def _write_new_key(key_path: Path, private_bytes: bytes) -> bool:
    """Write a new key file atomically with mode 0600. False if one appeared meanwhile."""
    temporary = key_path.with_name(f".{key_path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            if os.write(descriptor, private_bytes) != len(private_bytes):
                raise ConfigError(f"could not write the key file {key_path} in full", hint="check free disk space, then start again")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(temporary, key_path)
        except FileExistsError:
            return False
    finally:
        os.unlink(temporary)
    fsync_directory(key_path.parent)
    return True
