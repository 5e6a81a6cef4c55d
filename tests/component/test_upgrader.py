"""The UpgradeManager with the real pieces: wasmtime Sandbox, PackageCache on disk, PackageFetcher
against a real aiohttp server, VersionStore on tmp_path.

What a user checks after each upgrade: the result, the live state and its hash, the version, the
history record (with the step that failed and why), and that a failure left everything else as it was
and still let the next upgrade run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import wasmtime

from cluster.package_server import PackageServer
from node import errors
from node.core.canonical import state_hash
from node.metrics import Metrics
from node.packages import FetchLimits, PackageCache, PackageFetcher
from node.sandbox import Sandbox, SandboxLimits
from node.store import VersionStore
from node.upgrader import UpgradeManager, UpgradeResult
from tests.integration.crash_child import set_version_wat

TEST_PACKAGES = Path(__file__).resolve().parent.parent / "packages"
NOW_MS = 1_757_932_200_000
NODES = {"00000000000000a1": {"reputation": 10, "validator": True}, "00000000000000b2": {"reputation": 5, "validator": False}}
GENESIS = {"global": {"network_id": "test", "nodes": NODES, "version": "1.0.0"}}
UNREACHABLE_URL = "http://127.0.0.1:9/never.wasm"  # discard port: nothing listens


def state_at(version: str) -> dict:
    return {"global": {**GENESIS["global"], "version": version}}


def wasm_from(source: str) -> bytes:
    """WAT text, or the name of a file in tests/packages."""
    text = (TEST_PACKAGES / source).read_text() if source.endswith(".wat") else source
    return bytes(wasmtime.wat2wasm(text))


def digest_of(wasm: bytes) -> str:
    return "sha256:" + hashlib.sha256(wasm).hexdigest()


class CountingSandbox:
    """The real sandbox, counting the packages it runs."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.runs = 0

    async def run_upgrade_async(self, wasm: bytes, state_json: bytes):
        self.runs += 1
        return await self.sandbox.run_upgrade_async(wasm, state_json)

    def compile(self, wasm: bytes):
        self.compiles = getattr(self, "compiles", 0) + 1
        return self.sandbox.compile(wasm)

    def forget(self, sha256: str) -> bool:
        return self.sandbox.forget(sha256)


class Node:
    """One node's upgrade machinery on tmp_path."""

    def __init__(self, data_dir: Path, *, limits: SandboxLimits = SandboxLimits()) -> None:
        self.data_dir = data_dir
        self.store = VersionStore.open(data_dir, genesis_state=GENESIS)
        self.cache = PackageCache(self.store.cache_dir)
        self.fetcher = PackageFetcher(self.cache, limits=FetchLimits(connect_timeout_ms=1_000, total_timeout_ms=3_000))
        self.sandbox = CountingSandbox(Sandbox(limits))
        self.manager = UpgradeManager(self.store, self.fetcher, self.sandbox, now_ms=lambda: NOW_MS)

    def seed(self, wasm: bytes) -> str:
        """Put a package in the cache, as if downloaded before: no network needed."""
        self.cache.put(hashlib.sha256(wasm).hexdigest(), wasm)
        return digest_of(wasm)

    async def upgrade(self, version: str, sequence: int, wasm: bytes | None = None, **overrides) -> UpgradeResult:
        package_hash = self.seed(wasm if wasm is not None else wasm_from(set_version_wat(version)))
        arguments = dict(proposal_id=f"up-{sequence}", version=version, package_url="https://packages.invalid/p.wasm",
                         package_hash=package_hash, package_size=None, sequence=sequence) | overrides
        return await self.manager.execute(**arguments)

    def files(self) -> dict[str, bytes]:
        """Everything but the package cache (which a download may fill) and the lock."""
        return {str(path.relative_to(self.data_dir)): path.read_bytes() for path in sorted(self.data_dir.rglob("*"))
                if path.is_file() and "cache" not in path.parts and path.name != ".lock"}

    def snapshot(self) -> tuple:
        return (self.store.current_version, self.store.state_hash(), self.store.snapshot()[2], self.store.applied_sequence)


