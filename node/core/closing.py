"""Closing a vote: which votes count is decided by the validators through Raft, never by a voter's clock.

Why it works as it does:
  * A vote's own timestamp (its HLC) is chosen by the voter: a member can sign a vote today that claims
    to be from before a deadline long gone. So a deadline cannot be checked against the vote; it is
    checked against the moment the VALIDATORS received the vote. Each validator, when its own clock
    passes the deadline (or when its tally is already decided early), submits a signed close to Raft
    naming the votes it holds for the proposal (one per voter: the latest by author sequence).
  * The counted set is fixed by a strict-majority rule over those closes: a vote counts when a strict
    majority of the whole validator set named it; it is out when it can no longer get there. The set
    is final once every vote named so far is in or out and no unnamed vote could still get in, and
    from then on no further close can change it (the rule is monotone), so every validator computes
    the same set whatever the order of closes. One validator can neither add a vote (it needs a
    majority of namers) nor remove one that the others all received (they are a majority without it).
    The cost: while a vote was received by some validators only (it arrived right at the deadline)
    and a validator is down, the close waits for that validator.
  * Raft orders the closes (the first close of each validator counts), and each validator then
    publishes a CLOSE entry with the counted set; a proposal is closed for every node once a strict
    majority of validators published the same set. Ratification and the upgrade certificate sign the
    set's digest, so what executes is bound to the same votes.
  * Vote ids travel as one byte string of 32-byte ids (sorted, distinct): compact in Raft commands
    and entries, with one encoding per set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import msgpack

from node.core.certificates import NETWORK_ID_LENGTH_MAX, PROPOSAL_ID_LENGTH_MAX
from node.core.quorum import majority_of
from node.errors import CertificateError

CLOSE_DOMAIN = "synapse-ng/close/v1"
VOTE_ID_SIZE_BYTES = 32
CLOSE_VOTES_MAX = 1024          # one vote per voter; the log accepts at most GENESIS_MEMBERS_MAX (1024) authors
VOTE_IDS_SIZE_MAX_BYTES = CLOSE_VOTES_MAX * VOTE_ID_SIZE_BYTES
EMPTY_VOTES_DIGEST = hashlib.sha256(b"").hexdigest()


def pack_vote_ids(vote_ids: Iterable[str]) -> bytes:
    """Hex entry ids -> the canonical byte string (sorted, distinct). Raises CertificateError."""
    unique = sorted(set(vote_ids))
    if len(unique) > CLOSE_VOTES_MAX:
        raise CertificateError(f"a close names at most {CLOSE_VOTES_MAX} votes, not {len(unique)}")
    try:
        packed = b"".join(bytes.fromhex(vote_id) for vote_id in unique)
    except (TypeError, ValueError):
        raise CertificateError("vote ids must be entry ids (64 lowercase hex digits)") from None
    if len(packed) != len(unique) * VOTE_ID_SIZE_BYTES or any(vote_id != vote_id.lower() for vote_id in unique):
        raise CertificateError("vote ids must be entry ids (64 lowercase hex digits)")
    return packed


def unpack_vote_ids(packed: object) -> tuple[str, ...]:
    """The canonical byte string -> hex ids. Raises CertificateError unless it is canonical."""
    if not isinstance(packed, bytes) or len(packed) % VOTE_ID_SIZE_BYTES or len(packed) > VOTE_IDS_SIZE_MAX_BYTES:
        raise CertificateError(f"vote ids must be a byte string of at most {CLOSE_VOTES_MAX} 32-byte ids")
    chunks = [packed[offset:offset + VOTE_ID_SIZE_BYTES] for offset in range(0, len(packed), VOTE_ID_SIZE_BYTES)]
    if any(first >= second for first, second in zip(chunks, chunks[1:])):
        raise CertificateError("vote ids must be sorted and distinct")
    return tuple(chunk.hex() for chunk in chunks)


def votes_digest(packed: bytes) -> str:
    """sha256 hex of the canonical vote id string: what ratifications and certificates sign."""
    return hashlib.sha256(packed).hexdigest()


def close_statement(network_id: str, proposal_id: str, packed_vote_ids: bytes, validator_id: str) -> bytes:
    """The exact bytes a validator signs to close voting on a proposal with the votes it received."""
    if not isinstance(network_id, str) or not 0 < len(network_id) <= NETWORK_ID_LENGTH_MAX:
        raise CertificateError(f"network_id must be a non-empty string of at most {NETWORK_ID_LENGTH_MAX} characters")
    if not isinstance(proposal_id, str) or not 0 < len(proposal_id) <= PROPOSAL_ID_LENGTH_MAX:
        raise CertificateError(f"proposal_id must be a non-empty string of at most {PROPOSAL_ID_LENGTH_MAX} characters")
    unpack_vote_ids(packed_vote_ids)
    if not isinstance(validator_id, str) or len(validator_id) != 16:
        raise CertificateError("validator_id must be a node id (16 lowercase hex digits)")
    return msgpack.packb([CLOSE_DOMAIN, network_id, proposal_id, votes_digest(packed_vote_ids), validator_id],
                         use_bin_type=True)


def counted_votes(closes: Mapping[str, frozenset[str]], validator_count: int) -> tuple[str, ...] | None:
    """The counted vote ids (sorted) once the closes decide them, else None (wait for more closes).

    `closes`: validator id -> the vote ids it named (each validator once). A vote is in when a strict
    majority of the `validator_count` validators named it, out when even every validator that has not
    closed yet could not bring it there; decided when every vote is one or the other and a vote nobody
    named yet could not get in either."""
    assert 1 <= validator_count and len(closes) <= validator_count, "closes come from the validator set only"
    needed = majority_of(validator_count)
    still_open = validator_count - len(closes)
    if still_open >= needed:          # an unnamed vote could still be named by a majority
        return None
    namings: dict[str, int] = {}
    for vote_ids in closes.values():
        for vote_id in vote_ids:
            namings[vote_id] = namings.get(vote_id, 0) + 1
    if any(count < needed <= count + still_open for count in namings.values()):
        return None
    return tuple(sorted(vote_id for vote_id, count in namings.items() if count >= needed))
