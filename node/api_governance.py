"""The spec's governance and upgrade routes (API Reference, Upgrade Workflow), plus GET /state.

Why it works as it does:
- Thin: each handler checks its request completely, then calls one GovernanceService operation.
  Request bodies are judged by their declarations in node/core/schemas.py (the same ones /openapi.json
  publishes) BEFORE anything is built or written: a body the published schema refuses is a 400 whose
  message names the field and says what to give instead, and only such a body is a 400; what the
  state refuses (an unknown proposal, a version not above the current one, a URL scheme or a size
  this network does not take) keeps its 404/409/422. No entry is written on any refusal.
- Mutating routes (everything that writes an entry, changes the state, or makes the node download and
  run a package) need the node's bearer token (api.require_token); reads are open.
- Errors are the api module's JSON shape (`error`, `message`, `hint`, `definite`), mapped from
  node/errors.py by api.error_middleware.
- Proposal ids in paths are checked for their shape before any lookup: an id that cannot exist is a
  400 that says what an id looks like; a well-formed unknown id is a 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from msgspec import UNSET

from node import api
from node.core import schemas
from node.core.lifecycle import STATUSES
from node.core.schemas import PROPOSAL_ID_FULL, parse_request
from node.core.utc import format_utc_ms
from node.errors import BadRequest
from node.governance_service import GovernanceService
from node.presentation import proposal_summary, tally_document

GOVERNANCE = web.AppKey("governance_service", GovernanceService)

NEXT_STEPS = ["Community votes on proposal", "If approved, validators ratify", "Upgrade executes automatically"]
PROPOSALS_LIST_MAX = 1_000


async def _read_body(request: web.Request, *, optional_body: bool = False) -> Any:
    """The JSON body (bounded by limits.request_body_max_bytes); {} for an empty body when allowed."""
    if optional_body and (request.content_length == 0 or not request.body_exists):
        return {}
    return await api.read_json(request, size_max_bytes=request.app[api.LIMITS].request_body_max_bytes)


async def _request_body(request: web.Request, struct_type: type, what: str, *, optional_body: bool = False) -> Any:
    """The body as a `struct_type` (node/core/schemas.py), or a 400 that names the field and what to give."""
    return parse_request(struct_type, await _read_body(request, optional_body=optional_body), what=what)


def proposal_id_of(request: web.Request) -> str:
    proposal_id = request.match_info["proposal_id"]
    if not PROPOSAL_ID_FULL.search(proposal_id):
        raise BadRequest(f"{proposal_id[:100]!r} is not a proposal id",
                         hint="a proposal id looks like upgrade_20251003_120000_3fa9c2d1 (see GET /proposals)")
    return proposal_id


def _service(request: web.Request) -> GovernanceService:
    return request.app[GOVERNANCE]


# --- proposals and votes ------------------------------------------------------------------------


async def post_propose_upgrade(request: web.Request) -> web.Response:
    api.require_token(request)
    body = await _request_body(request, schemas.ProposeUpgrade, "POST /upgrades/propose")
    view = await _service(request).propose_upgrade(
        title=body.title, description=body.description, version=body.version, package_url=body.package_url,
        package_hash=body.package_hash, package_size=body.package_size)
    return web.json_response(_created(view), status=201)


async def post_propose_rollback(request: web.Request) -> web.Response:
    api.require_token(request)
    body = await _request_body(request, schemas.ProposeRollback, "POST /rollbacks/propose")
    view = await _service(request).propose_rollback(target_proposal_id=body.target_proposal_id,
                                                    title=_given(body.title), description=_given(body.description))
    return web.json_response(_created(view), status=201)


def _given(value: Any) -> Any:
    """None for an optional field the request left out."""
    return None if value is UNSET else value


def _created(view: Any) -> dict:
    return {"proposal_id": view.proposal_id, "status": view.status, "next_steps": NEXT_STEPS, "action": view.action,
            "version": view.version, "target_proposal_id": view.target_proposal_id, "entry_id": view.entry_id,
            "voting_deadline_ms": view.voting_deadline_ms, "voting_deadline": format_utc_ms(view.voting_deadline_ms)}


async def post_vote(request: web.Request) -> web.Response:
    api.require_token(request)
    proposal_id = proposal_id_of(request)
    body = await _request_body(request, schemas.Vote, f"POST /proposals/{proposal_id}/vote")
    entry, view = await _service(request).vote(proposal_id, body.vote)
    return web.json_response({"proposal_id": proposal_id, "vote": body.vote, "voter": entry.author,
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
    await _request_body(request, schemas.TestUpgrade, f"POST /upgrades/{proposal_id}/test", optional_body=True)
    return web.json_response(await _service(request).dry_run(proposal_id))


async def get_upgrade_status(request: web.Request) -> web.Response:
    return web.json_response(_service(request).upgrade_status())


async def get_upgrade_history(request: web.Request) -> web.Response:
    return web.json_response({"history": _service(request).history()})


async def post_local_rollback(request: web.Request) -> web.Response:
    api.require_token(request)
    proposal_id = proposal_id_of(request)
    body = await _request_body(request, schemas.LocalRollback, f"POST /upgrades/{proposal_id}/rollback", optional_body=True)
    return web.json_response(await _service(request).local_rollback(proposal_id, _given(body.reason)))


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