@pytest.fixture
async def node(tmp_path):
    instance = Node(tmp_path / "node")
    yield instance
    await instance.fetcher.close()
    instance.store.close()


# --- the happy path ------------------------------------------------------------------------------


async def test_an_upgrade_runs_the_package_and_commits_the_new_state(node):
    result = await node.upgrade("1.1.0", 1)
    assert result == UpgradeResult(success=True, version="1.1.0", state_hash=state_hash(state_at("1.1.0")), error=None,
                                   sequence=1, proposal_id="up-1", fuel_consumed=result.fuel_consumed)
    assert result.fuel_consumed > 0
    assert json.loads(node.store.snapshot()[2]) == state_at("1.1.0") and node.store.current_version == "1.1.0"
    assert node.store.state_hash() == result.state_hash and node.store.applied_sequence == 1
    [record] = node.manager.history()
    assert {key: record[key] for key in ("version", "executed_at", "proposal_id", "success", "event", "sequence")} == {
        "version": "1.1.0", "executed_at": "2025-09-15T10:30:00Z", "proposal_id": "up-1", "success": True,
        "event": "upgrade", "sequence": 1}
    assert node.store.versions() == ["1.0.0", "1.1.0"]


async def test_an_execution_runs_the_package_once_and_says_so(node, caplog):
    caplog.set_level("INFO", logger="synapse.upgrader")
    metrics = Metrics()
    node.manager = UpgradeManager(node.store, node.fetcher, node.sandbox, now_ms=lambda: NOW_MS, metrics=metrics)
    assert (await node.upgrade("1.1.0", 1)).success and (await node.upgrade("1.2.0", 2)).success
    assert node.sandbox.runs == 2, "one sandbox run per execution: the checked dry-run output is what was committed"
    assert metrics.get("sandbox_runs_total") == 2 and metrics.get("upgrade_last_sandbox_runs") == 1
    executed = [record.fields for record in caplog.records if record.getMessage() == "upgrade_executed"]
    assert [fields["sandbox_runs"] for fields in executed] == [1, 1]


async def test_a_dry_run_reports_the_would_be_state_and_changes_nothing(node):
    package_hash = node.seed(wasm_from(set_version_wat("1.1.0")))
    before_files, before = node.files(), node.snapshot()
    report = await node.manager.dry_run(version="1.1.0", package_url="https://packages.invalid/p.wasm",
                                        package_hash=package_hash, package_size=None)
    assert report["success"] is True and report["version"] == "1.1.0" and report["from_version"] == "1.0.0"
    assert report["state_hash"] == state_hash(state_at("1.1.0"))
    assert report["changes"]["changed"] == ["/global/version"] and report["changes"]["total"] == 1
    assert node.files() == before_files and node.snapshot() == before and node.manager.history() == []
    result = await node.upgrade("1.1.0", 1)
    assert result.state_hash == report["state_hash"], "the dry run predicts exactly what execute commits"


async def test_memory_freed_by_a_run_is_given_back_after_each_execution_and_dry_run_even_a_failed_one(node, monkeypatch):
    released = []
    monkeypatch.setattr("node.upgrader.release_freed_memory", lambda: released.append(len(node.manager.history())))
    assert (await node.upgrade("1.1.0", 1)).success
    assert released == [1], "after the execution (its record written)"
    panic = node.seed(wasm_from("panic.wat"))
    with pytest.raises(errors.WasmTrap):
        await node.manager.dry_run(version="1.2.0", package_url="https://x.invalid/p.wasm", package_hash=panic, package_size=None)
    assert released == [1, 1]


async def test_a_dry_run_raises_the_failure_and_says_which_step(node):
    package_hash = node.seed(wasm_from("panic.wat"))
    with pytest.raises(errors.WasmTrap) as caught:
        await node.manager.dry_run(version="1.1.0", package_url="https://x.invalid/p.wasm", package_hash=package_hash,
                                   package_size=None)
    assert caught.value.pipeline_step == "dry_run" and node.manager.history() == []


