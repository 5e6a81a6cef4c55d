"""The node's HTTP API (aiohttp): the log, health and metrics routes, errors as JSON, the API token.

Why it works as it does:
- One `add_*_routes(app)` function per area; each area reads what it needs from typed `web.AppKey`s
  set by the runtime (no globals: two nodes can live in one test process). Governance routes are
  added the same way by their own function later.
- One middleware turns every error into JSON `{"error", "message", "hint", "definite"}` with the
  error's HTTP status: `SynapseError`s carry theirs (node/errors.py), aiohttp's own 404/405/413 are
  reshaped, and anything unexpected is a 500 that says to read the node log (the traceback goes to
  the log, never to the client).
- Reading is open; every mutating route calls `require_token` first: a bearer token made at first
  start (32 random bytes, hex, in data_dir/api_token with mode 0600), compared in constant time.
- Bodies are bounded twice: aiohttp's `client_max_size` for the whole app (gossip needs more), and
  `read_json` per route, which reads at most its own limit.
- Request bodies are judged by their declarations in node/core/schemas.py, the ones /openapi.json
  publishes: a 400 exactly when the published schema refuses the body. JSON nested deeper than
  JSON_DEPTH_MAX is refused before it is parsed (the parser would recurse), and a string holding a lone
  surrogate escape is no text at all: both are "not valid JSON".
- POST /log/notes answers only after the entry is on disk (the runtime's appender persists with fsync
  before it adds and gossips), so a 201 means it survives kill -9.
- GET /log pages through this node's visible order (positions from 1). That order is the same on
  every node once they hold the same entries, but an entry that arrives late may sort before
  entries already listed (see node/core/crdt_log.py): a consumer that must see everything re-reads
  from `after=0`, or looks entries up by id.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Mapping, Protocol

from aiohttp import web

from node.config import Genesis, Limits
from node.core.canonical import JSON_DEPTH_MAX, json_depth_within, json_nesting_depth
from node.core.crdt_log import CrdtLog
from node.core import schemas
from node.core.entries import KINDS, Entry, is_entry_id, is_node_id
from node.core.schemas import parse_request
from node.fsutil import read_private_file
from node.errors import BadRequest, ConfigError, NotFound, SynapseError, Unauthorized, Unavailable
from node.metrics import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE, Metrics

API_TOKEN_FILE_NAME = "api_token"
API_TOKEN_BYTES = 32
LOG_PAGE_LIMIT_MAX = 500
LOG_PAGE_LIMIT_DEFAULT = 100
APPEND_TIMEOUT_S = 30.0
_JSON_READ_CHUNK_BYTES = 64 * 1024
_TOKEN = re.compile(r"^[0-9a-f]{64}$")
_SURROGATE = re.compile("[\ud800-\udfff]")

_logger = logging.getLogger("synapse.api")


class EntryAppender(Protocol):
    """Creates, signs and persists (fsync) a local entry, then adds and gossips it."""

    async def append(self, kind: str, body: Mapping[str, Any]) -> Entry: ...


class NodeStatus(Protocol):
    """Live facts about the node that the API reports."""

    def current_version(self) -> str: ...
    def peers_up(self) -> int: ...
    def visible_at_ms(self, entry_id: str) -> int | None: ...


NODE_ID = web.AppKey("node_id", str)
GENESIS = web.AppKey("genesis", Genesis)
LIMITS = web.AppKey("limits", Limits)
CRDT_LOG = web.AppKey("crdt_log", CrdtLog)
METRICS = web.AppKey("metrics", Metrics)
API_TOKEN = web.AppKey("api_token", str)
APPENDER = web.AppKey("appender", EntryAppender)
STATUS = web.AppKey("status", NodeStatus)
# Other areas (governance, Raft) add facts to GET /health without api.py knowing them.
HEALTH_EXTRAS = web.AppKey("health_extras", list)


# --- the API token ---------------------------------------------------------------------------


def load_or_create_token(data_dir: Path) -> str:
    """The node's API token: created at first start (mode 0600); refused if group/other can read it."""
    path = Path(data_dir) / API_TOKEN_FILE_NAME
    token = secrets.token_hex(API_TOKEN_BYTES)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return read_token(path)
    except OSError as error:
        raise ConfigError(f"cannot create the API token file {path}: {error.strerror}", hint="check the data dir's permissions") from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return token


def read_token(path: Path) -> str:
    """Read an API token file (used by the node, the CLI and the cluster launcher)."""
    try:
        raw = read_private_file(path, what="API token file", size_max_bytes=256,
                                missing_hint="the node creates it at its first start; start the node, or check permissions")
    except FileNotFoundError:
        raise ConfigError(f"cannot read the API token file {path}: it does not exist",
                          hint="the node creates it at its first start; start the node, or check permissions") from None
    text = raw.decode("ascii", errors="replace").strip()
    if not _TOKEN.match(text):
        raise ConfigError(f"API token file {path} does not hold a 64-hex-digit token",
                          hint=f"delete {path}; the node makes a new one at its next start")
    return text


