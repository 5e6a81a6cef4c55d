"""Package URLs and hashes: which sources a proposal may name, and how a URL is shown without its secrets.

Why it exists: a package URL comes from a proposal, that is from anyone, and is checked before any
network call, at every redirect hop, and when the governance API accepts a proposal; a URL may carry
credentials that must never reach a log record or an error message. These rules are pure (no network,
no files) and shared by the fetcher (node/packages.py) and the governance service, so they live apart
from the download machinery.

  * Only https, http and ipfs://CID. An ipfs URL is parsed by hand: generic parsers lowercase the host,
    which would corrupt a base58 CIDv0. Characters that URL parsers disagree on are refused outright (a
    parser differential could make redaction and aiohttp see different credentials).
  * `redact_url` hides `user:password@` and the values of token-like query parameters; `redact_text`
    does the same for every URL inside free text (aiohttp's messages) and removes the URL's own secrets.
"""

from __future__ import annotations

import contextlib
import re
from urllib.parse import urlsplit

from yarl import URL

from node.core.canonical import normalize_sha256
from node.core.schemas import PACKAGE_URL_LENGTH_MAX  # the published schema's limit: the API and the fetcher agree
from node.core.urls import authority_span
from node.errors import HashFormatError, PackageSourceRefused

_REDACTED_TEXT_LENGTH_MAX = 512
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# Characters that are never in a valid URL and that parsers disagree on (a parser differential could
# make redaction and aiohttp see different credentials).
_URL_FORBIDDEN_CHARACTERS = frozenset('\\<>"`{}|^')
_BASE58 = "1-9A-HJ-NP-Za-km-z"
_CID = re.compile(
    rf"^(?:Qm[{_BASE58}]{{44}}"  # CIDv0: base58btc multihash of a sha2-256 digest
    r"|b[a-z2-7]{50,200}|B[A-Z2-7]{50,200}"  # CIDv1, base32 (bafy..., bafk...)
    rf"|z[{_BASE58}]{{40,200}}"  # CIDv1, base58btc
    r"|k[0-9a-z]{40,200}"  # CIDv1, base36
    r"|f[0-9a-f]{60,400})$"  # CIDv1, base16
)
_IPFS_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_~\-][A-Za-z0-9._~\-]*$")
_IPFS_PATH_LENGTH_MAX = 512
# Any URL inside free text (aiohttp messages); used to redact credentials found there.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_SECRET_QUERY_KEY_PARTS = ("token", "key", "secret", "password", "passwd", "pwd", "sig", "auth", "credential", "session", "code")


def url_scheme(url: str) -> str:
    """The lowercase scheme of a URL that check_package_url accepted."""
    return _SCHEME.match(url).group(1).lower()


def check_package_url(url: str) -> str:
    """Returns the URL if its scheme is https/http/ipfs (ipfs://CID with a plausible CID), else raises
    errors.PackageSourceRefused naming the scheme. Also refuses overlong URLs (limit 2048)."""
    if not isinstance(url, str):
        raise PackageSourceRefused(f"package_url must be a string, got {type(url).__name__}")
    if len(url) > PACKAGE_URL_LENGTH_MAX:
        raise PackageSourceRefused(f"package_url is {len(url)} characters long; the limit is {PACKAGE_URL_LENGTH_MAX}",
                                   hint="host the package at a shorter URL")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch in _URL_FORBIDDEN_CHARACTERS for ch in url):
        raise PackageSourceRefused(f"package_url {redact_url(url)!r} contains whitespace, control or unsafe characters",
                                   hint="percent-encode the URL (spaces as %20)")
    match = _SCHEME.match(url)
    if match is None:
        raise PackageSourceRefused(f"package_url {redact_url(url)!r} has no scheme")
    scheme = match.group(1).lower()
    if scheme in ("http", "https"):
        _check_http_url(url)
    elif scheme == "ipfs":
        parse_ipfs_url(url)
    else:
        raise PackageSourceRefused(f"package_url scheme '{scheme}:' is not allowed ({redact_url(url)})")
    return url