async def test_each_sequence_is_applied_exactly_once(node):
    first = await node.upgrade("1.1.0", 1)
    files, runs = node.files(), node.sandbox.runs
    again = await node.upgrade("1.1.0", 1)
    assert again.already_applied is True and again.success is True
    assert (again.version, again.state_hash, again.fuel_consumed) == (first.version, first.state_hash, first.fuel_consumed)
    assert node.sandbox.runs == runs and node.files() == files
    older_than_applied = await node.upgrade("1.2.0", 1)  # whatever the caller says, sequence 1 is done
    assert older_than_applied.already_applied and older_than_applied.version == "1.1.0"


async def test_a_sequence_gap_is_refused_and_records_nothing(node):
    with pytest.raises(errors.Conflict, match="sequence 3 cannot run before sequence 1"):
        await node.upgrade("1.1.0", 3)
    assert node.manager.history() == [] and node.store.applied_sequence == 0


async def test_a_bad_proposal_id_is_refused_and_records_nothing(node):
    with pytest.raises(errors.UpgradeRefused, match="proposal_id"):
        await node.upgrade("1.1.0", 1, proposal_id="x" * 500)
    assert node.manager.history() == []


# --- verdict failures: recorded, state untouched, sequence consumed, next one runs ---------------


VERDICTS = [
    # (package, target version, error class in the record, step that failed, words of the message)
    ("panic.wat", "1.1.0", "WasmTrap", "dry_run", "unreachable"),
    ("not_an_object.wat", "1.1.0", "BadOutput", "dry_run", "array"),
    ("garbage_output.wat", "1.1.0", "BadOutput", "dry_run", "not UTF-8"),
    ("delete_members.wat", "1.2.0", "UpgradeRefused", "dry_run", "removed 2 member(s)"),
    ("wasi_import.wat", "1.1.0", "ModuleRefused", "dry_run", "wasi_snapshot_preview1"),
    (set_version_wat("1.3.0"), "1.2.0", "UpgradeRefused", "dry_run", "set global.version to '1.3.0'"),
    (set_version_wat("1.0.0"), "1.0.0", "VersionError", "check", "not greater than the current version 1.0.0"),
    (set_version_wat("0.9.0"), "0.9.0", "VersionError", "check", "not greater"),
]


@pytest.mark.parametrize("package, version, error_name, step, words", VERDICTS, ids=[v[2] + "-" + v[3] + f"-{i}" for i, v in enumerate(VERDICTS)])
async def test_a_failed_upgrade_is_recorded_leaves_the_state_untouched_and_lets_the_next_one_run(node, package, version, error_name, step, words):
    before_state, before_hash = node.store.snapshot()[2], node.store.state_hash()
    result = await node.upgrade(version, 1, wasm=wasm_from(package))
    assert result.success is False and result.error.startswith(error_name) and words in result.error
    assert (result.version, result.state_hash) == ("1.0.0", before_hash), "a result carries the node's unchanged state"
    assert node.store.snapshot()[2] == before_state and node.store.current_version == "1.0.0"
    assert (node.data_dir / "state" / "network_state.json").read_bytes() == before_state
    [record] = node.manager.history()
    assert (record["event"], record["success"], record["failed_step"], record["sequence"], record["sequence_consumed"]) == (
        "failed", False, step, 1, True)
    assert words in record["error"] and record["state_hash"] == before_hash
    assert node.store.applied_sequence == 1
    following = await node.upgrade("1.1.0", 2)
    assert following.success and json.loads(node.store.snapshot()[2]) == state_at("1.1.0")


