import json

import pytest
from hypothesis import given, settings, strategies as st

from node.core.canonical import (JSON_DEPTH_MAX, canonical_json, json_depth_within, json_nesting_depth, normalize_sha256,
                                 state_hash)
from node.core.semver import is_valid_version, parse_version


@pytest.mark.parametrize(
    "lower,higher",
    [("1.0.0", "1.0.1"), ("1.0.9", "1.1.0"), ("1.9.0", "2.0.0"), ("1.0.0-alpha", "1.0.0"),
     ("1.0.0-alpha", "1.0.0-alpha.1"), ("1.0.0-alpha.1", "1.0.0-beta"), ("1.0.0-2", "1.0.0-11"),
     ("1.0.0-11", "1.0.0-a"), ("1.2.0", "1.10.0")],
)
def test_semver_precedence(lower, higher):
    assert parse_version(lower) < parse_version(higher)
    assert parse_version(higher) > parse_version(lower)


def test_build_metadata_is_ignored_for_precedence():
    assert parse_version("1.2.0+build.7") == parse_version("1.2.0")


@pytest.mark.parametrize("bad", ["1.2", "v1.2.0", "01.2.0", "1.2.0-", "", None, 12, "1.2.0" + "0" * 80])
def test_bad_versions_are_refused_with_a_hint(bad):
    with pytest.raises(ValueError, match="version"):
        parse_version(bad)


def test_sha256_forms():
    digest = "ab" * 32
    assert normalize_sha256(digest) == digest
    assert normalize_sha256("SHA256:" + digest.upper()) == digest
    assert normalize_sha256("sha256:" + digest[:-1]) is None
    assert normalize_sha256("md5:" + digest) is None
    assert normalize_sha256(None) is None


def test_state_hash_ignores_key_order_and_sees_values():
    a = {"global": {"version": "1.0.0", "nodes": {"x": 1, "y": 2}}}
    b = {"global": {"nodes": {"y": 2, "x": 1}, "version": "1.0.0"}}
    assert canonical_json(a) == canonical_json(b)
    assert state_hash(a) == state_hash(b)
    assert state_hash(a) != state_hash({"global": {"version": "1.0.1", "nodes": {"x": 1, "y": 2}}})
    assert state_hash(a).startswith("sha256:")


# --- JSON nesting depth ---------------------------------------------------------------------------

def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


# Strings full of what could fool a scanner: brackets, quotes, backslashes, escapes, non-ASCII.
_tricky_text = st.text(alphabet='[]{}"\\/ab\u00e9\u2028\n\u005b', max_size=12)
_json_values = st.recursive(st.none() | st.booleans() | st.integers() | _tricky_text,
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_tricky_text, inner, max_size=4),
                            max_leaves=40)


@settings(max_examples=300)
@given(value=_json_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_the_nesting_depth_is_exact_whatever_the_strings_hold(value, ascii_only, indent):
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode("utf-8")
    assert json_nesting_depth(text) == _depth(value)
    assert json_depth_within(text, _depth(value)) and not json_depth_within(text, _depth(value) - 1)


def test_nesting_past_the_limit_is_seen_in_linear_time_and_strings_do_not_count():
    deep = b"[" * (JSON_DEPTH_MAX + 1) + b"]" * (JSON_DEPTH_MAX + 1)
    assert not json_depth_within(deep) and json_nesting_depth(deep) == JSON_DEPTH_MAX + 1
    assert json_depth_within(b'{"a":"' + b"[" * 100_000 + b'"}')
    assert json_nesting_depth(b"[" * 1_000_000) == 1_000_000      # unterminated: what a parser would read
    assert json_nesting_depth(b'"\\\\"' + b"[[") == 2                 # an escaped backslash ends no string early


# A version names a directory, decides which upgrade is newer and whether one is "already proposed":
# it is ASCII semver, matched whole. Python's \d and $ would let each of these through.
@pytest.mark.parametrize("odd", ["3.1.0\n", "1\u0663.0.0", "\u0661.0.0", "1.0.0-\u0663", "1.0.0+b\u0663", "3.1.0\r",
                                 "\uff11.0.0", "3.1.0 ", " 3.1.0", "3.1.0\x00"])
def test_versions_are_ascii_semver_matched_whole(odd):
    with pytest.raises(ValueError, match="not semver"):
        parse_version(odd)
    assert not is_valid_version(odd)


def test_build_metadata_is_parsed_but_never_part_of_equality():
    assert parse_version("3.1.0+build.1") == parse_version("3.1.0+other") == parse_version("3.1.0")
    assert not parse_version("3.1.0+build.1") > parse_version("3.1.0")
    assert parse_version("3.1.0-rc.1+x") != parse_version("3.1.0")
