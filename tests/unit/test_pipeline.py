"""The pipeline's pure decisions: step table, failure classes, sequences, rollback choice, records, diffs."""

from __future__ import annotations

import datetime
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from node import errors
from node.core import pipeline
from node.core.canonical import canonical_json
from node.core.pipeline import FailureKind, SequenceDecision, Step

FORWARD = [Step.START, Step.CHECK, Step.DOWNLOAD, Step.VERIFY, Step.DRY_RUN, Step.BACKUP, Step.EXECUTE, Step.RECORD]
HASH = "sha256:" + "ab" * 32


# --- the step table ------------------------------------------------------------------------------


def test_the_happy_path_walks_every_step_in_the_spec_order():
    step = Step.START
    for target in FORWARD[1:]:
        step = pipeline.next_step(step, target)
    assert step is Step.RECORD


@pytest.mark.parametrize("current", FORWARD[:-1])
def test_every_unfinished_step_may_fail(current):
    assert pipeline.next_step(current, Step.FAILED) is Step.FAILED


def test_exactly_the_listed_transitions_are_legal():
    legal = {(a, b) for a, b in zip(FORWARD, FORWARD[1:])} | {(step, Step.FAILED) for step in FORWARD[:-1]}
    for current in Step:
        for target in Step:
            if (current, target) in legal:
                assert pipeline.next_step(current, target) is target
            else:
                with pytest.raises(AssertionError, match="impossible pipeline transition"):
                    pipeline.next_step(current, target)


def test_skipping_the_backup_or_leaving_a_terminal_step_is_refused():
    with pytest.raises(AssertionError, match="dry_run -> execute"):
        pipeline.next_step(Step.DRY_RUN, Step.EXECUTE)
    with pytest.raises(AssertionError):
        pipeline.next_step(Step.FAILED, Step.CHECK)
    with pytest.raises(AssertionError):
        pipeline.next_step(Step.RECORD, Step.FAILED)


# --- failure classes -----------------------------------------------------------------------------


@pytest.mark.parametrize("error, kind", [
    (errors.WasmTrap("trap"), FailureKind.VERDICT),
    (errors.FuelExhausted("fuel"), FailureKind.VERDICT),
    (errors.MemoryExhausted("memory"), FailureKind.VERDICT),
    (errors.BadOutput("bad"), FailureKind.VERDICT),
    (errors.ModuleRefused("wasi"), FailureKind.VERDICT),
    (errors.UpgradeRefused("removed members"), FailureKind.VERDICT),
    (errors.VersionError("not greater"), FailureKind.VERDICT),
    (errors.HashMismatchError("mismatch"), FailureKind.VERDICT),
    (errors.HashFormatError("format"), FailureKind.VERDICT),
    (errors.PackageSizeError("size"), FailureKind.VERDICT),
    (errors.PackageSourceRefused("file:"), FailureKind.VERDICT),
    (errors.RollbackError("first"), FailureKind.VERDICT),
    (errors.Interrupted("wall clock"), FailureKind.LOCAL),
    (errors.PackageFetchError("unreachable"), FailureKind.LOCAL),
    (errors.StoreError("disk full"), FailureKind.LOCAL),
    (errors.IntegrityError("damaged"), FailureKind.LOCAL),
    (RuntimeError("a bug"), FailureKind.LOCAL),
])
def test_failures_that_every_node_reproduces_are_verdicts_and_the_rest_is_local(error, kind):
    assert pipeline.classify_failure(error) is kind


def test_describe_error_is_one_line_with_the_class_and_the_hint():
    text = pipeline.describe_error(errors.WasmTrap("wasm trap: unreachable"))
    assert text.startswith("WasmTrap: wasm trap: unreachable (")
    assert "\n" not in text
    assert pipeline.describe_error(ValueError()) == "ValueError: no message"


# --- request checks ------------------------------------------------------------------------------


def test_check_upgrade_request_accepts_a_greater_version_and_normalizes_the_hash():
    assert pipeline.check_upgrade_request(current_version="1.1.0", version="1.2.0", package_hash="SHA256:" + "AB" * 32) == "ab" * 32
    assert pipeline.check_upgrade_request(current_version="1.1.0", version="2.0.0-rc.1", package_hash="cd" * 32) == "cd" * 32


@pytest.mark.parametrize("version", ["1.1.0", "1.0.9", "1.1.0-rc.1", "0.9.0"])
def test_a_version_not_greater_than_the_current_one_is_refused(version):
    with pytest.raises(errors.VersionError, match="not greater than the current version 1.1.0"):
        pipeline.check_upgrade_request(current_version="1.1.0", version=version, package_hash=HASH)