async def test_running_out_of_fuel_is_a_verdict(tmp_path):
    node = Node(tmp_path / "node", limits=SandboxLimits(fuel=2_000_000))
    try:
        result = await node.upgrade("1.1.0", 1, wasm=wasm_from("endless_loop.wat"))
        assert not result.success and result.error.startswith("FuelExhausted")
        assert node.store.applied_sequence == 1 and node.store.current_version == "1.0.0"
    finally:
        await node.fetcher.close()
        node.store.close()


@pytest.mark.parametrize("overrides, error_name, step", [
    (dict(package_hash="sha256:xyz"), "HashFormatError", "check"),
    (dict(package_url="file:///etc/passwd", package_hash="sha256:" + "ab" * 32), "PackageSourceRefused", "download"),
])
async def test_a_malformed_certified_upgrade_fails_as_a_verdict_before_any_download(node, overrides, error_name, step):
    result = await node.upgrade("1.1.0", 1, **overrides)
    assert not result.success and result.error.startswith(error_name)
    assert node.manager.history()[-1]["failed_step"] == step and node.store.applied_sequence == 1


async def test_the_manager_verifies_the_bytes_itself_even_if_the_fetcher_does_not(node):
    class LyingFetcher:
        """A fetcher with a bug (or a tampered cache path): returns other bytes than those asked for."""

        async def fetch(self, url, package_hash, package_size=None):
            return wasm_from("delete_members.wat")

    manager = UpgradeManager(node.store, LyingFetcher(), node.sandbox, now_ms=lambda: NOW_MS)
    proposed = wasm_from(set_version_wat("1.1.0"))
    result = await manager.execute(proposal_id="up-1", version="1.1.0", package_url="https://x.invalid/p.wasm",
                                   package_hash=digest_of(proposed), package_size=None, sequence=1)
    assert not result.success and result.error.startswith("HashMismatchError") and node.sandbox.runs == 0
    assert manager.history()[-1]["failed_step"] == "verify" and node.store.current_version == "1.0.0"


# --- local failures: recorded as attempts, sequence kept, error raised, retry works --------------


async def test_a_wall_clock_interruption_is_local_and_keeps_the_sequence(tmp_path):
    node = Node(tmp_path / "node", limits=SandboxLimits(fuel=10**12, wall_timeout_ms=50))
    try:
        before = node.snapshot()
        with pytest.raises(errors.Interrupted):
            await node.upgrade("1.1.0", 1, wasm=wasm_from("endless_loop.wat"))
        assert node.snapshot() == before
        [record] = node.manager.history()
        assert (record["event"], record["sequence_consumed"], record["failed_step"]) == ("failed", False, "dry_run")
    finally:
        await node.fetcher.close()
        node.store.close()


async def test_a_disk_error_at_commit_is_local_and_changes_nothing(node, monkeypatch):
    def disk_full(**_arguments):
        raise errors.StoreError("could not write the backup or the new state: No space left on device")

    monkeypatch.setattr(node.store, "commit_upgrade", disk_full)
    before = node.snapshot()
    with pytest.raises(errors.StoreError, match="No space left"):
        await node.upgrade("1.1.0", 1)
    assert node.snapshot() == before
    assert node.manager.history()[-1]["failed_step"] == "execute"
    monkeypatch.undo()
    assert (await node.upgrade("1.1.0", 1)).success, "the same sequence runs once the disk is fixed"


# --- through a real HTTP server ------------------------------------------------------------------


@pytest.fixture
def package_server():
    """The testbed's package server (cluster/package_server.py): the one tests and scenarios share."""
    with PackageServer() as server:
        yield server


async def test_a_package_downloaded_over_http_is_verified_cached_and_applied(node, package_server):
    wasm = wasm_from(set_version_wat("1.1.0"))
    package = package_server.add("upgrade", wasm)
    result = await node.manager.execute(proposal_id="up-1", version="1.1.0", package_url=package.http_url,
                                        package_hash=digest_of(wasm), package_size=len(wasm), sequence=1)
    assert result.success and json.loads(node.store.snapshot()[2]) == state_at("1.1.0")
    assert package_server.requests("upgrade") == 1 and node.cache.get(hashlib.sha256(wasm).hexdigest()) == wasm


