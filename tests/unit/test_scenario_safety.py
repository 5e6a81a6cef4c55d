"""The shared safety checks judge histories correctly, and the report says what failed and where.

Entries are built as the API shows them (node/api.py entry_to_json: bytes as hex), with real ed25519
certificates, so the certificate check runs the node's own verification code.
"""

from __future__ import annotations

import json
import time
from xml.etree import ElementTree

from cluster.report import RunRecord, StepRecord, junit_xml, log_excerpt, summary_text, write_report, xml_safe
from cluster.safety import (
    NodeSnapshot,
    executed_with_certificate,
    logs_converged,
    nothing_executed_twice,
    one_version_and_state_hash,
)
from cluster.scenario_steps import metric_value, state_values
from node.core.certificates import certificate_statement
from node.identity import Identity, verify_signature

NETWORK = "synapse-test"
DIGEST = "cd" * 32          # the counted votes' digest
VALIDATORS = [Identity.generate() for _ in range(3)]
VALIDATOR_KEYS = {identity.node_id: identity.public_key for identity in VALIDATORS}
HASH = "ab" * 32


def entry(entry_id: str, kind: str = "NOTE", author: str = "a" * 16, **body) -> dict:
    return {"id": entry_id, "kind": kind, "author": author, "body": body}


def snapshot(label: str, entries: list[dict], version: str | None = "1.0.0", state_hash: str | None = "sha256:00",
             node_id: str | None = None) -> NodeSnapshot:
    return NodeSnapshot(label=label, node_id=node_id or label.ljust(16, "0")[:16], entries=tuple(entries), version=version,
                        state_hash=state_hash)


def execute_entry(entry_id: str, signers: list[Identity], *, proposal_id: str = "p1", sequence: int = 1) -> dict:
    statement = certificate_statement(NETWORK, proposal_id, "upgrade", HASH, "1.2.0", DIGEST, sequence)
    certificate = [{"validator_id": signer.node_id, "signature": signer.sign(statement).hex()} for signer in signers]
    return entry(entry_id, "EXECUTE_UPGRADE", proposal_id=proposal_id, action="upgrade", version="1.2.0", package_url="http://x/p.wasm",
                 package_hash=HASH, package_size=10, votes_digest=DIGEST, sequence=sequence, certificate=certificate)


def report(entry_id: str, author: str, *, proposal_id: str = "p1", sequence: int = 1, success: bool = True) -> dict:
    return entry(entry_id, "EXECUTION_REPORT", author=author, proposal_id=proposal_id, sequence=sequence, success=success,
                 version="1.2.0", state_hash="sha256:11", error=None)


def check_certificates(snapshots):
    return executed_with_certificate(snapshots, network_id=NETWORK, validators=VALIDATOR_KEYS, verify=verify_signature)


def test_logs_converged_only_with_the_same_entries_in_the_same_order():
    one, two, three = entry("1"), entry("2"), entry("3")
    assert logs_converged([snapshot("node-1", [one, two]), snapshot("node-2", [one, two])]).ok
    behind = logs_converged([snapshot("node-1", [one, two, three]), snapshot("node-2", [one, two])])
    assert not behind.ok and behind.nodes == ("node-2",)
    assert any("node-2: 2 entries, missing 1: 3" == detail for detail in behind.details)
    reordered = logs_converged([snapshot("node-1", [one, two]), snapshot("node-2", [two, one])])
    assert not reordered.ok and reordered.seen == "same entries in different orders"
    assert not logs_converged([]).ok


def test_one_version_and_state_hash():
    assert one_version_and_state_hash([snapshot("node-1", []), snapshot("node-2", [])]).ok
    split = one_version_and_state_hash([snapshot("node-1", []), snapshot("node-2", []), snapshot("node-3", [], state_hash="sha256:ff")])
    assert not split.ok and split.nodes == ("node-3",) and "2 state hash(es)" in split.seen
    versions = one_version_and_state_hash([snapshot("node-1", [], version="1.2.0"), snapshot("node-2", [])])
    assert not versions.ok
    no_state = one_version_and_state_hash([snapshot("node-1", [], state_hash=None), snapshot("node-2", [], state_hash=None)])
    assert no_state.ok and "were not compared" in no_state.seen
    assert not one_version_and_state_hash([snapshot("node-1", [], version=None)]).ok