@pytest.mark.parametrize("version", ["1.2", "v1.2.0", "", "1.2.0/../../x", None, "1." * 40 + "0"])
def test_a_version_that_is_not_semver_is_refused(version):
    with pytest.raises(errors.UpgradeRefused, match="semver"):
        pipeline.check_upgrade_request(current_version="1.1.0", version=version, package_hash=HASH)


@pytest.mark.parametrize("package_hash", ["", "sha256:", "md5:" + "ab" * 16, "ab" * 31, "zz" * 32, "sha256:" + "ab" * 33])
def test_a_malformed_package_hash_is_refused(package_hash):
    with pytest.raises(errors.HashFormatError, match="not a sha256 digest"):
        pipeline.check_upgrade_request(current_version="1.1.0", version="1.2.0", package_hash=package_hash)


def test_a_digest_mismatch_names_both_digests():
    with pytest.raises(errors.HashMismatchError) as caught:
        pipeline.check_package_digest(actual_sha256="aa" * 32, expected_sha256="bb" * 32)
    assert "aa" * 32 in caught.value.message and "bb" * 32 in caught.value.message
    pipeline.check_package_digest(actual_sha256="aa" * 32, expected_sha256="aa" * 32)


@pytest.mark.parametrize("proposal_id", ["", "x" * 97, None, 7, "line\nbreak"])
def test_a_bad_proposal_id_is_refused(proposal_id):
    with pytest.raises(errors.UpgradeRefused, match="proposal_id"):
        pipeline.check_proposal_id(proposal_id)


# --- sequences -----------------------------------------------------------------------------------


def test_sequences_apply_in_order_exactly_once():
    assert pipeline.check_sequence(applied_sequence=0, sequence=1) is SequenceDecision.APPLY
    assert pipeline.check_sequence(applied_sequence=4, sequence=5) is SequenceDecision.APPLY
    assert pipeline.check_sequence(applied_sequence=4, sequence=4) is SequenceDecision.ALREADY_APPLIED
    assert pipeline.check_sequence(applied_sequence=4, sequence=1) is SequenceDecision.ALREADY_APPLIED


def test_a_sequence_gap_is_a_conflict_that_names_the_missing_sequence():
    with pytest.raises(errors.Conflict, match="sequence 7 cannot run before sequence 5"):
        pipeline.check_sequence(applied_sequence=4, sequence=7)


@pytest.mark.parametrize("sequence", [0, -1, True, 1.0, "2", None])
def test_a_sequence_that_is_not_a_positive_integer_is_refused(sequence):
    with pytest.raises(errors.UpgradeRefused, match="integer >= 1"):
        pipeline.check_sequence(applied_sequence=0, sequence=sequence)


# --- rollback ------------------------------------------------------------------------------------


def _link(version: str, proposal_id: str | None, sequence: int) -> dict:
    return {"version": version, "state_hash": "sha256:" + version.replace(".", "").ljust(64, "0"), "proposal_id": proposal_id,
            "sequence": sequence}


CHAIN = [_link("1.0.0", None, 0), _link("1.1.0", "p1", 1), _link("1.5.0", "p3", 3), _link("2.0.0", "p4", 4)]


def test_rollback_restores_the_previous_entry_of_the_applied_chain_not_the_semver_predecessor():
    # 1.2.0 was applied at sequence 2 and rolled back: it is not in the chain, so 2.0.0 goes back to 1.5.0.
    plan = pipeline.choose_rollback(CHAIN, proposal_id="p4", sequenced=False)
    assert plan.restored["version"] == "1.5.0" and plan.previous["version"] == "2.0.0"


def test_rollback_past_the_first_version_is_refused():
    with pytest.raises(errors.RollbackError, match="1.0.0 is the first version"):
        pipeline.choose_rollback(CHAIN[:1], proposal_id="p0", sequenced=False)


def test_a_local_rollback_must_name_the_latest_applied_upgrade():
    with pytest.raises(errors.RollbackError, match="p1 \\(version 1.1.0\\) is not the latest applied upgrade: p4"):
        pipeline.choose_rollback(CHAIN, proposal_id="p1", sequenced=False)
    with pytest.raises(errors.RollbackError, match="no applied upgrade on this node has proposal id 'nope'"):
        pipeline.choose_rollback(CHAIN, proposal_id="nope", sequenced=False)


