"""The node's version store: live network state, version backups, upgrade history, on disk.

Why it is built this way: several files change in one upgrade (the new state, the live state, the
current version, the history, the applied sequence), and a node can be killed at any instant. So there
is exactly ONE commit point, `upgrades/manifest.json`, and every other file is either written BEFORE it
(and unreferenced until it lands) or DERIVED from it (and repaired from it when the node opens the store).

Layout under the node's data dir (the spec's "Version Directory Structure", plus the commit point):

    upgrades/manifest.json                    COMMIT POINT (see below)
    upgrades/current_version.txt              derived: "1.2.0\\n"
    upgrades/upgrade_history.json             derived: JSON list of history records (oldest first)
    upgrades/versions/<version>/network_state.json   the state of each version of the applied chain
    upgrades/cache/<sha256>.wasm              packages (node.packages.PackageCache; not touched here)
    upgrades/.lock                            flock: one process per data dir
    state/network_state.json                  derived: the live network state (a copy of the current
                                              version's state, for readers and operators)

Every state file holds the state's canonical JSON (node.core.canonical), so sha256(file bytes) IS the
state hash; it is checked against the manifest on every read. The manifest embeds its own digest:
`{"manifest": {...}, "sha256": sha256(canonical_json(manifest))}`. It holds: format, the genesis state
hash (a data dir belongs to one network), version, state_hash, applied_sequence, the last proposal_id,
a generation counter, the count of upgrades, the applied-version CHAIN (oldest first, current last:
version, state_hash, proposal_id, sequence of each) and the whole bounded HISTORY.

Writes are atomic: a temp file `.<name>.tmp-<pid>-<random>` in the same directory, fsync, rename over
the target, fsync of the directory. An upgrade commits in this order:
  1. backup: versions/<current>/network_state.json is verified against the current state hash (and
     rewritten from the live state if it is missing or damaged);
  2. the new state is written to versions/<new>/network_state.json (unreferenced: ignored if we die);
  3. the new manifest replaces the old one: THE COMMIT. Before it the node is at the old version,
     after it at the new one, whole;
  4. derived files: state/network_state.json, current_version.txt, upgrade_history.json.
A rollback writes nothing before its commit (the restored state is already in versions/<restored>/,
verified against the chain's digest first). A failed attempt only rewrites the manifest (history and,
for a verdict, applied_sequence) and then the derived history file.

Opening the store: stale temp files are deleted; the manifest is read and verified (a damaged or
truncated manifest is an IntegrityError: nothing else can say which version is whole); the live
state file is checked against the manifest's state hash and, if it differs (killed before step 4, or a
damaged file), rebuilt from versions/<version>/ when that copy matches (`repairs` lists what was
repaired; both damaged is an IntegrityError); current_version.txt and upgrade_history.json are
rewritten when they differ from what the manifest says (missing, stale or garbage: repaired, never
trusted); version directories that the chain does not reference are deleted. A manifest that is
missing while derived files exist is an IntegrityError (never silently restart from genesis).

Bounds: a history record is at most 2 KiB (texts truncated by node.core.pipeline), the history keeps
the newest STORE_HISTORY_RECORDS_MAX records (older ones are dropped; the network's execution log keeps the
full audit trail), the chain keeps the newest STORE_CHAIN_LENGTH_MAX versions (so a node can roll back at
most STORE_CHAIN_LENGTH_MAX - 1 steps; backups of versions dropped from the chain are deleted). State files
are read up to STORE_STATE_SIZE_MAX_BYTES, the manifest up to STORE_MANIFEST_SIZE_MAX_BYTES.

All methods are blocking (fsync): async callers run them in an executor. A threading lock serializes
them. `fault_point(name)` is called at every named step of a commit ("backup_written",
"new_state_written", "committed", "live_state_written", "current_version_written", "history_written",
and "mid_write:<dir>/<file>", "before_rename:<dir>/<file>" inside atomic writes, e.g.
"mid_write:upgrades/manifest.json", "mid_write:1.1.0/network_state.json"): the crash-safety tests kill the
process there with SIGKILL. It does nothing in production.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from node.core import pipeline
from node.core.canonical import EncodedState, canonical_json, sha256_hex
from node.core.semver import is_valid_version, parse_version
from node.fsutil import TEMP_MARKER, fsync_directory, write_atomic
from node.errors import ConfigError, IntegrityError, StoreError
from node.limits import (
    STORE_CHAIN_LENGTH_MAX, STORE_HISTORY_RECORDS_MAX, STORE_MANIFEST_SIZE_MAX_BYTES, STORE_STATE_SIZE_MAX_BYTES,
)

MANIFEST_FORMAT = 1
STATE_FILE_NAME = "network_state.json"

_logger = logging.getLogger("synapse.store")



# --- atomic files ----------------------------------------------------------------------------


def read_bounded(path: Path, size_max_bytes: int) -> bytes | None:
    """The file's bytes, None if it does not exist; IntegrityError if it is larger than allowed."""
    try:
        with open(path, "rb") as file:
            data = file.read(size_max_bytes + 1)
    except FileNotFoundError:
        return None
    if len(data) > size_max_bytes:
        raise IntegrityError(f"{path} is larger than {size_max_bytes} bytes")
    return data