async def test_an_approved_package_is_warmed_up_without_running_and_its_execution_does_not_fetch_again(node, package_server):
    wasm = wasm_from(set_version_wat("1.1.0"))
    package = package_server.add("upgrade", wasm)
    before_files, before = node.files(), node.snapshot()
    fetches = []
    original_fetch = node.fetcher.fetch
    node.fetcher.fetch = lambda *args, **kwargs: (fetches.append(args[0]), original_fetch(*args, **kwargs))[1]
    arguments = dict(version="1.1.0", package_url=package.http_url, package_hash=digest_of(wasm), package_size=len(wasm))
    assert node.manager.warm_up(**arguments) and not node.manager.warm_up(**arguments)      # once per package
    assert await node.manager._warmed(hashlib.sha256(wasm).hexdigest()) == wasm
    assert node.sandbox.runs == 0 and node.sandbox.compiles == 1 and fetches == [package.http_url]
    assert node.files() == before_files and node.snapshot() == before        # nothing ran, nothing changed
    result = await node.manager.execute(proposal_id="up-1", sequence=1, **arguments)
    assert result.success and fetches == [package.http_url] and package_server.requests("upgrade") == 1
    assert node.sandbox.runs == 1


async def test_an_executed_package_is_not_kept_in_memory(node, package_server):
    """Its outcome is recorded: the warmed bytes and the compiled module go (megabytes for a large package)."""
    wasm = wasm_from(set_version_wat("1.1.0"))
    package = package_server.add("upgrade", wasm)
    arguments = dict(version="1.1.0", package_url=package.http_url, package_hash=digest_of(wasm), package_size=len(wasm))
    assert node.manager.warm_up(**arguments)
    assert await node.manager._warmed(hashlib.sha256(wasm).hexdigest()) == wasm
    compiled_before = node.sandbox.sandbox.cache_stats()["compiled"]
    assert (await node.manager.execute(proposal_id="up-1", sequence=1, **arguments)).success
    assert await node.manager._warmed(hashlib.sha256(wasm).hexdigest()) is None
    assert node.sandbox.sandbox.cache_stats()["compiled"] == compiled_before, "the execution used the warmed module"
    node.sandbox.compile(wasm)
    assert node.sandbox.sandbox.cache_stats()["compiled"] == compiled_before + 1, "no longer in memory: compiled again"


async def test_a_failed_warm_up_changes_nothing_and_the_execution_fetches_and_judges_for_itself(node, package_server, caplog):
    caplog.set_level("WARNING", logger="synapse.upgrader")
    proposed = wasm_from(set_version_wat("1.1.0"))
    package = package_server.add("upgrade", wasm_from("delete_members.wat"))  # what an attacker put at the URL
    arguments = dict(version="1.1.0", package_url=package.http_url, package_hash=digest_of(proposed), package_size=None)
    assert node.manager.warm_up(**arguments)
    assert await node.manager._warmed(hashlib.sha256(proposed).hexdigest()) is None
    assert "upgrade_warm_up_failed" in [record.getMessage() for record in caplog.records]
    assert getattr(node.sandbox, "compiles", 0) == 0 and node.store.applied_sequence == 0
    result = await node.manager.execute(proposal_id="up-1", sequence=1, **arguments)
    assert not result.success and result.error.startswith("HashMismatchError") and node.sandbox.runs == 0
    assert not node.manager.warm_up(**{**arguments, "version": "1.0.0"})      # not above the current version: no warm-up


