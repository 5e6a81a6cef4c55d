"""node/core/schemas.py: one declaration per body, and the published schema says exactly what the checks do.

The API answers 400 exactly when /openapi.json's schema refuses a body (tests/component/
test_api_schema_property.py checks it through HTTP). Here, in process and with many more cases: each
rule's function agrees with the pattern that publishes it (in Python's `re`, and in ECMA-262 through
node.js when it is installed), and `schemas.check` agrees with the published schema on random bodies.
"""

import json
import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from msgspec import inspect as msgspec_inspect

from node.core import schemas
from node.core.entries import KINDS
from node.core.semver import VERSION_LENGTH_MAX
from node.errors import BadRequest, HashFormatError
from node.openapi import openapi_document
from tests.schema_tools import TRICKY_TEXTS, bodies, schema_accepts

RULES = {"ONE_LINE_TEXT": schemas.ONE_LINE_TEXT, "MULTI_LINE_TEXT": schemas.MULTI_LINE_TEXT, "SEMVER": schemas.SEMVER,
         "NO_CREDENTIALS": schemas.NO_CREDENTIALS, "SHA256_AS_GIVEN": schemas.SHA256_AS_GIVEN,
         "PROPOSAL_ID": schemas.PROPOSAL_ID}
TEMPLATES = {
    schemas.ProposeUpgrade: {"title": "t", "version": "1.2.0", "package_url": "https://e.org/u.wasm",
                             "package_hash": "ab" * 32, "package_size": 2048, "description": "d"},
    schemas.ProposeRollback: {"target_proposal_id": "upgrade_20251003_120000_3fa9c2d1", "title": "back"},
    schemas.Vote: {"vote": "approval"}, schemas.TestUpgrade: {}, schemas.LocalRollback: {"reason": "canary"},
    schemas.Note: {"text": "hello"},
}


def rule_accepts(rule: schemas.Rule, text: str) -> bool:
    return rule.problem("field", text) is None


def pattern_accepts(rule: schemas.Rule, text: str) -> bool:
    return re.search(rule.pattern, text) is not None


def test_every_kind_has_one_body_and_every_request_a_published_schema():
    assert tuple(schemas.ENTRY_BODIES) == KINDS
    published = openapi_document()["components"]["schemas"]
    assert {struct.__name__ for struct in schemas.REQUEST_BODIES} <= set(published)


def _unbounded(info, where: str) -> list[str]:
    if isinstance(info, msgspec_inspect.Metadata):
        return _unbounded(info.type, where)
    if isinstance(info, msgspec_inspect.UnionType):
        return [problem for option in info.types for problem in _unbounded(option, where)]
    if isinstance(info, (msgspec_inspect.StrType, msgspec_inspect.BytesType)):
        return [] if info.max_length is not None else [where]
    if isinstance(info, msgspec_inspect.ListType):
        return ([] if info.max_length is not None else [where]) + _unbounded(info.item_type, where + "[]")
    if isinstance(info, msgspec_inspect.StructType):
        return [problem for field in info.fields for problem in _unbounded(field.type, f"{where}.{field.name}")]
    return []


def test_every_string_bytes_and_list_has_a_length_limit():
    # msgspec has no length limit of its own on decode.
    for struct in (*schemas.REQUEST_BODIES, *schemas.ENTRY_BODIES.values()):
        assert _unbounded(msgspec_inspect.type_info(struct), struct.__name__) == []


@pytest.mark.parametrize("name", ["ONE_LINE_TEXT", "MULTI_LINE_TEXT"])
def test_the_text_rules_and_their_patterns_agree_on_every_character(name):
    rule = RULES[name]
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        text = f"a{chr(code)}b"
        assert rule_accepts(rule, text) == pattern_accepts(rule, text), (name, hex(code))
    for text in ("", "plain", "\U0001F389 party", "x" * 5000 + "\x1b"):
        assert rule_accepts(rule, text) == pattern_accepts(rule, text), (name, text)


def test_the_padding_a_hash_may_carry_is_what_str_strip_removes():
    padding = schemas.SHA256_AS_GIVEN
    assert not any(chr(code).isspace() for code in range(0x10000, 0x110000))     # all of them are in the BMP
    for code in [*range(0x10000), 0x1F389, 0xE0020, 0x10FFFF]:
        if 0xD800 <= code <= 0xDFFF:
            continue
        text = chr(code) + "ab" * 32
        assert rule_accepts(padding, text) == pattern_accepts(padding, text) == chr(code).isspace(), hex(code)