def test_an_execution_needs_a_majority_certificate_in_some_log():
    majority = execute_entry("e1", VALIDATORS[:2])
    executed = report("r1", "1" * 16)
    assert check_certificates([snapshot("node-1", [majority, executed])]).ok
    minority = execute_entry("e2", VALIDATORS[:1])
    outcome = check_certificates([snapshot("node-1", [minority, executed], node_id="1" * 16)])
    assert not outcome.ok and outcome.nodes == ("node-1",) and "no valid certificate" in outcome.details[0]
    assert not check_certificates([snapshot("node-1", [executed])]).ok  # no EXECUTE_UPGRADE at all
    failed_run = report("r2", "1" * 16, success=False)  # a failed execution needs nothing
    assert check_certificates([snapshot("node-1", [failed_run])]).ok


def test_a_forged_or_mismatched_certificate_does_not_count():
    forged = execute_entry("e1", VALIDATORS[:2])
    forged["body"]["certificate"][0]["signature"] = "00" * 64
    assert not check_certificates([snapshot("node-1", [forged, report("r1", "1" * 16)])]).ok
    other_sequence = execute_entry("e2", VALIDATORS, sequence=2)
    assert not check_certificates([snapshot("node-1", [other_sequence, report("r1", "1" * 16, sequence=1)])]).ok
    stranger = Identity.generate()
    outsider = execute_entry("e3", [VALIDATORS[0], stranger])
    assert not check_certificates([snapshot("node-1", [outsider, report("r1", "1" * 16)])]).ok
    doubled = execute_entry("e4", [VALIDATORS[0], VALIDATORS[0]])
    assert not check_certificates([snapshot("node-1", [doubled, report("r1", "1" * 16)])]).ok
    garbage = entry("e5", "EXECUTE_UPGRADE", proposal_id="p1", sequence=1, certificate=[{"validator_id": 5, "signature": "zz"}])
    assert not check_certificates([snapshot("node-1", [garbage, report("r1", "1" * 16)])]).ok


def test_nothing_executed_twice():
    author = "1" * 16
    assert nothing_executed_twice([snapshot("node-1", [report("r1", author), report("r2", "2" * 16)])]).ok
    twice = nothing_executed_twice([snapshot("node-1", [report("r1", author), report("r2", author)], node_id=author)])
    assert not twice.ok and twice.nodes == ("node-1",) and "sequence 1 executed 2 times" in twice.details[0]
    same_proposal = nothing_executed_twice([snapshot("node-1", [report("r1", author), report("r2", author, sequence=2)])])
    assert not same_proposal.ok and "proposal p1 executed 2 times" in same_proposal.details[0]
    assert nothing_executed_twice([snapshot("node-1", [report("r1", author), report("r2", author, success=False)])]).ok


def test_metric_values_match_labels_as_a_subset_and_sum():
    text = ('# TYPE synapse_refused_total counter\nsynapse_refused_total{reason="bad_signature",peer="a"} 2\n'
            'synapse_refused_total{reason="bad_signature",peer="b"} 3\nsynapse_refused_total{reason="oversized"} 1\nsynapse_up 1\n')
    assert metric_value(text, 'synapse_refused_total{reason="bad_signature"}') == 5
    assert metric_value(text, "synapse_refused_total") == 6
    assert metric_value(text, "synapse_up") == 1
    assert metric_value(text, 'synapse_refused_total{reason="clock_future"}') is None


def test_state_values_follow_dotted_paths_with_wildcards():
    state = {"global": {"version": "1.2.0", "nodes": {"a": {"flag": True}, "b": {"flag": False}, "c": 3}}}
    assert state_values(state, "global.version") == ["1.2.0"]
    assert state_values(state, "global.nodes.*.flag") == [True, False]
    assert state_values(state, "global.missing") == []


