"""Each chaos checker can fail: a hand-made report folder that is valid, then one broken copy per
invariant, judged by `synapse chaos check` (exit 1, the check named as FAILED). No cluster: the world
is built here, with real ed25519 certificates so the certificate checker is the real one."""

import copy
import hashlib
import json
import re
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from cluster.chaos_checks import CHECK_NAMES, RunFacts, counted_votes, judge, verdict
from cluster.chaos_history import Event
from cluster.cli import main
from node.core.certificates import certificate_statement
from node.identity import Identity, verify_signature

NETWORK_ID = "synapse-chaostest"
P1 = "upgrade_20261204_120000_aaaaaaaa"
P2 = "upgrade_20261204_120100_bbbbbbbb"
FORGED = "upgrade_20261204_120200_cccccccc"
HASH_1, HASH_2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
PACKAGE = "3" * 64
DIGEST = "4" * 64
IDENTITIES = [Identity.generate() for _ in range(3)]
LABELS = ["node-1", "node-2", "node-3"]


def _id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _entry(kind: str, author: int, body: dict, name: str, wall_ms: int = 1_000) -> dict:
    return {"id": _id(name), "kind": kind, "author": IDENTITIES[author].node_id, "sequence": 1, "parents": [],
            "hlc": {"wall_ms": wall_ms, "logical": 0}, "body": body, "signature": "00" * 64}


def _execute(proposal_id: str, version: str, sequence: int, signers: range) -> dict:
    statement = certificate_statement(NETWORK_ID, proposal_id, "upgrade", PACKAGE, version, DIGEST, sequence)
    certificate = [{"validator_id": IDENTITIES[index].node_id, "signature": IDENTITIES[index].sign(statement).hex()} for index in signers]
    body = {"proposal_id": proposal_id, "action": "upgrade", "version": version, "package_hash": PACKAGE, "votes_digest": DIGEST,
            "sequence": sequence, "certificate": certificate, "package_url": "http://x/p.wasm", "package_size": 10}
    return _entry("EXECUTE_UPGRADE", 0, body, f"execute {proposal_id}")


def _report(author: int, proposal_id: str, sequence: int, version: str, state_hash: str) -> dict:
    body = {"proposal_id": proposal_id, "sequence": sequence, "version": version, "state_hash": state_hash, "success": True, "error": None}
    return _entry("EXECUTION_REPORT", author, body, f"report {author} {proposal_id} {sequence}", wall_ms=2_000 + sequence)


def _log() -> list[dict]:
    vote_1 = _entry("VOTE", 0, {"proposal_id": P1, "vote": "approval"}, "vote 1")
    vote_2 = _entry("VOTE", 1, {"proposal_id": P1, "vote": "approval"}, "vote 2")
    vote_ids = "".join(sorted([vote_1["id"], vote_2["id"]]))
    log = [_entry("PROPOSAL", 0, {"proposal_id": P1, "version": "1.2.0"}, "proposal 1"), vote_1, vote_2]
    log += [_entry("CLOSE", index, {"proposal_id": P1, "vote_ids": vote_ids, "votes_digest": DIGEST}, f"close {index}") for index in range(3)]
    log += [_execute(P1, "1.2.0", 1, range(2))] + [_report(index, P1, 1, "1.2.0", HASH_1) for index in range(3)]
    log += [_entry("NOTE", 2, {"text": "hello"}, "note")]
    log += [_execute(P2, "9.9.9", 2, range(3))] + [_report(index, P2, 2, "9.9.9", HASH_2) for index in range(3)]
    return log


def _event(index: int, type_: str, process: str, op_id: int, f: str, node: str | None, value: dict) -> dict:
    return Event(index=index, type=type_, process=process, op_id=op_id, f=f, node=node, time_ms=index * 100,
                 wall_ms=1_000 + index * 100, value=value).as_dict()


