"""The node's HTTP API for the log, health and metrics, through aiohttp's test client.

The application is the real one (node.runtime.Node: config, genesis, key, log file, CrdtLog, gossip),
built from a real `synapse genesis create` network; only the listening socket is the test client's.
The second member of the network never runs, so gossip to it just fails and backs off.
"""

import asyncio
import io
import json
import re

import pytest

from cluster.addresses import acquire_block
from cluster.genesis import create_network
from node import api
from node.core.entries import make_entry
from node.core.hlc import Hlc
from node.identity import Identity
from tests.component.node_app import node_test_client
from tests.metrics_text import sample

API_PORT = 7000
SAMPLE = re.compile(r"^synapse_[a-zA-Z0-9_:]+(\{.*\})? -?[0-9.e+Inf]+$")


@pytest.fixture
def network(tmp_path):
    with acquire_block(hosts=1, ports=[API_PORT]) as lease:
        yield create_network(tmp_path / "net", nodes=2, validators=1, block=lease.block, api_port=API_PORT, raft_port=7100,
                             config_limits={"gossip_first_write_wait_ms": 0})  # its only peer never runs: do not wait for it


@pytest.fixture
async def node_client(network, aiohttp_client):
    async with node_test_client(network.nodes[0].config_path, aiohttp_client) as client:
        yield client


def auth(client) -> dict:
    return {"Authorization": f"Bearer {client.token}"}


async def post_note(client, text: str):
    return await client.post("/log/notes", json={"text": text}, headers=auth(client))


async def error_of(response, status: int) -> dict:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) >= {"error", "message", "hint"}
    return body


async def test_health_reports_the_node(node_client, network):
    response = await node_client.get("/health")
    assert response.status == 200
    health = await response.json()
    assert health["status"] == "ok"
    assert health["node_id"] == network.nodes[0].node_id
    assert health["version"] == "1.0.0"
    assert health["network_id"] == network.genesis.network_id
    assert (health["entries"], health["peers_up"], health["peers_total"]) == (0, 0, 1)


async def test_the_token_is_created_private_at_first_start(node_client, network):
    token_path = network.nodes[0].node_dir / "api_token"
    assert token_path.stat().st_mode & 0o777 == 0o600
    assert api.read_token(token_path) == node_client.token
    assert re.fullmatch(r"[0-9a-f]{64}", node_client.token)


async def test_a_note_is_on_disk_when_acknowledged_and_then_readable(node_client, network):
    response = await post_note(node_client, "hello")
    assert response.status == 201
    created = await response.json()
    assert created["sequence"] == 1 and created["author"] == network.nodes[0].node_id
    raw = node_client.node.log.get(created["id"]).raw
    assert raw in (network.nodes[0].node_dir / "log" / "entries.bin").read_bytes()
    entry = await (await node_client.get(f"/log/{created['id']}")).json()
    assert entry["kind"] == "NOTE" and entry["body"] == {"text": "hello"} and entry["visible"] is True
    assert entry["parents"] == [] and entry["hlc"]["wall_ms"] > 0 and len(entry["signature"]) == 128
    assert isinstance(entry["visible_at_ms"], int)
    second = await (await post_note(node_client, "again")).json()
    entry = await (await node_client.get(f"/log/{second['id']}")).json()
    assert entry["parents"] == [created["id"]] and entry["sequence"] == 2


@pytest.mark.parametrize("headers, message", [
    ({}, "this operation needs the node's API token"),
    ({"Authorization": "Bearer " + "0" * 64}, "wrong API token"),
    ({"Authorization": "Basic abc"}, "this operation needs the node's API token"),
])
async def test_writing_needs_the_token(node_client, headers, message):
    body = await error_of(await node_client.post("/log/notes", json={"text": "x"}, headers=headers), 401)
    assert body["message"] == message
    assert "api_token" in body["hint"]
    assert node_client.node.log.visible_count() == 0


@pytest.mark.parametrize("data, message", [
    (b"{not json", "the request body is not valid JSON"),
    (b"[1, 2]", "POST /log/notes: the body must be a JSON object, not a JSON array"),
    (b'{"text": "a", "extra": 1}', "POST /log/notes: unknown field(s) extra"),
    (b'{"text": 5}', "POST /log/notes: field text must be a JSON string, not a JSON integer"),
    (json.dumps({"text": "x" * 4097}).encode(), "text must be a string of at most 4096 characters"),
    (b"\xff\xfe", "the request body is not valid JSON"),
    (json.dumps({"text": "red \x1b[31malert"}).encode(), "text holds a control or bidirectional-override character (U+001B at position 4)"),
    (b"[" * 100_000 + b"]" * 100_000, "the request body is JSON nested 100,000 levels deep, over the limit of 256"),
])
async def test_bad_note_bodies_are_refused_and_change_nothing(node_client, data, message):
    response = await node_client.post("/log/notes", data=data, headers={**auth(node_client), "Content-Type": "application/json"})
    body = await error_of(response, 400)
    assert body["message"].startswith(message)
    assert node_client.node.log.visible_count() == 0


