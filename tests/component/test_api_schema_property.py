"""Every POST route with a JSON body answers 400 exactly when /openapi.json's schema refuses the body.

The node publishes its request schemas and judges requests with the same declarations
(node/core/schemas.py). This holds them to it through HTTP, against the real node application: for each
route, random and mutated bodies (hypothesis, seeded; the seed is printed), a left-out body, and texts
that are not JSON. The reference is the published document read as a client would read it (jsonschema
with OpenAPI 3.0's nullable and integer, tests/schema_tools.py). Shape errors are 400, and only they
are: what the state refuses (an unknown proposal, a version already proposed, a URL scheme this
network does not fetch) keeps its 404/409/422. Node 0 alone can never approve, so nothing executes.
"""

import json
import random

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from node.openapi import openapi_document
from tests.component.node_app import lone_member_client, lone_member_network  # noqa: F401 (fixtures)
from tests.schema_tools import bodies, request_schema, schema_accepts

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO name='[^']*raft.journal.meta':pytest.PytestUnraisableExceptionWarning")

EXAMPLES_PER_ROUTE = 150
PROPOSAL_ID = "upgrade_20261124_120000_0123abcd"     # well formed, never proposed
# A valid body per route, as the OpenAPI document names the routes.
TEMPLATES = {
    "/upgrades/propose": {"title": "Upgrade to v1.2.0", "description": "d", "version": "1.2.0",
                          "package_url": "https://example.org/u.wasm", "package_hash": "sha256:" + "ab" * 32,
                          "package_size": 2048},
    "/rollbacks/propose": {"target_proposal_id": PROPOSAL_ID, "title": "back"},
    "/proposals/{proposal_id}/vote": {"vote": "approval"},
    "/upgrades/{proposal_id}/test": {},
    "/upgrades/{proposal_id}/rollback": {"reason": "canary failed"},
    "/log/notes": {"text": "hello"},
}
ABSENT = object()       # no body at all
NOT_JSON = [b"{not json", b"", b"\xff\xfe", b'{"text": NaN}', b'{"text": "\\ud800"}', b"[" * 300 + b"]" * 300]


def drawn_bodies(template: dict, schema: dict, run_seed: int) -> list:
    """EXAMPLES_PER_ROUTE bodies from hypothesis (generation only: the node is checked afterwards)."""
    drawn = []

    @seed(run_seed)
    @settings(max_examples=EXAMPLES_PER_ROUTE, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(bodies(template, schema))
    def collect(body):
        drawn.append(body)

    collect()
    return drawn


@pytest.fixture
def cases() -> tuple[int, dict]:
    """(seed, route -> bodies), drawn BEFORE the node starts: hypothesis refuses to draw while other
    threads (PySyncObj's) use the global `random`. Drawn from the document this code publishes; the
    test checks that the node serves that same document."""
    run_seed = random.randrange(2**32)
    print(f"schema property seed: {run_seed}")
    document = openapi_document()
    return run_seed, {route: [template, ABSENT, *NOT_JSON, *drawn_bodies(template, request_schema(document, route)[0], run_seed)]
                      for route, template in TEMPLATES.items()}


async def test_a_post_is_a_400_exactly_when_the_published_schema_refuses_its_body(cases, client):
    run_seed, bodies_by_route = cases
    document = await (await client.get("/openapi.json")).json()
    assert document == json.loads(json.dumps(openapi_document())), "the node serves the document the bodies were drawn from"
    json_routes = {path for path, operations in document["paths"].items()
                   if "application/json" in operations.get("post", {}).get("requestBody", {}).get("content", {})}
    assert json_routes == set(TEMPLATES), "every POST route with a JSON body is covered here"
    headers = {"Authorization": f"Bearer {client.token}", "Content-Type": "application/json"}
    mismatches, seen = [], {}
    for route in sorted(TEMPLATES):
        schema, required = request_schema(document, route)
        path = route.replace("{proposal_id}", PROPOSAL_ID)
        for body in bodies_by_route[route]:
            if body is ABSENT:
                response, expected_400 = await client.post(path, headers=headers), required
            elif isinstance(body, bytes):
                # An empty body is a left-out body (Content-Length: 0); anything else that is not JSON is a 400.
                response, expected_400 = await client.post(path, data=body, headers=headers), required or body != b""
            else:
                response = await client.post(path, data=json.dumps(body).encode(), headers=headers)
                expected_400 = not schema_accepts(schema, body)
            answer = await response.text()
            assert response.status < 500 or response.status == 503, f"{path} {body!r:.300}: {response.status} {answer[:300]}"
            if (response.status == 400) != expected_400:
                mismatches.append(f"{path} {body!r:.200} -> {response.status} {answer[:200]}")
            if response.status == 400:
                assert json.loads(answer)["hint"], f"{path}: a refusal without a hint: {answer[:300]}"
            seen.setdefault(route, set()).add(response.status == 400)
    assert mismatches == [], f"seed {run_seed}: the node and its published schema disagree:\n" + "\n".join(mismatches[:20])
    assert all(outcomes == {True, False} for outcomes in seen.values()), seen