def _check_http_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- urlsplit checks the port only when asked
        parsed = URL(url)
    except ValueError as error:
        raise PackageSourceRefused(f"package_url {redact_url(url)!r} is not a valid URL: {redact_text(str(error), url)}") from None
    if not parts.hostname or not parsed.host:
        raise PackageSourceRefused(f"package_url {redact_url(url)!r} has no host")


def parse_ipfs_url(url: str) -> tuple[str, str]:
    """`ipfs://CID[/path/segments]` -> (cid, path with a leading '/' or ''). Refuses anything else.

    Parsed by hand: generic URL parsers lowercase the host, which would corrupt a base58 CIDv0."""
    scheme_length = len("ipfs://")
    if url[:scheme_length].lower() != "ipfs://":
        raise PackageSourceRefused(f"{redact_url(url)!r} is not an ipfs://CID URL", hint="write it as ipfs://<CID>")
    rest = url[scheme_length:]
    cid, slash, path = rest.partition("/")
    if not _CID.match(cid):
        raise PackageSourceRefused(f"ipfs URL {redact_url(url)!r} does not hold a valid CID ({cid[:80]!r})",
                                   hint="write it as ipfs://<CID>, e.g. ipfs://Qm... or ipfs://bafy..., as 'ipfs add' printed it")
    if not slash:
        return cid, ""
    segments = path.split("/")
    if len(path) > _IPFS_PATH_LENGTH_MAX or not all(_IPFS_PATH_SEGMENT.match(segment) for segment in segments):
        raise PackageSourceRefused(f"ipfs URL {redact_url(url)!r} has an unusable path after the CID",
                                   hint="use ipfs://<CID> or ipfs://<CID>/<file name> with letters, digits, '.', '_', '-', '~'")
    return cid, "/" + path


def parse_package_hash(text: str) -> str:
    """`sha256:<64 hex>` or bare 64 hex, any case -> 64 lowercase hex; else HashFormatError."""
    digest = normalize_sha256(text)
    if digest is None:
        shown = repr(text)[:90] if isinstance(text, str) else f"a {type(text).__name__}"
        raise HashFormatError(f"package_hash {shown} is not a SHA256 digest")
    return digest


def redact_url(url: str) -> str:
    """The URL with credentials hidden, for logs and errors: `user:password@` becomes `***@` and the
    values of token-like query parameters become `***`. Never raises; long URLs are cut."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    redacted = _redact_userinfo(url)
    query_start = redacted.find("?")
    if query_start >= 0:
        fragment_start = redacted.find("#", query_start)
        query_end = len(redacted) if fragment_start < 0 else fragment_start
        query = _redact_query(redacted[query_start + 1:query_end])
        redacted = redacted[:query_start + 1] + query + redacted[query_end:]
    if len(redacted) > _REDACTED_TEXT_LENGTH_MAX:
        redacted = f"{redacted[:_REDACTED_TEXT_LENGTH_MAX]}...({len(redacted)} characters)"
    return redacted


def _redact_userinfo(url: str) -> str:
    # Everything up to the LAST '@' of the authority, whatever a parser would call user or host.
    span = authority_span(url)
    at = url.rfind("@", *span) if span is not None else -1
    if at < 0:
        return url
    return url[:span[0]] + "***" + url[at:]


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        key, equals, _value = item.partition("=")
        if equals and any(part in key.lower() for part in _SECRET_QUERY_KEY_PARTS):
            parts.append(f"{key}=***")
        else:
            parts.append(item)
    return "&".join(parts)


def redact_text(text: str, url: str) -> str:
    """Free text (an aiohttp message) with every URL in it redacted, and the URL's own secrets removed."""
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    for secret in _url_secrets(url):
        text = text.replace(secret, "***")
    return text[:_REDACTED_TEXT_LENGTH_MAX]


def _url_secrets(url: str) -> list[str]:
    secrets = []
    with contextlib.suppress(ValueError):
        parsed = URL(url)
        secrets = [value for value in (parsed.raw_user, parsed.user, parsed.raw_password, parsed.password) if value]
        secrets += [value for key, value in parsed.query.items()
                    if value and any(part in key.lower() for part in _SECRET_QUERY_KEY_PARTS)]
    # Short secrets would mangle the whole message if replaced everywhere; URLs in the text are redacted anyway.
    return sorted({secret for secret in secrets if len(secret) >= 4}, key=len, reverse=True)
