"""Certificates: an EXECUTE_UPGRADE runs only with valid signatures of a strict majority of validators
over exactly its fields. Every forgery a minority of validators (or an outsider) could try is refused."""

import hashlib

import pytest

from node.core.certificates import (
    build_certificate,
    certificate_signers,
    certificate_statement,
    ratify_statement,
    verify_certificate,
)
from node.errors import CertificateError
from node.identity import Identity, verify_signature

NETWORK = "net-test"
HASH = "ab" * 32
DIGEST = "cd" * 32        # the counted votes' digest


def identity(seed: str) -> Identity:
    return Identity.from_private_bytes(hashlib.sha256(seed.encode()).digest())


VALIDATORS = [identity(f"validator-{i}") for i in range(3)]
VALIDATOR_KEYS = {v.node_id: v.public_key for v in VALIDATORS}
OUTSIDER = identity("outsider")


def body(*, sequence=1, proposal_id="upgrade_20251003_120000_3fa9c2d1", action="upgrade", package_hash=HASH,
         version="1.2.0", signers=(), network=NETWORK, certificate=None):
    statement = certificate_statement(network, proposal_id, action, package_hash, version, DIGEST, sequence)
    if certificate is None:
        certificate = build_certificate({signer.node_id: signer.sign(statement) for signer in signers})
    return {"proposal_id": proposal_id, "action": action, "version": version, "package_url": "https://x/p.wasm",
            "package_hash": package_hash, "package_size": 10, "votes_digest": DIGEST, "sequence": sequence,
            "certificate": certificate}


def check(execute_body, validators=VALIDATOR_KEYS):
    verify_certificate(execute_body, network_id=NETWORK, validators=validators, verify=verify_signature)


def test_statement_is_deterministic_and_binds_every_field():
    base = ("n", "upgrade_1", "upgrade", HASH, "1.2.0", DIGEST, 1)
    assert certificate_statement(*base) == certificate_statement(*base)
    variants = [("m", *base[1:]), (base[0], "upgrade_2", *base[2:]), (*base[:3], "cd" * 32, *base[4:]),
                (*base[:4], "1.2.1", DIGEST, 1), (*base[:5], "ef" * 32, 1), (*base[:6], 2),
                ("n", "upgrade_1", "rollback", None, "1.2.0", DIGEST, 1)]
    statements = {certificate_statement(*variant) for variant in variants}
    assert len(statements) == len(variants) and certificate_statement(*base) not in statements


def test_ratify_and_certificate_statements_are_domain_separated():
    ratify = ratify_statement("n", "p", "upgrade", HASH, "1.2.0", DIGEST, VALIDATORS[0].node_id)
    assert b"synapse-ng/ratify/v2" in ratify
    assert b"synapse-ng/certificate/v2" in certificate_statement("n", "p", "upgrade", HASH, "1.2.0", DIGEST, 1)


@pytest.mark.parametrize("fields", [
    ("n", "p", "upgrade", HASH, "1.2.0", DIGEST, 0),
    ("n", "p", "upgrade", HASH, "1.2.0", DIGEST, True),
    ("n", "p", "upgrade", "AB" * 32, "1.2.0", DIGEST, 1),
    ("n", "p", "upgrade", None, "1.2.0", DIGEST, 1),
    ("n", "p", "rollback", HASH, "1.2.0", DIGEST, 1),
    ("n", "p", "delete", HASH, "1.2.0", DIGEST, 1),
    ("n", "p", "upgrade", HASH, "1.2", DIGEST, 1),
    ("", "p", "upgrade", HASH, "1.2.0", DIGEST, 1),
    ("n", "p" * 97, "upgrade", HASH, "1.2.0", DIGEST, 1),
    ("n", "p", "upgrade", HASH, "1.2.0", None, 1),
    ("n", "p", "upgrade", HASH, "1.2.0", "CD" * 32, 1),
])
def test_statement_refuses_bad_fields(fields):
    with pytest.raises(CertificateError):
        certificate_statement(*fields)


def test_majority_certificate_is_accepted_and_signers_reported():
    check(body(signers=VALIDATORS[:2]))
    check(body(signers=VALIDATORS))
    signers = certificate_signers(body(signers=VALIDATORS[:2]), network_id=NETWORK, validators=VALIDATOR_KEYS,
                                  verify=verify_signature)
    assert signers == {VALIDATORS[0].node_id, VALIDATORS[1].node_id}


def test_rollback_certificate_without_package_is_accepted():
    check(body(action="rollback", package_hash=None, version="1.1.0", signers=VALIDATORS[1:]))


def test_minority_is_refused_with_a_clear_message():
    with pytest.raises(CertificateError) as refused:
        check(body(signers=VALIDATORS[:1]))
    assert "1 of 3 validators; 2 are needed" in str(refused.value)
    assert refused.value.reason == "bad_certificate" and refused.value.http_status == 400


