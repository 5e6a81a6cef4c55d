"""Bounded, token-free reads of a node's API for the operator's tools (`cluster status --watch`,
`cluster dump`).

Why: these tools read many nodes, some of which may be down, hung or (a node whose process is not what
it should be) answering with anything. Every read has a timeout and a size cap, and goes through an
opener without proxies, so a 127.x address is never sent to the environment's http_proxy. They send no
token: only routes any client may read are asked, so these tools never open a token file.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

READ_TIMEOUT_S = 2.0
READ_BYTES_MAX = 4 * 1024 * 1024
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TooLarge(ValueError):
    """The answer was longer than the cap."""


def fetch_bytes(base_url: str, path: str, *, timeout_s: float = READ_TIMEOUT_S, bytes_max: int = READ_BYTES_MAX) -> tuple[int, bytes]:
    """(HTTP status, body). Raises OSError when unreachable, TooLarge past `bytes_max` bytes."""
    request = urllib.request.Request(base_url + path)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read(bytes_max + 1)
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read(bytes_max + 1)
        error.close()
    if len(raw) > bytes_max:
        raise TooLarge(f"GET {path} answered more than {bytes_max} bytes")
    return status, raw


def fetch_json(base_url: str, path: str, *, timeout_s: float = READ_TIMEOUT_S, bytes_max: int = READ_BYTES_MAX) -> tuple[int, Any]:
    """(HTTP status, parsed JSON or None when the body is not JSON). Raises as fetch_bytes."""
    status, raw = fetch_bytes(base_url, path, timeout_s=timeout_s, bytes_max=bytes_max)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def is_loopback_url(url: object) -> bool:
    """True for http://<a 127/8 address>:<port>, the API of a node of a local cluster. A cluster file that
    names anything else (another host, a cloud metadata address) is not followed by the tools that copy
    what they read into a file to share."""
    if not isinstance(url, str):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.scheme == "http" and parts.port is not None and ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return False