def test_the_report_shows_expected_seen_and_log_lines_for_a_failure(tmp_path):
    now = time.time()
    log_path = tmp_path / "node.log"
    stamp = lambda offset: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + offset)) + ".000Z"  # noqa: E731
    log_path.write_text("\n".join(json.dumps({"ts": stamp(offset), "level": "info", "event": f"event_{offset}"})
                                  for offset in (-60, -1, 0, 1, 60)) + "\nnot json\n")
    excerpt = log_excerpt(log_path, around_s=now)
    assert [json.loads(line)["event"] for line in excerpt] == ["event_-1", "event_0", "event_1"]
    failed = StepRecord(index=3, label="notes | everywhere", do="assert", started_at=now, duration_s=1.5, status="failed",
                        expected="the log holds notes saved as n", seen="fails on 1 of 5 node(s)", nodes=("node-4",),
                        details=("node-4: 1 of 2 entries",), excerpts={"node-4": excerpt})
    run = RunRecord(scenario="demo", scenario_path="scenarios/demo.toml", seed=42, started_at=now, finished_at=now + 2,
                    steps=[StepRecord(index=0, label="heal", do="heal", started_at=now), failed])
    assert not run.passed and run.verdict == "FAIL"
    summary = summary_text(run)
    assert "--seed 42" in summary and "## FAILED: notes | everywhere" in summary and " info    node-4 event_0" in summary
    assert "| 3 | notes \\| everywhere | failed |" in summary
    suite = ElementTree.fromstring(junit_xml(run))
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failure = suite.find("testcase[@name='003 notes | everywhere']/failure")
    assert "expected the log holds notes" in failure.get("message") and "event_0" in failure.text
    write_report(tmp_path, run, "[scenario]\n")
    assert json.loads((tmp_path / "history.json").read_text())["verdict"] == "FAIL"
    assert {path.name for path in tmp_path.iterdir()} >= {"history.json", "junit.xml", "summary.md", "scenario.toml"}


def test_a_run_passes_only_with_every_step_and_safety_check_passed():
    now = time.time()
    passed = StepRecord(index=-1, label="safety: x", do="safety", started_at=now)
    assert RunRecord(scenario="s", scenario_path=None, seed=1, started_at=now, safety=[passed]).passed
    assert not RunRecord(scenario="s", scenario_path=None, seed=1, started_at=now).passed  # no safety checks ran
    skipped = StepRecord(index=-1, label="safety: y", do="safety", started_at=now, status="skipped")
    assert not RunRecord(scenario="s", scenario_path=None, seed=1, started_at=now, safety=[passed, skipped]).passed
    assert not RunRecord(scenario="s", scenario_path=None, seed=1, started_at=now, safety=[passed], aborted="x").passed


def test_junit_xml_replaces_the_control_characters_of_hook_output(tmp_path):
    now = time.time()
    message = "hook said \x1b[31mred\x1b[0m and \x00 then \x07"
    failed = StepRecord(index=0, label="hook \x1b check", do="hook", started_at=now, status="failed", expected="exit 0",
                        seen=message, nodes=("node-1",), details=(message,), excerpts={"node-1": [message]})
    run = RunRecord(scenario="ctl\x00chars", scenario_path=None, seed=7, started_at=now, finished_at=now + 1, steps=[failed],
                    aborted="aborted \x1b")
    write_report(tmp_path, run, None)
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()  # raises on a character XML 1.0 forbids
    failure = suite.find("testcase/failure")
    for text in (failure.get("message"), failure.text, suite.get("name"), suite.find("testcase").get("name")):
        assert not any(character in text for character in "\x1b\x00\x07")
    assert "\ufffd[31mred" in failure.get("message") and "\ufffd then" in failure.text
    assert xml_safe("tab\tand newline\n stay") == "tab\tand newline\n stay"


def test_an_empty_window_shows_each_nodes_last_lines_before_the_failure(tmp_path):
    """A 3-node run expecting 1.3.0 after a 1.2.0 upgrade: the nodes went quiet long before the check gave up."""
    now = time.time()
    stamp = lambda offset: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + offset)) + ".000Z"  # noqa: E731
    excerpts = {}
    for label in ("node-1", "node-2", "node-3"):
        log_path = tmp_path / f"{label}.log"
        events = [(-60 + second, f"noise_{second}") for second in range(20)] + [(-30, "vote_cast"), (-29, "upgrade_executed")]
        log_path.write_text("\n".join(json.dumps({"ts": stamp(offset), "level": "info", "event": event,
                                                  "fields": {"version": "1.2.0"}}) for offset, event in events)
                            + "\n" + json.dumps({"ts": stamp(120), "level": "info", "event": "after"}) + "\n")
        excerpts[label] = log_excerpt(log_path, around_s=now, before_lines_max=5)
        assert [json.loads(line)["event"] for line in excerpts[label]][-2:] == ["vote_cast", "upgrade_executed"]
        assert len(excerpts[label]) == 5  # bounded, and nothing from after the failure
    failed = StepRecord(index=2, label="version everywhere", do="assert", started_at=now - 30, duration_s=30.0, status="failed",
                        expected="version 1.3.0 on all", seen="fails on 3 of 3 node(s)", nodes=tuple(excerpts), excerpts=excerpts)
    summary = summary_text(RunRecord(scenario="upgrade", scenario_path=None, seed=1, started_at=now - 40, steps=[failed]))
    for label in excerpts:
        assert f"{label} upgrade_executed version=\"1.2.0\"" in summary
