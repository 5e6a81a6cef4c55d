"""Governance through the node's HTTP API, in one process: the real node application (runtime.Node:
log, gossip, governance service, version store, sandbox, package fetcher and a ONE-validator Raft
cluster of its own), driven with aiohttp's test client. Packages are built from WAT at test time and
served by an aiohttp test server on 127.0.0.1.

The network has two members: node 0 (the validator, reputation 300) runs; node 1 (reputation 100)
never runs, but the test holds its key, so it can forge what a hostile member would send. Node 0's
approval alone decides a vote (300 of 400), so a whole upgrade goes from proposal to execution here.
"""

import hashlib
import json
import re

import pytest
from aiohttp import web

from cluster.addresses import acquire_block
from cluster.genesis import create_network
from node.core.certificates import certificate_statement
from node.core.closing import EMPTY_VOTES_DIGEST
from node.core.entries import make_entry
from node.core.governance import ReportView
from node.core.proposals import make_proposal_id
from node.core.hlc import Hlc
from node.gossip import Push, Pushed, decode_message
from node.governance_fold import divergence_of
from node.identity import Identity
from node.runtime import wall_ms
from tests.component.node_app import node_test_client
from tests.metrics_text import sample
from tests.polling import poll_until_async
from tests.wasm_build import REPOSITORY, TEST_PACKAGES, wat_to_wasm

# PySyncObj 0.3.17 never closes its journal's .meta file (see tests/component/test_raft.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO name='[^']*raft.journal.meta':pytest.PytestUnraisableExceptionWarning")

API_PORT = 7000
RAFT_PORT = 7100
WAIT_S = 30.0
FEATURE_FLAG = REPOSITORY / "examples" / "wat" / "feature_flag.wat"
SPEC_NEXT_STEPS = ["Community votes on proposal", "If approved, validators ratify", "Upgrade executes automatically"]


@pytest.fixture
def network(tmp_path):
    with acquire_block(hosts=2, ports=[API_PORT, RAFT_PORT]) as lease:
        yield create_network(tmp_path / "net", nodes=2, validators=1, block=lease.block, api_port=API_PORT,
                             raft_port=RAFT_PORT, reputations=[300, 100],
                             network_limits={"sandbox_fuel": 50_000_000},
                             # node 1 never runs: no peer could tell node 0 about its own entries, do not wait for one
                             config_limits={"gossip_first_write_wait_ms": 0})


@pytest.fixture
async def client(network, aiohttp_client):
    async with node_test_client(network.nodes[0].config_path, aiohttp_client) as client:
        yield client


@pytest.fixture
async def packages(aiohttp_server):
    """name -> URL of a package served over http by a test server; `serve(name, wasm)` adds one."""
    served: dict[str, bytes] = {}

    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in served:
            raise web.HTTPNotFound()
        return web.Response(body=served[name], content_type="application/wasm")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    server = await aiohttp_server(app, host="127.0.0.1")

    class Packages:
        def serve(self, name: str, wasm: bytes) -> dict:
            served[name] = wasm
            return {"package_url": str(server.make_url(f"/{name}")), "package_hash": "sha256:" + hashlib.sha256(wasm).hexdigest(),
                    "package_size": len(wasm)}

    return Packages()


def auth(client) -> dict:
    return {"Authorization": f"Bearer {client.token}"}


def member_identity(network, index: int) -> Identity:
    return Identity.load_or_create(network.nodes[index].node_dir / "node_key")


def entries_of(client, kind: str) -> list:
    return [entry for entry in client.node.log.visible() if entry.kind == kind]


async def propose(client, **fields):
    body = {"title": "Upgrade to v1.2.0", "description": "adds new_feature_enabled", "version": "1.2.0",
            "package_url": "https://example.org/u.wasm", "package_hash": "sha256:" + "ab" * 32, "package_size": 2048}
    body.update(fields)
    return await client.post("/upgrades/propose", json=body, headers=auth(client))


