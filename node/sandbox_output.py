"""Reading a package's output: the JSON object `upgrade()` or `get_upgrade_info()` returned.

Why it works as it does:
- The output comes from a package author, who may be hostile, and every honest node must reach the
  same verdict on it (accepted with the same value, or refused with the same message: the message is
  recorded). The rules are those of the standard library's `json.loads` as the node has always
  applied them (`parse_state_object_stdlib`, unchanged): UTF-8, nesting at most JSON_DEPTH_MAX deep
  (checked before parsing), no NaN/Infinity, finite floats, integers up to the interpreter's
  4,300-digit limit, the last of duplicate keys wins, no lone UTF-16 surrogate escape, an object at
  the top.
- A 100,000-node state is ~10 MB, and `json.loads` took ~90 ms of it. msgspec (already a dependency)
  decodes it in about half that, but it is a different parser, so it is only trusted where it agrees:
  `parse_state_object` asks msgspec first, and whenever msgspec refuses, or the output holds a
  surrogate escape (`\\ud...`, where the two parsers differ), the stdlib path decides, verdict and
  message, exactly as before. Where msgspec accepts, its value is the stdlib's: floats go through the
  same `_finite_float` on the same literal text (msgspec's float_hook), UTF-8 and nesting are checked
  by the same code first, integers beyond 64 bits are exact Python ints in both, duplicate keys keep
  the last value at the first key's place in both. tests/property/test_sandbox_output_properties.py
  compares the two paths on generated and hostile outputs, and shows that the comparison catches a
  parser that differs.
- A refused output may be parsed twice (msgspec, then the stdlib for the message): a bounded cost on
  a path that fails the upgrade anyway.
- `parse_state` also says whether the output held a float literal (msgspec's float_hook counts them):
  a state without one can be encoded canonically by msgspec, ~8x faster than json.dumps and to the
  same bytes (node/core/canonical.py `canonical_json_float_free`); one with a float, or one the stdlib
  path read, is encoded by json.dumps as before.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

import msgspec

from node import errors
from node.core.canonical import JSON_DEPTH_MAX, canonical_json, json_depth_within, json_nesting_depth

_JSON_KIND = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def one_line(text: str, length_max: int = 300) -> str:
    """wasmtime's messages carry a backtrace and a 'Caused by:' chain; keep the cause, on one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if "Caused by:" in lines:
        lines = lines[lines.index("Caused by:") + 1:]
        cause = lines[-1] if lines else ""
    else:
        cause = lines[0] if lines else ""
    cause = re.sub(r"^\d+:\s*", "", cause)
    return cause if len(cause) <= length_max else cause[:length_max - 3] + "..."


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# Every node must judge an output's integers alike, but the interpreter's limit on integer digits
# (int <-> str, which json.loads, msgspec and canonical_json all obey) is a per-process setting that
# PYTHONINTMAXSTRDIGITS or -X int_max_str_digits change: a 4,301-digit integer would be refused on one
# node and accepted on another. The sandbox pins it to CPython's default before it runs anything.
INTEGER_DIGITS_MAX = 4_300


def pin_integer_digits() -> None:
    """Make this process's integer-digit limit the network's (INTEGER_DIGITS_MAX), whatever its environment said."""
    sys.set_int_max_str_digits(INTEGER_DIGITS_MAX)


@dataclass(frozen=True)
class ParsedState:
    value: dict
    float_free: bool    # the parser met no float literal: canonical_json_float_free encodes `value`


def parse_state(output: bytes, producer: str) -> ParsedState:
    """UTF-8, strict JSON (no NaN/Infinity, finite numbers, encodable strings), and an object at the top.

    msgspec where it is known to agree with the stdlib; the stdlib's verdict and message otherwise."""
    parsed = _parse_counting(output)
    return parsed if parsed is not None else ParsedState(parse_state_object_stdlib(output, producer), float_free=False)


def parse_state_object(output: bytes, producer: str) -> dict:
    """`parse_state`'s value alone."""
    return parse_state(output, producer).value


def _parse_fast(output: bytes) -> dict | None:
    """The object msgspec reads, or None: then the stdlib path must decide (it may still accept)."""
    parsed = _parse_counting(output)
    return parsed.value if parsed is not None else None


def _parse_counting(output: bytes) -> ParsedState | None:
    if b"\\" in output and (b"\\ud" in output or b"\\uD" in output):
        return None                                  # surrogate escapes: the parsers read them differently
    try:
        output.decode("utf-8")                       # the stdlib's UTF-8 rules, not msgspec's own
    except UnicodeDecodeError:
        return None
    if not json_depth_within(output):
        return None
    floats = 0

    def counted_float(text: str) -> float:
        nonlocal floats
        floats += 1
        return _finite_float(text)

    try:    # a decoder per call (~1 us): its hook counts this output's floats only, whichever thread parses
        value = msgspec.json.Decoder(float_hook=counted_float).decode(output)
    except ValueError:                               # msgspec.DecodeError, or _finite_float's refusal
        return None
    return ParsedState(value, float_free=floats == 0) if type(value) is dict else None


def parse_state_object_stdlib(output: bytes, producer: str) -> dict:
    """The reference: `json.loads` with the node's checks, as every node applied them before msgspec."""
    try:
        text = output.decode("utf-8")
    except UnicodeDecodeError as error:
        raise errors.BadOutput(f"{producer} returned {len(output):,} bytes that are not UTF-8 (bad byte at offset {error.start})") from None
    if not json_depth_within(output):
        raise errors.BadOutput(f"{producer} returned JSON nested {json_nesting_depth(output):,} levels deep, "
                               f"over the limit of {JSON_DEPTH_MAX}")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as error:
        raise errors.BadOutput(f"{producer} returned invalid JSON: {one_line(str(error), 200)}") from None
    if not isinstance(value, dict):
        raise errors.BadOutput(f"{producer} returned a JSON {_JSON_KIND.get(type(value), 'value')}, not an object")
    if "\\ud" in text or "\\uD" in text:
        # A lone UTF-16 surrogate escape parses, but the state could never be stored or hashed.
        try:
            canonical_json(value)
        except (UnicodeEncodeError, ValueError):
            raise errors.BadOutput(f"{producer} returned a string with a lone UTF-16 surrogate escape") from None
    return value


__all__ = ["INTEGER_DIGITS_MAX", "ParsedState", "one_line", "parse_state", "parse_state_object", "parse_state_object_stdlib",
           "pin_integer_digits"]
