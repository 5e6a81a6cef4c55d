"""The version store on a real directory: layout, commits, rollbacks, bounds, and damaged files.

Each file is damaged the way a disk or an operator could damage it, and the test checks the decision
documented in node/store.py: the commit point and the state backups are verified (damage there is an
IntegrityError unless a verified copy exists), derived files are repaired from the commit point.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from node import errors, store as store_module
from node.core import pipeline
from node.core.canonical import canonical_json, encode_state, state_hash
from node.store import VersionStore

NODES = {"00000000000000a1": {"reputation": 10, "validator": True}, "00000000000000b2": {"reputation": 5, "validator": False}}
GENESIS = {"global": {"network_id": "test", "nodes": NODES, "version": "1.0.0"}}


def state_of(version: str, **extra) -> dict:
    return {"global": {"network_id": "test", "nodes": NODES, "version": version, **extra}}


def upgrade_record(version: str, from_version: str, sequence: int, proposal_id: str | None = None) -> dict:
    return pipeline.build_upgrade_record(now_ms=1_700_000_000_000 + sequence, version=version, from_version=from_version,
                                         proposal_id=proposal_id or f"p{sequence}", sequence=sequence,
                                         state_hash=state_hash(state_of(version)), fuel_consumed=100)


def failure_record(sequence: int, *, consumed: bool, message: str = "boom") -> dict:
    return pipeline.build_failure_record(now_ms=1, version="9.0.0", current_version="1.0.0", proposal_id=f"p{sequence}",
                                         sequence=sequence, sequence_consumed=consumed, state_hash=state_hash(GENESIS),
                                         step=pipeline.Step.DRY_RUN, error=errors.WasmTrap(message))


def rollback_record(restored: str, previous: str, proposal_id: str, sequence: int | None = None) -> dict:
    return pipeline.build_rollback_record(now_ms=1, restored_version=restored, previous_version=previous, proposal_id=proposal_id,
                                          sequence=sequence, state_hash=state_hash(state_of(restored)))


def upgrade(store: VersionStore, version: str, sequence: int, **extra) -> None:
    store.commit_upgrade(new_state=encode_state(state_of(version, **extra), float_free=False), version=version, proposal_id=f"p{sequence}", sequence=sequence,
                         record=upgrade_record(version, store.current_version, sequence))


def snapshot_files(data_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(data_dir)): path.read_bytes() for path in sorted(data_dir.rglob("*"))
            if path.is_file() and path.name != ".lock"}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node-data"


def reopen(data_dir: Path) -> VersionStore:
    return VersionStore.open(data_dir, genesis_state=GENESIS)


# --- layout and first start ----------------------------------------------------------------------


def test_first_open_creates_the_spec_layout_from_genesis(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        assert store.current_version == "1.0.0" and store.applied_sequence == 0
        assert json.loads(store.snapshot()[2]) == GENESIS and store.state_hash() == state_hash(GENESIS)
        assert store.snapshot()[2] == canonical_json(GENESIS)
        assert store.history() == [] and store.versions() == ["1.0.0"]
    upgrades = data_dir / "upgrades"
    assert (upgrades / "current_version.txt").read_text() == "1.0.0\n"
    assert json.loads((upgrades / "upgrade_history.json").read_text()) == []
    assert (upgrades / "cache").is_dir()
    live = (data_dir / "state" / "network_state.json").read_bytes()
    assert "sha256:" + hashlib.sha256(live).hexdigest() == state_hash(GENESIS), "a state file's sha256 is the state hash"
    assert (upgrades / "versions" / "1.0.0" / "network_state.json").read_bytes() == live


def test_reopening_an_intact_store_repairs_nothing_and_changes_no_file(data_dir):
    VersionStore.open(data_dir, genesis_state=GENESIS).close()
    before = snapshot_files(data_dir)
    with reopen(data_dir) as store:
        assert store.repairs == []
    assert snapshot_files(data_dir) == before


def test_a_second_store_on_the_same_data_dir_is_refused(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS):
        with pytest.raises(errors.StoreError, match="in use by another store"):
            reopen(data_dir)
    reopen(data_dir).close()  # the lock goes with the first store


@pytest.mark.parametrize("genesis, message", [
    ([], "must be a JSON object"),
    ({"global": {"version": "one"}}, "not semver"),
    ({"nodes": {}}, "'global' object"),
    ({"global": {"version": "1.0.0", "bad": float("nan")}}, "not plain JSON"),
])
def test_a_bad_genesis_state_is_a_config_error_and_creates_nothing(data_dir, genesis, message):
    with pytest.raises(errors.ConfigError, match=message):
        VersionStore.open(data_dir, genesis_state=genesis)
    assert not (data_dir / "upgrades" / "manifest.json").exists()


def test_a_data_dir_created_from_another_genesis_is_refused(data_dir):
    VersionStore.open(data_dir, genesis_state=GENESIS).close()
    other = {"global": {**GENESIS["global"], "network_id": "other"}}
    with pytest.raises(errors.ConfigError, match="different genesis"):
        VersionStore.open(data_dir, genesis_state=other)


# --- upgrades, rollbacks, failures ---------------------------------------------------------------


def test_an_upgrade_commits_state_version_history_and_sequence_and_survives_a_reopen(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        upgrade(store, "1.1.0", 1, feature=True)
        assert store.current_version == "1.1.0" and store.applied_sequence == 1 and store.upgrades_total == 1
    with reopen(data_dir) as store:
        assert store.repairs == []
        assert json.loads(store.snapshot()[2]) == state_of("1.1.0", feature=True)
        assert store.state_hash() == state_hash(state_of("1.1.0", feature=True))
        assert store.versions() == ["1.0.0", "1.1.0"]
        assert store.version_state("1.0.0") == GENESIS
        [record] = store.history()
        assert (record["event"], record["version"], record["sequence"]) == ("upgrade", "1.1.0", 1)
    assert (data_dir / "upgrades" / "current_version.txt").read_text() == "1.1.0\n"
    assert json.loads((data_dir / "upgrades" / "upgrade_history.json").read_text()) == [record]


def test_a_rollback_restores_the_previous_state_exactly(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        upgrade(store, "1.1.0", 1)
        upgrade(store, "1.2.0", 2)
        restored, previous = store.commit_rollback(proposal_id="p2", sequence=None,
                                                   record=rollback_record("1.1.0", "1.2.0", "p2"))
        assert (restored, previous) == ("1.1.0", "1.2.0")
        assert json.loads(store.snapshot()[2]) == state_of("1.1.0") and store.applied_sequence == 2, "a local rollback consumes no sequence"
        assert store.versions() == ["1.0.0", "1.1.0"]
    assert not (data_dir / "upgrades" / "versions" / "1.2.0").exists(), "the undone version's backup is removed"
    with reopen(data_dir) as store:
        assert store.current_version == "1.1.0" and json.loads(store.snapshot()[2]) == state_of("1.1.0")
        assert [record["event"] for record in store.history()] == ["upgrade", "upgrade", "rollback"]


def test_a_network_rollback_consumes_its_sequence(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        upgrade(store, "1.1.0", 1)
        store.commit_rollback(proposal_id="r2", sequence=2, record=rollback_record("1.0.0", "1.1.0", "r2", 2))
        assert store.applied_sequence == 2 and store.current_version == "1.0.0" and json.loads(store.snapshot()[2]) == GENESIS


def test_upgrading_again_after_a_rollback_replaces_the_old_backup_of_that_version(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        upgrade(store, "1.1.0", 1, attempt=1)
        store.commit_rollback(proposal_id="p1", sequence=None, record=rollback_record("1.0.0", "1.1.0", "p1"))
        upgrade(store, "1.1.0", 2, attempt=2)
    with reopen(data_dir) as store:
        assert json.loads(store.snapshot()[2]) == state_of("1.1.0", attempt=2) and store.version_state("1.1.0") == state_of("1.1.0", attempt=2)


def test_rollback_past_the_first_version_is_refused_and_changes_nothing(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        before = snapshot_files(data_dir)
        with pytest.raises(errors.RollbackError, match="first version"):
            store.commit_rollback(proposal_id="p0", sequence=None, record=rollback_record("1.0.0", "1.0.0", "p0"))
        assert snapshot_files(data_dir) == before and store.current_version == "1.0.0"


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(version="1.0.0"), errors.VersionError, "not greater"),
    (dict(sequence=3), errors.Conflict, "sequence 3 cannot run before sequence 2"),
    (dict(sequence=1), errors.StoreError, "already applied"),
    (dict(new_state=encode_state(state_of("1.3.0"), float_free=False)), errors.StoreError, "global.version is '1.2.0'"),
    (dict(new_state=encode_state([1, 2], float_free=False)), errors.StoreError, "JSON object"),
    (dict(new_state=encode_state(state_of("1.2.0", big="x" * 2_000), float_free=True)), errors.StoreError, "bytes, more than 1000"),
    (dict(record={"event": "upgrade"}), errors.StoreError, "wrong fields"),
])
def test_a_refused_commit_changes_no_file_and_no_memory(data_dir, kwargs, error, message, monkeypatch):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        upgrade(store, "1.1.0", 1)
        before, hash_before = snapshot_files(data_dir), store.state_hash()
        arguments = dict(new_state=encode_state(state_of("1.2.0"), float_free=False), version="1.2.0", proposal_id="p2", sequence=2,
                         record=upgrade_record("1.2.0", "1.1.0", 2)) | kwargs
        monkeypatch.setattr(store_module, "STORE_STATE_SIZE_MAX_BYTES", 1_000)     # state_of("1.2.0") is far smaller
        with pytest.raises(error, match=message):
            store.commit_upgrade(**arguments)
        assert snapshot_files(data_dir) == before
        assert (store.current_version, store.applied_sequence, store.state_hash()) == ("1.1.0", 1, hash_before)


def test_a_verdict_failure_consumes_its_sequence_and_a_local_one_does_not(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        live_before = store.snapshot()[2]
        store.record_failure(failure_record(1, consumed=False))
        assert store.applied_sequence == 0
        store.commit_failure(sequence=1, record=failure_record(1, consumed=True))
        assert store.applied_sequence == 1 and store.snapshot()[2] == live_before and store.current_version == "1.0.0"
    with reopen(data_dir) as store:
        assert [record["sequence_consumed"] for record in store.history()] == [False, True]


def test_retried_local_failures_leave_one_record(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        for attempt in range(20):
            store.record_failure(failure_record(1, consumed=False, message=f"attempt {attempt}"))
        [record] = store.history()
        assert "attempt 19" in record["error"]


# --- bounds --------------------------------------------------------------------------------------


def test_history_keeps_the_newest_records_only(data_dir, monkeypatch):
    monkeypatch.setattr(store_module, "STORE_HISTORY_RECORDS_MAX", 5)
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        for sequence in range(1, 9):
            store.commit_failure(sequence=sequence, record=failure_record(sequence, consumed=True))
        assert [record["sequence"] for record in store.history()] == [4, 5, 6, 7, 8]
    assert len(json.loads((data_dir / "upgrades" / "upgrade_history.json").read_text())) == 5


def test_the_chain_keeps_the_newest_versions_and_deletes_older_backups(data_dir, monkeypatch):
    monkeypatch.setattr(store_module, "STORE_CHAIN_LENGTH_MAX", 3)
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        for minor in range(1, 6):
            upgrade(store, f"1.{minor}.0", minor)
        assert store.versions() == ["1.3.0", "1.4.0", "1.5.0"]
        assert sorted(path.name for path in (data_dir / "upgrades" / "versions").iterdir()) == ["1.3.0", "1.4.0", "1.5.0"]
        store.commit_rollback(proposal_id="p5", sequence=None, record=rollback_record("1.4.0", "1.5.0", "p5"))
        store.commit_rollback(proposal_id="p4", sequence=None, record=rollback_record("1.3.0", "1.4.0", "p4"))
        with pytest.raises(errors.RollbackError, match="1.3.0 is the first version this node has"):
            store.commit_rollback(proposal_id="p3", sequence=None, record=rollback_record("1.2.0", "1.3.0", "p3"))


def test_a_history_record_with_a_huge_error_is_stored_truncated(data_dir):
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        store.commit_failure(sequence=1, record=failure_record(1, consumed=True, message="e" * 1_000_000))
        [record] = store.history()
        assert len(record["error"]) == pipeline.TEXT_LENGTH_MAX
    assert (data_dir / "upgrades" / "manifest.json").stat().st_size < 10_000


# --- damaged files -------------------------------------------------------------------------------


@pytest.fixture
def upgraded_dir(data_dir: Path) -> Path:
    """A data dir at 1.1.0 (sequence 1) over genesis 1.0.0, closed."""
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        upgrade(store, "1.1.0", 1, feature=True)
    return data_dir


def test_a_flipped_byte_in_the_live_state_is_repaired_from_the_verified_version_copy(upgraded_dir):
    live = upgraded_dir / "state" / "network_state.json"
    flip_byte(live, 20)
    with reopen(upgraded_dir) as store:
        assert any("live state" in repair for repair in store.repairs)
        assert json.loads(store.snapshot()[2]) == state_of("1.1.0", feature=True)
    assert "sha256:" + hashlib.sha256(live.read_bytes()).hexdigest() == state_hash(state_of("1.1.0", feature=True))


def test_a_live_state_whose_copy_is_damaged_too_is_an_integrity_error(upgraded_dir):
    flip_byte(upgraded_dir / "state" / "network_state.json", 20)
    flip_byte(upgraded_dir / "upgrades" / "versions" / "1.1.0" / "network_state.json", 30)
    with pytest.raises(errors.IntegrityError, match="both differ from the committed state hash") as caught:
        reopen(upgraded_dir)
    assert "restore" in caught.value.hint
    with pytest.raises(errors.IntegrityError):  # not "in use": the failed open released its lock
        reopen(upgraded_dir)


def test_a_missing_live_state_is_restored(upgraded_dir):
    (upgraded_dir / "state" / "network_state.json").unlink()
    with reopen(upgraded_dir) as store:
        assert json.loads(store.snapshot()[2]) == state_of("1.1.0", feature=True) and store.repairs


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage", "edited"])
def test_a_damaged_manifest_is_an_integrity_error(upgraded_dir, damage):
    manifest = upgraded_dir / "upgrades" / "manifest.json"
    data = manifest.read_bytes()
    if damage == "truncate":
        manifest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        flip_byte(manifest, len(data) // 3)
    elif damage == "empty":
        manifest.write_bytes(b"")
    elif damage == "garbage":
        manifest.write_bytes(bytes(range(256)) * 4)
    else:  # valid JSON, plausible content, but no longer matching its digest
        manifest.write_bytes(data.replace(b'"applied_sequence":1', b'"applied_sequence":7'))
    with pytest.raises(errors.IntegrityError, match="manifest.json"):
        reopen(upgraded_dir)


def test_a_manifest_with_a_valid_digest_but_an_inconsistent_chain_is_an_integrity_error(upgraded_dir):
    path = upgraded_dir / "upgrades" / "manifest.json"
    manifest = json.loads(path.read_bytes())["manifest"]
    manifest["version"] = "1.0.0"
    path.write_bytes(store_module.encode_manifest(manifest))
    with pytest.raises(errors.IntegrityError, match="not the last entry of the chain"):
        reopen(upgraded_dir)


def test_a_huge_manifest_is_refused_without_reading_it_all(upgraded_dir):
    (upgraded_dir / "upgrades" / "manifest.json").write_bytes(b" " * (store_module.STORE_MANIFEST_SIZE_MAX_BYTES + 10))
    with pytest.raises(errors.IntegrityError, match="larger than"):
        reopen(upgraded_dir)


def test_a_lost_manifest_is_never_silently_replaced_by_genesis(upgraded_dir):
    (upgraded_dir / "upgrades" / "manifest.json").unlink()
    with pytest.raises(errors.IntegrityError, match="commit point was lost"):
        reopen(upgraded_dir)


def test_the_derived_files_are_written_without_fsync_and_whatever_a_power_loss_leaves_of_them_is_repaired(
        data_dir, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)
    with VersionStore.open(data_dir, genesis_state=GENESIS) as store:
        monkeypatch.setattr(os, "fsync", fsync)
        upgrade(store, "1.1.0", 1, feature=True)
        monkeypatch.undo()
    derived = [data_dir / "state" / "network_state.json", data_dir / "upgrades" / "current_version.txt",
               data_dir / "upgrades" / "upgrade_history.json"]
    assert not [name for name in synced for path in derived
                if name == str(path) or name.startswith(str(path.parent / ("." + path.name)))], synced
    assert any(".manifest.json" in name for name in synced) and any("/1.1.0/" in name for name in synced)  # the commit is durable
    for path in derived:
        path.write_bytes(b"")                     # what a power loss may leave of a file renamed unsynced
    with reopen(data_dir) as store:
        assert len(store.repairs) == 3 and json.loads(store.snapshot()[2]) == state_of("1.1.0", feature=True)
    assert derived[1].read_text() == "1.1.0\n" and json.loads(derived[2].read_text())[-1]["version"] == "1.1.0"


def test_a_missing_current_version_file_is_repaired(upgraded_dir):
    (upgraded_dir / "upgrades" / "current_version.txt").unlink()
    with reopen(upgraded_dir) as store:
        assert store.repairs == ["current_version.txt was missing: rewritten"]
    assert (upgraded_dir / "upgrades" / "current_version.txt").read_text() == "1.1.0\n"


def test_a_current_version_file_edited_by_hand_is_rewritten_from_the_commit_point(upgraded_dir):
    (upgraded_dir / "upgrades" / "current_version.txt").write_text("9.9.9\n")
    with reopen(upgraded_dir) as store:
        assert store.current_version == "1.1.0"
    assert (upgraded_dir / "upgrades" / "current_version.txt").read_text() == "1.1.0\n"


@pytest.mark.parametrize("garbage", [b"\x00\xff garbage", b"[{\"version\": \"6.6.6\"}]", b"", b"{" * 100_000])
def test_a_garbage_history_file_is_repaired_from_the_commit_point(upgraded_dir, garbage):
    path = upgraded_dir / "upgrades" / "upgrade_history.json"
    expected = path.read_bytes()
    path.write_bytes(garbage)
    with reopen(upgraded_dir) as store:
        assert store.repairs == ["upgrade_history.json was stale or damaged: rewritten"]
        assert [record["version"] for record in store.history()] == ["1.1.0"]
    assert path.read_bytes() == expected


def test_stale_temp_files_and_unreferenced_version_dirs_are_cleaned_at_open(upgraded_dir):
    upgrades = upgraded_dir / "upgrades"
    (upgrades / ".manifest.json.tmp-123-abcd").write_bytes(b"half a manifest")
    (upgraded_dir / "state" / ".network_state.json.tmp-9-ffff").write_bytes(b"{")
    orphan = upgrades / "versions" / "1.2.0"
    orphan.mkdir()
    (orphan / "network_state.json").write_bytes(canonical_json(state_of("1.2.0")))
    (orphan / ".network_state.json.tmp-1-0000").write_bytes(b"x")
    unrelated = upgrades / "versions" / "notes"
    unrelated.mkdir()
    with reopen(upgraded_dir) as store:
        assert store.current_version == "1.1.0"
        assert sum("temp file" in repair for repair in store.repairs) == 3
    assert not list(upgrades.glob(".*.tmp-*")) and not list((upgraded_dir / "state").glob(".*.tmp-*"))
    assert not orphan.exists(), "a version the chain does not reference is what a killed upgrade left"
    assert unrelated.exists(), "a directory that is not a version is not ours to delete"


def test_a_damaged_backup_blocks_only_the_rollback_that_needs_it(upgraded_dir):
    flip_byte(upgraded_dir / "upgrades" / "versions" / "1.0.0" / "network_state.json", 10)
    with reopen(upgraded_dir) as store:
        before = snapshot_files(upgraded_dir)
        with pytest.raises(errors.IntegrityError, match="backup of version 1.0.0"):
            store.commit_rollback(proposal_id="p1", sequence=None, record=rollback_record("1.0.0", "1.1.0", "p1"))
        assert snapshot_files(upgraded_dir) == before and store.current_version == "1.1.0"
        upgrade(store, "1.2.0", 2)  # upgrades still work
        assert store.current_version == "1.2.0"


def test_a_damaged_backup_of_the_current_version_is_rewritten_by_the_backup_step(upgraded_dir):
    backup = upgraded_dir / "upgrades" / "versions" / "1.1.0" / "network_state.json"
    flip_byte(backup, 10)
    with reopen(upgraded_dir) as store:
        assert store.repairs == [], "the live state is intact: open does not need the backup"
        store.backup_current()
        assert "sha256:" + hashlib.sha256(backup.read_bytes()).hexdigest() == store.state_hash()
        upgrade(store, "1.2.0", 2)
        store.commit_rollback(proposal_id="p2", sequence=None, record=rollback_record("1.1.0", "1.2.0", "p2"))
        assert json.loads(store.snapshot()[2]) == state_of("1.1.0", feature=True)


def test_an_upgrade_itself_repairs_a_damaged_backup_before_committing(upgraded_dir):
    flip_byte(upgraded_dir / "upgrades" / "versions" / "1.1.0" / "network_state.json", 10)
    with reopen(upgraded_dir) as store:
        upgrade(store, "1.2.0", 2)
        restored, _ = store.commit_rollback(proposal_id="p2", sequence=None, record=rollback_record("1.1.0", "1.2.0", "p2"))
        assert restored == "1.1.0" and json.loads(store.snapshot()[2]) == state_of("1.1.0", feature=True)