async def json_of(response, status: int) -> dict:
    text = await response.text()
    assert response.status == status, text
    return json.loads(text)


async def error_of(response, status: int) -> dict:
    body = await json_of(response, status)
    assert set(body) >= {"error", "message", "hint", "definite"}, body
    return body


async def wait_status(client, proposal_id: str, wanted: set[str], timeout_s: float = WAIT_S) -> dict:
    last: dict = {}

    async def reached() -> dict | None:
        last.update(await json_of(await client.get(f"/proposals/{proposal_id}"), 200))
        return dict(last) if last["status"] in wanted else None

    async def seen() -> str:
        upgrades = await (await client.get("/upgrades/status")).json()
        return f"{proposal_id} is {last.get('status')!r}; notes {last.get('notes')}; upgrades status {upgrades}"

    return await poll_until_async(reached, what=f"{proposal_id} to reach one of {sorted(wanted)}", timeout_s=timeout_s,
                                  interval_s=0.05, describe=seen)


async def push(client, *entries) -> Pushed:
    """What a peer does: POST entries to the gossip endpoint."""
    response = await client.post("/gossip/push", data=Push(sender="", raws=tuple(e.raw for e in entries)).encode(),
                                 headers={"Content-Type": "application/msgpack"})
    assert response.status == 200, await response.text()
    return decode_message(await response.read(), Pushed, array_length_max=8)


async def vote(client, proposal_id: str, choice: str = "approval"):
    return await client.post(f"/proposals/{proposal_id}/vote", json={"vote": choice}, headers=auth(client))


async def state_of(client) -> dict:
    return await json_of(await client.get("/state"), 200)


# --- OpenAPI ----------------------------------------------------------------------------------


async def test_openapi_describes_every_registered_route_and_nothing_else(client):
    document = await json_of(await client.get("/openapi.json"), 200)
    assert document["openapi"].startswith("3.")
    registered = {(route.resource.canonical, route.method.lower()) for route in client.app.router.routes()
                  if route.method != "HEAD"}
    described = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert registered - described == set(), "routes without a description in node/openapi.py"
    assert described - registered == set(), "node/openapi.py describes routes the node does not serve"
    for path, method in described:
        operation = document["paths"][path][method]
        assert operation["summary"] and operation["responses"], (path, method)
        mutating = method == "post" and not path.startswith("/gossip/")
        assert ("security" in operation) == mutating, f"{method.upper()} {path}: token requirement not described"


# --- proposing --------------------------------------------------------------------------------


async def test_a_proposal_answers_in_the_spec_shape_and_is_one_signed_entry(client, network):
    created = await json_of(await propose(client, package_hash="sha256:" + "AB" * 32), 201)
    assert created["status"] == "voting" and created["next_steps"] == SPEC_NEXT_STEPS
    assert re.fullmatch(r"upgrade_\d{8}_\d{6}_[0-9a-f]{8}", created["proposal_id"])
    (entry,) = entries_of(client, "PROPOSAL")
    assert entry.author == network.nodes[0].node_id and entry.id == created["entry_id"]
    assert entry.body["package_hash"] == "ab" * 32, "the hash is stored normalized"
    assert entry.body["voting_deadline_ms"] - entry.hlc.wall_ms == pytest.approx(60_000, abs=1_000)
    document = await json_of(await client.get(f"/proposals/{created['proposal_id']}"), 200)
    assert document["status"] == "voting" and document["votes"] == [] and document["reports"] == []
    assert document["tally"]["total_weight"] == 400 and document["diverged"] is False
    assert document["ratification"] == {"proposal_id": created["proposal_id"], "phase": None}
    listed = await json_of(await client.get("/proposals"), 200)
    assert [p["proposal_id"] for p in listed["proposals"]] == [created["proposal_id"]]
    assert (await json_of(await client.get("/proposals?status=approved"), 200))["proposals"] == []


