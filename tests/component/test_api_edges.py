"""Input edges of the node's HTTP API, through the real node application (runtime.Node behind aiohttp):
header bytes no client library would send, odd versions, credentials in package URLs.

Headers are sent over a raw socket: aiohttp's client encodes header values as UTF-8, so it cannot
send the single latin-1 byte that a hostile or broken client can.
"""

import asyncio
import json

import pytest

from cluster.addresses import acquire_block
from cluster.genesis import create_network
from node.core.entries import make_entry
from node.core.proposals import make_proposal_id
from node.core.hlc import Hlc
from node.gossip import PATH_OFFER, PATH_PUSH, PATH_SYNC, PATH_VISIBILITY, Push, Pushed, decode_message
from node.identity import Identity
from node.runtime import wall_ms
from tests.component.node_app import node_test_client
from tests.logtools import forge_raw, proposal_body
from tests.metrics_text import sample

# PySyncObj 0.3.17 never closes its journal's .meta file (see tests/component/test_raft.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO name='[^']*raft.journal.meta':pytest.PytestUnraisableExceptionWarning")

API_PORT = 7000
RAFT_PORT = 7100
RAW_REPLY_BYTES_MAX = 64 * 1024
RAW_REPLY_TIMEOUT_S = 10.0
PROPOSAL_ID = "upgrade_20251003_120000_3fa9c2d1"
# Every route that changes something, with a body it would accept if the token were right.
MUTATING_ROUTES = {
    "/upgrades/propose": b'{"title": "t", "version": "1.2.0", "package_url": "https://example.org/u.wasm", '
                         b'"package_hash": "sha256:' + b"ab" * 32 + b'"}',
    "/rollbacks/propose": b'{"target_proposal_id": "' + PROPOSAL_ID.encode() + b'"}',
    "/log/notes": b'{"text": "hello"}',
    f"/proposals/{PROPOSAL_ID}/vote": b'{"vote": "approval"}',
    f"/upgrades/{PROPOSAL_ID}/test": b"{}",
    f"/upgrades/{PROPOSAL_ID}/rollback": b"{}",
}
# Gossip carries signed entries, checked one by one; it has no token to get wrong.
TOKENLESS_ROUTES = {PATH_OFFER, PATH_PUSH, PATH_SYNC, PATH_VISIBILITY}


@pytest.fixture
def network(tmp_path):
    with acquire_block(hosts=2, ports=[API_PORT, RAFT_PORT]) as lease:
        yield create_network(tmp_path / "net", nodes=2, validators=1, block=lease.block, api_port=API_PORT,
                             raft_port=RAFT_PORT, reputations=[300, 100],
                             config_limits={"gossip_first_write_wait_ms": 0})


@pytest.fixture
async def client(network, aiohttp_client):
    async with node_test_client(network.nodes[0].config_path, aiohttp_client) as client:
        yield client


