"""Every majority and share rule of the project against a table of cases (tests/unit/data/quorum_cases.json)
and against exact fractions, so a rule that drifts is caught before two nodes disagree."""

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest

from node.core import quorum

CASES = json.loads((Path(__file__).parent / "data" / "quorum_cases.json").read_text())


@pytest.mark.parametrize("function", ["majority_of", "is_majority", "share_exceeds", "share_reaches"])
def test_the_table_of_cases(function):
    for *arguments, expected in CASES[function]:
        assert getattr(quorum, function)(*arguments) == expected, (function, arguments)


def test_the_rules_match_exact_fractions():
    rng = random.Random(20261204)
    for _ in range(5000):
        whole = rng.randint(0, 1000)
        part, pct = rng.randint(0, whole), rng.randint(0, 100)
        exact = Fraction(part, whole) if whole else None
        assert quorum.share_exceeds(part, whole, pct) == (exact is not None and exact > Fraction(pct, 100))
        assert quorum.share_reaches(part, whole, pct) == (exact is None or exact >= Fraction(pct, 100))
        if whole:
            assert quorum.is_majority(part, whole) == (Fraction(part, whole) > Fraction(1, 2))
            assert quorum.is_majority(quorum.majority_of(whole), whole)
            assert not quorum.is_majority(quorum.majority_of(whole) - 1, whole)
