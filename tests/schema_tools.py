"""The published request schemas as a client reads them, and bodies to throw at them (any layer may import this).

`OpenApi30Validator` is jsonschema's draft 4 validator (OpenAPI 3.0's Schema Object is a draft 4/5
dialect) taught the two things OpenAPI 3.0.3 says differently: `nullable: true` admits null, and an
integer is "a JSON number without a fraction or exponent part" (so 2048.0, which json.loads makes a
float, is not one). Nothing else is changed: patterns run with Python's `re.search`, as msgspec's do.

`bodies(template, schema)` draws request bodies for hypothesis: the valid template, the template with
one field replaced by a value near the schema's limits (or by any JSON value), dropped, or joined by
an unknown field, and arbitrary JSON values. Strings mix the tricky spellings that matter here
(control and bidi characters, credentials in URLs, versions with a final newline or other scripts'
digits, padded hashes) with arbitrary text.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft4Validator, validators

_PROPOSAL_ID = "upgrade_20251003_120000_3fa9c2d1"
TRICKY_TEXTS = [
    "", " ", "x", "a\nb", "a\tb", "a\rb", "\x1b[2J", "safe \u202etxt",
    "\u2066x\u2069", "\x9b31m", "\x85", "\u2028", "\x7f", "1.2.0", "1.2", "v1.2.0", "1.2.0\n", "1\u0663.0.0", "\uff11.2.0",
    "2.0.0-rc.1+build.5", "01.2.0", "1.2.0-", "9" * 64 + ".0.0", "sha256:" + "ab" * 32, "SHA256:" + "AB" * 32, "ab" * 32,
    " " + "ab" * 32 + "\n", "\u3000sha256:" + "ab" * 32, "sha256: " + "ab" * 32, "md5:" + "a" * 32, "ab" * 31,
    "ab" * 32 + "\u200b", "https://example.org/u.wasm", "https://user:pw@example.org/u.wasm", "https://t@e.org",
    "https://e.org/a@b", "https://e.org?x=@", "ipfs://" + "b" * 59, "file:///etc/passwd", "not a url", "a://b/c://d@e",
    _PROPOSAL_ID, _PROPOSAL_ID + "\n", "rollback_20251003_120000_3fa9c2d1", "upgrade_2025100\u0663_120000_3fa9c2d1",
    "upgrade_x", "approval", "rejection", "Approval", "approval ", "null", "0",
]


def _nullable_type(validator, types, instance, schema):
    if instance is None and schema.get("nullable") is True:
        return
    yield from Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


OpenApi30Validator = validators.extend(
    Draft4Validator, {"type": _nullable_type},
    type_checker=Draft4Validator.TYPE_CHECKER.redefine("integer", lambda _checker, value: type(value) is int))


def request_schema(document: dict, path: str) -> tuple[dict, bool]:
    """(the schema of POST `path`'s JSON body, whether the body is required) from an OpenAPI document."""
    body = document["paths"][path]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert "$ref" not in str(schema), "request schemas are flat"
    return schema, body.get("required", False)


def schema_accepts(schema: dict, value: Any) -> bool:
    return OpenApi30Validator(schema).is_valid(value)


_LONG_TEXTS = st.builds(lambda character, length: character * length, st.sampled_from(["x", "é", "\U0001F389"]),
                        st.sampled_from([63, 64, 65, 96, 97, 199, 200, 201, 999, 1000, 1001, 2048, 2049, 3999, 4000, 4001,
                                         4096, 4097]))
_TEXT = st.one_of(st.sampled_from(TRICKY_TEXTS), st.text(max_size=30), _LONG_TEXTS,
                  st.builds(lambda head, odd, tail: head + odd + tail, st.text(max_size=5),
                            st.sampled_from(["\x00", "\n", "\t", "\r", "\x1b", "\x85", "\u202e", "\u2069", "@", ":", "/"]),
                            st.text(max_size=5)))
_JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-3, max_value=2**40 + 3),
                          st.sampled_from([0, 1, 2**40, 2**40 + 1, 2**63, -(2**63) - 1, 10**30]),
                          st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([2048.0, 1e3, -0.0]), _TEXT)
JSON_VALUES = st.recursive(_JSON_SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.one_of(_TEXT, st.sampled_from(["text", "vote", "title"])),
                                                    children, max_size=3)), max_leaves=8)


def _near(field_schema: dict) -> st.SearchStrategy:
    """Values at and just past the limits of one field's schema."""
    candidates: list[Any] = [None, True, 1.5]
    for limit in ("minLength", "maxLength"):
        if limit in field_schema:
            length = field_schema[limit]
            candidates += ["é" * max(length - 1, 0), "é" * length, "é" * (length + 1)]
    for limit in ("minimum", "maximum"):
        if limit in field_schema:
            candidates += [field_schema[limit] - 1, field_schema[limit], field_schema[limit] + 1, float(field_schema[limit])]
    candidates += list(field_schema.get("enum", []))
    return st.one_of(st.sampled_from(candidates), _TEXT, JSON_VALUES)


def bodies(template: dict, schema: dict) -> st.SearchStrategy:
    """Request bodies for a route whose valid example is `template` and whose schema is `schema`."""
    properties = schema.get("properties", {})
    names = sorted(set(template) | set(properties))

    @st.composite
    def replaced(draw):
        body = dict(template)
        if names:
            name = draw(st.sampled_from(names))
            body[name] = draw(_near(properties.get(name, {})))
        return body

    @st.composite
    def dropped(draw):
        body = dict(template)
        if body:
            body.pop(draw(st.sampled_from(sorted(body))))
        return body

    @st.composite
    def extended(draw):
        return {**template, draw(st.one_of(_TEXT, st.sampled_from(["extra", "weight"]))): draw(JSON_VALUES)}

    return st.one_of(st.just(dict(template)), replaced(), dropped(), extended(), JSON_VALUES,
                     st.dictionaries(st.sampled_from(names or ["x"]), _TEXT, max_size=len(names) + 1))
