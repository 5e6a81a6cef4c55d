"""The node's HTTP API described as OpenAPI 3.0, served at GET /openapi.json.

Why it works as it does:
- Request bodies are not written here: their schemas are exported from the declarations in
  node/core/schemas.py, the same ones the node judges requests with, so the published schema and the
  node's checks cannot disagree (tests/component/test_api_schema_property.py sends random and mutated
  bodies to every POST route: 400 exactly when the published schema refuses). msgspec exports JSON
  Schema 2020-12; `_openapi_30` rewrites the few spellings OpenAPI 3.0 has otherwise (null as
  `nullable`), and refuses any keyword 3.0 lacks, so a new kind of field cannot slip out unreadable.
- The rest (paths, responses) is hand-written: the API is small and its shapes are the spec's.
  tests/component/test_api_governance.py checks that every route the node registers is described
  here (and that nothing described is missing from the node): a new route without a description
  fails the build.
- Integers follow OpenAPI 3.0.3's own definition, "a JSON number without a fraction or exponent part":
  the node refuses 2048.0 where an integer belongs, as the document says.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from node.core.schemas import PROPOSAL_ID_FULL, REQUEST_BODIES
from node.core.stream_hello import HELLO_HEADER

OPENAPI_VERSION = "3.0.3"

_ERROR = {"$ref": "#/components/schemas/Error"}
_OBJECT = {"type": "object"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _responses(ok_status: str, ok_description: str, ok_schema: dict, *errors: str) -> dict:
    responses = {ok_status: {"description": ok_description, "content": _json(ok_schema)}}
    described = {"400": "malformed request (the message names the field and what to give)",
                 "401": "missing or wrong API token", "404": "unknown proposal or entry",
                 "409": "conflicts with the current state (closed vote, version already proposed, not the latest upgrade)",
                 "413": "request body too large", "422": "refused package (URL scheme, size) or upgrade",
                 "503": "temporarily unavailable (indefinite: check before retrying)"}
    for status in errors:
        responses[status] = {"description": described[status], "content": _json(_ERROR)}
    return responses


def _operation(summary: str, responses: dict, *, auth: bool = False, body: dict | None = None,
               body_required: bool = True, parameters: list | None = None, tags: tuple[str, ...] = ()) -> dict:
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if tags:
        operation["tags"] = list(tags)
    if auth:
        operation["security"] = [{"bearerToken": []}]
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": _json(body)}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path_parameter(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query_parameter(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_PROPOSAL_ID = {**_path_parameter("proposal_id", "a proposal id, e.g. upgrade_20251003_120000_3fa9c2d1"),
                "schema": {"type": "string", "pattern": PROPOSAL_ID_FULL.pattern}}
_MSGPACK = {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}}

_SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "message", "hint", "definite"], "properties": {
        "error": {"type": "string"}, "message": {"type": "string", "description": "what went wrong"},
        "hint": {"type": "string", "description": "what to do"},
        "definite": {"type": "boolean", "description": "true: it certainly did not happen; false: it may have"}}},
    "ProposalCreated": {"type": "object", "required": ["proposal_id", "status", "next_steps"], "properties": {
        "proposal_id": {"type": "string"}, "status": {"type": "string", "enum": ["voting"]},
        "next_steps": {"type": "array", "items": {"type": "string"}}, "action": {"type": "string"},
        "version": {"type": "string"}, "entry_id": {"type": "string"}, "voting_deadline_ms": {"type": "integer"},
        "voting_deadline": {"type": "string"}}},
    "Proposal": {"type": "object", "description": "status (voting, approved, rejected, expired, ratified, executed, "
                 "failed, rolled_back), tally, votes, ratification, every node's execution report, divergence flags. "
                 "The status leaves 'voting' only once a strict majority of validators published the counted votes "
                 "(closed, votes_digest, closed_by); until then tally.outcome is provisional",
                 "properties": {"proposal_id": {"type": "string"}, "status": {"type": "string"}, "tally": _OBJECT,
                                "closed": {"type": "boolean"}, "votes_digest": {"type": ["string", "null"]},
                                "closed_by": {"type": "array", "items": {"type": "string"}},
                                "votes": {"type": "array", "items": _OBJECT}, "execution": _OBJECT,
                                "reports": {"type": "array", "items": _OBJECT}, "ratification": _OBJECT,
                                "diverged": {"type": "boolean"}, "diverged_nodes": {"type": "array", "items": {"type": "string"}}}},
    "UpgradeStatus": {"type": "object", "required": ["system_available", "current_version", "total_upgrades",
                                                     "wasm_available", "ipfs_available", "state_hash", "applied_sequence"],
                      "properties": {"system_available": {"type": "boolean"}, "current_version": {"type": "string"},
                                     "total_upgrades": {"type": "integer"}, "wasm_available": {"type": "boolean"},
                                     "ipfs_available": {"type": "boolean"}, "state_hash": {"type": "string"},
                                     "applied_sequence": {"type": "integer"}}},
    "Rollback": {"type": "object", "required": ["message", "restored_version", "previous_version"], "properties": {
        "message": {"type": "string", "enum": ["Rollback completed"]}, "restored_version": {"type": "string"},
        "previous_version": {"type": "string"}, "state_hash": {"type": "string"}, "audit_entry_id": {"type": "string"}}},
    "State": {"type": "object", "required": ["version", "state_hash", "state"], "properties": {
        "version": {"type": "string"}, "state_hash": {"type": "string"}, "applied_sequence": {"type": "integer"},
        "state": {"type": "object", "description": "the live network state"}}},
}


# What OpenAPI 3.0's Schema Object knows, of what msgspec writes for our bodies.
_OPENAPI_30_KEYWORDS = frozenset({"title", "description", "type", "properties", "required", "additionalProperties",
                                  "minLength", "maxLength", "pattern", "minimum", "maximum", "enum", "default",
                                  "items", "minItems", "maxItems", "nullable", "$ref"})


def _openapi_30(schema: dict) -> dict:
    """A msgspec (JSON Schema 2020-12) schema of a request body, spelled as OpenAPI 3.0 wants it."""
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option != {"type": "null"}]
        assert len(options) == 1 and len(options) < len(schema["anyOf"]), f"only 'X or null' unions: {schema}"
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        return _openapi_30({**options[0], **rest, "nullable": True})
    unknown = set(schema) - _OPENAPI_30_KEYWORDS
    assert not unknown, f"OpenAPI 3.0 has no {sorted(unknown)} (in {schema})"
    converted = dict(schema)
    if converted.get("required") == []:
        del converted["required"]       # 3.0 (as JSON Schema draft 4) wants at least one name, or none given
    if "enum" in converted and "type" not in converted and all(isinstance(choice, str) for choice in converted["enum"]):
        converted["type"] = "string"
    if "properties" in converted:
        converted["properties"] = {name: _openapi_30(value) for name, value in converted["properties"].items()}
    if "items" in converted:
        converted["items"] = _openapi_30(converted["items"])
    return converted


def request_schemas() -> dict:
    """The components of every request body, derived from node/core/schemas.py."""
    _, components = msgspec.json.schema_components(REQUEST_BODIES, ref_template="#/components/schemas/{name}")
    return {name: _openapi_30(schema) for name, schema in components.items()}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _governance_paths() -> dict:
    proposal, governance, upgrades = [_PROPOSAL_ID], ("governance",), ("upgrades",)
    history = {"type": "object", "properties": {"history": {"type": "array", "items": _OBJECT}}}
    return {
        "/upgrades/propose": {"post": _operation(
            "Propose an upgrade (a PROPOSAL entry; voting starts)",
            _responses("201", "proposal created", _ref("ProposalCreated"), "400", "401", "409", "413", "422"),
            auth=True, body=_ref("ProposeUpgrade"), tags=governance)},
        "/rollbacks/propose": {"post": _operation(
            "Propose a network-wide rollback of the latest executed upgrade",
            _responses("201", "rollback proposal created", _ref("ProposalCreated"), "400", "401", "404", "409", "413"),
            auth=True, body=_ref("ProposeRollback"), tags=governance)},
        "/proposals": {"get": _operation(
            "List proposals (oldest first)", _responses("200", "proposal summaries", _OBJECT, "400"),
            parameters=[_query_parameter("status", "only proposals with this status", {"type": "string"})], tags=governance)},
        "/proposals/{proposal_id}": {"get": _operation(
            "One proposal: status, tally, votes, ratification, reports, divergence",
            _responses("200", "the proposal", _ref("Proposal"), "400", "404"), parameters=proposal, tags=governance)},
        "/proposals/{proposal_id}/vote": {"post": _operation(
            "Vote with this node's key (a VOTE entry)", _responses("201", "vote recorded", _OBJECT, "400", "401", "404", "409"),
            auth=True, body=_ref("Vote"), parameters=proposal, tags=governance)},
        "/upgrades/{proposal_id}/test": {"post": _operation(
            "Dry run: download, verify and run the package on a copy of the live state; nothing changes",
            _responses("200", "the dry run's result (success true or false, with the failed step)", _OBJECT,
                       "400", "401", "404", "409", "503"),
            auth=True, body=_ref("TestUpgrade"), body_required=False, parameters=proposal, tags=upgrades)},
        "/upgrades/status": {"get": _operation(
            "Upgrade system status of this node", _responses("200", "status", _ref("UpgradeStatus"), "503"), tags=upgrades)},
        "/upgrades/history": {"get": _operation(
            "This node's upgrade history", _responses("200", "history", history, "503"), tags=upgrades)},
        "/upgrades/{proposal_id}/rollback": {"post": _operation(
            "Operator rollback on THIS node of its latest applied upgrade (publishes a ROLLBACK audit entry)",
            _responses("200", "rolled back", _ref("Rollback"), "400", "401", "409", "503"),
            auth=True, body=_ref("LocalRollback"), body_required=False, parameters=proposal, tags=upgrades)},
        "/state": {"get": _operation(
            "The live network state, its version and hash", _responses("200", "state", _ref("State"), "503"), tags=("state",))},
    }


def _node_paths() -> dict:
    entry_id = _path_parameter("entry_id", "an entry id (64 lowercase hex)")
    log, node = ("log",), ("node",)
    log_filters = [
        _query_parameter("after", "position to start after", {"type": "integer", "minimum": 0}),
        _query_parameter("limit", "entries per page", {"type": "integer", "minimum": 1, "maximum": 500}),
        _query_parameter("kind", "only this entry kind", {"type": "string"}),
        _query_parameter("author", "only this author (node id)", {"type": "string"})]
    metrics = {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}
    return {
        "/log": {"get": _operation("Page through the visible log", _responses("200", "a page of entries", _OBJECT, "400"),
                                   parameters=log_filters, tags=log)},
        "/log/{entry_id}": {"get": _operation("One entry", _responses("200", "the entry", _OBJECT, "400", "404"),
                                              parameters=[entry_id], tags=log)},
        "/log/notes": {"post": _operation("Write a NOTE entry (answered once on disk)",
                                          _responses("201", "written", _OBJECT, "400", "401", "413", "503"),
                                          auth=True, body=_ref("Note"), tags=log)},
        "/health": {"get": _operation("Liveness and a summary of the node", _responses("200", "ok", _OBJECT), tags=node)},
        "/metrics": {"get": _operation("Prometheus metrics (text format 0.0.4)", metrics, tags=node)},
        "/openapi.json": {"get": _operation("This description", _responses("200", "OpenAPI 3 document", _OBJECT), tags=node)},
        **_gossip_paths(),
    }


def _gossip_paths() -> dict:
    body = {"required": True, "content": _MSGPACK}
    answers = {"200": {"description": "msgpack answer", "content": _MSGPACK},
               "400": {"description": "malformed message", "content": _json(_ERROR)},
               "413": {"description": "body too large", "content": _json(_ERROR)},
               "429": {"description": "too many requests from this source", "content": _json(_ERROR)},
               "503": {"description": "busy", "content": _json(_ERROR)}}
    paths = {f"/gossip/{name}": {"post": {"summary": f"Gossip between nodes: {what} (msgpack)", "tags": ["gossip"],
                                          "requestBody": body, "responses": answers}}
             for name, what in (("offer", "offer entry ids"), ("push", "push entries"), ("sync", "anti-entropy"))}
    paths["/gossip/stream"] = {"get": {
        "summary": "Gossip between nodes over one websocket: offer, push and sync as binary frames "
                   "(node/core/gossip_frames.py), answered as the POSTs above", "tags": ["gossip"],
        "parameters": [{"name": HELLO_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                        "description": "<from id>.<to id>.<at ms>.<nonce>.<ed25519 signature> by the opener's genesis "
                                       "key (node/core/stream_hello.py): once it checks, this node sends its own calls "
                                       "to the opener back over the stream; without it, or when it does not check, the "
                                       "stream carries only the opener's calls"}],
        "responses": {"101": {"description": "switching to the websocket"},
                      "429": {"description": "too many streams from this source", "content": _json(_ERROR)},
                      "503": {"description": "no free stream slot, or stopping: call over POST", "content": _json(_ERROR)}}}}
    paths["/gossip/visibility"] = {"get": _operation(
        "When entries became visible here (benchmarks)", _responses("200", "visibility times", _OBJECT, "400"),
        parameters=[_query_parameter("ids", "comma-separated entry ids", {"type": "string"})], tags=("gossip",))}
    return paths


def openapi_document() -> dict:
    """The whole OpenAPI 3 description (a fresh dict each call)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Synapse-NG node API", "version": "1",
                 "description": "One node of a self-upgrading network: governance (propose, vote), upgrades "
                                "(status, history, dry run, rollback), the state, the log, health and gossip."},
        "paths": {**_governance_paths(), **_node_paths()},
        "components": {"schemas": {**_SCHEMAS, **request_schemas()},
                       "securitySchemes": {"bearerToken": {"type": "http", "scheme": "bearer",
                                                           "description": "the token in the node's data dir (api_token, mode 0600)"}}},
    }


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def add_openapi_route(app: web.Application) -> None:
    app.router.add_get("/openapi.json", get_openapi)
