"""The sandbox's fast output parser (msgspec) against the stdlib path every node used before it.

Who controls the input: a package author, possibly hostile; every node must reach the same verdict.
So for every output, `parse_state_object` must give what `parse_state_object_stdlib` gives: the same
value (same types, same float bits, same key order) or the same BadOutput message. Checked on a table
of hostile cases and on generated outputs (hypothesis: JSON values encoded every way the stdlib can,
then mutated; number literals from the grammar and around its limits; strings from escapes, surrogate
halves and invalid UTF-8; objects with duplicate keys; nesting around the limit). Each kind of check is
also run against a deliberately wrong parser, to show it fails when the parsers differ; and the fast
path is shown to be taken for an ordinary state (else the comparison would hold trivially).
"""

from __future__ import annotations

import json
import struct
import sys

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from node import errors
from node.core.canonical import JSON_DEPTH_MAX
from node.sandbox_output import _finite_float, _parse_fast, parse_state_object, parse_state_object_stdlib

SETTINGS = settings(max_examples=500, deadline=None)
CATCH_SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None, print_blob=False)


def strict_form(value: object) -> object:
    """A form where equal means identical: types, float bits, key order (1 == 1.0 == True otherwise)."""
    if isinstance(value, dict):
        return ("object", tuple((key, strict_form(item)) for key, item in value.items()))
    if isinstance(value, list):
        return ("array", tuple(strict_form(item) for item in value))
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    return (type(value).__name__, value)


def outcome(parse, output: bytes) -> tuple:
    try:
        return ("accepted", strict_form(parse(output, "upgrade()")))
    except errors.BadOutput as error:
        return ("refused", str(error))
    except Exception as error:      # not a verdict: a crash, which differs from any verdict
        return ("raised", type(error).__name__)


def assert_same_as_stdlib(parse, output: bytes) -> None:
    assert outcome(parse, output) == outcome(parse_state_object_stdlib, output), output[:300]


# --- deliberately wrong parsers: each check below must catch at least one ----------------------------

def _with_fallback(name: str, fast):
    def parse(output: bytes, producer: str) -> dict:
        try:
            value = fast(output)
        except ValueError:
            value = None
        return value if type(value) is dict else parse_state_object_stdlib(output, producer)
    parse.__name__ = name
    return parse


wrong_accepts_infinity = _with_fallback("wrong_accepts_infinity", msgspec.json.Decoder(float_hook=float).decode)   # 1e400 -> inf
wrong_skips_depth_check = _with_fallback("wrong_skips_depth_check", msgspec.json.Decoder(float_hook=_finite_float).decode)


def wrong_first_duplicate_wins(output: bytes, producer: str) -> dict:
    parse_state_object_stdlib(output, producer)   # refusals as the stdlib; accepted values re-read
    return json.loads(output, object_pairs_hook=lambda pairs: dict(reversed(pairs)), parse_float=_finite_float)


def wrong_big_integers_as_floats(output: bytes, producer: str) -> dict:
    def as_float(value):
        if isinstance(value, dict):
            return {key: as_float(item) for key, item in value.items()}
        if isinstance(value, list):
            return [as_float(item) for item in value]
        return float(value) if type(value) is int and abs(value) >= 2**64 else value
    return as_float(parse_state_object_stdlib(output, producer))


# --- the table of hostile outputs ----------------------------------------------------------------

