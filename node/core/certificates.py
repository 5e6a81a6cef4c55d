"""Upgrade certificates: what validators sign, and how any node checks a majority signed it.

Why: an EXECUTE_UPGRADE entry makes every node run code, so no node may trust the validator who
published it. The entry carries a certificate: signatures of a STRICT MAJORITY of the validator set
(from genesis) over one canonical statement that binds the network, the proposal, the action, the
package hash, the version, the digest of the votes the validators counted when they closed voting
(node/core/closing.py) and the upgrade sequence number. Changing any of these fields invalidates
every signature, a signature made for another network or another kind of message never verifies
(the statement starts with a domain tag), and a minority of colluding validators cannot forge one.

Two statements exist, with different domain tags so one can never be replayed as the other:
  * the ratify statement: a validator's signed consent to ratify a proposal (phase 1 in the Raft
    state machine, node/core/ratification.py), so that no validator can ratify in another's name;
  * the certificate statement: a validator's signature over the proposal AND its assigned sequence
    (phase 2), collected into the EXECUTE_UPGRADE entry.

Statements are msgpack arrays (no maps: nothing to sort, nothing to normalize). Inputs are checked
strictly because a statement that two nodes encode differently would silently never verify.
Signature verification is injected (`verify(public_key, message, signature) -> bool`, which never
raises), so this module stays pure and tests can count or fake verifications.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import msgpack

from node.core.quorum import majority_of
from node.core.semver import is_valid_version
from node.errors import CertificateError

CERTIFICATE_DOMAIN = "synapse-ng/certificate/v2"     # v2: binds the counted votes' digest
RATIFY_DOMAIN = "synapse-ng/ratify/v2"
CERTIFICATE_SIGNATURES_MAX = 64   # the EXECUTE_UPGRADE schema bounds its certificate list to 64
VALIDATORS_MAX = 64               # a certificate must be able to hold a majority of the validator set
PROPOSAL_ID_LENGTH_MAX = 96
NETWORK_ID_LENGTH_MAX = 128
SIGNATURE_SIZE_BYTES = 64
ACTIONS = ("upgrade", "rollback")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NODE_ID = re.compile(r"^[0-9a-f]{16}$")

Verify = Callable[[bytes, bytes, bytes], bool]


def _check_fields(network_id: object, proposal_id: object, action: object, package_hash: object,
                  version: object, votes_digest: object) -> None:
    if not isinstance(network_id, str) or not 0 < len(network_id) <= NETWORK_ID_LENGTH_MAX:
        raise CertificateError(f"network_id must be a non-empty string of at most {NETWORK_ID_LENGTH_MAX} characters")
    if not isinstance(proposal_id, str) or not 0 < len(proposal_id) <= PROPOSAL_ID_LENGTH_MAX:
        raise CertificateError(f"proposal_id must be a non-empty string of at most {PROPOSAL_ID_LENGTH_MAX} characters")
    if action not in ACTIONS:
        raise CertificateError(f"action must be one of {ACTIONS}, not {action!r}")
    if action == "upgrade" and not (isinstance(package_hash, str) and _HEX64.match(package_hash)):
        raise CertificateError("an upgrade's package_hash must be 64 lowercase hex digits")
    if action == "rollback" and package_hash is not None:
        raise CertificateError("a rollback has no package: its package_hash must be None")
    if not is_valid_version(version):
        raise CertificateError(f"version {version!r} is not a semver string")
    if not (isinstance(votes_digest, str) and _HEX64.match(votes_digest)):
        raise CertificateError("votes_digest must be 64 lowercase hex digits (the digest of the counted votes)")


def certificate_statement(network_id: str, proposal_id: str, action: str, package_hash: str | None,
                          version: str, votes_digest: str, sequence: int) -> bytes:
    """The exact bytes every validator signs for upgrade number `sequence` (phase 2)."""
    _check_fields(network_id, proposal_id, action, package_hash, version, votes_digest)
    if type(sequence) is not int or sequence < 1:
        raise CertificateError(f"sequence must be an integer >= 1, not {sequence!r}")
    return msgpack.packb([CERTIFICATE_DOMAIN, network_id, proposal_id, action, package_hash, version, votes_digest,
                          sequence],
                         use_bin_type=True)


def ratify_statement(network_id: str, proposal_id: str, action: str, package_hash: str | None,
                     version: str, votes_digest: str, validator_id: str) -> bytes:
    """The exact bytes a validator signs to ratify a proposal (phase 1; no sequence exists yet)."""
    _check_fields(network_id, proposal_id, action, package_hash, version, votes_digest)
    if not isinstance(validator_id, str) or not _NODE_ID.match(validator_id):
        raise CertificateError(f"validator_id must be 16 lowercase hex digits, not {validator_id!r}")
    return msgpack.packb([RATIFY_DOMAIN, network_id, proposal_id, action, package_hash, version, votes_digest,
                          validator_id],
                         use_bin_type=True)


def build_certificate(signatures: Mapping[str, bytes]) -> list[dict]:
    """The certificate list of an EXECUTE_UPGRADE body, sorted by validator id so that every validator
    who publishes the same signatures publishes the same body."""
    if len(signatures) > CERTIFICATE_SIGNATURES_MAX:
        raise CertificateError(f"a certificate holds at most {CERTIFICATE_SIGNATURES_MAX} signatures, not {len(signatures)}")
    return [{"validator_id": validator_id, "signature": bytes(signatures[validator_id])}
            for validator_id in sorted(signatures)]


def _check_validator_set(validators: Mapping[str, bytes]) -> None:
    if not 1 <= len(validators) <= VALIDATORS_MAX:
        raise CertificateError(f"the validator set must hold 1 to {VALIDATORS_MAX} validators, not {len(validators)}")


def certificate_signers(execute_body: Mapping, *, network_id: str, validators: Mapping[str, bytes],
                        verify: Verify) -> frozenset[str]:
    """The validators whose signature in `execute_body["certificate"]` is valid over the statement
    built from the body's own fields. Non-validators are ignored; a validator listed twice counts once."""
    _check_validator_set(validators)
    if not isinstance(execute_body, Mapping):
        raise CertificateError("an EXECUTE_UPGRADE body must be a map")
    try:
        statement = certificate_statement(network_id, execute_body["proposal_id"], execute_body["action"],
                                          execute_body["package_hash"], execute_body["version"],
                                          execute_body["votes_digest"], execute_body["sequence"])
        certificate = execute_body["certificate"]
    except KeyError as missing:
        raise CertificateError(f"the EXECUTE_UPGRADE body has no field {missing}") from None
    if not isinstance(certificate, Sequence) or isinstance(certificate, (str, bytes)):
        raise CertificateError("the certificate must be a list of {validator_id, signature} maps")
    if len(certificate) > CERTIFICATE_SIGNATURES_MAX:
        raise CertificateError(f"the certificate lists {len(certificate)} signatures; at most {CERTIFICATE_SIGNATURES_MAX} are allowed")
    signers: set[str] = set()
    for item in certificate:
        if not isinstance(item, Mapping):
            raise CertificateError("each certificate item must be a {validator_id, signature} map")
        validator_id, signature = item.get("validator_id"), item.get("signature")
        if not isinstance(validator_id, str) or not isinstance(signature, bytes):
            raise CertificateError("each certificate item needs a string validator_id and a bytes signature")
        if validator_id in signers or validator_id not in validators:
            continue
        if len(signature) == SIGNATURE_SIZE_BYTES and verify(validators[validator_id], statement, signature):
            signers.add(validator_id)
    return frozenset(signers)


def verify_certificate(execute_body: Mapping, *, network_id: str, validators: Mapping[str, bytes],
                       verify: Verify) -> None:
    """Raise CertificateError unless a strict majority of `validators` signed exactly this upgrade."""
    signers = certificate_signers(execute_body, network_id=network_id, validators=validators, verify=verify)
    needed = majority_of(len(validators))
    if len(signers) < needed:
        raise CertificateError(
            f"the certificate of proposal {execute_body.get('proposal_id')!r} sequence {execute_body.get('sequence')!r} "
            f"holds valid signatures of {len(signers)} of {len(validators)} validators; {needed} are needed")
