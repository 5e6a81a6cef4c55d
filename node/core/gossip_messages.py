"""Gossip wire messages and their encoding: pure, so the protocol core and every transport share them.

Why it works as it does: every body is a msgpack array whose first element names the message type
("offer", "want", "push", "pushed", "sync", "synced"); entries travel as their canonical bytes (never
re-serialized, so signatures and ids survive any hop); a sender is its node id's 8 raw bytes, a
digest's fingerprint 8 bytes of sha256 (a collision would only delay a repair until either digest
changes). Messages are frozen dataclasses that validate when built, and decode_message reads an
untrusted body with msgpack's length limits before any value is built, so a hostile body costs
bounded memory. tests/unit/test_gossip_wire_golden.py pins the bytes of every type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import msgpack

from node.core.crdt_log import DIGEST_AUTHORS_MAX, DIGEST_LEAVES_MAX, parse_digest
from node.core.entries import ENTRY_SIZE_MAX_BYTES, is_entry_id, is_node_id
from node.errors import BadRequest

ID_BYTES = 32
DIGEST_HASH_BYTES = 8                 # a digest's fingerprint on the wire: equal fingerprints mean "in sync"
IDS_PER_MESSAGE_MAX = 10_000         # format ceiling; settings.batch_entries_max is the real bound


def _bad(message: str) -> BadRequest:
    return BadRequest(f"malformed gossip message: {message}",
                      hint="gossip bodies are msgpack arrays [type, ...] as documented in node/core/gossip_messages.py")


def _check_sender(sender: object) -> None:
    if not (sender == "" or is_node_id(sender)):
        raise _bad("sender must be a node id (16 lowercase hex) or empty")


# On the wire a sender is its node id's 8 raw bytes (or empty): half the size of the hex text, on
# every offer, push and sync (most of the messages).
def _sender_to_wire(sender: str) -> bytes:
    return bytes.fromhex(sender)


def _sender_from_wire(value: object) -> str:
    if not isinstance(value, bytes) or len(value) not in (0, 8):
        raise _bad("sender must be a node id as 8 bytes, or empty bytes")
    return value.hex()


def _check_ids(ids: object, limit: int = IDS_PER_MESSAGE_MAX) -> None:
    if not isinstance(ids, tuple) or len(ids) > limit or not all(map(is_entry_id, ids)):
        raise _bad(f"ids must be at most {limit} entry ids")


def _check_raws(raws: object) -> None:
    if not isinstance(raws, tuple) or len(raws) > IDS_PER_MESSAGE_MAX or not all(isinstance(raw, bytes) for raw in raws):
        raise _bad(f"entries must be a list of at most {IDS_PER_MESSAGE_MAX} byte strings")


def _ids_to_wire(ids: Iterable[str]) -> list[bytes]:
    return [bytes.fromhex(entry_id) for entry_id in ids]


def _ids_from_wire(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, bytes) and len(item) == ID_BYTES for item in value):
        raise _bad(f"ids must be a list of {ID_BYTES}-byte strings")
    return tuple(item.hex() for item in value)


def _raws_from_wire(value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(isinstance(item, bytes) for item in value):
        raise _bad("entries must be a list of byte strings")
    return tuple(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """"I hold these entries": the receiver answers with the ids it lacks (`Want`)."""

    sender: str
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_ids(self.ids)

    def encode(self) -> bytes:
        return pack(["offer", _sender_to_wire(self.sender), _ids_to_wire(self.ids)])

    @classmethod
    def from_fields(cls, fields: list) -> "Offer":
        _expect_length(fields, 3)
        return cls(sender=_sender_from_wire(fields[1]), ids=_ids_from_wire(fields[2]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Want:
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_ids(self.ids)

    def encode(self) -> bytes:
        return pack(["want", _ids_to_wire(self.ids)])

    @classmethod
    def from_fields(cls, fields: list) -> "Want":
        _expect_length(fields, 2)
        return cls(ids=_ids_from_wire(fields[1]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Push:
    """Entries in full (canonical bytes), in causal order."""

    sender: str
    raws: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_raws(self.raws)

    def encode(self) -> bytes:
        return pack(["push", _sender_to_wire(self.sender), list(self.raws)])

    @classmethod
    def from_fields(cls, fields: list) -> "Push":
        _expect_length(fields, 3)
        return cls(sender=_sender_from_wire(fields[1]), raws=_raws_from_wire(fields[2]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Pushed:
    """The answer to a push: how many entries were new, duplicates, refused."""

    added: int
    duplicate: int
    refused: int

    def __post_init__(self) -> None:
        if not all(type(value) is int and 0 <= value <= IDS_PER_MESSAGE_MAX for value in (self.added, self.duplicate, self.refused)):
            raise _bad("pushed counts must be ints in range")

    def encode(self) -> bytes:
        return pack(["pushed", self.added, self.duplicate, self.refused])

    @classmethod
    def from_fields(cls, fields: list) -> "Pushed":
        _expect_length(fields, 4)
        return cls(added=fields[1], duplicate=fields[2], refused=fields[3])


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync:
    """Anti-entropy request: my digest's hash, my full digest when pulling (else None), ids I miss."""

    sender: str
    digest_hash: bytes
    digest: dict | None
    want: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_digest(self.digest_hash, self.digest)
        _check_ids(self.want)

    def encode(self) -> bytes:
        return pack(["sync", _sender_to_wire(self.sender), self.digest_hash, self.digest, _ids_to_wire(self.want)])

    @classmethod
    def from_fields(cls, fields: list) -> "Sync":
        _expect_length(fields, 5)
        return cls(sender=_sender_from_wire(fields[1]), digest_hash=fields[2], digest=fields[3], want=_ids_from_wire(fields[4]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Synced:
    """Anti-entropy answer: my full digest if our digests' hashes differ (else None: in sync), the
    entries asked for (by id, or missing from the sender's digest), and whether more are missing."""

    digest: dict | None
    raws: tuple[bytes, ...]
    more: bool

    def __post_init__(self) -> None:
        _check_digest_map(self.digest)
        _check_raws(self.raws)
        if type(self.more) is not bool:
            raise _bad("more must be a bool")

    def encode(self) -> bytes:
        return pack(["synced", self.digest, list(self.raws), self.more])

    @classmethod
    def from_fields(cls, fields: list) -> "Synced":
        _expect_length(fields, 4)
        return cls(digest=fields[1], raws=_raws_from_wire(fields[2]), more=fields[3])


MESSAGE_TYPES: Mapping[str, Any] = {
    "offer": Offer, "want": Want, "push": Push, "pushed": Pushed, "sync": Sync, "synced": Synced,
}


_TYPE_NAMES: Mapping[type, str] = {message_type: name for name, message_type in MESSAGE_TYPES.items()}


def _check_digest(digest_hash: object, digest: object) -> None:
    if not isinstance(digest_hash, bytes) or len(digest_hash) != DIGEST_HASH_BYTES:
        raise _bad(f"digest hash must be {DIGEST_HASH_BYTES} bytes")
    _check_digest_map(digest)


def _check_digest_map(digest: object) -> None:
    if digest is not None:
        parse_digest(digest)  # raises BadRequest with what is wrong


def _expect_length(fields: list, length: int) -> None:
    if len(fields) != length:
        raise _bad(f"a {fields[0]!r} message has {length} elements, got {len(fields)}")


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def decode_message(body: bytes, expected: type, *, array_length_max: int) -> Any:
    """Parse an untrusted body into the message type `expected`, or raise BadRequest."""
    try:
        fields = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True, timestamp=0,
            max_bin_len=ENTRY_SIZE_MAX_BYTES, max_str_len=64, max_ext_len=0,
            max_array_len=max(array_length_max, DIGEST_LEAVES_MAX, 8), max_map_len=DIGEST_AUTHORS_MAX,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as error:
        raise _bad(f"not valid msgpack ({type(error).__name__})") from None
    if not isinstance(fields, list) or not fields or not isinstance(fields[0], str):
        raise _bad("a body is an array whose first element is the message type")
    if MESSAGE_TYPES.get(fields[0]) is not expected:
        raise _bad(f"expected a {_TYPE_NAMES[expected]!r} message, got {fields[0][:20]!r}")
    return expected.from_fields(fields)


def digest_hash_of(digest: Mapping[str, Any]) -> bytes:
    """A short hash of a digest: equal digests (same leaves) give equal hashes on every node."""
    return hashlib.sha256(pack(sorted(digest.items()))).digest()[:DIGEST_HASH_BYTES]