async def test_a_hash_mismatch_from_the_server_is_a_recorded_verdict_and_nothing_is_cached(node, package_server):
    proposed = wasm_from(set_version_wat("1.1.0"))
    package = package_server.add("upgrade", wasm_from("delete_members.wat"))  # what an attacker put at the URL
    before = node.snapshot()
    result = await node.manager.execute(proposal_id="up-1", version="1.1.0", package_url=package.http_url,
                                        package_hash=digest_of(proposed), package_size=None, sequence=1)
    assert not result.success and result.error.startswith("HashMismatchError")
    assert hashlib.sha256(proposed).hexdigest() in result.error
    assert node.snapshot()[:3] == before[:3] and node.store.applied_sequence == 1
    assert node.manager.history()[-1]["failed_step"] == "download" and node.sandbox.runs == 0
    assert list(node.store.cache_dir.glob("*.wasm")) == []


async def test_an_unreachable_package_is_retried_without_losing_the_sequence(node, package_server):
    wasm = wasm_from(set_version_wat("1.1.0"))
    package = package_server.add("upgrade", wasm)
    package_server.set_available("upgrade", False)  # it answers 503
    arguments = dict(proposal_id="up-1", version="1.1.0", package_url=package.http_url, package_hash=digest_of(wasm),
                     package_size=None, sequence=1)
    for _attempt in range(3):
        with pytest.raises(errors.PackageFetchError, match="503"):
            await node.manager.execute(**arguments)
    assert node.store.applied_sequence == 0 and node.store.current_version == "1.0.0"
    [attempt] = node.manager.history()  # three attempts, one record: retries cannot flood history
    assert (attempt["sequence_consumed"], attempt["failed_step"]) == (False, "download")
    package_server.set_available("upgrade", True)
    result = await node.manager.execute(**arguments)
    assert result.success and node.store.applied_sequence == 1
    assert [record["event"] for record in node.manager.history()] == ["failed", "upgrade"]


async def test_a_version_not_greater_is_refused_before_any_download(node, package_server):
    wasm = wasm_from(set_version_wat("1.0.0"))
    package = package_server.add("upgrade", wasm)
    result = await node.manager.execute(proposal_id="up-1", version="1.0.0", package_url=package.http_url,
                                        package_hash=digest_of(wasm), package_size=None, sequence=1)
    assert not result.success and result.error.startswith("VersionError") and package_server.requests("upgrade") == 0


# --- rollback ------------------------------------------------------------------------------------


async def test_a_local_rollback_restores_the_previous_version_of_the_chain(node):
    await node.upgrade("1.1.0", 1)
    await node.upgrade("1.2.0", 2)
    response = await node.manager.rollback(proposal_id="up-2")
    assert {key: response[key] for key in ("message", "restored_version", "previous_version")} == {
        "message": "Rollback completed", "restored_version": "1.1.0", "previous_version": "1.2.0"}
    assert json.loads(node.store.snapshot()[2]) == state_at("1.1.0") and response["state_hash"] == state_hash(state_at("1.1.0"))
    assert node.store.applied_sequence == 2
    record = node.manager.history()[-1]
    assert (record["event"], record["version"], record["from_version"]) == ("rollback", "1.1.0", "1.2.0")
    await node.manager.rollback(proposal_id="up-1")
    assert json.loads(node.store.snapshot()[2]) == GENESIS


async def test_a_refused_local_rollback_changes_and_records_nothing(node):
    await node.upgrade("1.1.0", 1)
    await node.upgrade("1.2.0", 2)
    files = node.files()
    with pytest.raises(errors.RollbackError, match="up-1 \\(version 1.1.0\\) is not the latest applied upgrade"):
        await node.manager.rollback(proposal_id="up-1")
    with pytest.raises(errors.RollbackError, match="no applied upgrade"):
        await node.manager.rollback(proposal_id="typo")
    assert node.files() == files


async def test_rollback_past_the_first_version_is_refused(node):
    with pytest.raises(errors.RollbackError, match="first version"):
        await node.manager.rollback(proposal_id="anything")
    assert node.manager.history() == []


