"""The node's HTTP API under a stream of random and mutated requests (seeded; the seed is printed).

What an operator expects of a node facing garbage: every request gets a definite answer, never a
500 and never a hang; every refusal is the API's JSON error (error, message, hint); and afterwards
the node is healthy, its state untouched (no package was ever approved), and nothing it wrote is
malformed. Bodies are valid requests with one field replaced, dropped or added, random JSON
values, and raw bytes; paths carry odd proposal ids; queries odd parameters.
"""

import json
import random
import string

import pytest

from tests.component.node_app import lone_member_client, lone_member_network  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO name='[^']*raft.journal.meta':pytest.PytestUnraisableExceptionWarning")

REQUESTS = 400
TEMPLATES = {
    "/upgrades/propose": {"title": "Upgrade to v1.2.0", "description": "fuzz", "version": "1.2.0",
                          "package_url": "https://example.org/u.wasm", "package_hash": "sha256:" + "ab" * 32,
                          "package_size": 2048},
    "/rollbacks/propose": {"target_proposal_id": "upgrade_20261124_120000_0123abcd", "title": "back"},
    "/log/notes": {"text": "hello"},
    "/proposals/{id}/vote": {"vote": "approval"},
    "/upgrades/{id}/rollback": {},
    "/upgrades/{id}/test": {},
}
READS = ["/health", "/metrics", "/state", "/proposals", "/proposals/{id}", "/upgrades/status", "/upgrades/history",
         "/log", "/log/{entry}", "/openapi.json"]
ODD_TEXT = ["", " ", "\x00", "é" * 300, "../../etc/passwd", "%2e%2e%2f", "upgrade_", "upgrade_20261124_120000_zzzzzzzz",
            "a" * 5000, "\ud7ff", "sha256:" + "AB" * 32, "ipfs://x", "file:///etc/passwd", "1.2.0-" + "a" * 300,
            "9" * 40, "NaN", "[]", "{}", "null"]


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, rng.randrange(-10**6, 10**6)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-300, float(rng.random())])
    if kind in (4, 5):
        return rng.choice(ODD_TEXT + ["".join(rng.choices(string.printable, k=rng.randrange(0, 40)))])
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(ODD_TEXT + ["vote", "title", "x"]): random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def mutated(rng: random.Random, template: dict):
    body = dict(template)
    choice = rng.randrange(5)
    if choice == 0 and body:
        body[rng.choice(list(body))] = random_json(rng)
    elif choice == 1 and body:
        body.pop(rng.choice(list(body)))
    elif choice == 2:
        body[rng.choice(ODD_TEXT)] = random_json(rng)
    elif choice == 3:
        return random_json(rng)
    return body


def odd_id(rng: random.Random) -> str:
    return rng.choice(["upgrade_20261124_120000_0123abcd", "rollback_20261124_120000_0123abcd", "x", "%00", "..",
                       "upgrade_" + "9" * 200, "%F0%9F%92%A5", "a%2Fb"])


async def test_random_and_mutated_requests_never_get_a_500_and_leave_the_node_healthy(client):
    seed = random.randrange(2**32)
    print(f"api fuzz seed: {seed}")
    rng = random.Random(seed)
    before = await (await client.get("/state")).json()
    statuses: dict[int, int] = {}
    for number in range(REQUESTS):
        authorized = rng.random() < 0.9
        headers = {"Authorization": f"Bearer {client.token}"} if authorized else {}
        if rng.random() < 0.3:
            path = rng.choice(READS).replace("{id}", odd_id(rng)).replace("{entry}", rng.choice(["ab" * 32, "zz", "1"]))
            if rng.random() < 0.5:
                path += "?" + "&".join(f"{rng.choice(['after', 'limit', 'kind', 'author', 'status', 'x'])}={rng.choice(ODD_TEXT)[:50]}"
                                       for _ in range(rng.randrange(1, 3)))
            response = await client.get(path)
        else:
            route = rng.choice(list(TEMPLATES))
            path = route.replace("{id}", odd_id(rng))
            if rng.random() < 0.1:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
                response = await client.post(path, data=data, headers={**headers, "Content-Type": "application/json"})
            else:
                response = await client.post(path, data=json.dumps(mutated(rng, TEMPLATES[route])),
                                             headers={**headers, "Content-Type": "application/json"})
        text = await response.text()
        statuses[response.status] = statuses.get(response.status, 0) + 1
        assert response.status < 500 or response.status == 503, f"request {number} {path}: {response.status} {text[:300]}"
        if response.status >= 400 and path.split("?")[0] != "/metrics":
            body = json.loads(text)
            assert {"error", "message", "hint"} <= set(body), f"request {number} {path}: {text[:300]}"
    print(f"statuses: {dict(sorted(statuses.items()))}")
    assert statuses.get(400, 0) > 0 and any(status < 300 for status in statuses)
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok"
    after = await (await client.get("/state")).json()
    assert (after["version"], after["state_hash"]) == (before["version"], before["state_hash"])