def remove_temp_files(directory: Path) -> list[str]:
    """Delete temp files left by a killed writer (ours only: `.<name>.tmp-...`)."""
    removed = []
    for entry in directory.glob(f".*{TEMP_MARKER}*"):
        if entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(str(entry))
    return removed


def encode_manifest(manifest: dict) -> bytes:
    return canonical_json({"manifest": manifest, "sha256": sha256_hex(canonical_json(manifest))}) + b"\n"


def decode_manifest(data: bytes, path: Path) -> dict:
    """Parse and verify the commit point; any damage is an IntegrityError naming the file."""
    try:
        wrapper = json.loads(data)
    except (ValueError, RecursionError):
        raise IntegrityError(f"{path} is not valid JSON (truncated or damaged)") from None
    if not isinstance(wrapper, dict) or set(wrapper) != {"manifest", "sha256"} or not isinstance(wrapper["manifest"], dict):
        raise IntegrityError(f"{path} does not have the manifest's structure")
    manifest = wrapper["manifest"]
    if sha256_hex(canonical_json(manifest)) != wrapper["sha256"]:
        raise IntegrityError(f"{path} does not match its embedded sha256 (damaged)")
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest: dict, path: Path) -> None:
    def fail(what: str) -> IntegrityError:
        return IntegrityError(f"{path}: {what}")

    if manifest.get("format") != MANIFEST_FORMAT:
        raise fail(f"unknown manifest format {manifest.get('format')!r} (this node reads format {MANIFEST_FORMAT})")
    chain, history = manifest.get("chain"), manifest.get("history")
    if not isinstance(chain, list) or not chain or not isinstance(history, list):
        raise fail("chain or history missing")
    for link in chain:
        if not isinstance(link, dict) or not is_valid_version(link.get("version")) or not _is_state_hash(link.get("state_hash")):
            raise fail("a chain entry is malformed")
    if chain[-1]["version"] != manifest.get("version") or chain[-1]["state_hash"] != manifest.get("state_hash"):
        raise fail("the current version is not the last entry of the chain")
    sequence = manifest.get("applied_sequence")
    if type(sequence) is not int or sequence < 0:
        raise fail("applied_sequence is not a non-negative integer")
    for record in history:
        try:
            pipeline.check_record(record)
        except StoreError as error:
            raise fail(f"a history record is malformed ({error.message})") from None


def _is_state_hash(value: object) -> bool:
    return isinstance(value, str) and value.startswith("sha256:") and len(value) == 71


# --- the store -------------------------------------------------------------------------------