_URLISH = st.text(alphabet="ab:/@?#.%\\ \n", max_size=24)
_VERSIONISH = st.text(alphabet="0123456789.-+aZ\n\u0663", max_size=16)
_HASHISH = st.builds(lambda head, middle, tail: head + middle + tail, st.sampled_from(["", " ", "sha256:", "SHA256:", "\t", "sHa256:", "md5:"]),
                     st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 31, "ab" * 33, "g" + "a" * 63]), st.sampled_from(["", "\n", " ", "\u200b", "x"]))


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.sampled_from(TRICKY_TEXTS), _URLISH, _VERSIONISH, _HASHISH, st.text(max_size=40)),
       st.sampled_from(sorted(RULES)))
def test_every_rule_and_its_published_pattern_agree(text, name):
    rule = RULES[name]
    if name == "SEMVER":
        assume(len(text) <= VERSION_LENGTH_MAX)     # the field's maxLength says the rest (is_valid_version checks both)
    assert rule_accepts(rule, text) == pattern_accepts(rule, text), (name, text)


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js (an ECMA-262 regex engine) is not installed")
def test_the_published_patterns_mean_the_same_in_ecma_262():
    texts = TRICKY_TEXTS + ["https://a@b", "ipfs://x", "3.1.0\n", "a\u2028b"]
    script = ("const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "console.log(JSON.stringify(input.patterns.map(p => input.texts.map(t => new RegExp(p).test(t)))));")
    payload = json.dumps({"patterns": [rule.pattern for rule in RULES.values()], "texts": texts})
    result = subprocess.run(["node", "-e", script], input=payload, capture_output=True, text=True, timeout=30, check=True)
    in_ecma = json.loads(result.stdout)
    for (name, rule), verdicts in zip(RULES.items(), in_ecma):
        assert verdicts == [pattern_accepts(rule, text) for text in texts], name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_checks_accept_a_body_exactly_when_the_published_schema_does(data):
    published = openapi_document()["components"]["schemas"]
    struct = data.draw(st.sampled_from(schemas.REQUEST_BODIES))
    schema = published[struct.__name__]
    body = data.draw(bodies(TEMPLATES[struct], schema))
    value, problems = schemas.check(struct, body, what="POST /x")
    assert (value is not None) == schema_accepts(schema, body), (struct.__name__, body, problems)
    assert (value is None) == bool(problems)
    for problem in problems:
        assert problem.message and problem.hint, problem


# --- what users read --------------------------------------------------------------------------------


def refusal(struct, body) -> BadRequest | HashFormatError:
    with pytest.raises((BadRequest, HashFormatError)) as caught:
        schemas.parse_request(struct, body, what="POST /upgrades/propose")
    assert caught.value.hint, "every refusal says what to do"
    return caught.value


@pytest.mark.parametrize("change, message", [
    ({"package_size": True}, "POST /upgrades/propose: field package_size must be a JSON integer or null, not a JSON boolean"),
    ({"package_size": 2048.0}, "field package_size must be a JSON integer or null, not a JSON number"),
    ({"package_size": 0}, "package_size must be the package's size in bytes (1 to 1099511627776), not 0"),
    ({"package_size": 10**30}, "package_size must be the package's size in bytes (1 to 1099511627776), not a 31-digit number"),
    ({"title": ""}, "title must be a string of 1 to 200 characters, not 0"),
    ({"description": "d" * 4001}, "description must be a string of at most 4000 characters, not 4001"),
    ({"title": "a\u202eb"}, "title holds a control or bidirectional-override character (U+202E at position 1)"),
    ({"version": "3.1.0\n"}, "version '3.1.0\\n' is not semver"),
    ({"package_hash": "md5:1"}, "package_hash 'md5:1' is not a SHA256 digest"),
    ({"extra": 1, "weight": 2}, "POST /upgrades/propose: unknown field(s) extra, weight"),
])
def test_refusals_name_the_field_and_what_is_allowed(change, message):
    error = refusal(schemas.ProposeUpgrade, {**TEMPLATES[schemas.ProposeUpgrade], **change})
    assert message in error.message


def test_a_url_with_credentials_is_refused_without_echoing_them():
    error = refusal(schemas.ProposeUpgrade, {**TEMPLATES[schemas.ProposeUpgrade], "package_url": "https://u:s3cr3t@e.org/x"})
    assert "credentials" in error.message and "s3cr3t" not in error.message + error.hint


def test_a_request_body_comes_back_typed_and_frozen():
    body = schemas.parse_request(schemas.ProposeUpgrade, TEMPLATES[schemas.ProposeUpgrade], what="POST /upgrades/propose")
    assert (body.title, body.package_size, body.description) == ("t", 2048, "d")
    with pytest.raises(AttributeError):
        body.title = "other"
    rollback = schemas.parse_request(schemas.ProposeRollback, {"target_proposal_id": "upgrade_20251003_120000_3fa9c2d1"},
                                     what="POST /rollbacks/propose")
    assert rollback.title is schemas.UNSET
