"""Log entries: typed, signed, canonically encoded, identified by the sha256 of their bytes.

Why it works as it does:
- One encoding per entry. An entry's id and signature are computed over its exact bytes (`raw`), so
  two nodes must never disagree on those bytes. The wire form is a msgpack array of fixed layout
      [FORMAT_VERSION, kind, author, sequence, [parent_id_bytes...], [wall_ms, logical], body, signature]
  with parents as sorted, distinct 32-byte bins, body maps with sorted keys, msgpack's shortest forms
  for ints and strings, bytes as bin and strings as str. `decode_entry` re-encodes what it parsed and
  refuses anything that does not come out byte-identical ("non_canonical"): there is exactly one
  encoding of each entry, so an id names content, not a spelling of it.
- Never re-serialize. `Entry.raw` is kept, and `signing_bytes()` is sliced from it: the signature
  covers a domain-separated copy of the array without its last element (SIGNING_DOMAIN + 7-element
  array), so an entry signature can never be replayed as any other kind of signature by the same key.
- A signature is bound to one network: the signed message also holds the network id (from genesis),
  length-prefixed between the domain tag and the array. A member who reuses its key in another
  network cannot have its entries there replayed here (they fail the signature check at the door).
  The network id is NOT in the entry's bytes: ids and the wire format stay as they are, only what is
  signed changed (hence the domain tag v2: a v1 signature never verifies).
- Strict types. No floats anywhere (reputation, which is a number with a fraction, is not in entries),
  no ext types, no non-string map keys, bounded lengths on decode before anything is allocated.
- Every body is validated against its kind's schema when built AND when decoded (unknown or missing
  fields -> "bad_body"), so the rest of the node can trust `entry.body` without re-checking types.
  The schemas are declared once, in node/core/schemas.py, with the API's request bodies; this module
  only encodes. `Entry.body` stays the plain dict that was encoded (never a re-serialized struct).

Refusal reasons raised here (errors.EntryRefused.reason): "oversized", "malformed", "unknown_kind",
"bad_body", "non_canonical". Reasons that need the log's state (signature, author, sequence, parents)
are raised by crdt_log.py.

`Entry.body` is a plain dict for convenience; treat it as read-only (the bytes in `raw` are the truth).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import msgpack

from node.core.hlc import Hlc
from node.core.schemas import SEQUENCE_MAX, entry_body_problem, safe_text, unsafe_character  # noqa: F401 (re-exported)
from node.errors import ConfigError, EntryRefused

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"synapse-ng/entry/v2\x00"
KINDS = ("PROPOSAL", "VOTE", "CLOSE", "RATIFY", "EXECUTE_UPGRADE", "EXECUTION_REPORT", "ROLLBACK", "NOTE")

SIGNATURE_LENGTH_BYTES = 64
ID_LENGTH_BYTES = 32
PARENTS_LENGTH_MAX = 64          # hard cap of the format; the log's own (smaller) limit is LogLimits.parents_max
ENTRY_SIZE_MAX_BYTES = 1024 * 1024  # the format's ceiling; nodes configure a smaller limit

_NODE_ID = re.compile(r"^[0-9a-f]{16}$")
# As genesis allows it (node/config.py): ASCII, so its length in bytes is its length in characters.
_NETWORK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", re.ASCII)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# The signature is the last array element: bin8 header (0xc4, 64) + 64 bytes.
_SIGNATURE_TRAILER = bytes((0xC4, SIGNATURE_LENGTH_BYTES))
_SIGNATURE_SUFFIX_BYTES = 2 + SIGNATURE_LENGTH_BYTES
_ARRAY8_HEADER = 0x98
_ARRAY7_HEADER = 0x97
_DECODE_ARRAY_LENGTH_MAX = 128   # the longest arrays are parents (<= 64) and certificates (<= 64)
_DECODE_MAP_LENGTH_MAX = 32      # the largest body has 10 fields


def is_node_id(value: object) -> bool:
    return isinstance(value, str) and _NODE_ID.match(value) is not None


def is_entry_id(value: object) -> bool:
    return isinstance(value, str) and _HEX64.match(value) is not None


# --- body schemas (declared in node/core/schemas.py) ------------------------------------------------


def validate_body(kind: str, body: object) -> None:
    """Raise EntryRefused("bad_body") unless `body` matches the schema of `kind` exactly
    (schemas.ENTRY_BODIES: field set, types, limits, rules, and the rules between fields)."""
    problem = entry_body_problem(kind, body)
    if problem is not None:
        raise EntryRefused("bad_body", problem[0], hint=problem[1])


# --- canonical encoding -----------------------------------------------------------------------------


def _canonical_value(value: Any, depth: int = 0) -> Any:
    """A copy of `value` in canonical form: maps with sorted str keys, tuples as lists; floats refused."""
    if depth > 8:
        raise EntryRefused("bad_body", "body is nested too deeply")
    if value is None or type(value) in (bool, int, str, bytes):
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical_value(item, depth + 1) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise EntryRefused("bad_body", "body map keys must be strings")
        return {key: _canonical_value(value[key], depth + 1) for key in sorted(value)}
    raise EntryRefused("bad_body", f"a body may hold only None, bool, int, str, bytes, lists and maps, not {type(value).__name__}",
                       hint="no floats in entries: use integers (e.g. milli-units)")


def _pack(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as error:
        raise EntryRefused("bad_body", f"entry cannot be encoded: {error}") from None


def _unsigned_fields(kind: str, author: str, sequence: int, parents: Sequence[str], hlc: Hlc, body: dict) -> list:
    return [FORMAT_VERSION, kind, author, sequence, [bytes.fromhex(parent) for parent in parents],
            [hlc.wall_ms, hlc.logical], body]


# --- the entry --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Entry:
    """A decoded, well-formed entry. Its signature is NOT checked here (that needs the author's key:
    CrdtLog.add checks it). Equality and hashing are by `raw`, i.e. by id."""

    kind: str
    author: str
    sequence: int
    parents: tuple[str, ...]
    hlc: Hlc
    body: dict
    signature: bytes
    raw: bytes
    _id: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_fields(self)
        # Re-encode from the canonical form of the fields: a map in wire order, a duplicate key or a long
        # form of an int all come out different, and are refused.
        canonical_body = _canonical_value(self.body)
        expected = _pack(_unsigned_fields(self.kind, self.author, self.sequence, self.parents, self.hlc, canonical_body)
                         + [self.signature])
        if expected != self.raw:
            raise EntryRefused("non_canonical", "entry bytes are not the canonical encoding of its fields",
                               hint="encode entries with node.core.entries.make_entry; never re-serialize them")
        object.__setattr__(self, "_id", hashlib.sha256(self.raw).hexdigest())

    @property
    def id(self) -> str:
        """sha256 hex of the canonical bytes: the entry's name everywhere (parents, gossip, storage)."""
        return self._id

    def signing_bytes(self, network_id: str) -> bytes:
        """What the author signs for network `network_id` (see signing_bytes_of)."""
        return signing_bytes_of(self.raw, network_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"Entry({self.kind} {self.author}#{self.sequence} id={self._id[:12]} hlc={self.hlc.wall_ms}.{self.hlc.logical})"


def signing_bytes_of(raw: bytes, network_id: str) -> bytes:
    """The signed message for canonical entry bytes `raw` in network `network_id` (sliced, never
    re-encoded): SIGNING_DOMAIN + network id prefix + the 7-element array without the signature."""
    assert raw[0] == _ARRAY8_HEADER and raw[-_SIGNATURE_SUFFIX_BYTES:-SIGNATURE_LENGTH_BYTES] == _SIGNATURE_TRAILER
    return signing_prefix(network_id) + bytes((_ARRAY7_HEADER,)) + raw[1:-_SIGNATURE_SUFFIX_BYTES]


def signing_prefix(network_id: str) -> bytes:
    """SIGNING_DOMAIN + one length byte + the network id: what precedes the entry in a signed message.
    The length byte keeps (network id, entry) pairs apart whatever the entry's first bytes."""
    if not isinstance(network_id, str) or _NETWORK_ID.fullmatch(network_id) is None:
        raise ConfigError(f"network id {str(network_id)[:80]!r} is not 1-64 letters, digits, '.', '_' or '-'",
                          hint="entries are signed for the network_id of genesis; pass it unchanged")
    encoded = network_id.encode("ascii")
    return SIGNING_DOMAIN + bytes((len(encoded),)) + encoded


def _check_fields(entry: Entry) -> None:
    if entry.kind not in KINDS:
        raise EntryRefused("unknown_kind", f"unknown entry kind {str(entry.kind)[:40]!r}",
                           hint=f"an entry kind is one of {', '.join(KINDS)}")
    if not is_node_id(entry.author):
        raise EntryRefused("malformed", "entry author must be a node id (16 lowercase hex digits)")
    if type(entry.sequence) is not int or not 1 <= entry.sequence <= SEQUENCE_MAX:
        raise EntryRefused("malformed", f"entry sequence must be an int in 1..{SEQUENCE_MAX}")
    parents = entry.parents
    if not isinstance(parents, tuple) or len(parents) > PARENTS_LENGTH_MAX or not all(map(is_entry_id, parents)):
        raise EntryRefused("malformed", f"entry parents must be a tuple of at most {PARENTS_LENGTH_MAX} entry ids (64 lowercase hex)")
    if list(parents) != sorted(set(parents)):
        raise EntryRefused("non_canonical", "entry parents must be sorted and distinct")
    if not isinstance(entry.hlc, Hlc):
        raise EntryRefused("malformed", "entry hlc must be an Hlc")
    if not isinstance(entry.signature, bytes) or len(entry.signature) != SIGNATURE_LENGTH_BYTES:
        raise EntryRefused("malformed", f"entry signature must be {SIGNATURE_LENGTH_BYTES} bytes")
    if not isinstance(entry.raw, bytes):
        raise EntryRefused("malformed", "entry raw must be bytes")
    validate_body(entry.kind, entry.body)


def make_entry(*, network_id: str, kind: str, author: str, sequence: int, parents: Sequence[str], hlc: Hlc,
               body: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> Entry:
    """Build and sign an entry for network `network_id` (genesis's). `parents` may come in any order
    (they are sorted and deduplicated); `body` is copied into canonical form (the caller's dict is not
    kept). Raises EntryRefused ("unknown_kind", "malformed", "bad_body") when the fields are invalid,
    ConfigError for a network id genesis would refuse: nothing is signed then."""
    prefix = signing_prefix(network_id)
    if kind not in KINDS:
        raise EntryRefused("unknown_kind", f"unknown entry kind {str(kind)[:40]!r}", hint=f"use one of {', '.join(KINDS)}")
    if not all(map(is_entry_id, parents)):
        raise EntryRefused("malformed", "entry parents must be entry ids (64 lowercase hex)")
    if not isinstance(body, Mapping):
        raise EntryRefused("bad_body", f"{kind} body must be a map, got {type(body).__name__}")
    canonical_body = _canonical_value(dict(body))
    validate_body(kind, canonical_body)
    sorted_parents = tuple(sorted(set(parents)))
    if not isinstance(hlc, Hlc):
        raise EntryRefused("malformed", "entry hlc must be an Hlc")
    if not is_node_id(author) or type(sequence) is not int or not 1 <= sequence <= SEQUENCE_MAX:
        raise EntryRefused("malformed", "entry author must be a node id and sequence an int >= 1")
    if len(sorted_parents) > PARENTS_LENGTH_MAX:
        raise EntryRefused("malformed", f"an entry has at most {PARENTS_LENGTH_MAX} parents")
    unsigned = _pack(_unsigned_fields(kind, author, sequence, sorted_parents, hlc, canonical_body))
    signature = sign(prefix + unsigned)
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LENGTH_BYTES:
        raise EntryRefused("malformed", f"sign() must return {SIGNATURE_LENGTH_BYTES} bytes")
    assert unsigned[0] == _ARRAY7_HEADER
    raw = bytes((_ARRAY8_HEADER,)) + unsigned[1:] + _SIGNATURE_TRAILER + signature
    return Entry(kind=kind, author=author, sequence=sequence, parents=sorted_parents, hlc=hlc, body=canonical_body,
                 signature=signature, raw=raw)


def _unpack(raw: bytes, entry_size_max_bytes: int) -> Any:
    try:
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True, timestamp=0,
            max_bin_len=entry_size_max_bytes, max_str_len=entry_size_max_bytes, max_ext_len=0,
            max_array_len=_DECODE_ARRAY_LENGTH_MAX, max_map_len=_DECODE_MAP_LENGTH_MAX,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as error:
        # ValueError covers ExtraData, FormatError, StackError, length limits and bad UTF-8.
        raise EntryRefused("malformed", f"entry is not valid msgpack: {type(error).__name__}") from None


def decode_entry(raw: bytes, *, entry_size_max_bytes: int) -> Entry:
    """Parse untrusted bytes into an Entry, refusing anything oversized, malformed, of an unknown kind,
    with a bad body, or not in canonical form. Does not check the signature (CrdtLog.add does)."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EntryRefused("malformed", f"an entry must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > min(entry_size_max_bytes, ENTRY_SIZE_MAX_BYTES):
        raise EntryRefused("oversized", f"entry of {len(raw)} bytes exceeds the limit of {entry_size_max_bytes} bytes",
                           hint="keep entry bodies small (package bytes travel separately, by URL)")
    fields = _unpack(raw, entry_size_max_bytes)
    if not isinstance(fields, list) or len(fields) != 8:
        raise EntryRefused("malformed", "an entry is a msgpack array of 8 elements")
    version, kind, author, sequence, parents, clock, body, signature = fields
    if version != FORMAT_VERSION or type(version) is not int:
        raise EntryRefused("malformed", f"unsupported entry format version {version!r}",
                           hint=f"this node reads format {FORMAT_VERSION}; upgrade the sender or this node")
    if not isinstance(kind, str) or kind not in KINDS:
        raise EntryRefused("unknown_kind", f"unknown entry kind {str(kind)[:40]!r}", hint=f"an entry kind is one of {', '.join(KINDS)}")
    if not isinstance(parents, list) or not all(isinstance(p, bytes) and len(p) == ID_LENGTH_BYTES for p in parents):
        raise EntryRefused("malformed", f"entry parents must be a list of {ID_LENGTH_BYTES}-byte ids")
    if not isinstance(clock, list) or len(clock) != 2:
        raise EntryRefused("malformed", "entry hlc must be [wall_ms, logical]")
    try:
        hlc = Hlc(*clock)
    except (TypeError, ValueError) as error:
        raise EntryRefused("malformed", f"entry hlc is invalid: {error}") from None
    return Entry(kind=kind, author=author, sequence=sequence, parents=tuple(p.hex() for p in parents), hlc=hlc,
                 body=body, signature=signature, raw=raw)