def test_a_network_rollback_checks_its_target_and_expected_version_against_this_chain():
    plan = pipeline.choose_rollback(CHAIN, proposal_id="rollback-9", sequenced=True, target_proposal_id="p4",
                                    expected_version="1.5.0")
    assert plan.restored["version"] == "1.5.0"
    assert pipeline.choose_rollback(CHAIN, proposal_id="rollback-9", sequenced=True).restored["version"] == "1.5.0"
    with pytest.raises(errors.RollbackError, match="not the latest"):
        pipeline.choose_rollback(CHAIN, proposal_id="rollback-9", sequenced=True, target_proposal_id="p3")
    with pytest.raises(errors.RollbackError, match="expects to restore version 1.1.0, but the version before 2.0.0"):
        pipeline.choose_rollback(CHAIN, proposal_id="rollback-9", sequenced=True, expected_version="1.1.0")


# --- records -------------------------------------------------------------------------------------


def test_iso_timestamps_match_the_spec_format_and_the_calendar():
    assert pipeline.iso_utc_from_ms(0) == "1970-01-01T00:00:00Z"
    assert pipeline.iso_utc_from_ms(1_757_932_200_999) == "2025-09-15T10:30:00Z"
    assert pipeline.iso_utc_from_ms(1_709_208_000_000) == "2024-02-29T12:00:00Z"
    seed = int(os.environ.get("SYNAPSE_TEST_SEED", random.randrange(2**32)))
    print(f"seed={seed}")
    generator = random.Random(seed)
    for _ in range(2000):
        time_ms = generator.randrange(0, 2 ** 42)  # up to year ~2109
        expected = datetime.datetime.fromtimestamp(time_ms // 1000, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert pipeline.iso_utc_from_ms(time_ms) == expected, (seed, time_ms)


def test_an_upgrade_record_has_the_spec_history_fields_and_ours():
    record = pipeline.build_upgrade_record(now_ms=1_757_932_200_000, version="1.2.0", from_version="1.1.0", proposal_id="upgrade_001",
                                           sequence=3, state_hash=HASH, fuel_consumed=1234)
    assert {key: record[key] for key in ("version", "executed_at", "proposal_id", "success", "result")} == {
        "version": "1.2.0", "executed_at": "2025-09-15T10:30:00Z", "proposal_id": "upgrade_001", "success": True,
        "result": "Migration completed successfully"}
    assert (record["event"], record["sequence"], record["state_hash"], record["error"]) == ("upgrade", 3, HASH, None)
    assert record["sequence_consumed"] is True


def test_a_failure_record_says_which_step_failed_and_truncates_a_huge_error():
    hostile = errors.BadOutput("x" * 100_000)
    record = pipeline.build_failure_record(now_ms=5, version="1.2.0", current_version="1.1.0", proposal_id="p", sequence=2,
                                           sequence_consumed=True, state_hash=HASH, step=Step.DRY_RUN, error=hostile)
    assert record["event"] == "failed" and record["success"] is False and record["failed_step"] == "dry_run"
    assert record["error"].startswith("BadOutput: xxx") and record["error"].endswith("...[truncated]")
    assert len(record["error"]) == pipeline.TEXT_LENGTH_MAX
    assert record["result"].startswith("Upgrade failed at step dry_run: BadOutput")
    assert len(canonical_json(record)) <= pipeline.RECORD_SIZE_MAX_BYTES


def test_a_rollback_record_names_both_versions_and_a_local_one_consumes_no_sequence():
    record = pipeline.build_rollback_record(now_ms=5, restored_version="1.1.0", previous_version="1.2.0", proposal_id="p",
                                            sequence=None, state_hash=HASH)
    assert record["event"] == "rollback" and record["version"] == "1.1.0" and record["from_version"] == "1.2.0"
    assert record["result"] == "Rolled back from 1.2.0 to 1.1.0" and record["sequence_consumed"] is False


def test_check_record_refuses_unknown_fields_bad_values_and_oversized_records():
    good = pipeline.build_upgrade_record(now_ms=5, version="1.2.0", from_version="1.1.0", proposal_id="p", sequence=1,
                                         state_hash=HASH, fuel_consumed=None)
    with pytest.raises(errors.StoreError, match="wrong fields"):
        pipeline.check_record({**good, "extra": 1})
    with pytest.raises(errors.StoreError, match="version"):
        pipeline.check_record({**good, "version": "../../etc"})
    with pytest.raises(errors.StoreError, match="sequence"):
        pipeline.check_record({**good, "sequence": 0})
    with pytest.raises(errors.StoreError, match="more than 2048"):
        pipeline.check_record({**good, "proposal_id": "p" * 3000})
    with pytest.raises(errors.StoreError, match="wrong fields"):
        pipeline.check_record(["not", "a", "record"])


def test_history_helpers_bound_the_length_and_coalesce_retried_attempts():
    assert pipeline.append_bounded([1, 2, 3], 4, length_max=3) == [2, 3, 4]

    def attempt(sequence: int, message: str, consumed: bool = False) -> dict:
        return pipeline.build_failure_record(now_ms=1, version="1.2.0", current_version="1.1.0", proposal_id="p", sequence=sequence,
                                             sequence_consumed=consumed, state_hash=HASH, step=Step.DOWNLOAD,
                                             error=errors.PackageFetchError(message))
    history = pipeline.append_attempt([], attempt(2, "first"), length_max=10)
    history = pipeline.append_attempt(history, attempt(2, "second"), length_max=10)
    assert len(history) == 1 and "second" in history[0]["error"]
    history = pipeline.append_attempt(history, attempt(3, "other sequence"), length_max=10)
    assert len(history) == 2
    verdict = attempt(3, "consumed", consumed=True)
    history = pipeline.append_bounded(history, verdict, length_max=10)
    history = pipeline.append_attempt(history, attempt(3, "after the verdict"), length_max=10)
    assert len(history) == 4, "an attempt never replaces a record that consumed its sequence"
    assert pipeline.find_record(history, 3) == verdict
    assert pipeline.find_record(history, 2) is None, "an attempt that consumed nothing is not the sequence's result"


# --- dry-run changes -----------------------------------------------------------------------------


def test_state_changes_lists_json_pointer_paths_by_kind():
    old = {"global": {"version": "1.1.0", "nodes": {"a": {"reputation": 1}, "b/c~": {"x": 1}}, "gone": [1]}}
    new = {"global": {"version": "1.2.0", "nodes": {"a": {"reputation": 1, "flag": True}, "b/c~": {"x": True}}}, "extra": {}}
    changes = pipeline.state_changes(old, new)
    assert changes == {"added": ["/extra", "/global/nodes/a/flag"], "removed": ["/global/gone"],
                       "changed": ["/global/nodes/b~1c~0/x", "/global/version"], "total": 5, "truncated": False}
    assert pipeline.state_changes(old, old)["total"] == 0


def test_state_changes_is_bounded_but_counts_everything():
    old = {"nodes": {}}
    new = {"nodes": {f"n{index:04d}": index for index in range(1000)}}
    changes = pipeline.state_changes(old, new, changes_max=10)
    assert len(changes["added"]) == 10 and changes["total"] == 1000 and changes["truncated"] is True
    long_key = {"k" * 10_000: 1}
    assert len(pipeline.state_changes({}, long_key)["added"][0]) <= 200


def _state_changes_reference(old, new, changes_max=pipeline.CHANGES_MAX):
    """state_changes as it was first written (a call per value): the faster walk must list the same."""
    found, counts = {"added": [], "removed": [], "changed": []}, {"added": 0, "removed": 0, "changed": 0}

    def note(kind, path):
        counts[kind] += 1
        if len(found[kind]) < changes_max:
            found[kind].append(path if len(path) <= pipeline._PATH_LENGTH_MAX else path[: pipeline._PATH_LENGTH_MAX - 3] + "...")

    def walk(before, after, path, depth):
        if isinstance(before, dict) and isinstance(after, dict) and depth < pipeline._DIFF_DEPTH_MAX:
            for key in sorted(set(before) | set(after)):
                child = path + "/" + str(key).replace("~", "~0").replace("/", "~1")
                if key not in after:
                    note("removed", child)
                elif key not in before:
                    note("added", child)
                else:
                    walk(before[key], after[key], child, depth + 1)
        elif before != after or type(before) is not type(after):
            note("changed", path or "/")

    walk(old, new, "", 0)
    return {**found, "total": sum(counts.values()), "truncated": any(counts[kind] > len(found[kind]) for kind in counts)}


_leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, 1.0, 2.5]), st.sampled_from(["a", "~", "/"]))
_values = st.recursive(_leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.sampled_from(["a", "b", "c/d", "e~f", "g"]), inner, max_size=4)),
                       max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(_values, _values, st.integers(1, 4))
def test_state_changes_lists_what_the_first_walk_listed(old, new, changes_max):
    assert pipeline.state_changes(old, new, changes_max=changes_max) == _state_changes_reference(old, new, changes_max)


def test_state_changes_past_the_depth_limit_compares_the_subtree_whole_as_before():
    def chain(depth, leaf):
        return leaf if depth == 0 else {"k": chain(depth - 1, leaf)}
    for depth in (pipeline._DIFF_DEPTH_MAX - 1, pipeline._DIFF_DEPTH_MAX, pipeline._DIFF_DEPTH_MAX + 3):
        old, new = chain(depth, 1), chain(depth, 2)
        assert pipeline.state_changes(old, new) == _state_changes_reference(old, new)
        assert pipeline.state_changes(old, new)["total"] == 1