async def test_a_network_rollback_is_sequenced_and_applied_exactly_once(node):
    await node.upgrade("1.1.0", 1)
    response = await node.manager.rollback(proposal_id="rb-2", sequence=2, target_proposal_id="up-1", version="1.0.0")
    assert response["restored_version"] == "1.0.0" and node.store.applied_sequence == 2
    files = node.files()
    again = await node.manager.rollback(proposal_id="rb-2", sequence=2)
    assert again["already_applied"] and again["restored_version"] == "1.0.0" and node.files() == files
    executed_twice = await node.upgrade("1.1.0", 2)
    assert executed_twice.already_applied and executed_twice.version == "1.0.0"


async def test_a_network_rollback_this_chain_cannot_do_is_a_recorded_verdict(node):
    await node.upgrade("1.1.0", 1)
    before = node.snapshot()
    with pytest.raises(errors.RollbackError, match="expects to restore version 0.5.0"):
        await node.manager.rollback(proposal_id="rb-2", sequence=2, version="0.5.0")
    assert node.snapshot()[:3] == before[:3] and node.store.applied_sequence == 2
    record = node.manager.history()[-1]
    assert (record["event"], record["sequence"], record["sequence_consumed"]) == ("failed", 2, True)
    replay = await node.manager.rollback(proposal_id="rb-2", sequence=2, version="0.5.0")
    assert replay["message"] == "Rollback failed" and replay["already_applied"]


async def test_a_network_rollback_the_operator_already_did_here_is_a_successful_no_op(node):
    await node.upgrade("1.1.0", 1)
    await node.manager.rollback(proposal_id="up-1")                 # the operator, before the network decides
    files_before = node.files()
    response = await node.manager.rollback(proposal_id="rb-2", sequence=2, target_proposal_id="up-1", version="1.0.0")
    assert (response["message"], response["restored_version"]) == ("Rollback already in effect", "1.0.0")
    assert response["state_hash"] == state_hash(GENESIS) and json.loads(node.store.snapshot()[2]) == GENESIS
    assert node.store.applied_sequence == 2
    record = node.manager.history()[-1]
    assert (record["event"], record["success"], record["sequence"]) == ("rollback", True, 2)
    assert node.files() != files_before                              # the sequence and its record were committed
    again = await node.manager.rollback(proposal_id="rb-2", sequence=2, target_proposal_id="up-1", version="1.0.0")
    assert again["already_applied"] and again["restored_version"] == "1.0.0"


async def test_a_network_rollback_to_another_version_is_not_mistaken_for_one_already_done(node):
    await node.upgrade("1.1.0", 1)
    await node.upgrade("1.2.0", 2)
    await node.manager.rollback(proposal_id="up-2")                 # local: now on 1.1.0
    with pytest.raises(errors.RollbackError):                       # the network undoes up-2 expecting 1.0.0
        await node.manager.rollback(proposal_id="rb-3", sequence=3, target_proposal_id="up-2", version="1.0.0")
    assert node.store.current_version == "1.1.0"


# --- status and results --------------------------------------------------------------------------


async def test_status_has_the_spec_fields_and_the_state_hash(node):
    await node.upgrade("1.1.0", 1)
    status = node.manager.status()
    assert {key: status[key] for key in ("system_available", "current_version", "total_upgrades", "wasm_available",
                                         "ipfs_available")} == {
        "system_available": True, "current_version": "1.1.0", "total_upgrades": 1, "wasm_available": True,
        "ipfs_available": False}
    assert status["state_hash"] == state_hash(state_at("1.1.0")) and status["applied_sequence"] == 1


def test_an_upgrade_result_is_consistent_by_construction():
    with pytest.raises(AssertionError):
        UpgradeResult(success=True, version="1.0.0", state_hash="h", error="but an error", sequence=1, proposal_id="p",
                      fuel_consumed=None)
    with pytest.raises(AssertionError):
        UpgradeResult(success=False, version="1.0.0", state_hash="h", error=None, sequence=1, proposal_id="p", fuel_consumed=None)
    ok = UpgradeResult(success=True, version="1.0.0", state_hash="h", error=None, sequence=1, proposal_id="p", fuel_consumed=3)
    assert ok.to_dict()["already_applied"] is False