def require_token(request: web.Request) -> None:
    """Raise Unauthorized unless the request carries `Authorization: Bearer <this node's token>`."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("this operation needs the node's API token")
    given = given.strip()
    # Header bytes outside ASCII reach us as surrogates (or as latin-1 letters): no token holds them,
    # and compare_digest only takes ASCII text or bytes. Refused before the comparison, not after a crash.
    if not given.isascii():
        raise Unauthorized("the API token in the Authorization header holds non-ASCII characters; a token is 64 hex digits")
    if not hmac.compare_digest(given.encode("ascii"), request.app[API_TOKEN].encode("ascii")):
        raise Unauthorized("wrong API token")


# --- errors and request bodies ---------------------------------------------------------------


def error_response(error: SynapseError) -> web.Response:
    body = error.to_dict()
    body.setdefault("hint", "")
    return web.json_response(body, status=error.http_status)


def _http_error_response(request: web.Request, error: web.HTTPException) -> web.Response:
    routes = sorted({f"{route.method} {route.resource.canonical}" for route in request.app.router.routes()
                     if route.resource is not None and route.method != "HEAD"})
    messages = {
        404: ("NotFound", f"no route {request.method} {request.path}", "routes: " + ", ".join(routes[:40])),
        405: ("MethodNotAllowed", f"{request.method} is not allowed on {request.path}", "check the HTTP method"),
        413: ("PayloadTooLarge", "the request body is too large", "send a smaller body"),
    }
    name, message, hint = messages.get(error.status, (type(error).__name__, error.reason, ""))
    response = web.json_response({"error": name, "message": message, "hint": hint, "definite": True}, status=error.status)
    if error.status == 405 and "Allow" in error.headers:
        response.headers["Allow"] = error.headers["Allow"]
    return response


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except SynapseError as error:
        return error_response(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _http_error_response(request, error)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:
        _logger.exception("request_failed", extra={"fields": {"method": request.method, "path": request.path}})
        return web.json_response({"error": "InternalError", "message": f"internal error in {request.method} {request.path}",
                                  "hint": "see the node log (node.log in its data dir)", "definite": False}, status=500)


async def read_json(request: web.Request, *, size_max_bytes: int) -> Any:
    """The request's JSON body, read with a cap. 413 when larger, 400 when not JSON."""
    if request.content_length is not None and request.content_length > size_max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=size_max_bytes, actual_size=request.content_length)
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(_JSON_READ_CHUNK_BYTES)
        if not chunk:
            break
        size += len(chunk)
        if size > size_max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=size_max_bytes, actual_size=size)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not json_depth_within(body):
        raise BadRequest(f"the request body is JSON nested {json_nesting_depth(body):,} levels deep, over the limit of {JSON_DEPTH_MAX}",
                         hint="send a flat JSON object")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(f"the request body is not valid JSON: {error}", hint="send a JSON object with Content-Type: application/json") from None
    if _holds_lone_surrogate(value):
        # "\ud800" alone is JSON's spelling of no character at all: it cannot be stored as UTF-8 (an entry).
        raise BadRequest("the request body is not valid JSON: a string holds an unpaired UTF-16 surrogate escape",
                         hint="escape characters outside the BMP as a surrogate pair, or send them as UTF-8")
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    """True when a string in `value` (parsed JSON, nesting already bounded) holds an unpaired surrogate."""
    if isinstance(value, str):
        return not value.isascii() and _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_holds_lone_surrogate(key) or _holds_lone_surrogate(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_lone_surrogate(item) for item in value)
    return False


def make_app(*, client_max_size_bytes: int) -> web.Application:
    """An empty application with the error middleware; the runtime sets the AppKeys and adds routes."""
    return web.Application(middlewares=[error_middleware], client_max_size=client_max_size_bytes)


# --- entries as JSON -------------------------------------------------------------------------


