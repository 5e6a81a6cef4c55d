"""Every majority and share computation of the project, in one place (as etcd's quorum/majority.go).

Why: "a strict majority" and "more than X percent" are computed for validator certificates, closing
votes, ratification, the tally, state-hash divergence, fault groups and the demo. Written inline they
drift apart (`> n/2` here, `>= n//2` there, a float percentage elsewhere), and a majority rule that
two nodes compute differently splits the network. Integers only: percentages are cross-multiplied, so
no float rounding can make two nodes disagree. tests/unit/test_quorum.py checks these against a table
of cases in tests/unit/data/quorum_cases.json.
"""

from __future__ import annotations


def majority_of(count: int) -> int:
    """The smallest number that is a strict majority of `count` members (count >= 1)."""
    assert type(count) is int and count >= 1, "a majority of nobody is undefined"
    return count // 2 + 1


def is_majority(part: int, count: int) -> bool:
    """True when `part` of `count` is a strict majority (more than half)."""
    assert 0 <= part <= count, "a part cannot exceed its whole"
    return part * 2 > count


def share_exceeds(part: int, whole: int, pct: int) -> bool:
    """part / whole > pct %, in integers (False for an empty whole: nothing exceeds a share of nothing)."""
    return whole > 0 and part * 100 > pct * whole


def share_reaches(part: int, whole: int, pct: int) -> bool:
    """part / whole >= pct %, in integers (an empty whole reaches every share: nothing is missing)."""
    return part * 100 >= pct * whole