class VersionStore:
    """See the module docstring. Build it with `VersionStore.open(data_dir, genesis_state=...)`."""

    def __init__(self, data_dir: Path, *, fault_point: Callable[[str], None] | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.upgrades_dir = self.data_dir / "upgrades"
        self.versions_dir = self.upgrades_dir / "versions"
        self.cache_dir = self.upgrades_dir / "cache"
        self.state_dir = self.data_dir / "state"
        self.manifest_path = self.upgrades_dir / "manifest.json"
        self.current_version_path = self.upgrades_dir / "current_version.txt"
        self.history_path = self.upgrades_dir / "upgrade_history.json"
        self.live_state_path = self.state_dir / STATE_FILE_NAME
        self.repairs: list[str] = []          # what open() repaired, for the caller to log
        self._fault_point = fault_point or (lambda _name: None)
        self._logger = logger or _logger
        self._lock = threading.Lock()
        self._lock_descriptor: int | None = None
        self._manifest: dict = {}
        self._live_bytes = b""
        self._backup_verified_hash: str | None = None

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path, *, genesis_state: dict, fault_point: Callable[[str], None] | None = None,
             logger: logging.Logger | None = None) -> "VersionStore":
        """Create the layout on first start from `genesis_state`; on later starts verify and repair."""
        genesis_bytes, genesis_version = _check_genesis(genesis_state)
        store = cls(data_dir, fault_point=fault_point, logger=logger)
        store._make_directories()
        store._acquire_process_lock()
        try:
            with store._lock:
                store._open_locked(genesis_bytes, genesis_version)
        except OSError as error:
            store.close()
            raise StoreError(f"cannot open the store in {store.data_dir}: {error.strerror or error}") from None
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        if self._lock_descriptor is not None:
            os.close(self._lock_descriptor)  # releases the flock
            self._lock_descriptor = None

    def __enter__(self) -> "VersionStore":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _make_directories(self) -> None:
        try:
            for directory in (self.data_dir, self.upgrades_dir, self.versions_dir, self.cache_dir, self.state_dir):
                directory.mkdir(mode=0o755, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the store's directories under {self.data_dir}: {error.strerror}") from None

    def _acquire_process_lock(self) -> None:
        descriptor = os.open(self.upgrades_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreError(f"the data dir {self.data_dir} is in use by another store",
                                 hint="stop the other node using this data dir, or give this one its own") from None
            raise
        self._lock_descriptor = descriptor

    def _open_locked(self, genesis_bytes: bytes, genesis_version: str) -> None:
        for directory in (self.upgrades_dir, self.state_dir, *self._version_directories()):
            self.repairs.extend(f"removed stale temp file {name}" for name in remove_temp_files(directory))
        data = read_bounded(self.manifest_path, STORE_MANIFEST_SIZE_MAX_BYTES)
        if data is None:
            self._create_from_genesis(genesis_bytes, genesis_version)
            return
        manifest = decode_manifest(data, self.manifest_path)
        genesis_hash = "sha256:" + sha256_hex(genesis_bytes)
        if manifest.get("genesis_state_hash") != genesis_hash:
            raise ConfigError(f"the data dir {self.data_dir} was created from a different genesis state",
                              hint="give this node its own data dir, or the genesis file it was created with")
        self._manifest = manifest
        self._live_bytes = self._load_live_state(manifest)
        self._repair_derived_files()
        self._remove_unreferenced_versions()

    def _create_from_genesis(self, genesis_bytes: bytes, genesis_version: str) -> None:
        leftovers = [path.name for path in (self.current_version_path, self.history_path, self.live_state_path) if path.exists()]
        if leftovers:
            raise IntegrityError(f"{self.manifest_path} is missing but {', '.join(leftovers)} exist: the commit point was lost",
                                 hint="restore upgrades/manifest.json from a backup, or move the data dir away to start afresh")
        genesis_hash = "sha256:" + sha256_hex(genesis_bytes)
        self._write_version_state(genesis_version, genesis_bytes)
        manifest = {
            "format": MANIFEST_FORMAT, "genesis_state_hash": genesis_hash, "version": genesis_version,
            "state_hash": genesis_hash, "applied_sequence": 0, "proposal_id": None, "generation": 0,
            "upgrades_total": 0, "history": [],
            "chain": [{"version": genesis_version, "state_hash": genesis_hash, "proposal_id": None, "sequence": 0}],
        }
        self._commit(manifest)
        self._live_bytes = genesis_bytes
        self._backup_verified_hash = genesis_hash
        self._write_derived_files()

    def _load_live_state(self, manifest: dict) -> bytes:
        expected = manifest["state_hash"]
        live = self._read_state_file(self.live_state_path)
        if live is not None and "sha256:" + sha256_hex(live) == expected:
            return live
        backup = self._read_state_file(self._version_state_path(manifest["version"]))
        if backup is None or "sha256:" + sha256_hex(backup) != expected:
            raise IntegrityError(
                f"the live state {self.live_state_path} and its copy under versions/{manifest['version']}/ "
                f"both differ from the committed state hash {expected}",
                hint="restore the data dir from a backup, or resynchronize this node's state from a peer")
        what = "missing" if live is None else "different from the committed state"
        self.repairs.append(f"live state was {what}: restored from versions/{manifest['version']}/")
        self._logger.warning("store_repaired", extra={"fields": {"file": str(self.live_state_path), "was": what,
                                                                  "from": f"versions/{manifest['version']}/"}})
        write_atomic(self.live_state_path, backup, fault_point=self._fault_point)
        self._backup_verified_hash = expected
        return backup

    def _repair_derived_files(self) -> None:
        for path, expected in ((self.current_version_path, self._current_version_bytes()),
                               (self.history_path, self._history_bytes())):
            try:
                actual = read_bounded(path, STORE_MANIFEST_SIZE_MAX_BYTES)
            except IntegrityError:
                actual = None
            if actual != expected:
                self.repairs.append(f"{path.name} was {'missing' if actual is None else 'stale or damaged'}: rewritten")
                self._logger.warning("store_repaired", extra={"fields": {"file": str(path), "from": "manifest"}})
                write_atomic(path, expected, fault_point=self._fault_point)

    # -- reading ------------------------------------------------------------------------------

    @property
    def current_version(self) -> str:
        return self._manifest["version"]

    @property
    def applied_sequence(self) -> int:
        return self._manifest["applied_sequence"]

    @property
    def generation(self) -> int:
        """How many commits this data dir has seen (any kind)."""
        return self._manifest["generation"]

    @property
    def upgrades_total(self) -> int:
        return self._manifest["upgrades_total"]

    def state_hash(self) -> str:
        return self._manifest["state_hash"]

    def snapshot(self) -> tuple[str, str, bytes]:
        """(version, state_hash, canonical state bytes), taken together: never a mix of two commits."""
        with self._lock:
            return self.current_version, self.state_hash(), self._live_bytes

    def history(self) -> list[dict]:
        return json.loads(json.dumps(self._manifest["history"]))

    def chain(self) -> list[dict]:
        """The applied-version chain, oldest first, current last."""
        return [dict(link) for link in self._manifest["chain"]]

    def versions(self) -> list[str]:
        return sorted((link["version"] for link in self._manifest["chain"]), key=parse_version)

    def version_state(self, version: str) -> dict:
        """The verified backup of a version of the chain."""
        link = next((link for link in self._manifest["chain"] if link["version"] == version), None)
        if link is None:
            raise StoreError(f"version {version} has no backup on this node", hint="see versions() for those kept")
        return parse_stored_state(self._read_verified_backup(link))

    # -- committing ---------------------------------------------------------------------------

    def backup_current(self) -> Path:
        """The BACKUP step: make sure versions/<current>/ holds an intact copy of the live state."""
        with self._lock:
            try:
                return self._backup_current_locked()
            except OSError as error:
                raise StoreError(f"could not write the backup of {self.current_version}: {error.strerror or error}") from None

    def commit_upgrade(self, *, new_state: EncodedState, version: str, proposal_id: str, sequence: int, record: dict) -> None:
        """`new_state` comes from node.core.canonical.encode_state: the bytes written are the ones hashed."""
        with self._lock:
            pipeline.check_version_allowed(self.current_version, version)
            self._check_next_sequence(sequence)
            pipeline.check_record(record)
            state_bytes = _checked_state(new_state, version)
            new_hash = new_state.state_hash
            try:
                self._backup_current_locked()
                self._write_version_state(version, state_bytes)
            except OSError as error:
                raise StoreError(f"could not write the backup or the new state: {error.strerror or error}") from None
            self._fault_point("new_state_written")
            link = {"version": version, "state_hash": new_hash, "proposal_id": proposal_id, "sequence": sequence}
            manifest = {
                **self._manifest, "version": version, "state_hash": new_hash, "applied_sequence": sequence,
                "proposal_id": proposal_id, "upgrades_total": self._manifest["upgrades_total"] + 1,
                "chain": pipeline.append_bounded(self._manifest["chain"], link, length_max=STORE_CHAIN_LENGTH_MAX),
                "history": pipeline.append_bounded(self._manifest["history"], record, length_max=STORE_HISTORY_RECORDS_MAX),
            }
            self._commit(manifest)
            self._live_bytes = state_bytes
            self._backup_verified_hash = new_hash
            self._after_commit(live_state_changed=True)

    def commit_rollback(self, *, proposal_id: str, sequence: int | None, record: dict,
                        target_proposal_id: str | None = None, expected_version: str | None = None) -> tuple[str, str]:
        """Go back one entry of the chain. Returns (restored_version, previous_version)."""
        with self._lock:
            if sequence is not None:
                self._check_next_sequence(sequence)
            pipeline.check_record(record)
            plan = pipeline.choose_rollback(self._manifest["chain"], proposal_id=proposal_id, sequenced=sequence is not None,
                                            target_proposal_id=target_proposal_id, expected_version=expected_version)
            state_bytes = self._read_verified_backup(plan.restored)
            restored, previous = plan.restored["version"], plan.previous["version"]
            manifest = {
                **self._manifest, "version": restored, "state_hash": plan.restored["state_hash"],
                "applied_sequence": self.applied_sequence if sequence is None else sequence,
                "proposal_id": proposal_id, "chain": self._manifest["chain"][:-1],
                "history": pipeline.append_bounded(self._manifest["history"], record, length_max=STORE_HISTORY_RECORDS_MAX),
            }
            self._commit(manifest)
            self._live_bytes = state_bytes
            self._backup_verified_hash = plan.restored["state_hash"]
            self._after_commit(live_state_changed=True)
            return restored, previous

    def commit_failure(self, *, sequence: int, record: dict) -> None:
        """A verdict failure: the sequence is consumed (the next one may run), the state is untouched."""
        self.commit_without_state_change(sequence=sequence, record=record)

    def commit_without_state_change(self, *, sequence: int, record: dict) -> None:
        """Consume `sequence` with `record` (a failure verdict, or a rollback already in effect); the
        state and version stay as they are."""
        with self._lock:
            self._check_next_sequence(sequence)
            pipeline.check_record(record)
            self._commit({**self._manifest, "applied_sequence": sequence,
                          "history": pipeline.append_bounded(self._manifest["history"], record, length_max=STORE_HISTORY_RECORDS_MAX)})
            self._after_commit(live_state_changed=False)

    def record_failure(self, record: dict) -> None:
        """A failed attempt that consumes nothing (a local failure: the caller retries). Repeated attempts
        at the same sequence replace each other, so retries cannot push real records out of history."""
        with self._lock:
            pipeline.check_record(record)
            self._commit({**self._manifest,
                          "history": pipeline.append_attempt(self._manifest["history"], record, length_max=STORE_HISTORY_RECORDS_MAX)})
            self._after_commit(live_state_changed=False)

    # -- internals ----------------------------------------------------------------------------

    def _check_next_sequence(self, sequence: int) -> None:
        decision = pipeline.check_sequence(applied_sequence=self.applied_sequence, sequence=sequence)
        if decision is pipeline.SequenceDecision.ALREADY_APPLIED:
            raise StoreError(f"sequence {sequence} was already applied (applied sequence is {self.applied_sequence})",
                             hint="the upgrade manager returns the recorded result for an applied sequence")

    def _backup_current_locked(self) -> Path:
        path = self._version_state_path(self.current_version)
        if self._backup_verified_hash != self.state_hash():
            backup = self._read_state_file(path)
            if backup is None or "sha256:" + sha256_hex(backup) != self.state_hash():
                self._write_version_state(self.current_version, self._live_bytes)
            self._backup_verified_hash = self.state_hash()
        self._fault_point("backup_written")
        return path

    def _commit(self, manifest: dict) -> None:
        manifest = {**manifest, "generation": manifest["generation"] + 1 if self._manifest else 0}
        data = encode_manifest(manifest)
        if len(data) > STORE_MANIFEST_SIZE_MAX_BYTES:
            raise StoreError(f"the manifest would be {len(data)} bytes, more than {STORE_MANIFEST_SIZE_MAX_BYTES}",
                             hint="lower STORE_HISTORY_RECORDS_MAX or STORE_CHAIN_LENGTH_MAX")
        try:
            write_atomic(self.manifest_path, data, fault_point=self._fault_point)
        except OSError as error:
            # Indefinite: the rename may have landed before the directory fsync failed.
            raise StoreError(f"could not write {self.manifest_path}: {error.strerror or error}", definite=False) from None
        self._manifest = manifest
        self._fault_point("committed")

    def _after_commit(self, *, live_state_changed: bool) -> None:
        """Derived files: a failure here leaves the commit standing; open() repairs them."""
        try:
            self._write_derived_files(live_state_changed=live_state_changed)
            self._remove_unreferenced_versions()
        except OSError as error:
            self._logger.error("store_derived_write_failed", extra={"fields": {
                "error": str(error), "note": "the commit stands; the file is repaired at the next start"}})

    def _write_derived_files(self, *, live_state_changed: bool = True) -> None:
        """Not fsynced: open() checks each against the manifest and rebuilds it (six fsyncs of eleven per
        commit, which a machine running a hundred nodes pays in journal commits, for nothing)."""
        if live_state_changed:
            write_atomic(self.live_state_path, self._live_bytes, fault_point=self._fault_point, durable=False)
            self._fault_point("live_state_written")
            write_atomic(self.current_version_path, self._current_version_bytes(), fault_point=self._fault_point,
                         durable=False)
            self._fault_point("current_version_written")
        write_atomic(self.history_path, self._history_bytes(), fault_point=self._fault_point, durable=False)
        self._fault_point("history_written")

    def _current_version_bytes(self) -> bytes:
        return (self.current_version + "\n").encode()

    def _history_bytes(self) -> bytes:
        return (json.dumps(self._manifest["history"], indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    def _version_state_path(self, version: str) -> Path:
        assert is_valid_version(version), version  # semver has no '/' and no '..': safe as a directory name
        return self.versions_dir / version / STATE_FILE_NAME

    def _version_directories(self) -> list[Path]:
        return [path for path in self.versions_dir.iterdir() if path.is_dir()] if self.versions_dir.is_dir() else []

    def _write_version_state(self, version: str, state_bytes: bytes) -> None:
        path = self._version_state_path(version)
        if not path.parent.is_dir():
            path.parent.mkdir()
            fsync_directory(self.versions_dir)
        write_atomic(path, state_bytes, fault_point=self._fault_point)

    def _read_state_file(self, path: Path) -> bytes | None:
        try:
            return read_bounded(path, STORE_STATE_SIZE_MAX_BYTES)
        except (IntegrityError, OSError):
            return None  # unreadable counts as damaged: the caller falls back or reports it

    def _read_verified_backup(self, link: dict) -> bytes:
        data = self._read_state_file(self._version_state_path(link["version"]))
        if data is None or "sha256:" + sha256_hex(data) != link["state_hash"]:
            raise IntegrityError(f"the backup of version {link['version']} is missing or does not match its digest "
                                 f"{link['state_hash']}", hint="restore versions/ from a backup; this version cannot be restored")
        return data

    def _remove_unreferenced_versions(self) -> None:
        kept = {link["version"] for link in self._manifest["chain"]}
        for directory in self._version_directories():
            if is_valid_version(directory.name) and directory.name not in kept:
                shutil.rmtree(directory, ignore_errors=True)


def _check_genesis(genesis_state: object) -> tuple[bytes, str]:
    if not isinstance(genesis_state, dict) or not isinstance(genesis_state.get("global"), dict):
        raise ConfigError("the genesis network state must be a JSON object with a 'global' object")
    version = genesis_state["global"].get("version")
    if not is_valid_version(version):
        raise ConfigError(f"the genesis state's global.version {version!r} is not semver", hint="use e.g. '1.0.0'")
    try:
        return canonical_json(genesis_state), version
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the genesis state is not plain JSON: {error}") from None


# Immutable; Decoder methods are thread-safe since msgspec 0.15 (msgspec PR #402).
_STORED_STATE_DECODER = msgspec.json.Decoder(float_hook=float)


def parse_stored_state(data: bytes) -> dict:
    """A state a store wrote (canonical JSON, checked when it was accepted): read with msgspec, floats
    through the same float() as json.loads, the same value ~2x faster (38 against 73 ms at 100,000 nodes)."""
    return _STORED_STATE_DECODER.decode(data)


def _checked_state(encoded: EncodedState, version: str) -> bytes:
    state, data = encoded.state, encoded.data
    if not isinstance(state, dict) or not isinstance(state.get("global"), dict) or state["global"].get("version") != version:
        raise StoreError(f"the new state must be a JSON object whose global.version is {version!r}",
                         hint="check the state with node.core.pipeline.check_migration_output first")
    if len(data) > STORE_STATE_SIZE_MAX_BYTES:
        raise StoreError(f"the new state is {len(data)} bytes, more than {STORE_STATE_SIZE_MAX_BYTES}")
    return data