def _hexify(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {key: _hexify(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hexify(item) for item in value]
    return value


def entry_to_json(entry: Entry, *, position: int | None = None) -> dict:
    """An entry for clients: bytes (in bodies and the signature) as hex."""
    document = {"id": entry.id, "kind": entry.kind, "author": entry.author, "sequence": entry.sequence,
                "parents": list(entry.parents), "hlc": {"wall_ms": entry.hlc.wall_ms, "logical": entry.hlc.logical},
                "body": _hexify(entry.body), "signature": entry.signature.hex(), "size_bytes": len(entry.raw)}
    if position is not None:
        document["position"] = position
    return document


# --- log routes ------------------------------------------------------------------------------

_LOG_QUERY_KEYS = frozenset({"after", "limit", "kind", "author"})


def _int_parameter(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 18 or not low <= int(text) <= high:
        raise BadRequest(f"query parameter {name}={text[:30]!r} must be an integer from {low} to {high}")
    return int(text)


def _log_filters(request: web.Request) -> tuple[str | None, str | None]:
    unknown = sorted(set(request.query) - _LOG_QUERY_KEYS)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0][:40]!r}", hint=f"GET /log takes {', '.join(sorted(_LOG_QUERY_KEYS))}")
    kind, author = request.query.get("kind"), request.query.get("author")
    if kind is not None and kind not in KINDS:
        raise BadRequest(f"unknown entry kind {kind[:40]!r}", hint=f"kind is one of {', '.join(KINDS)}")
    if author is not None and not is_node_id(author):
        raise BadRequest(f"author {author[:40]!r} is not a node id", hint="a node id is 16 lowercase hex digits")
    return kind, author


async def get_log(request: web.Request) -> web.Response:
    kind, author = _log_filters(request)
    after = _int_parameter(request, "after", 0, 0, 10**15)
    limit = _int_parameter(request, "limit", LOG_PAGE_LIMIT_DEFAULT, 1, LOG_PAGE_LIMIT_MAX)
    visible = request.app[CRDT_LOG].visible()
    page, cursor = [], min(after, len(visible))
    for index in range(cursor, len(visible)):
        entry = visible[index]
        cursor = index + 1
        if (kind is None or entry.kind == kind) and (author is None or entry.author == author):
            page.append(entry_to_json(entry, position=index + 1))
            if len(page) == limit:
                break
    return web.json_response({"entries": page, "next": cursor, "more": cursor < len(visible), "visible_total": len(visible)})


async def get_log_entry(request: web.Request) -> web.Response:
    entry_id = request.match_info["entry_id"]
    if not is_entry_id(entry_id):
        raise BadRequest(f"{entry_id[:80]!r} is not an entry id", hint="an entry id is 64 lowercase hex digits (sha256)")
    log = request.app[CRDT_LOG]
    entry = log.get(entry_id)
    if entry is None:
        raise NotFound(f"entry {entry_id} is not on this node",
                       hint="it may not have arrived yet: retry in a moment, or ask another node")
    document = entry_to_json(entry)
    document["visible"] = log.is_visible(entry_id)
    document["visible_at_ms"] = request.app[STATUS].visible_at_ms(entry_id)
    return web.json_response(document)


async def post_note(request: web.Request) -> web.Response:
    require_token(request)
    body = await read_json(request, size_max_bytes=request.app[LIMITS].request_body_max_bytes)
    text = parse_request(schemas.Note, body, what="POST /log/notes").text
    try:
        async with asyncio.timeout(APPEND_TIMEOUT_S):
            entry = await request.app[APPENDER].append("NOTE", {"text": text})
    except TimeoutError:
        raise Unavailable(f"the note was not confirmed on disk within {APPEND_TIMEOUT_S:.0f} s",
                          hint="it may still be written: check GET /log?kind=NOTE before retrying") from None
    return web.json_response({"id": entry.id, "sequence": entry.sequence, "author": entry.author}, status=201)


def add_log_routes(app: web.Application) -> None:
    app.router.add_get("/log", get_log)
    app.router.add_get("/log/{entry_id}", get_log_entry)
    app.router.add_post("/log/notes", post_note)


# --- health and metrics ----------------------------------------------------------------------


async def get_health(request: web.Request) -> web.Response:
    log, status = request.app[CRDT_LOG], request.app[STATUS]
    genesis = request.app[GENESIS]
    document = {
        "status": "ok", "node_id": request.app[NODE_ID], "network_id": genesis.network_id,
        "version": status.current_version(), "entries": log.visible_count(), "pending": log.pending_count(),
        "peers_up": status.peers_up(), "peers_total": len(genesis.members) - 1,
    }
    for extra in request.app.get(HEALTH_EXTRAS, ()):
        document.update(extra())
    return web.json_response(document)


def refresh_gauges(app: web.Application) -> None:
    """Gauges that are cheaper to read at scrape time than to track on every change."""
    log, metrics = app[CRDT_LOG], app[METRICS]
    metrics.set("log_entries_visible", log.visible_count())
    metrics.set("log_entries_pending", log.pending_count())
    metrics.set("log_entries_held", len(log))


async def get_metrics(request: web.Request) -> web.Response:
    """prometheus_client's generate_latest over this node's own registry (node/metrics.py)."""
    refresh_gauges(request.app)
    return web.Response(body=request.app[METRICS].render_bytes(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/health", get_health)


def add_metrics_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", get_metrics)