GOOD = {"title": "t", "version": "1.2.0", "package_url": "https://e.org/u.wasm", "package_hash": "ab" * 32}

# (what is sent: raw bytes, a whole body, or a change to a good body), status, what the message says
BAD_PROPOSALS = [
    (b"{not json", 400, "the request body is not valid JSON"),
    (b"[1, 2]", 400, "POST /upgrades/propose: the body must be a JSON object, not a JSON array"),
    ({k: v for k, v in GOOD.items() if k != "package_hash"}, 400, "missing field(s) package_hash"),
    ({**GOOD, "extra": 1}, 400, "unknown field(s) extra"),
    ({"version": 120}, 400, "field version must be a JSON string, not a JSON integer"),
    ({"package_size": True}, 400, "field package_size must be a JSON integer or null, not a JSON boolean"),
    ({"package_size": 1.5}, 400, "field package_size must be a JSON integer or null, not a JSON number"),
    ({"package_hash": "sha256:abc123"}, 400, "package_hash 'sha256:abc123' is not a SHA256 digest"),
    ({"package_hash": "md5:" + "a" * 32}, 400, "is not a SHA256 digest"),
    ({"package_size": -5}, 400, "package_size must be the package's size in bytes"),
    ({"package_size": 0}, 400, "package_size must be the package's size in bytes"),
    ({"package_size": 2**41}, 400, "package_size must be the package's size in bytes"),
    ({"package_size": 2**30}, 422, "over the network's package size limit"),
    ({"package_url": "file:///etc/passwd"}, 422, "package_url scheme 'file:' is not allowed"),
    ({"package_url": "ftp://example.org/u.wasm"}, 422, "package_url scheme 'ftp:' is not allowed"),
    ({"package_url": "not a url"}, 422, "contains whitespace"),
    ({"title": ""}, 400, "title must be a string of 1 to 200 characters"),
    ({"title": "x" * 201}, 400, "title must be a string of 1 to 200 characters"),
    ({"title": "Upgrade\x1b[2J"}, 400, "title holds a control or bidirectional-override character (U+001B at position 7)"),
    ({"title": "two\nlines"}, 400, "title holds a control or bidirectional-override character (U+000A at position 3)"),
    ({"description": "evil \u202eexe.txt"}, 400, "description holds a control or bidirectional-override character (U+202E"),
    ({"version": "1.2"}, 400, "1.2"),
    ({"version": "1.0.0"}, 409, "version 1.0.0 is not greater than the network's current version 1.0.0"),
    ({"version": "0.9.0"}, 409, "is not greater than"),
]


@pytest.mark.parametrize("sent, status, message", BAD_PROPOSALS)
async def test_bad_proposals_are_refused_with_what_to_fix_and_write_nothing(client, sent, status, message):
    if isinstance(sent, bytes):
        response = await client.post("/upgrades/propose", data=sent, headers={**auth(client), "Content-Type": "application/json"})
    elif set(GOOD) <= set(sent) or "title" in sent and len(sent) > 1:
        response = await client.post("/upgrades/propose", json=sent, headers=auth(client))
    else:
        response = await propose(client, **sent)
    body = await error_of(response, status)
    assert message in body["message"], body
    assert body["hint"], "every refusal says what to do"
    assert client.node.log.visible_count() == 0


async def test_proposing_needs_the_token(client):
    await error_of(await client.post("/upgrades/propose", json={}), 401)
    await error_of(await client.post("/rollbacks/propose", json={}), 401)
    await error_of(await client.post("/upgrades/upgrade_20251003_120000_3fa9c2d1/test"), 401)
    await error_of(await client.post("/upgrades/upgrade_20251003_120000_3fa9c2d1/rollback"), 401)
    await error_of(await client.post("/proposals/upgrade_20251003_120000_3fa9c2d1/vote", json={"vote": "approval"}), 401)
    assert client.node.log.visible_count() == 0


