"""Governance end to end across real node processes: 5 nodes, 3 validators (LocalCluster).

What a user checks, through each node's HTTP API:
  - an approved upgrade runs on every node, with one state hash everywhere and the change visible in
    GET /state, and a network-wide rollback brings every node back to the previous version and hash;
  - a rejected proposal never executes, and forged votes (unknown key, bad signature) never count;
  - a member's EXECUTE_UPGRADE with a minority certificate is refused by every node, and malicious
    packages (an endless loop, a trap) fail on every node with the state untouched;
  - the validators' Raft leader killed with SIGKILL during ratification does not stop the upgrade.
Packages are built from WAT sources at test time and served by the testbed's package server on 127.0.0.1.
Every wait is a deadline on a condition; no sleep is an assertion.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster.local import LocalCluster, NodeApi
from node.core.certificates import certificate_statement
from node.core.closing import EMPTY_VOTES_DIGEST
from node.core.entries import make_entry
from node.core.proposals import make_proposal_id
from node.core.hlc import Hlc
from node.fault_points import arm
from node.gossip import Push, Pushed, decode_message
from node.identity import Identity
from tests.wasm_build import REPOSITORY, TEST_PACKAGES, wat_to_wasm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WITHIN_S = 30.0
NODES, VALIDATORS = 5, 3
FEATURE_FLAG = REPOSITORY / "examples" / "wat" / "feature_flag.wat"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the network (the package's pytest plugin: synapse_cluster, package_server) --------------------


@pytest.fixture
def cluster(synapse_cluster) -> LocalCluster:
    """The plugin starts it, and stops it whatever the test did; these tests drive the LocalCluster underneath."""
    return synapse_cluster(nodes=NODES, validators=VALIDATORS, governance={"voting_period_ms": 60_000},
                           limits={"sandbox_fuel": 50_000_000}).local


# --- helpers --------------------------------------------------------------------------------------


def served(package_server, file_name: str, wasm: bytes) -> dict:
    """Serve a package; what a proposal names of it (URL, hash, size)."""
    return package_server.add(Path(file_name).stem, wasm).proposal_fields()


def ok(response, status: int = 200):
    assert response.status == status, f"{response.status}: {response.text[:500]}"
    return response.data


def propose(cluster: LocalCluster, index: int, package: dict, version: str, title: str = "an upgrade") -> str:
    body = {"title": title, "description": "integration test", "version": version, **package}
    created = ok(cluster.api(index).post("/upgrades/propose", body), 201)
    assert created["status"] == "voting"
    return created["proposal_id"]


def vote(cluster: LocalCluster, voters: list[int], proposal_id: str, choice: str = "approval") -> None:
    """Each voter votes with its own key, once the proposal has reached it."""
    for index in voters:
        cluster.wait_for(lambda: cluster.api(index).get(f"/proposals/{proposal_id}").status == 200, WITHIN_S,
                         f"{proposal_id} on node {index}")
        ok(cluster.api(index).post(f"/proposals/{proposal_id}/vote", {"vote": choice}), 201)


def proposal(cluster: LocalCluster, index: int, proposal_id: str) -> dict:
    return ok(cluster.api(index).get(f"/proposals/{proposal_id}"))


def wait_status(cluster: LocalCluster, indexes: list[int], proposal_id: str, wanted: str) -> list[dict]:
    def all_there() -> list[dict] | None:
        documents = []
        for index in indexes:
            response = cluster.api(index).get(f"/proposals/{proposal_id}")
            if response.status != 200 or response.data["status"] != wanted:
                return None
            documents.append(response.data)
        return documents
    return cluster.wait_for(all_there, WITHIN_S, f"{proposal_id} {wanted} on nodes {indexes}")


def states(cluster: LocalCluster, indexes: list[int]) -> list[dict]:
    return [ok(cluster.api(index).get("/state")) for index in indexes]


def metric(api: NodeApi, sample: str) -> float:
    text = api.get("/metrics").text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def push(api: NodeApi, *entries) -> Pushed:
    """What a hostile member does: POST entries to a node's gossip endpoint."""
    request = urllib.request.Request(api.base_url + "/gossip/push", method="POST",
                                     data=Push(sender="", raws=tuple(e.raw for e in entries)).encode(),
                                     headers={"Content-Type": "application/msgpack"})
    with _NO_PROXY.open(request, timeout=10) as response:
        return decode_message(response.read(), Pushed, array_length_max=8)