def nested(depth: int) -> bytes:
    """An object whose nesting is exactly `depth` (the object itself counts)."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


HOSTILE = [
    ("plain object", b'{"a":1,"b":[true,false,null],"c":"x"}', "accepted"),
    ("NaN", b'{"a":NaN}', "refused"),
    ("Infinity", b'{"a":Infinity}', "refused"),
    ("-Infinity", b'{"a":-Infinity}', "refused"),
    ("float overflow 1e400", b'{"a":1e400}', "refused"),
    ("float overflow -1e400", b'{"a":-1e400}', "refused"),
    ("float just above max", b'{"a":1.7976931348623159e308}', "refused"),
    ("float max", b'{"a":1.7976931348623157e308}', "accepted"),
    ("huge exponent", b'{"a":1e400000000000000000000}', "refused"),
    ("underflow to 0", b'{"a":1e-400}', "accepted"),
    ("subnormal", b'{"a":5e-324}', "accepted"),
    ("halfway subnormal", b'{"a":2.4703282292062328e-324}', "accepted"),
    ("many digits float", b'{"a":123456789012345678901234567890.5}', "accepted"),
    ("negative zero float", b'{"a":-0.0}', "accepted"),
    ("negative zero int", b'{"a":-0}', "accepted"),
    ("int64 min", b'{"a":-9223372036854775808}', "accepted"),
    ("below int64 min", b'{"a":-9223372036854775809}', "accepted"),
    ("uint64 max", b'{"a":18446744073709551615}', "accepted"),
    ("above uint64 max", b'{"a":18446744073709551616}', "accepted"),
    ("100-digit int", b'{"a":' + b"7" * 100 + b"}", "accepted"),
    ("4300-digit int", b'{"a":' + b"9" * 4300 + b"}", "accepted"),
    ("-4300-digit int", b'{"a":-' + b"9" * 4300 + b"}", "accepted"),
    ("4301-digit int", b'{"a":' + b"9" * 4301 + b"}", "refused"),
    ("leading zero", b'{"a":01}', "refused"),
    ("bare dot", b'{"a":1.}', "refused"),
    ("leading dot", b'{"a":.5}', "refused"),
    ("plus sign", b'{"a":+1}', "refused"),
    ("hex", b'{"a":0x10}', "refused"),
    ("exponent without digits", b'{"a":1e}', "refused"),
    ("duplicate keys", b'{"a":1,"b":2,"a":3}', "accepted"),
    ("duplicate via escape", b'{"a":1,"\\u0061":2}', "accepted"),
    ("duplicate nested object", b'{"a":{"x":1},"a":{"y":2}}', "accepted"),
    ("lone high surrogate", b'{"a":"\\ud800"}', "refused"),
    ("lone low surrogate", b'{"a":"\\udc00"}', "refused"),
    ("reversed pair", b'{"a":"\\udc00\\ud800"}', "refused"),
    ("high then letter", b'{"a":"\\ud800\\u0041"}', "refused"),
    ("surrogate in key", b'{"\\uD800":1}', "refused"),
    ("valid pair", b'{"a":"\\ud83d\\ude00"}', "accepted"),
    ("escaped backslash then ud", b'{"a":"\\\\ud800"}', "accepted"),
    ("UTF-8 encoded surrogate", b'{"a":"\xed\xa0\x80"}', "refused"),
    ("overlong NUL", b'{"a":"\xc0\x80"}', "refused"),
    ("above U+10FFFF", b'{"a":"\xf4\x90\x80\x80"}', "refused"),
    ("truncated UTF-8", b'{"a":"\xe2\x82"}', "refused"),
    ("U+10FFFF", b'{"a":"\xf4\x8f\xbf\xbf"}', "accepted"),
    ("noncharacter U+FFFE", b'{"a":"\xef\xbf\xbe"}', "accepted"),
    ("escaped NUL", b'{"a":"\\u0000"}', "accepted"),
    ("raw NUL in string", b'{"a":"\x00"}', "refused"),
    ("raw control in key", b'{"\x01":1}', "refused"),
    ("DEL in string", b'{"a":"\x7f"}', "accepted"),
    ("bad escape", b'{"a":"\\x41"}', "refused"),
    ("capital U escape", b'{"a":"\\U0041"}', "refused"),
    ("short unicode escape", b'{"a":"\\u04"}', "refused"),
    ("BOM", b'\xef\xbb\xbf{"a":1}', "refused"),
    ("JSON whitespace", b' \t\n\r{ "a" :\t1 }\r\n ', "accepted"),
    ("form feed", b'\x0c{"a":1}', "refused"),
    ("vertical tab", b'{"a":1}\x0b', "refused"),
    ("non-breaking space", b'\xc2\xa0{"a":1}', "refused"),
    ("line separator", b'\xe2\x80\xa8{"a":1}', "refused"),
    ("trailing data", b'{"a":1}x', "refused"),
    ("two objects", b'{"a":1} {"b":2}', "refused"),
    ("trailing NUL", b'{"a":1}\x00', "refused"),
    ("trailing comma object", b'{"a":1,}', "refused"),
    ("trailing comma array", b'{"a":[1,]}', "refused"),
    ("empty", b"", "refused"),
    ("only whitespace", b"  ", "refused"),
    ("array at top", b"[1,2,3]", "refused"),
    ("string at top", b'"x"', "refused"),
    ("number at top", b"1", "refused"),
    ("null at top", b"null", "refused"),
    ("Python literals", b'{"a":True}', "refused"),
    ("single quotes", b"{'a':1}", "refused"),
    ("unquoted key", b"{a:1}", "refused"),
    ("comment", b'{"a":1 /* x */}', "refused"),
    ("unterminated string", b'{"a":"x}', "refused"),
    ("unterminated object", b'{"a":1', "refused"),
    (f"nesting {JSON_DEPTH_MAX}", nested(JSON_DEPTH_MAX), "accepted"),
    (f"nesting {JSON_DEPTH_MAX + 1}", nested(JSON_DEPTH_MAX + 1), "refused"),
    ("nesting 100,000", b"[" * 100_000, "refused"),
    ("brackets in strings do not nest", b'{"a":"' + b"[" * 1000 + b'"}', "accepted"),
]


@pytest.mark.parametrize("label, output, verdict", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_output_same_verdict_as_stdlib(label, output, verdict):
    assert outcome(parse_state_object_stdlib, output)[0] == verdict, f"the stdlib's verdict on {label} changed"
    assert_same_as_stdlib(parse_state_object, output)


@pytest.mark.parametrize("wrong", [wrong_accepts_infinity, wrong_skips_depth_check, wrong_first_duplicate_wins],
                         ids=lambda function: function.__name__)
def test_the_table_catches_a_wrong_parser(wrong):
    differences = [label for label, output, _verdict in HOSTILE
                   if outcome(wrong, output) != outcome(parse_state_object_stdlib, output)]
    assert differences, f"{wrong.__name__} passed every hostile case"


def test_the_fast_path_reads_ordinary_and_hostile_accepted_outputs():
    state = {"global": {"version": "1.2.0", "nodes": {f"{index:016x}": {"address": f"10.0.0.{index}:8000", "reputation": index,
                                                                       "validator": index % 2 == 0, "weight": index / 3}
                                                    for index in range(200)}}}
    assert _parse_fast(json.dumps(state).encode()) == state
    fast = [label for label, output, verdict in HOSTILE if verdict == "accepted" and _parse_fast(output) is not None]
    assert len(fast) >= 20, fast   # all accepted cases but the surrogate escapes (the stdlib decides those)


# --- generated outputs ---------------------------------------------------------------------------

ANY_CHARACTER = st.characters(blacklist_categories=())          # surrogates (Cs) included
NO_SURROGATE = st.characters(blacklist_categories=("Cs",))
SOME_CHARACTER = st.one_of(NO_SURROGATE, NO_SURROGATE, NO_SURROGATE, NO_SURROGATE, ANY_CHARACTER, st.sampled_from('"\\/\x00\x1f\x7f'))
KEYS = st.text(SOME_CHARACTER, max_size=6) | st.sampled_from(["a", "b", "é", "\ud800", "\U0001f600"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**60), max_value=10**60)
           | st.floats(allow_nan=False, allow_infinity=False) | st.floats() | st.text(SOME_CHARACTER, max_size=12))
VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
                      max_leaves=24)
INTERESTING_BYTES = list(b'{}[]",:\\u0123456789eE.-+ \t\n\r\x0cNaIfity') + [0x00, 0x7F, 0xC0, 0xED, 0xEF, 0xFF]


@st.composite
def encoded_outputs(draw) -> bytes:
    """A value encoded as the stdlib can (ASCII escapes or raw UTF-8, NaN tokens, indentation), maybe mutated."""
    value = draw(VALUES if draw(st.integers(0, 4)) == 0 else st.dictionaries(KEYS, VALUES, max_size=5))
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True, indent=draw(st.sampled_from([None, 0, 2])),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (",\t", "\n:\r")])))
    output = bytearray(text.encode("utf-8", "surrogatepass"))   # raw surrogates make invalid UTF-8
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        position = draw(st.integers(0, len(output)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))
        if action == "insert":
            output.insert(position, byte)
        elif position < len(output):
            if action == "delete":
                del output[position]
            else:
                output[position] = byte
    return bytes(output)


DIGITS = st.text("0123456789", min_size=1, max_size=25)
EXPONENTS = st.integers(0, 400).map(str) | st.sampled_from(["307", "308", "309", "323", "324", "325", "99999999999999999999"])


@st.composite
def number_literals(draw) -> str:
    """Mostly valid JSON numbers (many near the float range's ends, some of 4,300 digits), some not."""
    sign = draw(st.sampled_from(["", "", "", "-", "-", "+"]))
    whole = draw(st.sampled_from(["0", "1", "00", "01"]) | DIGITS.map(lambda digits: digits.lstrip("0") or "0") | DIGITS
                 | st.integers(4295, 4305).map(lambda length: "9" * length))
    fraction = draw(st.sampled_from(["", "", "", ".", ".0", ".5"]) | DIGITS.map(lambda digits: "." + digits))
    exponent = draw(st.sampled_from(["", "", "", "", "e", "E+"]) | st.builds(lambda mark, sign, value: mark + sign + value,
                                                                    st.sampled_from("eE"), st.sampled_from(["", "+", "-", "-"]), EXPONENTS))
    return sign + whole + fraction + exponent


NUMBER_OUTPUTS = (number_literals() | st.sampled_from(["NaN", "Infinity", "-Infinity", "1.7976931348623159e308"])).map(
    lambda literal: ('{"n":%s}' % literal).encode())

STRING_PIECES = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\'), max_size=3)
    .map(lambda text: text.encode())
    | st.sampled_from([b'\\"', b"\\\\", b"\\/", b"\\b", b"\\f", b"\\n", b"\\r", b"\\t", b"\\x", b"\\u00", b"\\", b"\x00", b"\x1f",
                       b"\x7f", b"\xed\xa0\x80", b"\xc0\x80", b"\xff", b"\xe2\x82", b"\xf4\x90\x80\x80"])
    | st.integers(0, 0xFFFF).map(lambda code: b"\\u%04x" % code)
    | st.integers(0xD800, 0xDFFF).map(lambda code: (b"\\u%04X" if code % 2 else b"\\u%04x") % code),
    max_size=6).map(b"".join)