async def test_a_version_already_proposed_cannot_be_proposed_again(client):
    first = await json_of(await propose(client), 201)
    body = await error_of(await propose(client, title="the same again"), 409)
    assert f"version 1.2.0 is already proposed by {first['proposal_id']}" in body["message"]
    assert len(entries_of(client, "PROPOSAL")) == 1
    await json_of(await propose(client, version="1.3.0"), 201)


# --- voting -----------------------------------------------------------------------------------


async def test_vote_refusals_say_what_to_fix_and_write_nothing(client, network):
    proposal_id = (await json_of(await propose(client), 201))["proposal_id"]
    cases = [
        ("/proposals/upgrade_20991231_235959_00000000/vote", {"vote": "approval"}, 404, "no proposal"),
        ("/proposals/not-an-id/vote", {"vote": "approval"}, 400, "is not a proposal id"),
        (f"/proposals/{proposal_id}/vote", {"vote": "yes"}, 400, 'vote must be "approval" or "rejection"'),
        (f"/proposals/{proposal_id}/vote", {"vote": "approval", "weight": 1000}, 400, "unknown field(s) weight"),
        (f"/proposals/{proposal_id}/vote", {}, 400, "missing field(s) vote"),
        (f"/proposals/{proposal_id}/vote", {"vote": None}, 400, "field vote must be a JSON string, not a JSON null"),
    ]
    for path, body, status, message in cases:
        refusal = await error_of(await client.post(path, json=body, headers=auth(client)), status)
        assert message in refusal["message"], (path, body, refusal)
    assert entries_of(client, "VOTE") == []


async def test_a_vote_after_the_deadline_is_refused(client, network):
    """A proposal by member 1 whose deadline has passed arrives by gossip; voting on it is refused."""
    member = member_identity(network, 1)
    created_ms = wall_ms() - 10_000
    body = {"proposal_id": make_proposal_id("upgrade", created_ms, member.node_id, 1), "action": "upgrade",
            "title": "late", "description": "", "version": "1.5.0", "package_url": "https://example.org/l.wasm",
            "package_hash": "cd" * 32, "package_size": None, "voting_deadline_ms": created_ms + 5_000, "target_proposal_id": None}
    entry = make_entry(network_id=network.genesis.network_id, kind="PROPOSAL", author=member.node_id, sequence=1,
                       parents=(), hlc=Hlc(created_ms, 0), body=body, sign=member.sign)
    assert (await push(client, entry)).added == 1
    refusal = await error_of(await vote(client, body["proposal_id"]), 409)      # refused before and after the close
    assert "closed at its deadline" in refusal["message"]
    document = await wait_status(client, body["proposal_id"], {"expired"})      # the validator closed voting
    assert document["closed"] is True and document["closed_by"] == [network.nodes[0].node_id]
    refusal = await error_of(await vote(client, body["proposal_id"]), 409)
    assert "closed at its deadline" in refusal["message"]
    assert entries_of(client, "VOTE") == []


async def test_forged_votes_are_refused_at_the_door(client, network):
    proposal_id = (await json_of(await propose(client), 201))["proposal_id"]
    stranger = Identity.generate()
    member = member_identity(network, 1)
    vote_body = {"proposal_id": proposal_id, "vote": "rejection"}
    unknown_key = make_entry(network_id=network.genesis.network_id, kind="VOTE", author=stranger.node_id, sequence=1,
                             parents=(), hlc=Hlc(wall_ms(), 0), body=vote_body, sign=stranger.sign)
    bad_signature = make_entry(network_id=network.genesis.network_id, kind="VOTE", author=member.node_id, sequence=1,
                               parents=(), hlc=Hlc(wall_ms(), 0), body=vote_body, sign=stranger.sign)
    pushed = await push(client, unknown_key, bad_signature)
    assert (pushed.added, pushed.refused) == (0, 2)
    document = await json_of(await client.get(f"/proposals/{proposal_id}"), 200)
    assert document["votes"] == [] and document["tally"]["cast_weight"] == 0 and document["status"] == "voting"
    metrics = await (await client.get("/metrics")).text()
    assert sample(metrics, "synapse_entries_refused_total", reason="unknown_author") == 1
    assert sample(metrics, "synapse_entries_refused_total", reason="bad_signature") == 1


