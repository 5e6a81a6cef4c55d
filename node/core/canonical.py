"""Canonical encodings and digests shared by the store, the pipeline and governance.

Why: every node must compute the same state hash from the same network state, whatever the dict
insertion order or the JSON library's whitespace. Canonical JSON here is: keys sorted, no spaces,
UTF-8, no NaN/Infinity (they are not JSON and would make hashes platform-dependent).
"""

from __future__ import annotations

import hashlib
import json
import re

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


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