STRING_OUTPUTS = st.builds(lambda key, value: b'{"' + key + b'":"' + value + b'"}', STRING_PIECES, STRING_PIECES)


@st.composite
def duplicate_key_outputs(draw) -> bytes:
    keys = st.sampled_from(['"a"', '"b"', '"\\u0061"', '"c"'])
    leaf = st.sampled_from(["1", "2.5", '"x"', "null", "[]", "{}", "true", "1e400", "-0.0"])
    members = draw(st.lists(st.tuples(keys, leaf | st.lists(st.tuples(keys, leaf), max_size=3).map(
        lambda inner: "{" + ",".join(f"{key}:{value}" for key, value in inner) + "}")), min_size=1, max_size=6))
    space = draw(st.sampled_from(["", " ", "\n\t"]))
    return ("{" + ("," + space).join(f"{key}{space}:{value}" for key, value in members) + "}").encode()


BIG_INTEGER_OUTPUTS = st.lists(st.integers(min_value=-(10**80), max_value=10**80) | st.integers(), min_size=1, max_size=5).map(
    lambda numbers: json.dumps({"numbers": numbers}).encode())
NESTING_OUTPUTS = st.integers(JSON_DEPTH_MAX - 3, JSON_DEPTH_MAX + 3).map(nested)

GENERATED = {"encoded": encoded_outputs(), "numbers": NUMBER_OUTPUTS, "strings": STRING_OUTPUTS,
             "duplicate keys": duplicate_key_outputs(), "big integers": BIG_INTEGER_OUTPUTS, "nesting": NESTING_OUTPUTS}