async def raw_post(client, path: str, authorization: bytes, body: bytes) -> tuple[int, bytes]:
    """POST with an Authorization header of exactly these bytes; (status, response body)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nAuthorization: " + authorization + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(RAW_REPLY_TIMEOUT_S):
            reply = await reader.read(RAW_REPLY_BYTES_MAX)
    finally:
        writer.close()
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_the_list_of_mutating_routes_is_complete(client):
    posted = {route.resource.canonical for route in client.app.router.routes() if route.method not in ("GET", "HEAD")}
    listed = {path.replace(PROPOSAL_ID, "{proposal_id}") for path in MUTATING_ROUTES}
    assert posted - TOKENLESS_ROUTES == listed


@pytest.mark.parametrize("path", sorted(MUTATING_ROUTES))
@pytest.mark.parametrize("authorization", [b"Bearer \xe9", b"Bearer \xc3\xa9" + b"a" * 62, b"Bearer " + b"\xff" * 64,
                                           b"\xe9 token"])
async def test_a_non_ascii_token_is_a_clear_401_on_every_mutating_route(client, path, authorization):
    status, body = await raw_post(client, path, authorization, MUTATING_ROUTES[path])
    assert status == 401, body
    assert b"Traceback" not in body and b'"hint"' in body
    assert client.node.log.visible_count() == 0


# --- versions -----------------------------------------------------------------------------------------


def auth(client) -> dict:
    return {"Authorization": f"Bearer {client.token}"}


async def propose(client, **fields):
    body = {"title": "Upgrade", "description": "d", "version": "3.1.0", "package_url": "https://example.org/u.wasm",
            "package_hash": "sha256:" + "ab" * 32, "package_size": 2048}
    body.update(fields)
    response = await client.post("/upgrades/propose", json=body, headers=auth(client))
    return response.status, json.loads(await response.text())


@pytest.mark.parametrize("odd", ["3.1.0\n", "1\u0663.0.0", "3.1.0\r", "\uff13.1.0", "3.1.0-\u0663a"])
async def test_odd_versions_are_refused_with_a_400(client, odd):
    status, body = await propose(client, version=odd)
    assert status == 400 and "is not semver" in body["message"], body
    assert client.node.log.visible_count() == 0


async def test_a_version_with_only_other_build_metadata_is_already_proposed(client):
    status, first = await propose(client)
    assert status == 201, first
    status, body = await propose(client, version="3.1.0+build.1")
    assert status == 409 and f"already proposed by {first['proposal_id']}" in body["message"], body
    status, _body = await propose(client, version="3.1.1+build.1")
    assert status == 201


# --- entries are signed for one network -----------------------------------------------------------------


async def push(client, *raws: bytes) -> Pushed:
    """What a peer does: POST entries to the gossip endpoint."""
    response = await client.post(PATH_PUSH, data=Push(sender="", raws=tuple(raws)).encode(),
                                 headers={"Content-Type": "application/msgpack"})
    assert response.status == 200, await response.text()
    return decode_message(await response.read(), Pushed, array_length_max=8)


async def test_an_entry_a_member_signed_for_another_network_is_refused_at_the_door(client, network):
    # Member 1 reuses its key in "other-network"; a NOTE it signed there is replayed to this network.
    member = Identity.load_or_create(network.nodes[1].node_dir / "node_key")

    def note_for(network_id: str):
        return make_entry(network_id=network_id, kind="NOTE", author=member.node_id, sequence=1, parents=(),
                          hlc=Hlc(wall_ms(), 0), body={"text": "hello"}, sign=member.sign)

    pushed = await push(client, note_for("other-network").raw)
    assert (pushed.added, pushed.refused) == (0, 1)
    metrics = await (await client.get("/metrics")).text()
    assert sample(metrics, "synapse_entries_refused_total", reason="bad_signature") == 1
    assert (await push(client, note_for(network.genesis.network_id).raw)).added == 1


# --- package URLs carry no credentials -----------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://user:s3cr3t-token@example.org/u.wasm", "https://s3cr3t-token@example.org/u.wasm",
                                 "http://a:s3cr3t-token@example.org@example.org/u.wasm"])
async def test_a_package_url_with_credentials_is_refused_before_anything_is_written(client, url):
    status, body = await propose(client, package_url=url)
    assert status == 400 and "credentials" in body["message"] and "without credentials" in body["hint"], body
    assert "s3cr3t-token" not in json.dumps(body)
    assert client.node.log.visible_count() == 0


async def test_a_gossiped_proposal_with_credentials_in_its_url_is_refused_at_the_door(client, network):
    member = Identity.load_or_create(network.nodes[1].node_dir / "node_key")
    now_ms = wall_ms()
    body = proposal_body(proposal_id=make_proposal_id("upgrade", now_ms, member.node_id, 1),
                         package_url="https://user:s3cr3t-token@example.org/u.wasm", voting_deadline_ms=now_ms + 60_000)
    raw = forge_raw(member, kind="PROPOSAL", body=body, hlc=Hlc(now_ms, 0), network_id=network.genesis.network_id)
    pushed = await push(client, raw)
    assert (pushed.added, pushed.refused) == (0, 1)
    assert sample(await (await client.get("/metrics")).text(), "synapse_entries_refused_total", reason="bad_body") == 1
    for path in ("/proposals", "/log"):
        assert "s3cr3t-token" not in await (await client.get(path)).text()