def _history() -> list[dict]:
    operations = [("workload", 1, "propose", "node-1", {"proposal_id": P1, "entry_id": _id("proposal 1")}),
                  ("workload", 2, "vote", "node-2", {"proposal_id": P1, "entry_id": _id("vote 2")}),
                  ("nemesis", 3, "kill", "node-3", {"fault": 1, "nodes": [3]}),
                  ("nemesis", 4, "restart", "node-3", {"fault": 1, "nodes": [3]}),
                  ("adversary", 5, "backdated_vote", "node-3", {"proposal_id": P1, "entry_id": _id("backdated"), "status_before": "executed"}),
                  ("adversary", 6, "forged_execute", "node-3", {"proposal_id": FORGED}),
                  ("checker", 0, "liveness", "node-1", {"proposal_id": P2, "elapsed_ms": 1_500})]
    events = []
    for process, op_id, f, node, value in operations:
        events.append(_event(len(events), "invoke", process, op_id, f, node, {}))
        events.append(_event(len(events), "ok", process, op_id, f, node, value))
    return events


def _world() -> dict:
    log = _log()
    votes = {P1: [{"entry_id": _id("vote 1"), "counted": True}, {"entry_id": _id("vote 2"), "counted": True}]}
    finals = {label: {"process": "up", "state": {"version": "9.9.9", "state_hash": HASH_2}, "log": copy.deepcopy(log),
                      "proposals": {P1: "executed", P2: "executed"}, "votes": copy.deepcopy(votes)} for label in LABELS}
    run = {"network_id": NETWORK_ID, "validators": {identity.node_id: identity.public_key.hex() for identity in IDENTITIES},
           "nodes": {label: IDENTITIES[index].node_id for index, label in enumerate(LABELS)}, "genesis_version": "1.0.0",
           "liveness_bound_ms": 90_000, "aborted": None, "options": {"seed": 1, "nodes": 3, "validators": 3}}
    return {"run": run, "finals": finals, "history": _history()}


def _check(tmp_path, world: dict):
    (tmp_path / "run.json").write_text(json.dumps(world["run"]))
    (tmp_path / "finals.json").write_text(json.dumps(world["finals"]))
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(event) + "\n" for event in world["history"]))
    return CliRunner().invoke(main, ["chaos", "check", str(tmp_path)])


def _reports(world: dict, label: str) -> list[dict]:
    return [entry for entry in world["finals"][label]["log"] if entry["kind"] == "EXECUTION_REPORT"]


def test_the_hand_made_world_is_valid(tmp_path):
    result = _check(tmp_path, _world())
    assert result.exit_code == 0, result.output
    assert "verdict: valid" in result.output
    page = (tmp_path / "index.html").read_text()
    assert page.count("<svg") == 2 and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for svg in re.findall(r"<svg.*?</svg>", page, re.DOTALL):
        ElementTree.fromstring(svg)           # well-formed: a browser draws it
    assert "synapse chaos replay" in page and "seed <b>1</b>" in page
    assert json.loads((tmp_path / "verdict.json").read_text())["verdict"] == "valid"


def _drop_note_on_node_3(world):
    world["finals"]["node-3"]["log"] = [entry for entry in world["finals"]["node-3"]["log"] if entry["kind"] != "NOTE"]


def _other_hash_on_node_3(world):
    world["finals"]["node-3"]["state"]["state_hash"] = "sha256:" + "9" * 64


def _minority_certificate(world):
    for label in LABELS:
        for entry in world["finals"][label]["log"]:
            if entry["kind"] == "EXECUTE_UPGRADE" and entry["body"]["proposal_id"] == P1:
                entry["body"]["certificate"] = entry["body"]["certificate"][:1]


def _executed_twice(world):
    twin = copy.deepcopy(_reports(world, "node-1")[0])
    twin["id"] = _id("a second report")
    for label in LABELS:
        world["finals"][label]["log"].append(copy.deepcopy(twin))


def _two_hashes_at_sequence_1(world):
    for label in LABELS:
        _reports(world, label)[1]["body"]["state_hash"] = "sha256:" + "8" * 64


def _report_names_another_version(world):
    for label in LABELS:
        _reports(world, label)[1]["body"]["version"] = "1.3.0"


def _acknowledged_vote_lost(world):
    world["history"][3]["value"]["entry_id"] = _id("a vote nobody kept")


def _expired_somewhere_yet_executed(world):
    world["finals"]["node-3"]["proposals"][P1] = "expired"


def _backdated_vote_counted(world):
    world["finals"]["node-2"]["votes"][P1].append({"entry_id": _id("backdated"), "counted": True})


