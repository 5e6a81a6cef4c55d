"""Helpers for tests that need identities, members, logs and entries (any layer may import them).

Keys are derived from a fixed seed per index, so `identity(0)` is the same key in every test and
every run: entries, ids and failures replay exactly. Bodies are valid examples of each kind's schema.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Sequence

from node.core.crdt_log import CrdtLog, LogLimits
import msgpack

from node.core.entries import Entry, make_entry, signing_prefix
from node.core.hlc import Hlc
from node.identity import Identity, verify_signature

NOW_MS = 1_700_000_000_000          # a fixed "now" (2023-11-14): tests never read the real clock
LATE_MS = NOW_MS + 10**9            # a "now" late enough that no test entry is refused as clock_future
NETWORK_ID = "net-test"           # the network every test log and entry belongs to (signatures cover it)
HASH_A = "a" * 64
HASH_B = "b" * 64


def identity(index: int) -> Identity:
    """The test identity number `index` (deterministic)."""
    return Identity.from_private_bytes(hashlib.sha256(b"synapse-ng test key %d" % index).digest())


def identities(count: int) -> list[Identity]:
    return [identity(index) for index in range(count)]


def members_of(people: Iterable[Identity]) -> dict[str, bytes]:
    return {person.node_id: person.public_key for person in people}


class CountingVerify:
    """verify_signature that counts its calls and memoizes results: tests check 'verified once', and
    property tests avoid paying ~100 µs per signature per replica."""

    def __init__(self) -> None:
        self.calls = 0
        self._known: dict[tuple[bytes, bytes, bytes], bool] = {}

    def __call__(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        self.calls += 1
        key = (public_key, message, signature)
        if key not in self._known:
            self._known[key] = verify_signature(public_key, message, signature)
        return self._known[key]


def new_log(people: Iterable[Identity], *, verify: Any = verify_signature, network_id: str = NETWORK_ID,
            **limits: int) -> CrdtLog:
    return CrdtLog(network_id=network_id, members=members_of(people), verify=verify, limits=LogLimits(**limits))


def write(log: CrdtLog, who: Identity, *, kind: str = "NOTE", body: Mapping[str, Any] | None = None,
          now_ms: int = NOW_MS) -> Entry:
    """Create `who`'s next entry on `log` (sequence, heads, hlc from the log), add it, return it."""
    entry = log.new_entry(kind=kind, author=who.node_id, body=body if body is not None else note_body(),
                          sign=who.sign, now_ms=now_ms)
    outcome = log.add(entry, now_ms=now_ms)
    assert outcome.newly_visible[0] == entry
    return entry


def forge(who: Identity, *, sequence: int, parents: Sequence[str] = (), hlc: Hlc = Hlc(NOW_MS, 0), kind: str = "NOTE",
          body: Mapping[str, Any] | None = None, author: str | None = None, network_id: str = NETWORK_ID) -> Entry:
    """An entry with explicit fields, signed by `who` (author defaults to who's id) for `network_id`:
    for breaking rules."""
    return make_entry(network_id=network_id, kind=kind, author=author or who.node_id, sequence=sequence, parents=parents, hlc=hlc,
                      body=body if body is not None else note_body(), sign=who.sign)


def forge_raw(who: Identity, *, kind: str, body: Mapping[str, Any], sequence: int = 1, hlc: Hlc = Hlc(NOW_MS, 0),
              network_id: str = NETWORK_ID) -> bytes:
    """The canonical bytes of an entry whose body make_entry would refuse, validly signed by `who`:
    what a hostile member's own encoder sends. Keys are sorted as the canonical form wants."""
    fields = [1, kind, who.node_id, sequence, [], [hlc.wall_ms, hlc.logical], {key: body[key] for key in sorted(body)}]
    unsigned = msgpack.packb(fields, use_bin_type=True)
    signature = who.sign(signing_prefix(network_id) + unsigned)
    return bytes((0x98,)) + unsigned[1:] + msgpack.packb(signature, use_bin_type=True)


def note_body(text: str = "hello") -> dict:
    return {"text": text}


def proposal_body(**changes: Any) -> dict:
    body = {"proposal_id": "upgrade_20251003_120000_3fa9c2d1", "action": "upgrade", "title": "Upgrade to v1.2.0",
            "description": "adds a feature flag", "version": "1.2.0", "package_url": "https://example.org/u.wasm",
            "package_hash": HASH_A, "package_size": 1024, "voting_deadline_ms": NOW_MS + 60_000,
            "target_proposal_id": None}
    body.update(changes)
    return body


def rollback_proposal_body(**changes: Any) -> dict:
    body = proposal_body(proposal_id="rollback_20251003_130000_0badc0de", action="rollback", title="Back to 1.1.0",
                         version="1.1.0", package_url=None, package_hash=None, package_size=None,
                         target_proposal_id="upgrade_20251003_120000_3fa9c2d1")
    body.update(changes)
    return body


def vote_body(**changes: Any) -> dict:
    return {"proposal_id": "upgrade_20251003_120000_3fa9c2d1", "vote": "approval", **changes}


def ratify_body(**changes: Any) -> dict:
    return {"proposal_id": "upgrade_20251003_120000_3fa9c2d1", "sequence": 1, "statement": b"statement",
            "signature": b"\x01" * 64, **changes}


def execute_body(**changes: Any) -> dict:
    body = {"proposal_id": "upgrade_20251003_120000_3fa9c2d1", "action": "upgrade", "version": "1.2.0",
            "package_url": "https://example.org/u.wasm", "package_hash": HASH_A, "package_size": 1024,
            "votes_digest": HASH_B, "sequence": 1,
            "certificate": [{"validator_id": "0123456789abcdef", "signature": b"\x02" * 64}]}
    body.update(changes)
    return body


def report_body(**changes: Any) -> dict:
    return {"proposal_id": "upgrade_20251003_120000_3fa9c2d1", "sequence": 1, "success": True, "version": "1.2.0",
            "state_hash": "sha256:" + HASH_B, "error": None, **changes}


def local_rollback_body(**changes: Any) -> dict:
    return {"proposal_id": "upgrade_20251003_120000_3fa9c2d1", "restored_version": "1.1.0", "previous_version": "1.2.0",
            "state_hash": "sha256:" + HASH_B, "reason": "operator request", **changes}


def close_body(**changes: Any) -> dict:
    vote_ids = bytes.fromhex(HASH_A) + bytes.fromhex(HASH_B)
    return {"proposal_id": "upgrade_20251003_120000_3fa9c2d1", "votes_digest": hashlib.sha256(vote_ids).hexdigest(),
            "vote_ids": vote_ids, **changes}


def sample_bodies() -> dict[str, dict]:
    """One valid body per kind."""
    return {"PROPOSAL": proposal_body(), "VOTE": vote_body(), "CLOSE": close_body(), "RATIFY": ratify_body(),
            "EXECUTE_UPGRADE": execute_body(),
            "EXECUTION_REPORT": report_body(), "ROLLBACK": local_rollback_body(), "NOTE": note_body()}


def log_state(log: CrdtLog) -> tuple:
    """Everything observable about a log's content, for comparing replicas."""
    return (frozenset(entry.id for entry in log.all_entries()), tuple(entry.id for entry in log.visible()),
            tuple(log.equivocations()), frozenset(log.missing_parents()))