@pytest.mark.parametrize("kind", list(GENERATED))
def test_generated_output_same_verdict_as_stdlib(kind):
    @SETTINGS
    @given(GENERATED[kind])
    def check(output):
        assert_same_as_stdlib(parse_state_object, output)
    check()


@pytest.mark.parametrize("kind, wrong", [("numbers", wrong_accepts_infinity), ("duplicate keys", wrong_first_duplicate_wins),
                                         ("big integers", wrong_big_integers_as_floats), ("nesting", wrong_skips_depth_check)],
                         ids=lambda item: item if isinstance(item, str) else item.__name__)
def test_generated_outputs_catch_a_wrong_parser(kind, wrong):
    @CATCH_SETTINGS
    @given(GENERATED[kind])
    def check(output):
        assert_same_as_stdlib(wrong, output)
    with pytest.raises(AssertionError):
        check()


@pytest.mark.parametrize("digits_max", [1000, 0])
def test_the_interpreters_integer_digit_limit_moves_both_paths_alike(digits_max):
    """`sys.set_int_max_str_digits` (or PYTHONINTMAXSTRDIGITS) is a per-process setting that bounds
    json.loads's integers; msgspec follows it, and where it refuses more (0: no limit) the stdlib decides."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(digits_max)
    try:
        for length in (999, 1000, 1001, 4300, 4301, 6000):
            assert_same_as_stdlib(parse_state_object, b'{"a":' + b"9" * length + b"}")
    finally:
        sys.set_int_max_str_digits(before)


def test_a_node_judges_long_integers_alike_whatever_its_environment_says(tmp_path):
    """PYTHONINTMAXSTRDIGITS is per process: a node started with it must still refuse what others refuse."""
    import subprocess
    import sys

    script = (
        "from node import errors\n"
        "from node.sandbox_output import parse_state_object\n"
        "output = b'{\"n\": 1' + b'0' * 4300 + b'}'\n"
        "def verdict():\n"
        "    try:\n"
        "        parse_state_object(output, 'upgrade()')\n"
        "        return 'accepted'\n"
        "    except errors.BadOutput:\n"
        "        return 'refused'\n"
        "before = verdict()\n"
        "from node.sandbox import Sandbox\n"
        "Sandbox()\n"
        "print(before, verdict())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**__import__("os").environ, "PYTHONINTMAXSTRDIGITS": "0"})
    assert result.returncode == 0, result.stderr
    # Unlimited by the environment, the integer is accepted; once a sandbox exists, the network's limit holds.
    assert result.stdout.split() == ["accepted", "refused"]