def key_of(cluster: LocalCluster, index: int) -> Identity:
    return Identity.load_or_create(cluster.nodes[index].data_dir / "node_key")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


ALL = list(range(NODES))


# --- the tests ------------------------------------------------------------------------------------


def test_an_upgrade_runs_everywhere_and_a_network_rollback_undoes_it_everywhere(cluster, package_server):
    genesis = states(cluster, ALL)
    assert len({state["state_hash"] for state in genesis}) == 1 and genesis[0]["version"] == "1.0.0"
    package = served(package_server, "feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))
    proposal_id = propose(cluster, 3, package, "1.2.0", "Upgrade to v1.2.0: Add Feature Flag")
    vote(cluster, [0, 1, 3], proposal_id)

    documents = wait_status(cluster, ALL, proposal_id, "executed")
    upgraded = states(cluster, ALL)
    assert {(state["version"], state["state_hash"], state["applied_sequence"]) for state in upgraded} == {
        ("1.2.0", upgraded[0]["state_hash"], 1)}
    assert upgraded[0]["state_hash"] != genesis[0]["state_hash"]
    for state in upgraded:
        assert all(info["new_feature_enabled"] is True for info in state["state"]["global"]["nodes"].values())
    reports = cluster.wait_for(lambda: len(proposal(cluster, 0, proposal_id)["reports"]) == NODES and
                               proposal(cluster, 0, proposal_id)["reports"], WITHIN_S, "every node's report on node 0")
    assert {(r["success"], r["state_hash"]) for r in reports} == {(True, upgraded[0]["state_hash"])}
    assert {r["node_id"] for r in reports} == {node.node_id for node in cluster.nodes}
    assert all(document["diverged"] is False and document["execution"]["sequence"] == 1 for document in documents)
    assert len(documents[0]["execution"]["certificate_signers"]) >= 2, "a majority of the 3 validators signed"
    assert [metric(cluster.api(index), "synapse_sandbox_runs_total") for index in ALL] == [1.0] * NODES, \
        "each node ran the package once: the dry run's output is what it committed"
    compiled = [metric(cluster.api(index), 'synapse_sandbox_compiled_cache{event="compiled"}') for index in ALL]
    loaded = [metric(cluster.api(index), 'synapse_sandbox_compiled_cache{event="loaded_from_disk"}') for index in ALL]
    assert (sum(compiled), sum(loaded)) == (1, NODES - 1), "one node compiled the package, the others loaded its artifact"
    warmed = [metric(cluster.api(index), 'synapse_upgrade_warmups_total{result="ok"}') for index in ALL]
    assert set(warmed) <= {0.0, 1.0} and sum(warmed) >= 1, \
        "nodes that saw the approving votes before the certificate fetched and compiled the package once, running nothing"

    rollback = ok(cluster.api(4).post("/rollbacks/propose", {"target_proposal_id": proposal_id}), 201)
    assert (rollback["action"], rollback["version"]) == ("rollback", "1.0.0")
    vote(cluster, [1, 2, 4], rollback["proposal_id"])
    wait_status(cluster, ALL, rollback["proposal_id"], "executed")
    restored = states(cluster, ALL)
    assert {(state["version"], state["state_hash"], state["applied_sequence"]) for state in restored} == {
        ("1.0.0", genesis[0]["state_hash"], 2)}
    assert all(state["state"] == genesis[0]["state"] for state in restored)
    wait_status(cluster, ALL, proposal_id, "rolled_back")


def test_a_rejected_proposal_never_executes_and_forged_votes_never_count(cluster, package_server):
    package = served(package_server, "feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))
    rejected_id = propose(cluster, 0, package, "1.2.0", "a proposal the network rejects")
    cluster.wait_for(lambda: cluster.api(4).get(f"/proposals/{rejected_id}").status == 200, WITHIN_S, "the proposal on node 4")

    stranger, member = Identity.generate(), key_of(cluster, 4)
    forged = {"proposal_id": rejected_id, "vote": "approval"}
    unknown_key = make_entry(network_id=cluster.network_id, kind="VOTE", author=stranger.node_id, sequence=1,
                             parents=(), hlc=Hlc(wall_ms(), 0), body=forged, sign=stranger.sign)
    bad_signature = make_entry(network_id=cluster.network_id, kind="VOTE", author=member.node_id, sequence=1,
                               parents=(), hlc=Hlc(wall_ms(), 0), body=forged, sign=stranger.sign)
    pushed = push(cluster.api(2), unknown_key, bad_signature)
    assert (pushed.added, pushed.refused) == (0, 2)
    assert metric(cluster.api(2), 'synapse_entries_refused_total{reason="bad_signature"}') == 1
    assert metric(cluster.api(2), 'synapse_entries_refused_total{reason="unknown_author"}') == 1

    vote(cluster, [0, 1, 2], rejected_id, "rejection")
    documents = wait_status(cluster, ALL, rejected_id, "rejected")
    for document in documents:
        assert document["tally"]["approval_weight"] == 0 and document["execution"] is None
        assert {vote_row["voter"] for vote_row in document["votes"]} == {node.node_id for node in cluster.nodes[:3]}

    # The rejected proposal never took an upgrade sequence: the next approved one is sequence 1 everywhere.
    approved_id = propose(cluster, 1, package, "1.2.0", "the same package, proposed again")
    vote(cluster, [2, 3, 4], approved_id)
    executed = wait_status(cluster, ALL, approved_id, "executed")
    assert {document["execution"]["sequence"] for document in executed} == {1}
    assert {state["applied_sequence"] for state in states(cluster, ALL)} == {1}
    for index in ALL:
        document = proposal(cluster, index, rejected_id)
        assert (document["status"], document["execution"], document["reports"]) == ("rejected", None, [])


def test_a_forged_execute_upgrade_and_malicious_packages_fail_everywhere_with_the_state_untouched(cluster, package_server):
    genesis = states(cluster, ALL)
    feature_flag = served(package_server, "feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))

    # Node 5's key (a member, not a validator) signs an EXECUTE_UPGRADE whose certificate holds ONE
    # validator's real signature: a minority. Pushed to node 5 itself, it spreads to every node.
    member, validator = key_of(cluster, 4), key_of(cluster, 0)
    proposal_id = make_proposal_id("upgrade", wall_ms(), member.node_id, 7)
    digest = feature_flag["package_hash"].removeprefix("sha256:")
    statement = certificate_statement(cluster.network_id, proposal_id, "upgrade", digest, "1.2.0", EMPTY_VOTES_DIGEST, 1)
    body = {"proposal_id": proposal_id, "action": "upgrade", "version": "1.2.0", "package_url": feature_flag["package_url"],
            "package_hash": digest, "package_size": feature_flag["package_size"], "votes_digest": EMPTY_VOTES_DIGEST,
            "sequence": 1,
            "certificate": [{"validator_id": validator.node_id, "signature": validator.sign(statement)}]}
    forged = make_entry(network_id=cluster.network_id, kind="EXECUTE_UPGRADE", author=member.node_id, sequence=1,
                        parents=(), hlc=Hlc(wall_ms(), 0), body=body, sign=member.sign)
    assert push(cluster.api(4), forged).added == 1
    cluster.wait_for(lambda: all(metric(cluster.api(i), 'synapse_execute_refused_total{reason="bad_certificate"}') == 1
                                 for i in ALL), WITHIN_S, "every node to refuse the forged EXECUTE_UPGRADE")
    assert states(cluster, ALL) == genesis

    for sequence, (file_name, error_name) in enumerate([("endless_loop.wat", "FuelExhausted"), ("panic.wat", "WasmTrap")], 1):
        package = served(package_server, file_name, wat_to_wasm(TEST_PACKAGES / file_name))
        proposal_id = propose(cluster, sequence, package, "1.1.0", f"malicious: {file_name}")
        vote(cluster, [0, 2, 4], proposal_id)
        documents = wait_status(cluster, ALL, proposal_id, "failed")
        assert {document["execution"]["sequence"] for document in documents} == {sequence}
        reports = cluster.wait_for(lambda: len(proposal(cluster, 3, proposal_id)["reports"]) == NODES and
                                   proposal(cluster, 3, proposal_id)["reports"], WITHIN_S, "every node's report")
        assert all(not r["success"] and error_name in r["error"] and r["state_hash"] == genesis[0]["state_hash"]
                   for r in reports), reports
        after = states(cluster, ALL)
        assert {(s["version"], s["state_hash"], s["applied_sequence"]) for s in after} == {
            ("1.0.0", genesis[0]["state_hash"], sequence)}
        assert all(s["state"] == genesis[0]["state"] for s in after)


def test_the_raft_leader_killed_during_ratification_does_not_stop_the_upgrade(cluster, package_server):
    validators = [index for index, node in enumerate(cluster.nodes) if node.is_validator]
    raft_index = {node.raft_address: node.index for node in cluster.nodes}

    def agreed_leader() -> list[int] | None:
        """[index] of the node every validator names as its Raft leader (a list: index 0 is falsy)."""
        leaders = {(ok(cluster.api(index).get("/upgrades/status"))["raft"] or {}).get("leader") for index in validators}
        leader = leaders.pop() if len(leaders) == 1 else None
        return [raft_index[leader]] if leader in raft_index else None

    (leader_index,) = cluster.wait_for(agreed_leader, WITHIN_S, "one Raft leader on every validator")
    live = [index for index in ALL if index != leader_index]
    package = served(package_server, "feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))
    proposal_id = propose(cluster, live[-1], package, "1.2.0")
    vote(cluster, live[:2], proposal_id)                    # 200 of 500: not decided yet
    cluster.kill(leader_index)                              # SIGKILL: no goodbye to its Raft peers
    vote(cluster, live[2:3], proposal_id)                   # the deciding vote: ratification now needs a new leader

    documents = wait_status(cluster, live, proposal_id, "executed")
    upgraded = states(cluster, live)
    assert {(s["version"], s["state_hash"]) for s in upgraded} == {("1.2.0", upgraded[0]["state_hash"])}
    assert set(documents[0]["execution"]["certificate_signers"]) <= {cluster.nodes[i].node_id for i in validators}

    cluster.restart(leader_index)                           # it comes back, catches up and executes too
    wait_status(cluster, [leader_index], proposal_id, "executed")
    assert ok(cluster.api(leader_index).get("/state"))["state_hash"] == upgraded[0]["state_hash"]


@pytest.mark.parametrize("point", ["backup_written", "committed", "before_report"])
def test_a_node_killed_inside_an_upgrade_comes_back_with_it_applied_once_and_reported_once(synapse_cluster, package_server, point):
    """The crash lands exactly where it hurts (node/fault_points.py): just before the store's commit
    point, just after it, or after the whole commit and before the node's EXECUTION_REPORT. The restarted node must neither lose the
    upgrade nor run it twice, and must report it exactly once."""
    victim = 4
    cluster = synapse_cluster(nodes=NODES, validators=VALIDATORS, governance={"voting_period_ms": 60_000},
                              limits={"sandbox_fuel": 50_000_000}, extra_env={"SYNAPSE_FAULT_POINTS": "1"}).local
    arm(cluster.nodes[victim].data_dir, point)
    package = served(package_server, "feature_flag.wasm", wat_to_wasm(FEATURE_FLAG))
    proposal_id = propose(cluster, 0, package, "1.2.0")
    vote(cluster, [0, 1, 2], proposal_id)
    wait_status(cluster, [0, 1, 2, 3], proposal_id, "executed")
    handle = cluster.nodes[victim]
    cluster.wait_for(lambda: handle.process.poll() is not None, WITHIN_S, f"node {victim} to die at {point}")
    assert handle.process.returncode == -signal.SIGKILL
    assert not (handle.data_dir / "fault_point").exists(), "a crash point fires once"

    cluster.restart(victim)
    wait_status(cluster, ALL, proposal_id, "executed")
    upgraded = states(cluster, ALL)
    assert {(state["version"], state["state_hash"], state["applied_sequence"]) for state in upgraded} == {
        ("1.2.0", upgraded[0]["state_hash"], 1)}
    reports = cluster.wait_for(lambda: len(proposal(cluster, 0, proposal_id)["reports"]) == NODES and
                               proposal(cluster, 0, proposal_id)["reports"], WITHIN_S, "every node's report on node 0")
    assert sorted(r["node_id"] for r in reports) == sorted(node.node_id for node in cluster.nodes)
    assert {(r["success"], r["state_hash"]) for r in reports} == {(True, upgraded[0]["state_hash"])}
    history = ok(cluster.api(victim).get("/upgrades/history"))["history"]
    assert [record["sequence"] for record in history if record.get("sequence") is not None] == [1]
