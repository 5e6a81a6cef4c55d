"""Golden vectors of the canonical entry encoding: the signed bytes and ids must never change.

Why: an entry's id is the sha256 of its bytes and its signature covers them, so any change to how a
body is encoded (key order, int or string forms, bytes vs str, None) would give honest nodes of two
versions different ids for the same entry. The vectors in data/entry_golden.json were written by the
encoder as it was before the body schemas moved to node/core/schemas.py (commit "golden vectors"),
one entry per kind plus edge bodies, with a fixed key (identity 0), sequence, hlc and parents.
ed25519 signatures are deterministic, so the whole raw entry is reproducible.
"""

import json
from pathlib import Path

import pytest

from node.core.entries import decode_entry, make_entry
from node.core.hlc import Hlc
from tests.logtools import (
    NETWORK_ID, NOW_MS, execute_body, identity, note_body, proposal_body, report_body, rollback_proposal_body,
    sample_bodies,
)

GOLDEN_FILE = Path(__file__).parent / "data" / "entry_golden.json"
PARENTS = ("2" * 64, "1" * 64)


def golden_cases() -> list[tuple[str, str, dict, tuple[str, ...], Hlc]]:
    """(name, kind, body, parents, hlc) of every vector; the file holds what today's encoder made of them."""
    cases = [(kind.lower(), kind, body, PARENTS, Hlc(NOW_MS, 3)) for kind, body in sample_bodies().items()]
    cases += [
        ("proposal_rollback", "PROPOSAL", rollback_proposal_body(), (), Hlc(NOW_MS, 0)),
        ("proposal_unicode_no_size", "PROPOSAL",
         proposal_body(title="Upgrade to v1.2.0 — é 中文", description="line 1\n\tline 2 🎉", package_size=None,
                       version="2.0.0-rc.1+build.5"), PARENTS, Hlc(NOW_MS + 1, 0)),
        ("execute_rollback_no_certificate", "EXECUTE_UPGRADE",
         execute_body(action="rollback", package_url=None, package_hash=None, package_size=None, certificate=[]),
         ("3" * 64,), Hlc(NOW_MS, 1)),
        ("report_failure", "EXECUTION_REPORT", report_body(success=False, error="WasmTrap: unreachable"), (), Hlc(NOW_MS, 2)),
        ("note_empty", "NOTE", note_body(""), (), Hlc(0, 0)),
        ("note_long", "NOTE", note_body("é" * 4096), (), Hlc(2**40, 65_535)),
    ]
    return cases


def golden_vectors() -> dict[str, dict]:
    document = json.loads(GOLDEN_FILE.read_text())
    assert document["network_id"] == NETWORK_ID
    return {vector["name"]: vector for vector in document["vectors"]}


@pytest.mark.parametrize("name, kind, body, parents, hlc", golden_cases(), ids=[case[0] for case in golden_cases()])
def test_the_encoder_makes_the_golden_bytes_and_ids(name, kind, body, parents, hlc):
    vector = golden_vectors()[name]
    entry = make_entry(network_id=NETWORK_ID, kind=kind, author=identity(0).node_id, sequence=7, parents=parents, hlc=hlc,
                       body=body, sign=identity(0).sign)
    assert (entry.kind, entry.raw.hex(), entry.id) == (vector["kind"], vector["raw"], vector["id"])


@pytest.mark.parametrize("name", sorted(golden_vectors()))
def test_the_golden_bytes_decode_to_the_same_entry(name):
    vector = golden_vectors()[name]
    entry = decode_entry(bytes.fromhex(vector["raw"]), entry_size_max_bytes=64 * 1024)
    assert (entry.kind, entry.id, entry.raw.hex()) == (vector["kind"], vector["id"], vector["raw"])


def test_every_kind_has_a_golden_vector():
    assert {vector["kind"] for vector in golden_vectors().values()} == set(sample_bodies())
