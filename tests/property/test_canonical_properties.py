"""The fast canonical encoding (msgspec) and the fast nesting depth against their references.

Who relies on them: every node hashes every new state, and two nodes that encode one state to different
bytes disagree on its hash. So `canonical_json_float_free` must give canonical_json's very bytes for
every value it is used on (parsed JSON with no float), and the float rule must be there for a reason:
the same comparison run on values with floats finds a difference. The parse that decides which encoder
runs (sandbox_output.parse_state) must count floats exactly: a float anywhere, however written, makes
it say so. And the nesting depth, now taken innermost pair by innermost pair, must be the linear
count's depth on every text, valid or not.
"""

from __future__ import annotations

import hashlib
import json
from itertools import accumulate

from hypothesis import given, settings, strategies as st

from node.core.canonical import (_DEPTH_STEP, _depth_by_leaves, _structure_outside_strings, canonical_json,
                                 canonical_json_float_free, encode_state, json_nesting_depth)
from node.sandbox_output import _parse_fast, parse_state

SETTINGS = settings(max_examples=600, deadline=None)
CATCH_SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None, print_blob=False)

# Strings as a package could return them: any code point but a lone surrogate (the parse refuses
# those), with the characters encoders treat specially drawn often.
SPECIAL = "\x00\x01\x08\x09\x0a\x0c\x0d\x1f\x20\x22\x2f\x5c\x7f\x80\u00e9\u2028\u2029\ufeff\uffff\U0001f600\U0010ffff"
texts = st.text(st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(SPECIAL)), max_size=12)
integers = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, -1, 2**63 - 1, -2**63, 2**63, 2**64 - 1, 2**64, -2**64]),
                     st.integers(1, 10**300).map(lambda value: value * 7 + 10**299))
scalars = st.one_of(st.none(), st.booleans(), integers, texts)
floats = st.floats(allow_nan=False, allow_infinity=False)


def json_values(leaves) -> st.SearchStrategy:
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(texts, inner, max_size=5)),
                        max_leaves=30)


@SETTINGS
@given(json_values(scalars))
def test_the_fast_encoding_is_canonical_json_for_every_value_without_a_float(value):
    assert canonical_json_float_free(value) == canonical_json(value)


@SETTINGS
@given(st.dictionaries(texts, json_values(scalars), max_size=8))
def test_an_encoded_state_is_hashed_from_the_bytes_it_carries_whichever_encoder_made_them(state):
    fast, reference = encode_state(state, float_free=True), encode_state(state, float_free=False)
    assert fast == reference
    assert fast.state_hash == "sha256:" + hashlib.sha256(fast.data).hexdigest() and fast.state is state


@CATCH_SETTINGS
@given(json_values(st.one_of(scalars, floats)))
def _differs_with_floats(value):
    assert canonical_json_float_free(value) == canonical_json(value)


def test_the_comparison_finds_the_floats_the_fast_encoding_writes_differently():
    try:
        _differs_with_floats()
    except AssertionError:
        pass
    else:
        raise AssertionError("values with floats never differed: the float rule would have no reason")
    assert canonical_json_float_free({"a": 1e16}) != canonical_json({"a": 1e16})


# --- the parse that decides: float literals counted ----------------------------------------------

@SETTINGS
@given(json_values(scalars), st.sampled_from(["1.0", "0.5", "1e3", "1E3", "-0.0", "2.5e-7", "1e+16", "-4E-2"]),
       st.booleans())
def test_the_parse_says_float_free_exactly_when_no_float_literal_is_in_the_output(value, literal, with_float):
    document = {"global": {"value": value}}
    output = json.dumps(document, ensure_ascii=False).encode()
    if with_float:
        output = output[:-1] + b',"f":[' + literal.encode() + b"]}"
    parsed = parse_state(output, "upgrade()")
    if with_float:
        assert not parsed.float_free
    else:   # unless the stdlib path read it (text like "\\ud" in a string looks like a surrogate escape)
        assert parsed.float_free is (_parse_fast(output) is not None)
        assert canonical_json_float_free(parsed.value) == canonical_json(parsed.value) == canonical_json(document)


def test_a_float_written_inside_a_string_is_not_a_float():
    parsed = parse_state(b'{"global":{"a":"1.5e3","b":1}}', "upgrade()")
    assert parsed.float_free and parsed.value == {"global": {"a": "1.5e3", "b": 1}}


def test_an_output_the_stdlib_path_reads_is_never_called_float_free():
    parsed = parse_state(b'{"global":{"a":"\\ud83d\\ude00"}}', "upgrade()")       # surrogate escapes: the stdlib decides
    assert parsed.value == {"global": {"a": "\U0001f600"}} and not parsed.float_free


# --- the nesting depth: innermost pairs first, the linear count as reference ---------------------

def linear_depth(data: bytes) -> int:
    """The count every node used before: the deepest point of any prefix, one step per bracket."""
    return max(accumulate(map(_DEPTH_STEP.__getitem__, _structure_outside_strings(data))), default=0)


@SETTINGS
@given(st.text(st.sampled_from('[]{}"\\a'), max_size=60).map(str.encode))
def test_the_depth_is_the_linear_count_on_any_text(data):
    assert json_nesting_depth(data) == linear_depth(data)


@SETTINGS
@given(json_values(scalars))
def test_the_depth_of_valid_json_is_found_by_pairs_alone(value):
    data = json.dumps({"a": value}, ensure_ascii=False).encode()
    assert _depth_by_leaves(_structure_outside_strings(data)) == linear_depth(data) == json_nesting_depth(data)


def test_deep_or_unbalanced_texts_go_to_the_linear_count():
    assert _depth_by_leaves(b"{" * 17 + b"}" * 17) is None and json_nesting_depth(b"[" * 17 + b"]" * 17) == 17
    assert _depth_by_leaves(b"{{}") is None and json_nesting_depth(b"[[]") == 2
    assert _depth_by_leaves(b"}{") is None and json_nesting_depth(b"]]][[") == linear_depth(b"]]][[") == -1
