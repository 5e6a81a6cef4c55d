"""Canonical encodings and digests shared by the store, the pipeline and governance.

Why: every node must compute the same state hash from the same network state, whatever the dict
insertion order or the JSON library's whitespace. Canonical JSON here is: keys sorted, no spaces,
UTF-8, no NaN/Infinity (they are not JSON and would make hashes platform-dependent).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from itertools import accumulate

import msgspec

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# Untrusted JSON (a package's output, a request body, a state file) is parsed only when its nesting
# is at most this deep. Relying on RecursionError instead would make the verdict depend on the
# caller's stack depth (two honest nodes could disagree on one package), and running into the
# interpreter's recursion limit breaks finalizers that happen to run at that moment.
JSON_DEPTH_MAX = 256

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_DEPTH_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))
_ONE_KIND_OF_BRACKET = bytes.maketrans(b"[]", b"{}")
# Passes of the leaf-by-leaf depth (below) before the exact linear count takes over: a state nests a
# handful of levels, and a text built to nest deep pays one linear count, not JSON_DEPTH_MAX passes.
_DEPTH_PASSES_MAX = 16


def _structure_outside_strings(data: bytes) -> bytes:
    """The brackets of a JSON text that are not inside a string, in order, all as { and }."""
    # Drop escape pairs (so an escaped quote does not end a string), keep quotes and brackets, then
    # drop every quoted run: what is left is the structure outside strings.
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = data.translate(None, _NOT_STRUCTURE)
    # The common case, fast: no string holds a bracket, so every string left just its two quotes,
    # side by side (a left-to-right pass pairs each opening quote with its closing one only then).
    outside = structure.replace(b'""', b"")
    if b'"' in outside:
        outside = b"".join(structure.split(b'"')[::2])
    return outside.translate(_ONE_KIND_OF_BRACKET)


def _depth_by_leaves(outside: bytes) -> int | None:
    """The depth of a balanced bracket sequence, by taking off its innermost pairs one level per pass
    (bytes.replace does not rescan what it joins, so "{{}}" loses one pair a pass); None when the
    sequence is not balanced (the text is not valid JSON) or nests deeper than _DEPTH_PASSES_MAX."""
    for depth in range(_DEPTH_PASSES_MAX + 1):
        if not outside:
            return depth
        shorter = outside.replace(b"{}", b"")
        if len(shorter) == len(outside):
            return None
        outside = shorter
    return None


def json_nesting_depth(data: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (0 for a scalar), ignoring brackets in strings.

    Exact for valid JSON and for every valid prefix of invalid JSON, which is all a parser reads
    before it fails (the deepest point of any prefix). In C loops: a valid text nesting a few levels
    takes a few passes over its brackets (~6 ms for an 11 MB state on this machine); anything else
    one count per bracket (~20 ms)."""
    outside = _structure_outside_strings(data)
    depth = _depth_by_leaves(outside)
    if depth is not None:
        return depth
    return max(accumulate(map(_DEPTH_STEP.__getitem__, outside)), default=0)


# Up to this size a text is first asked whether it holds more brackets than the limit at all (a request
# body rarely does); a larger one, a state, always does, and the count would only add two passes.
_BRACKET_COUNT_FIRST_BYTES_MAX = 1 << 20


def json_depth_within(data: bytes, depth_max: int = JSON_DEPTH_MAX) -> bool:
    """True when the JSON text nests at most `depth_max` deep; free for small texts with few brackets."""
    if len(data) <= _BRACKET_COUNT_FIRST_BYTES_MAX and data.count(b"[") + data.count(b"{") <= depth_max:
        return True
    return json_nesting_depth(data) <= depth_max


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def canonical_json_float_free(value: object) -> bytes:
    """canonical_json's very bytes, ~8x faster (msgspec, keys sorted), for a value parsed from JSON
    that holds no float anywhere: dicts with str keys, lists, str, int, bool, None.

    Only there: msgspec writes some floats differently (1e16, 0.00001 where json.dumps writes 1e+16,
    1e-05), and a state hash must not depend on which path a node took. The caller knows (the parse
    that made the value counted its floats); tests/property/test_canonical_properties.py compares the
    two on generated values and shows that the comparison catches a float."""
    return msgspec.json.encode(value, order="sorted")


@dataclass(frozen=True)
class EncodedState:
    """A network state with its canonical JSON and that JSON's hash, computed once: a new state is
    hashed (to be compared and reported) and written (by the store) from the same bytes."""

    state: dict
    data: bytes
    state_hash: str


def encode_state(state: dict, *, float_free: bool) -> EncodedState:
    """`float_free`: the caller knows the state holds no float (see canonical_json_float_free)."""
    data = canonical_json_float_free(state) if float_free else canonical_json(state)
    return EncodedState(state=state, data=data, state_hash="sha256:" + sha256_hex(data))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_hash(state: dict) -> str:
    """The network state's identity: `sha256:` + hex digest of its canonical JSON."""
    return "sha256:" + sha256_hex(canonical_json(state))


def normalize_sha256(text: str) -> str | None:
    """`sha256:<64 hex>` or bare 64 hex, any case -> 64 lowercase hex; anything else -> None."""
    if not isinstance(text, str):
        return None
    candidate = text.strip()
    if candidate[:7].lower() == "sha256:":
        candidate = candidate[7:]
    candidate = candidate.lower()
    return candidate if _HEX64.match(candidate) else None
