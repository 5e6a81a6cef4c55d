"""The spec's governance and upgrade routes (API Reference, Upgrade Workflow), plus GET /state.

Why it works as it does:
- Thin: each handler checks its request completely, then calls one GovernanceService operation.
  Request bodies are checked field by field BEFORE anything is built or written: a malformed body,
  a missing or unknown field, a wrong type, a bad hash, a bad URL scheme or an impossible size is a
  4xx whose message names the field and says what to give instead, and no entry is written.
- Mutating routes (everything that writes an entry, changes the state, or makes the node download and
  run a package) need the node's bearer token (api.require_token); reads are open.
- Errors are the api module's JSON shape (`error`, `message`, `hint`, `definite`), mapped from
  node/errors.py by api.error_middleware.
- Proposal ids in paths are checked for their shape before any lookup: an id that cannot exist is a
  400 that says what an id looks like; a well-formed unknown id is a 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from node import api
from node.core.lifecycle import STATUSES
from node.core.proposals import PROPOSAL_ID_PATTERN
from node.core.urls import has_userinfo
from node.core.utc import format_utc_ms
from node.errors import BadRequest
from node.governance_service import GovernanceService
from node.presentation import proposal_summary, tally_document

GOVERNANCE = web.AppKey("governance_service", GovernanceService)

NEXT_STEPS = ["Community votes on proposal", "If approved, validators ratify", "Upgrade executes automatically"]
PROPOSALS_LIST_MAX = 1_000
REASON_LENGTH_MAX = 1_000
TEXT_LENGTHS = {"title": (1, 200), "description": (0, 4000)}

# Field kinds: a JSON string, a JSON integer (never a boolean), or either of them or null.
STRING, INTEGER, OPTIONAL_STRING, OPTIONAL_INTEGER = "string", "integer", "string or null", "integer or null"

PROPOSE_REQUIRED = {"title": STRING, "version": STRING, "package_url": STRING, "package_hash": STRING}
PROPOSE_OPTIONAL = {"description": STRING, "package_size": OPTIONAL_INTEGER}
ROLLBACK_PROPOSE_REQUIRED = {"target_proposal_id": STRING}
ROLLBACK_PROPOSE_OPTIONAL = {"title": STRING, "description": STRING}
VOTE_REQUIRED = {"vote": STRING}
LOCAL_ROLLBACK_OPTIONAL = {"reason": STRING}


def _is_kind(value: Any, kind: str) -> bool:
    if value is None:
        return kind in (OPTIONAL_STRING, OPTIONAL_INTEGER)
    if kind in (STRING, OPTIONAL_STRING):
        return isinstance(value, str)
    return type(value) is int


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_fields(body: Any, *, required: Mapping[str, str], optional: Mapping[str, str], what: str) -> dict:
    """`body` as a dict whose fields are exactly some of required + optional, of the right JSON types."""
    example = ", ".join([f'"{name}": <{kind}>' for name, kind in required.items()]
                        + [f'"{name}"?: <{kind}>' for name, kind in optional.items()])
    if not isinstance(body, dict):
        raise BadRequest(f"{what}: the body must be a JSON object, not a JSON {_json_type(body)}", hint=f"send {{{example}}}")
    unknown = sorted(str(name)[:40] for name in set(body) - set(required) - set(optional))
    missing = sorted(set(required) - set(body))
    if unknown:
        raise BadRequest(f"{what}: unknown field(s) {', '.join(unknown[:5])}", hint=f"the fields are {{{example}}}")
    if missing:
        raise BadRequest(f"{what}: missing field(s) {', '.join(missing)}", hint=f"the fields are {{{example}}}")
    for name, kind in {**required, **optional}.items():
        if name in body and not _is_kind(body[name], kind):
            raise BadRequest(f"{what}: field {name} must be a JSON {kind}, not a JSON {_json_type(body[name])}",
                             hint=f"the fields are {{{example}}}")
    return body


async def _read_body(request: web.Request, *, optional_body: bool = False) -> Any:
    """The JSON body (bounded by limits.request_body_max_bytes); {} for an empty body when allowed."""
    if optional_body and (request.content_length == 0 or not request.body_exists):
        return {}
    return await api.read_json(request, size_max_bytes=request.app[api.LIMITS].request_body_max_bytes)


def check_texts(body: Mapping[str, Any]) -> None:
    """Lengths and characters of the free texts, checked here so that the message can say what to do."""
    for name, (length_min, length_max) in TEXT_LENGTHS.items():
        value = body.get(name)
        if isinstance(value, str) and not length_min <= len(value) <= length_max:
            raise BadRequest(f"{name} must be a string of {length_min} to {length_max} characters, not {len(value)}",
                             hint=f"shorten (or fill in) {name}")
        if isinstance(value, str):
            api.check_human_text(name, value, one_line=name == "title")


def proposal_id_of(request: web.Request) -> str:
    proposal_id = request.match_info["proposal_id"]
    if not PROPOSAL_ID_PATTERN.match(proposal_id):
        raise BadRequest(f"{proposal_id[:100]!r} is not a proposal id",
                         hint="a proposal id looks like upgrade_20251003_120000_3fa9c2d1 (see GET /proposals)")
    return proposal_id


def _service(request: web.Request) -> GovernanceService:
    return request.app[GOVERNANCE]


# --- proposals and votes ------------------------------------------------------------------------


async def post_propose_upgrade(request: web.Request) -> web.Response:
    api.require_token(request)
    body = check_fields(await _read_body(request), required=PROPOSE_REQUIRED, optional=PROPOSE_OPTIONAL,
                        what="POST /upgrades/propose")
    check_texts(body)
    if has_userinfo(body["package_url"]):
        # The entry schema refuses it network-wide; here the proposer learns why, and the URL is not echoed.
        raise BadRequest("package_url holds credentials (user:password@ before the host); a proposal's URL is shown to "
                         "every member and on the open GET /proposals and GET /log",
                         hint="publish the package where every node can fetch it without credentials, "
                              "or use ipfs://CID through the nodes' IPFS gateways")
    size = body.get("package_size")
    if size is not None and not 1 <= size <= 2**40:
        raise BadRequest(f"package_size must be the package's size in bytes (1 to 2**40), not {size}",
                         hint="give the exact size of the .wasm file (ls -l), or leave package_size out")
    view = await _service(request).propose_upgrade(
        title=body["title"], description=body.get("description", ""), version=body["version"],
        package_url=body["package_url"], package_hash=body["package_hash"], package_size=size)
    return web.json_response(_created(view), status=201)


async def post_propose_rollback(request: web.Request) -> web.Response:
    api.require_token(request)
    body = check_fields(await _read_body(request), required=ROLLBACK_PROPOSE_REQUIRED, optional=ROLLBACK_PROPOSE_OPTIONAL,
                        what="POST /rollbacks/propose")
    check_texts(body)
    if not PROPOSAL_ID_PATTERN.match(body["target_proposal_id"]):
        raise BadRequest(f"target_proposal_id {body['target_proposal_id'][:100]!r} is not a proposal id",
                         hint="give the id of the executed upgrade to undo (GET /proposals)")
    view = await _service(request).propose_rollback(target_proposal_id=body["target_proposal_id"],
                                                    title=body.get("title"), description=body.get("description"))
    return web.json_response(_created(view), status=201)


def _created(view: Any) -> dict:
    return {"proposal_id": view.proposal_id, "status": view.status, "next_steps": NEXT_STEPS, "action": view.action,
            "version": view.version, "target_proposal_id": view.target_proposal_id, "entry_id": view.entry_id,
            "voting_deadline_ms": view.voting_deadline_ms, "voting_deadline": format_utc_ms(view.voting_deadline_ms)}


async def post_vote(request: web.Request) -> web.Response:
    api.require_token(request)
    proposal_id = proposal_id_of(request)
    body = check_fields(await _read_body(request), required=VOTE_REQUIRED, optional={},
                        what=f"POST /proposals/{proposal_id}/vote")
    if body["vote"] not in ("approval", "rejection"):
        raise BadRequest(f"vote must be \"approval\" or \"rejection\", not {body['vote'][:40]!r}",
                         hint='send {"vote": "approval"} or {"vote": "rejection"}')
    entry, view = await _service(request).vote(proposal_id, body["vote"])
    return web.json_response({"proposal_id": proposal_id, "vote": body["vote"], "voter": entry.author,
                              "entry_id": entry.id, "status": view.status, "tally": tally_document(view.tally)}, status=201)


async def get_proposals(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - {"status"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0][:40]!r}", hint="GET /proposals takes only ?status=")
    wanted = request.query.get("status")
    if wanted is not None and wanted not in STATUSES:
        raise BadRequest(f"unknown status {wanted[:40]!r}", hint=f"status is one of {', '.join(STATUSES)}")
    views = [view for view in _service(request).proposals() if wanted is None or view.status == wanted]
    shown = views[-PROPOSALS_LIST_MAX:]
    return web.json_response({"proposals": [proposal_summary(view) for view in shown], "total": len(views),
                              "truncated": len(shown) < len(views)})


async def get_proposal(request: web.Request) -> web.Response:
    return web.json_response(_service(request).proposal_document(proposal_id_of(request)))


# --- upgrades -----------------------------------------------------------------------------------


async def post_test_upgrade(request: web.Request) -> web.Response:
    api.require_token(request)
    proposal_id = proposal_id_of(request)
    check_fields(await _read_body(request, optional_body=True), required={}, optional={},
                 what=f"POST /upgrades/{proposal_id}/test")
    return web.json_response(await _service(request).dry_run(proposal_id))


async def get_upgrade_status(request: web.Request) -> web.Response:
    return web.json_response(_service(request).upgrade_status())


async def get_upgrade_history(request: web.Request) -> web.Response:
    return web.json_response({"history": _service(request).history()})


async def post_local_rollback(request: web.Request) -> web.Response:
    api.require_token(request)
    proposal_id = proposal_id_of(request)
    body = check_fields(await _read_body(request, optional_body=True), required={}, optional=LOCAL_ROLLBACK_OPTIONAL,
                        what=f"POST /upgrades/{proposal_id}/rollback")
    reason = body.get("reason")
    if reason is not None and len(reason) > REASON_LENGTH_MAX:
        raise BadRequest(f"reason must be at most {REASON_LENGTH_MAX} characters, not {len(reason)}")
    if reason is not None:
        api.check_human_text("reason", reason, one_line=False)
    return web.json_response(await _service(request).local_rollback(proposal_id, reason))


async def get_state(request: web.Request) -> web.Response:
    return web.json_response(await _service(request).state_document())


def add_governance_routes(app: web.Application, service: GovernanceService) -> None:
    app[GOVERNANCE] = service
    app.setdefault(api.HEALTH_EXTRAS, []).append(service.health_facts)
    app.router.add_post("/upgrades/propose", post_propose_upgrade)
    app.router.add_post("/rollbacks/propose", post_propose_rollback)
    app.router.add_get("/proposals", get_proposals)
    app.router.add_get("/proposals/{proposal_id}", get_proposal)
    app.router.add_post("/proposals/{proposal_id}/vote", post_vote)
    app.router.add_post("/upgrades/{proposal_id}/test", post_test_upgrade)
    app.router.add_get("/upgrades/status", get_upgrade_status)
    app.router.add_get("/upgrades/history", get_upgrade_history)
    app.router.add_post("/upgrades/{proposal_id}/rollback", post_local_rollback)
    app.router.add_get("/state", get_state)