async def test_an_oversized_body_is_refused_with_413(node_client):
    limit = node_client.node.prepared.limits.request_body_max_bytes
    response = await node_client.post("/log/notes", data=io.BytesIO(b" " * (limit + 1)), headers=auth(node_client))
    body = await error_of(response, 413)
    assert body["error"] == "PayloadTooLarge"

    async def chunks():  # no Content-Length: the cap applies to what is really read
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    response = await node_client.post("/log/notes", data=chunks(), headers=auth(node_client))
    assert (await error_of(response, 413))["error"] == "PayloadTooLarge"
    assert node_client.node.log.visible_count() == 0


async def test_concurrent_notes_get_distinct_sequences(node_client):
    responses = await asyncio.gather(*(post_note(node_client, f"note {i}") for i in range(20)))
    assert [response.status for response in responses] == [201] * 20
    sequences = sorted([(await response.json())["sequence"] for response in responses])
    assert sequences == list(range(1, 21))
    assert node_client.node.log.equivocations() == []


async def test_log_pages_with_a_cursor(node_client):
    ids = [(await (await post_note(node_client, f"n{i}")).json())["id"] for i in range(7)]
    first = await (await node_client.get("/log?limit=3")).json()
    assert [entry["id"] for entry in first["entries"]] == ids[:3]
    assert [entry["position"] for entry in first["entries"]] == [1, 2, 3]
    assert (first["next"], first["more"], first["visible_total"]) == (3, True, 7)
    second = await (await node_client.get(f"/log?after={first['next']}&limit=3")).json()
    assert [entry["id"] for entry in second["entries"]] == ids[3:6]
    last = await (await node_client.get(f"/log?after={second['next']}&limit=3")).json()
    assert [entry["id"] for entry in last["entries"]] == ids[6:]
    assert (last["next"], last["more"]) == (7, False)
    beyond = await (await node_client.get("/log?after=100")).json()
    assert (beyond["entries"], beyond["more"]) == ([], False)


async def test_log_filters(node_client, network):
    await post_note(node_client, "a")
    mine = await (await node_client.get(f"/log?kind=NOTE&author={network.nodes[0].node_id}")).json()
    assert len(mine["entries"]) == 1
    votes = await (await node_client.get("/log?kind=VOTE")).json()
    assert (votes["entries"], votes["next"]) == ([], 1)
    theirs = await (await node_client.get(f"/log?author={network.nodes[1].node_id}")).json()
    assert theirs["entries"] == []


@pytest.mark.parametrize("query, message", [
    ("limit=0", "query parameter limit='0' must be an integer from 1 to 500"),
    ("limit=501", "query parameter limit='501' must be an integer from 1 to 500"),
    ("after=-1", "query parameter after='-1' must be an integer"),
    ("after=abc", "query parameter after='abc' must be an integer"),
    ("kind=BOGUS", "unknown entry kind 'BOGUS'"),
    ("author=xyz", "author 'xyz' is not a node id"),
    ("colour=red", "unknown query parameter 'colour'"),
])
async def test_bad_log_queries_are_refused(node_client, query, message):
    body = await error_of(await node_client.get(f"/log?{query}"), 400)
    assert body["message"].startswith(message)


async def test_unknown_entries_and_bad_ids(node_client):
    body = await error_of(await node_client.get("/log/" + "ab" * 32), 404)
    assert body["message"] == f"entry {'ab' * 32} is not on this node"
    body = await error_of(await node_client.get("/log/not-an-id"), 400)
    assert "is not an entry id" in body["message"]


async def test_unknown_routes_and_methods_answer_json(node_client):
    body = await error_of(await node_client.get("/nope"), 404)
    assert body["message"] == "no route GET /nope"
    assert "GET /health" in body["hint"] and "POST /log/notes" in body["hint"]
    body = await error_of(await node_client.delete("/log"), 405)
    assert body["error"] == "MethodNotAllowed"


async def test_metrics_are_prometheus_text(node_client):
    await post_note(node_client, "a")
    await post_note(node_client, "b")
    response = await node_client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    assert sample(text, "synapse_log_entries_visible") == 2
    assert sample(text, "synapse_log_entries_pending") == 0
    assert sample(text, "synapse_log_entries_visible_total", kind="NOTE") == 2
    assert sample(text, "synapse_gossip_peers_up") == 0
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.match(line), line


def test_entry_json_shows_bytes_as_hex():
    identity = Identity.generate()
    entry = make_entry(network_id="net-test", kind="RATIFY", author=identity.node_id, sequence=1, parents=(), hlc=Hlc(5, 0),
                       body={"proposal_id": "p", "sequence": 1, "statement": b"\x01\x02", "signature": b"\xaa" * 64},
                       sign=identity.sign)
    document = api.entry_to_json(entry, position=4)
    assert document["body"]["statement"] == "0102"
    assert document["body"]["signature"] == "aa" * 64
    assert document["position"] == 4
    json.dumps(document)  # everything is JSON