def _replayed_entry_twice(world):
    world["finals"]["node-1"]["log"].append(copy.deepcopy(world["finals"]["node-1"]["log"][0]))


def _liveness_failed(world):
    world["history"][-1]["type"] = "fail"
    world["history"][-1]["value"]["error"] = "not executed within 90000 ms on node-2"


BREAKERS = [
    ("logs converged", _drop_note_on_node_3),
    ("one version and one state hash", _other_hash_on_node_3),
    ("nothing executed without a valid certificate", _minority_certificate),
    ("nothing executed twice", _executed_twice),
    ("one state hash per upgrade sequence", _two_hashes_at_sequence_1),
    ("versions change only by certified upgrades and rollbacks", _report_names_another_version),
    ("acknowledged writes are in every live log", _acknowledged_vote_lost),
    ("no proposal both expired/rejected and executed", _expired_somewhere_yet_executed),
    ("no adversary action took effect", _backdated_vote_counted),
    ("no adversary action took effect", _replayed_entry_twice),
    ("liveness after the final heal", _liveness_failed),
]


def test_every_checker_has_a_breaker():
    assert {name for name, _ in BREAKERS} == set(CHECK_NAMES)


@pytest.mark.parametrize(("check", "breaker"), BREAKERS, ids=[breaker.__name__.strip("_") for _, breaker in BREAKERS])
def test_each_checker_fails_on_its_broken_world(tmp_path, check, breaker):
    world = _world()
    breaker(world)
    result = _check(tmp_path, world)
    assert result.exit_code == 1, result.output
    assert f"FAILED  {check}:" in result.output
    assert "verdict: invalid" in result.output


def test_a_failure_names_the_operation_and_the_nodes(tmp_path):
    world = _world()
    _acknowledged_vote_lost(world)
    result = _check(tmp_path, world)
    assert "op 2 (vote on node-2" in result.output and "node-1, node-2, node-3" in result.output


def test_a_backdated_vote_in_the_validators_close_fails(tmp_path):
    world = _world()
    for label in LABELS:
        for entry in world["finals"][label]["log"]:
            if entry["kind"] == "CLOSE":
                entry["body"]["vote_ids"] += _id("backdated")
    result = _check(tmp_path, world)
    assert result.exit_code == 1 and "op 5 (backdated_vote): vote" in result.output
    assert 'stroke="#d2453a" stroke-width="2.5"' in (tmp_path / "index.html").read_text()   # the blamed mark is ringed


def test_a_forged_execute_that_ran_fails(tmp_path):
    world = _world()
    for label in LABELS:
        world["finals"][label]["log"].append(_report(0, FORGED, 3, "1.2.0", HASH_1))
    result = _check(tmp_path, world)
    assert result.exit_code == 1 and f"op 6 (forged_execute): {FORGED} executed on node-1" in result.output


def test_an_unfinished_run_is_unknown_never_valid(tmp_path):
    world = _world()
    world["history"] = world["history"][:-2]      # the liveness probe never ran
    result = _check(tmp_path, world)
    assert result.exit_code == 2 and "verdict: unknown" in result.output


def test_a_folder_without_a_run_says_what_it_is_missing(tmp_path):
    result = CliRunner().invoke(main, ["chaos", "check", str(tmp_path)])
    assert result.exit_code == 2 and "run.json is missing" in result.output


def test_counted_votes_need_a_strict_majority_of_validators():
    validators = {"a" * 16: b"", "b" * 16: b"", "c" * 16: b""}
    close = lambda author, ids: {"kind": "CLOSE", "author": author, "body": {"proposal_id": "p", "votes_digest": ids, "vote_ids": ids}}
    one, two = "1" * 64, "2" * 64
    entries = {"x": close("a" * 16, one), "y": close("b" * 16, two), "z": close("c" * 16, one)}
    assert counted_votes(entries, validators) == {"p": {one}}
    assert counted_votes({"x": entries["x"], "y": entries["y"]}, validators) == {}


def test_verdict_rules():
    facts = RunFacts(network_id="n", validators={}, nodes={}, genesis_version="1.0.0", liveness_bound_ms=1, finals={}, events=())
    outcomes = judge(facts, verify=verify_signature)
    assert all(outcome.skipped for outcome in outcomes) and verdict(outcomes) == "unknown"
