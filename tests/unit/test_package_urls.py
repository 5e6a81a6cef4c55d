"""Package URLs, hashes and limits: what a proposer may write, and what never leaks into a log."""

import pytest

from node.errors import ConfigError, HashFormatError, PackageSourceRefused
from node.package_urls import check_package_url, parse_ipfs_url, parse_package_hash, redact_url
from node.packages import FetchLimits
from node.core.urls import has_userinfo

CID_V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
CID_V1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
DIGEST = "ab" * 32


# --- check_package_url ---


@pytest.mark.parametrize("url", [
    "https://example.com/pkg.wasm",
    "http://example.com:8080/path/pkg.wasm?version=1.2.0",
    "HTTPS://Example.com/pkg.wasm",
    "http://user:pass@127.0.0.1:9000/pkg.wasm",
    "http://[::1]:8080/pkg.wasm",
    f"ipfs://{CID_V0}",
    f"ipfs://{CID_V1}",
    f"IPFS://{CID_V1}/upgrade_v1_2_0.wasm",
])
def test_allowed_urls_are_returned_unchanged(url):
    assert check_package_url(url) == url


@pytest.mark.parametrize(("url", "scheme"), [
    ("file:///etc/passwd", "file:"),
    ("ftp://example.com/pkg.wasm", "ftp:"),
    ("data:application/wasm;base64,AGFzbQEAAAA=", "data:"),
    ("gopher://example.com/1", "gopher:"),
    ("javascript:alert(1)", "javascript:"),
    ("ws://example.com/pkg", "ws:"),
    ("ipns://example.com", "ipns:"),
])
def test_other_schemes_are_refused_naming_the_scheme(url, scheme):
    with pytest.raises(PackageSourceRefused) as caught:
        check_package_url(url)
    assert f"'{scheme}'" in str(caught.value)
    assert "https://" in caught.value.hint


@pytest.mark.parametrize("url", ["", "example.com/pkg.wasm", "/tmp/pkg.wasm", "//example.com/pkg.wasm", "1http://x/y"])
def test_a_url_without_a_scheme_is_refused(url):
    with pytest.raises(PackageSourceRefused, match="no scheme"):
        check_package_url(url)


@pytest.mark.parametrize("url", [
    "http://exa mple.com/pkg.wasm",
    "http://example.com/pkg.wasm\r\nX-Injected: 1",
    "http://example.com/\x00pkg.wasm",
    "http://example.com\\@evil.com/pkg.wasm",
    "https://example.com/<script>",
    "\thttps://example.com/pkg.wasm",
])
def test_whitespace_control_and_unsafe_characters_are_refused(url):
    with pytest.raises(PackageSourceRefused, match="whitespace, control or unsafe"):
        check_package_url(url)


@pytest.mark.parametrize("url", ["http://", "https:///pkg.wasm", "http://:80/pkg.wasm", "http://user@/pkg.wasm"])
def test_an_http_url_without_host_is_refused(url):
    with pytest.raises(PackageSourceRefused, match="no host|not a valid URL"):
        check_package_url(url)


@pytest.mark.parametrize("url", ["http://example.com:99999/pkg.wasm", "http://example.com:port/pkg.wasm"])
def test_an_invalid_port_is_refused(url):
    with pytest.raises(PackageSourceRefused, match="not a valid URL"):
        check_package_url(url)


def test_the_length_limit_is_2048_characters():
    base = "https://example.com/"
    assert check_package_url(base + "a" * (2048 - len(base))) is not None
    with pytest.raises(PackageSourceRefused, match="2049 characters long; the limit is 2048"):
        check_package_url(base + "a" * (2049 - len(base)))


@pytest.mark.parametrize("value", [None, 42, b"https://example.com/pkg.wasm", ["https://example.com"]])
def test_a_non_string_url_is_refused(value):
    with pytest.raises(PackageSourceRefused, match="must be a string"):
        check_package_url(value)


@pytest.mark.parametrize("url", [
    "ipfs://",
    "ipfs://Qm",
    "ipfs://notacid",
    f"ipfs://{CID_V0[:-1]}",  # one character short
    f"ipfs://{CID_V0}0",  # '0' is not base58
    f"ipfs://{CID_V0.lower()}",  # a CIDv0 lowercased by a careless parser
    f"ipfs://{CID_V1}:8080",
    f"ipfs://user@{CID_V1}",
    f"ipfs://{CID_V1}?filename=x.wasm",
    f"ipfs://{CID_V1}#frag",
    f"ipfs://{CID_V1}/../../etc/passwd",
    f"ipfs://{CID_V1}/./pkg.wasm",
    f"ipfs://{CID_V1}//pkg.wasm",
    f"ipfs://{CID_V1}/",
    f"ipfs://{CID_V1}/a%2F..%2Fb",
])
def test_ipfs_urls_need_a_plausible_cid_and_a_plain_path(url):
    with pytest.raises(PackageSourceRefused):
        check_package_url(url)


def test_parse_ipfs_url_keeps_the_cid_case_and_the_path():
    assert parse_ipfs_url(f"ipfs://{CID_V0}") == (CID_V0, "")
    assert parse_ipfs_url(f"IPFS://{CID_V1}/dir/pkg.wasm") == (CID_V1, "/dir/pkg.wasm")


