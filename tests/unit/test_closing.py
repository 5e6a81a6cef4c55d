"""Closing a vote: the counted set is what a strict majority of validators received, whatever the voters'
clocks say, whichever order the closes come in, and whatever one validator alone names or leaves out."""

import itertools
import os
import random

import pytest

from node.core.closing import (
    CLOSE_VOTES_MAX,
    EMPTY_VOTES_DIGEST,
    close_statement,
    counted_votes,
    pack_vote_ids,
    unpack_vote_ids,
    votes_digest,
)
from node.errors import CertificateError

V1, V2, V3, V4 = ("1" * 64, "2" * 64, "3" * 64, "4" * 64)


def closes(**named):
    return {validator: frozenset(vote_ids) for validator, vote_ids in named.items()}


def test_validators_who_agree_close_at_a_majority():
    assert counted_votes(closes(a={V1, V2}), 3) is None                     # one of three decides nothing
    assert counted_votes(closes(a={V1, V2}, b={V2, V1}), 3) == (V1, V2)
    assert counted_votes(closes(a=set(), b=set()), 3) == ()                 # nobody voted in time: expired


def test_a_vote_one_validator_alone_names_does_not_count():
    """A backdated or late vote that only a compromised validator claims to have received stays out."""
    assert counted_votes(closes(a={V1, V4}, b={V1}, c={V1}), 3) == (V1,)
    # With a validator still missing, the vote could yet reach a majority: wait for it.
    assert counted_votes(closes(a={V1, V4}, b={V1}), 3) is None


def test_one_validator_cannot_remove_a_vote_the_others_received():
    assert counted_votes(closes(a=set(), b={V1, V2}, c={V1, V2}), 3) == (V1, V2)
    assert counted_votes(closes(a=set(), b={V1, V2}), 3) is None            # c decides whether they count


def test_a_vote_that_can_no_longer_reach_a_majority_is_out():
    five = closes(a={V1, V2}, b={V1}, c={V1}, d={V1})                        # 5 validators: 3 needed
    assert counted_votes(five, 5) == (V1,)                                  # V2: 1 + 1 still open < 3


def test_the_set_is_the_same_whatever_the_order_and_never_changes_once_decided():
    seed = int(os.environ.get("SYNAPSE_CLOSE_SEED", random.SystemRandom().randrange(2**32)))
    print(f"closing seed: {seed} (replay with SYNAPSE_CLOSE_SEED={seed})")
    rng = random.Random(seed)
    votes = [f"{i:064x}" for i in range(6)]
    for _ in range(300):
        validator_count = rng.randint(1, 7)
        named = {f"v{i}": frozenset(rng.sample(votes, rng.randint(0, len(votes)))) for i in range(validator_count)}
        everyone = counted_votes(named, validator_count)
        needed = validator_count // 2 + 1
        assert everyone == tuple(sorted(v for v in votes if sum(v in s for s in named.values()) >= needed))
        order = list(named)
        rng.shuffle(order)
        decided = None
        for size in range(1, validator_count + 1):
            prefix = {validator: named[validator] for validator in order[:size]}
            result = counted_votes(prefix, validator_count)
            if decided is not None:
                assert result == decided, "a decided set never changes"
            elif result is not None:
                decided = result
        assert decided == everyone


def test_vote_ids_have_one_encoding():
    packed = pack_vote_ids([V2, V1, V2])
    assert packed == bytes.fromhex(V1) + bytes.fromhex(V2) and unpack_vote_ids(packed) == (V1, V2)
    assert votes_digest(b"") == EMPTY_VOTES_DIGEST
    for bad in (b"x" * 31, bytes.fromhex(V2) + bytes.fromhex(V1), bytes.fromhex(V1) * 2, "not bytes",
                b"\x00" * 32 * (CLOSE_VOTES_MAX + 1)):
        with pytest.raises(CertificateError):
            unpack_vote_ids(bad)
    for bad in (["AB" * 32], ["zz"], [f"{i:064x}" for i in range(CLOSE_VOTES_MAX + 1)]):
        with pytest.raises(CertificateError):
            pack_vote_ids(bad)


def test_the_close_statement_binds_network_proposal_votes_and_validator():
    base = ("net", "upgrade_1", pack_vote_ids([V1]), "0123456789abcdef")
    variants = [("other", *base[1:]), (base[0], "upgrade_2", *base[2:]), (*base[:2], pack_vote_ids([V2]), base[3]),
                (*base[:3], "fedcba9876543210")]
    statements = {close_statement(*variant) for variant in [base, *variants]}
    assert len(statements) == 5 and b"synapse-ng/close/v1" in close_statement(*base)
    assert len({close_statement(*base) for _ in itertools.repeat(None, 3)}) == 1