# --- a whole upgrade in one node -----------------------------------------------------------------


async def test_an_approved_upgrade_is_ratified_executed_and_then_rolled_back_network_wide(client, packages, network):
    package = packages.serve("feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))
    genesis_state = await state_of(client)
    proposal_id = (await json_of(await propose(client, **package), 201))["proposal_id"]

    tested = await json_of(await client.post(f"/upgrades/{proposal_id}/test", headers=auth(client)), 200)
    assert tested["success"] is True and tested["live_state_hash"] == genesis_state["state_hash"], tested
    assert tested["result"]["version"] == "1.2.0" and tested["result"]["changes"]["total"] >= 2
    assert await state_of(client) == genesis_state, "a dry run changes nothing"

    voted = await json_of(await vote(client, proposal_id), 201)
    assert voted["status"] in ("voting", "approved", "ratified", "executed") and voted["tally"]["outcome"] == "approved"
    assert voted["tally"]["approval_weight"] == 300
    document = await wait_status(client, proposal_id, {"executed"})
    me = network.nodes[0].node_id
    assert [(r["node_id"], r["success"], r["version"]) for r in document["reports"]] == [(me, True, "1.2.0")]
    assert document["execution"]["sequence"] == 1 and document["execution"]["certificate_signers"] == [me]
    assert document["ratification"]["phase"] == "certified" and document["ratification"]["signed_by"] == [me]
    assert [(a["validator_id"], a["valid"]) for a in document["ratifications"]] == [(me, True)]
    assert document["diverged"] is False and document["divergence"]["majority_state_hash"] == document["reports"][0]["state_hash"]

    state = await state_of(client)
    assert state["version"] == "1.2.0" and state["applied_sequence"] == 1
    assert state["state_hash"] == document["reports"][0]["state_hash"] == tested["result"]["state_hash"]
    assert all(info["new_feature_enabled"] is True for info in state["state"]["global"]["nodes"].values())
    status = await json_of(await client.get("/upgrades/status"), 200)
    assert {k: status[k] for k in ("system_available", "current_version", "total_upgrades", "wasm_available",
                                   "ipfs_available", "applied_sequence")} == {
        "system_available": True, "current_version": "1.2.0", "total_upgrades": 1, "wasm_available": True,
        "ipfs_available": False, "applied_sequence": 1}
    history = (await json_of(await client.get("/upgrades/history"), 200))["history"]
    assert [(h["version"], h["proposal_id"], h["success"]) for h in history] == [("1.2.0", proposal_id, True)]
    assert (await json_of(await client.get("/health"), 200))["version"] == "1.2.0"

    rollback = await json_of(await client.post("/rollbacks/propose", json={"target_proposal_id": proposal_id},
                                               headers=auth(client)), 201)
    assert rollback["status"] == "voting" and rollback["action"] == "rollback" and rollback["version"] == "1.0.0"
    await json_of(await vote(client, rollback["proposal_id"]), 201)
    await wait_status(client, rollback["proposal_id"], {"executed"})
    restored = await state_of(client)
    assert (restored["version"], restored["state_hash"], restored["state"]) == (
        "1.0.0", genesis_state["state_hash"], genesis_state["state"])
    assert restored["applied_sequence"] == 2
    assert (await json_of(await client.get(f"/proposals/{proposal_id}"), 200))["status"] == "rolled_back"
    again = await error_of(await client.post("/rollbacks/propose", json={"target_proposal_id": proposal_id},
                                             headers=auth(client)), 409)
    assert "rolled_back" in again["message"] or "not an upgrade this node has applied" in again["message"]


async def test_an_operator_rollback_restores_the_previous_version_here_and_is_audited(client, packages, network):
    package = packages.serve("feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))
    genesis_state = await state_of(client)
    proposal_id = (await json_of(await propose(client, **package), 201))["proposal_id"]
    refusal = await error_of(await client.post(f"/upgrades/{proposal_id}/rollback", headers=auth(client)), 409)
    assert "first version" in refusal["message"], "nothing applied yet: nothing to roll back"
    await json_of(await vote(client, proposal_id), 201)
    await wait_status(client, proposal_id, {"executed"})

    bad = await error_of(await client.post(f"/upgrades/{proposal_id}/rollback", json={"reason": 5}, headers=auth(client)), 400)
    assert "field reason must be a JSON string" in bad["message"]
    rolled = await json_of(await client.post(f"/upgrades/{proposal_id}/rollback", json={"reason": "canary failed"},
                                             headers=auth(client)), 200)
    assert {k: rolled[k] for k in ("message", "restored_version", "previous_version")} == {
        "message": "Rollback completed", "restored_version": "1.0.0", "previous_version": "1.2.0"}
    assert (await state_of(client))["state_hash"] == genesis_state["state_hash"] == rolled["state_hash"]
    (audit,) = entries_of(client, "ROLLBACK")
    assert audit.id == rolled["audit_entry_id"] and audit.body["reason"] == "canary failed"
    document = await json_of(await client.get(f"/proposals/{proposal_id}"), 200)
    assert document["status"] == "rolled_back" and document["rollbacks"][0]["node_id"] == network.nodes[0].node_id
    second = await error_of(await client.post(f"/upgrades/{proposal_id}/rollback", headers=auth(client)), 409)
    assert second["message"]
    assert (await state_of(client))["state_hash"] == genesis_state["state_hash"]


@pytest.mark.parametrize("package_file, error_name", [("panic.wat", "WasmTrap"), ("endless_loop.wat", "FuelExhausted")])
async def test_a_failing_package_fails_with_the_state_untouched(client, packages, package_file, error_name):
    package = packages.serve(package_file, wat_to_wasm(TEST_PACKAGES / package_file))
    before = await state_of(client)
    proposal_id = (await json_of(await propose(client, version="1.1.0", **package), 201))["proposal_id"]
    tested = await json_of(await client.post(f"/upgrades/{proposal_id}/test", json={}, headers=auth(client)), 200)
    assert tested["success"] is False and tested["failed_step"] == "dry_run" and tested["error"]["error"] == error_name
    assert await state_of(client) == before, "a failed dry run changes nothing"
    await json_of(await vote(client, proposal_id), 201)
    document = await wait_status(client, proposal_id, {"failed", "executed"})
    assert document["status"] == "failed"
    (report,) = document["reports"]
    assert report["success"] is False and error_name in report["error"] and report["state_hash"] == before["state_hash"]
    after = await state_of(client)
    assert (after["state_hash"], after["version"], after["applied_sequence"]) == (before["state_hash"], "1.0.0", 1)


async def test_a_dry_run_of_an_unknown_or_rollback_proposal_is_refused(client):
    await error_of(await client.post("/upgrades/upgrade_20991231_235959_00000000/test", headers=auth(client)), 404)
    refusal = await error_of(await client.post("/upgrades/upgrade_20991231_235959_00000000/test", data=b"[]",
                                               headers={**auth(client), "Content-Type": "application/json"}), 400)
    assert "the body must be a JSON object" in refusal["message"]


# --- a forged EXECUTE_UPGRADE ---------------------------------------------------------------------


async def test_an_execute_upgrade_without_a_majority_certificate_is_refused(client, packages, network):
    """Member 1 (not a validator) publishes EXECUTE_UPGRADE entries: one 'certified' by itself, one with
    the validator's real signature but over another sequence. Both are refused; nothing runs."""
    package = packages.serve("feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))
    member, validator = member_identity(network, 1), member_identity(network, 0)
    network_id = network.genesis.network_id
    proposal_id = make_proposal_id("upgrade", wall_ms(), member.node_id, 99)
    digest = package["package_hash"].removeprefix("sha256:")

    def execute_body(signer, signed_sequence):
        statement = certificate_statement(network_id, proposal_id, "upgrade", digest, "1.2.0", EMPTY_VOTES_DIGEST,
                                          signed_sequence)
        return {"proposal_id": proposal_id, "action": "upgrade", "version": "1.2.0", "package_url": package["package_url"],
                "package_hash": digest, "package_size": package["package_size"], "votes_digest": EMPTY_VOTES_DIGEST,
                "sequence": 1,
                "certificate": [{"validator_id": signer.node_id, "signature": signer.sign(statement)}]}

    first = make_entry(network_id=network.genesis.network_id, kind="EXECUTE_UPGRADE", author=member.node_id, sequence=1,
                       parents=(), hlc=Hlc(wall_ms(), 0), body=execute_body(member, 1), sign=member.sign)
    second = make_entry(network_id=network.genesis.network_id, kind="EXECUTE_UPGRADE", author=member.node_id, sequence=2,
                        parents=(first.id,), hlc=Hlc(wall_ms() + 1, 0), body=execute_body(validator, 2), sign=member.sign)
    assert (await push(client, first, second)).added == 2, "well-signed entries of a member enter the log"
    await client.node.executor.execute_pending()     # what the executor does when woken, run to completion
    state = await state_of(client)
    assert (state["version"], state["applied_sequence"]) == ("1.0.0", 0)
    assert entries_of(client, "EXECUTION_REPORT") == []
    metrics = await (await client.get("/metrics")).text()
    assert sample(metrics, "synapse_execute_refused_total", reason="bad_certificate") == 2
    problems = (await json_of(await client.get("/upgrades/status"), 200))["governance_problems"]
    assert problems.get("bad_certificate") == 2


# --- divergence (pure) ----------------------------------------------------------------------------


def report(node: str, state_hash: str, sequence: int = 1) -> ReportView:
    return ReportView(node_id=node, sequence=sequence, success=True, version="1.2.0", state_hash=state_hash, error=None,
                      entry_id="e" * 64)


def test_divergence_flags_the_nodes_outside_the_strict_majority():
    agreed = divergence_of([report("a", "h1"), report("b", "h1"), report("c", "h1")], 1)
    assert (agreed["diverged"], agreed["majority_state_hash"], agreed["diverged_nodes"]) == (False, "h1", [])
    one_off = divergence_of([report("a", "h1"), report("b", "h2"), report("c", "h1"), report("d", "h9", sequence=2)], 1)
    assert (one_off["diverged"], one_off["majority_state_hash"], one_off["diverged_nodes"]) == (True, "h1", ["b"])
    split = divergence_of([report("a", "h1"), report("b", "h2")], 1)
    assert (split["diverged"], split["majority_state_hash"], split["diverged_nodes"]) == (True, None, ["a", "b"])
    assert divergence_of([], None)["diverged"] is False


# --- ordering and exactly-once --------------------------------------------------------------------


async def test_certified_upgrades_apply_in_sequence_order_exactly_once(client, packages, network):
    """The certificate is the authority (no proposal needed here). Sequence 2 arrives first and waits;
    sequence 1 (a trapping package) then fails, and 2 runs after it. Nothing ever runs twice, and a
    verdict whose report went missing (a crash between commit and report) is reported again."""
    member, validator = member_identity(network, 1), member_identity(network, 0)
    feature_flag = packages.serve("feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))
    panic = packages.serve("panic.wasm", wat_to_wasm(TEST_PACKAGES / "panic.wat"))

    def certified(package: dict, version: str, sequence: int) -> dict:
        proposal_id = make_proposal_id("upgrade", wall_ms(), member.node_id, 100 + sequence)
        digest = package["package_hash"].removeprefix("sha256:")
        statement = certificate_statement(network.genesis.network_id, proposal_id, "upgrade", digest, version,
                                          EMPTY_VOTES_DIGEST, sequence)
        return {"proposal_id": proposal_id, "action": "upgrade", "version": version, "package_url": package["package_url"],
                "package_hash": digest, "package_size": package["package_size"], "votes_digest": EMPTY_VOTES_DIGEST,
                "sequence": sequence,
                "certificate": [{"validator_id": validator.node_id, "signature": validator.sign(statement)}]}

    second = make_entry(network_id=network.genesis.network_id, kind="EXECUTE_UPGRADE", author=member.node_id, sequence=1,
                        parents=(), hlc=Hlc(wall_ms(), 0), body=certified(feature_flag, "1.2.0", 2), sign=member.sign)
    assert (await push(client, second)).added == 1
    executor = client.node.executor
    await executor.execute_pending()
    assert (await state_of(client))["applied_sequence"] == 0, "sequence 2 waits for sequence 1"

    first = make_entry(network_id=network.genesis.network_id, kind="EXECUTE_UPGRADE", author=member.node_id, sequence=2,
                       parents=(second.id,), hlc=Hlc(wall_ms() + 1, 0), body=certified(panic, "1.1.0", 1),
                       sign=member.sign)
    assert (await push(client, first)).added == 1
    await executor.execute_pending()
    state = await state_of(client)
    assert (state["applied_sequence"], state["version"]) == (2, "1.2.0")
    reports = [entry.body for entry in entries_of(client, "EXECUTION_REPORT")]
    assert [(r["sequence"], r["success"], r["version"]) for r in reports] == [(1, False, "1.0.0"), (2, True, "1.2.0")]
    assert "WasmTrap" in reports[0]["error"]

    await executor.execute_pending()
    assert len(entries_of(client, "EXECUTION_REPORT")) == 2, "nothing runs or is reported twice"
    client.node.fold.reported_sequences.discard(2)          # as after a crash between the commit and the report
    await executor.execute_pending()
    again = [entry.body for entry in entries_of(client, "EXECUTION_REPORT")]
    assert len(again) == 3 and again[2] == reports[1] and (await state_of(client))["applied_sequence"] == 2


async def test_rollback_proposal_refusals_say_what_to_fix_and_write_nothing(client):
    voting_id = (await json_of(await propose(client), 201))["proposal_id"]
    cases = [
        ({"target_proposal_id": "upgrade_20991231_235959_00000000"}, 404, "no proposal"),
        ({"target_proposal_id": "nonsense"}, 400, "is not a proposal id"),
        ({"target_proposal_id": voting_id, "version": "0.1.0"}, 400, "unknown field(s) version"),
        ({}, 400, "missing field(s) target_proposal_id"),
        ({"target_proposal_id": voting_id, "title": ""}, 400, "title must be a string of 1 to 200 characters"),
        ({"target_proposal_id": voting_id}, 409, "not an upgrade this node has applied"),
    ]
    for body, status, message in cases:
        refusal = await error_of(await client.post("/rollbacks/propose", json=body, headers=auth(client)), status)
        assert message in refusal["message"], (body, refusal)
    assert len(entries_of(client, "PROPOSAL")) == 1


async def test_health_says_whether_this_node_validates_and_who_leads_raft(client, network):
    async def health() -> dict:
        return await json_of(await client.get("/health"), 200)

    async def elected() -> dict | None:
        document = await health()
        return document if document["raft_leader"] else None

    # A single-validator Raft elects itself within a second.
    document = await poll_until_async(elected, what="the single validator to lead Raft", timeout_s=WAIT_S, interval_s=0.05)
    me = network.nodes[0]
    assert document["validator"] is True
    assert document["raft_leader"] == me.raft_address
    assert document["raft_has_quorum"] is True
    # The Raft listener's state (it rebinds after a failed accept; tests/component/test_raft_transport.py).
    assert document["raft_listening"] is True and document["raft_listener_failures"] == 0
