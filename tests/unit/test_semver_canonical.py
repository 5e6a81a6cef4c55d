import pytest

from node.core.canonical import canonical_json, normalize_sha256, state_hash
from node.core.semver import parse_version


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