def test_refusal_messages_do_not_leak_credentials():
    with pytest.raises(PackageSourceRefused) as caught:
        check_package_url("ftp://alice:hunter2secret@example.com/pkg.wasm?token=abcdef123")
    text = caught.value.one_line()
    assert "hunter2secret" not in text and "alice" not in text and "abcdef123" not in text
    assert "ftp://***@example.com/pkg.wasm?token=***" in text


# --- parse_package_hash ---


@pytest.mark.parametrize("text", [DIGEST, DIGEST.upper(), f"sha256:{DIGEST}", f"SHA256:{DIGEST.upper()}", f"  sha256:{DIGEST}\n"])
def test_package_hash_accepts_prefixed_and_bare_hex_in_any_case(text):
    assert parse_package_hash(text) == DIGEST


@pytest.mark.parametrize("text", [
    "", "sha256:", DIGEST[:-1], DIGEST + "a", "g" * 64, f"sha512:{DIGEST}", f"md5:{DIGEST}",
    f"sha256: {DIGEST}", f"sha256:sha256:{DIGEST}", "ab" * 64,
])
def test_package_hash_refuses_anything_else(text):
    with pytest.raises(HashFormatError) as caught:
        parse_package_hash(text)
    assert "is not a SHA256 digest" in str(caught.value)
    assert "64 hex digits" in caught.value.hint


@pytest.mark.parametrize("value", [None, 123, b"ab" * 32, ["sha256:" + DIGEST]])
def test_package_hash_refuses_non_strings(value):
    with pytest.raises(HashFormatError, match=f"package_hash a {type(value).__name__} is not"):
        parse_package_hash(value)


def test_package_hash_error_shows_a_bounded_excerpt_of_the_input():
    with pytest.raises(HashFormatError) as caught:
        parse_package_hash("x" * 10_000)
    assert len(str(caught.value)) < 200


# --- redact_url ---


@pytest.mark.parametrize(("url", "expected"), [
    ("http://user:secret@host/pkg.wasm", "http://***@host/pkg.wasm"),
    ("https://ghp_tokenonly@github.com/o/r/pkg.wasm", "https://***@github.com/o/r/pkg.wasm"),
    ("https://u:p%40ss@host:8443/a", "https://***@host:8443/a"),
    ("https://a@b:c@host/x", "https://***@host/x"),
    ("https://host/pkg.wasm?token=abc&v=2", "https://host/pkg.wasm?token=***&v=2"),
    ("https://host/p?X-Amz-Signature=abc&X-Amz-Credential=k&X-Amz-Date=1", "https://host/p?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=1"),
    ("https://host/p?api_key=1&access_token=2#frag", "https://host/p?api_key=***&access_token=***#frag"),
    ("https://host/pkg.wasm", "https://host/pkg.wasm"),
    ("https://host/path@with-at?x=1", "https://host/path@with-at?x=1"),
    (f"ipfs://{CID_V0}", f"ipfs://{CID_V0}"),
    ("file:///etc/passwd", "file:///etc/passwd"),
])
def test_redact_url_hides_credentials_and_token_values(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize("value", ["", "not a url", "http://[bad", "::::@@@", "http://u:p@", None, 12, b"http://u:p@h"])
def test_redact_url_never_raises(value):
    assert isinstance(redact_url(value), str)
    assert "u:p" not in redact_url(value)


def test_redact_url_bounds_its_output():
    redacted = redact_url("https://host/" + "a" * 5000)
    assert len(redacted) < 600
    assert redacted.endswith("(5013 characters)")


# --- FetchLimits ---


def test_fetch_limits_defaults():
    limits = FetchLimits()
    assert (limits.connect_timeout_ms, limits.total_timeout_ms, limits.redirects_max, limits.package_size_max_bytes) == (
        5_000, 120_000, 5, 64 * 1024 * 1024)


@pytest.mark.parametrize(("fields", "message"), [
    ({"connect_timeout_ms": 0}, "connect_timeout_ms is 0"),
    ({"total_timeout_ms": -1}, "total_timeout_ms is -1"),
    ({"redirects_max": 21}, "redirects_max is 21"),
    ({"package_size_max_bytes": 0}, "package_size_max_bytes is 0"),
    ({"package_size_max_bytes": 2**40}, "package_size_max_bytes is"),
    ({"downloads_concurrent_max": 0}, "downloads_concurrent_max is 0"),
    ({"connect_timeout_ms": 1.5}, "must be an integer"),
    ({"redirects_max": True}, "must be an integer"),
    ({"total_timeout_ms": "120000"}, "must be an integer"),
    ({"connect_timeout_ms": 10_000, "total_timeout_ms": 5_000}, "larger than total_timeout_ms"),
])
def test_fetch_limits_refuse_bad_values(fields, message):
    with pytest.raises(ConfigError, match=message):
        FetchLimits(**fields)


def test_fetch_limits_are_frozen_and_keyword_only():
    limits = FetchLimits(redirects_max=0)
    with pytest.raises(AttributeError):
        limits.redirects_max = 3
    with pytest.raises(TypeError):
        FetchLimits(1000)


def test_credentials_are_found_wherever_a_parser_could_see_them():
    assert has_userinfo("https://user:pw@example.org/p.wasm")
    assert has_userinfo("http://a\\b:pw@host/p.wasm")          # RFC 3986 parsers read 'a\b:pw' as a user
    assert not has_userinfo("https://example.org/p@1.wasm") and not has_userinfo("https://example.org/?a=@b")
    assert not has_userinfo("not a url")