def test_empty_certificate_is_refused():
    with pytest.raises(CertificateError):
        check(body(signers=()))


def test_forged_signature_is_refused():
    good = body(signers=VALIDATORS[:1])
    forged = {"validator_id": VALIDATORS[1].node_id, "signature": bytes(64)}
    with pytest.raises(CertificateError):
        check({**good, "certificate": good["certificate"] + [forged]})


def test_signature_by_another_key_under_a_validator_id_is_refused():
    statement = certificate_statement(NETWORK, "upgrade_20251003_120000_3fa9c2d1", "upgrade", HASH, "1.2.0", DIGEST, 1)
    certificate = [{"validator_id": VALIDATORS[0].node_id, "signature": VALIDATORS[0].sign(statement)},
                   {"validator_id": VALIDATORS[1].node_id, "signature": OUTSIDER.sign(statement)}]
    with pytest.raises(CertificateError):
        check(body(certificate=certificate))


def test_duplicate_signer_counts_once():
    once = body(signers=VALIDATORS[:1])
    with pytest.raises(CertificateError):
        check({**once, "certificate": once["certificate"] * 2})


def test_non_validator_signatures_are_ignored():
    statement = certificate_statement(NETWORK, "upgrade_20251003_120000_3fa9c2d1", "upgrade", HASH, "1.2.0", DIGEST, 1)
    outsiders = [identity(f"sybil-{i}") for i in range(10)]
    certificate = [{"validator_id": VALIDATORS[0].node_id, "signature": VALIDATORS[0].sign(statement)}]
    certificate += [{"validator_id": sybil.node_id, "signature": sybil.sign(statement)} for sybil in outsiders]
    with pytest.raises(CertificateError):
        check(body(certificate=certificate))


@pytest.mark.parametrize("change", [
    {"sequence": 2}, {"version": "1.2.1"}, {"package_hash": "cd" * 32}, {"votes_digest": "ef" * 32},
    {"proposal_id": "upgrade_20251003_120000_00000000"}, {"action": "rollback", "package_hash": None},
])
def test_changing_any_signed_field_invalidates_the_certificate(change):
    signed = body(signers=VALIDATORS)
    with pytest.raises(CertificateError):
        check({**signed, **change})


def test_certificate_for_another_network_is_refused():
    with pytest.raises(CertificateError):
        check(body(signers=VALIDATORS, network="other-network"))


def test_ratify_signature_cannot_stand_in_for_a_certificate_signature():
    proposal_id = "upgrade_20251003_120000_3fa9c2d1"
    certificate = [{"validator_id": v.node_id,
                    "signature": v.sign(ratify_statement(NETWORK, proposal_id, "upgrade", HASH, "1.2.0", DIGEST, v.node_id))}
                   for v in VALIDATORS]
    with pytest.raises(CertificateError):
        check(body(certificate=certificate))


def test_unsigned_fields_may_differ_but_the_package_is_bound_by_its_hash():
    signed = body(signers=VALIDATORS[:2])
    check({**signed, "package_url": "https://mirror.example/p.wasm", "package_size": 99})


def test_oversized_or_malformed_certificates_are_refused():
    statement = certificate_statement(NETWORK, "upgrade_20251003_120000_3fa9c2d1", "upgrade", HASH, "1.2.0", DIGEST, 1)
    signature = VALIDATORS[0].sign(statement)
    too_long = [{"validator_id": VALIDATORS[0].node_id, "signature": signature}] * 65
    for certificate in (too_long, "not a list", [{"validator_id": 7, "signature": signature}], [["a", "b"]]):
        with pytest.raises(CertificateError):
            check(body(certificate=certificate))
    missing = body(signers=VALIDATORS)
    del missing["sequence"]
    with pytest.raises(CertificateError, match="no field 'sequence'"):
        check(missing)


def test_even_validator_set_needs_more_than_half():
    four = VALIDATORS + [identity("validator-3")]
    keys = {v.node_id: v.public_key for v in four}
    with pytest.raises(CertificateError):
        check(body(signers=four[:2]), validators=keys)
    check(body(signers=four[:3]), validators=keys)


def test_validator_set_must_not_be_empty():
    with pytest.raises(CertificateError):
        check(body(signers=VALIDATORS), validators={})


def test_build_certificate_is_sorted_and_bounded():
    certificate = build_certificate({"b" * 16: b"2" * 64, "a" * 16: b"1" * 64})
    assert [item["validator_id"] for item in certificate] == ["a" * 16, "b" * 16]
    with pytest.raises(CertificateError):
        build_certificate({f"{i:016x}": b"x" * 64 for i in range(65)})
