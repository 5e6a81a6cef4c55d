"""The upgrade manager: the I/O shell around node.core.pipeline's decisions.

Pipeline of one upgrade (node.core.pipeline.Step, one transition table there):
check -> download -> verify -> dry_run -> backup -> execute -> record; any step -> failed.
"execute" is VersionStore.commit_upgrade (new state, then the one atomic commit point, then the
derived files); "record" is reached once that returned: the history record is committed with it.

Why it works as it does:
- Exactly once per sequence. `execute(sequence=n)` with n <= the store's applied sequence does nothing
  and returns the recorded result (`already_applied=True`); n beyond the next one is refused (Conflict),
  so upgrades apply strictly in order. A manager lock serializes execute/rollback on this node.
- Every failure leaves the live state and version untouched, and is recorded in history with its step
  and reason. What happens to the sequence depends on the failure's class (pipeline.classify_failure):
  a VERDICT (hash or size mismatch, refused module, trap, fuel/memory exhaustion, bad output, broken
  invariant, version not greater) is the same on every honest node, so the failure is committed as
  "applied" (the sequence advances, the next one can run) and returned as UpgradeResult(success=False);
  a LOCAL failure (URL unreachable, wall-clock interruption, disk error, an unexpected bug) may not
  happen elsewhere, so the attempt is recorded WITHOUT consuming the sequence and the error is raised:
  the caller retries later. A network therefore never skips an upgrade because one node had a bad day.
- Execute reuses the dry-run's output instead of running the package twice. The sandbox is
  deterministic (fuel, no imports, NaN canonicalization), the input is the same canonical bytes (the
  live state cannot change in between: the manager lock is held), so a second run could only produce
  the same state, at twice the cost, plus a window where a wall-clock interruption or memory pressure
  could fail the second run after the first passed. So: the dry-run's checked output IS what execute
  commits; "execute" is the atomic commit of that state (node.store documents the commit protocol).
  Each run counts its sandbox calls: the `upgrade_executed` log line says `sandbox_runs` (1), and
  /metrics has `synapse_sandbox_runs_total` and `synapse_upgrade_last_sandbox_runs`.
- Blocking work (fsync, hashing megabytes, JSON of big states) runs in worker threads, each awaited with
  a timeout. A store call that times out cannot be cancelled (a half-abandoned commit would race the
  next one), so it is left to finish and every later operation is refused (errors.Unavailable) until
  it has.
- Results carry the node's version and state hash AFTER the operation: exactly what an
  EXECUTION_REPORT publishes so nodes can compare.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

from node.core import pipeline
from node.core.canonical import EncodedState, encode_state, normalize_sha256, sha256_hex
from node.core.pipeline import FailureKind, SequenceDecision, Step
from node.core.semver import is_valid_version
from node.errors import PackageFetchError, RollbackError, StoreError, SynapseError, Unavailable
from node.metrics import Metrics
from node.native_memory import release_freed_memory
from node.sandbox import UpgradeOutput
from node.store import VersionStore, parse_stored_state
from node.limits import (UPGRADE_COMPUTE_TIMEOUT_MS, UPGRADE_FETCH_TIMEOUT_MS, UPGRADE_INLINE_HASH_BYTES_MAX,
                         UPGRADE_INLINE_STATE_BYTES_MAX, UPGRADE_STORE_TIMEOUT_MS, UPGRADE_WARM_PACKAGES_MAX)



@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeResult:
    success: bool
    version: str          # the node's version after the operation (unchanged on failure)
    state_hash: str       # the node's state hash after the operation
    error: str | None     # one line, for a failed upgrade
    sequence: int
    proposal_id: str
    fuel_consumed: int | None
    already_applied: bool = False  # the sequence had been applied before: nothing was done now

    def __post_init__(self) -> None:
        if not isinstance(self.success, bool) or (self.error is None) != self.success:
            raise AssertionError("an UpgradeResult has an error exactly when it failed")
        if not is_valid_version(self.version) or type(self.sequence) is not int or self.sequence < 1:
            raise AssertionError(f"bad UpgradeResult version/sequence: {self.version!r} {self.sequence!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prepared:
    """What the dry run established: the checked new state, ready to commit."""

    from_version: str
    from_state_hash: str
    old_state: dict
    new: EncodedState       # the new state, its canonical JSON (what the store writes) and its hash
    fuel_consumed: int
    output_size_bytes: int


class _Run:
    """The step one pipeline run is at (moves only through pipeline.next_step), how many times it ran
    the package (one run per execution is the contract: node.upgrader's docstring), and how long each
    step took (logged with the outcome: where an upgrade's time went on this node)."""

    __slots__ = ("step", "sandbox_runs", "steps_ms", "_now_ms", "_since_ms")

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self.step = Step.START
        self.sandbox_runs = 0
        self.steps_ms: dict[str, int] = {}
        self._now_ms = now_ms
        self._since_ms = now_ms()

    def advance(self, target: Step) -> None:
        self.step, previous = pipeline.next_step(self.step, target), self.step
        now_ms = self._now_ms()
        if previous is not Step.START:
            self.steps_ms[previous.value] = self.steps_ms.get(previous.value, 0) + now_ms - self._since_ms
        self._since_ms = now_ms


class UpgradeManager:
    def __init__(self, store: VersionStore, fetcher, sandbox, *, now_ms: Callable[[], int], logger: logging.Logger | None = None,
                 fetch_timeout_ms: int = UPGRADE_FETCH_TIMEOUT_MS, store_timeout_ms: int = UPGRADE_STORE_TIMEOUT_MS,
                 metrics: Metrics | None = None) -> None:
        """`metrics`: where the package fetch and sandbox run durations are observed (a node's registry)."""
        self._metrics = metrics if metrics is not None else Metrics()
        self._store = store
        self._fetcher = fetcher
        self._sandbox = sandbox
        self._now_ms = now_ms
        self._logger = logger or logging.getLogger("synapse.upgrader")
        self._fetch_timeout_ms = fetch_timeout_ms
        self._store_timeout_ms = store_timeout_ms
        self._lock = asyncio.Lock()
        self._unfinished_store_call: asyncio.Future | None = None
        self._warm: OrderedDict[str, asyncio.Task] = OrderedDict()     # package digest -> fetch + compile

    # -- public operations ----------------------------------------------------------------------

    async def dry_run(self, *, version: str, package_url: str, package_hash: str, package_size: int | None) -> dict:
        """Download, verify and run the package on a copy of the live state; change nothing. Raises the
        failure (with `error.pipeline_step` set to the step that failed)."""
        try:
            return await self._dry_run(version=version, package_url=package_url, package_hash=package_hash,
                                       package_size=package_size)
        finally:
            release_freed_memory()    # the run's store, instance and states: megabytes a node would keep

    async def _dry_run(self, *, version: str, package_url: str, package_hash: str, package_size: int | None) -> dict:
        run = _Run(self._now_ms)
        try:
            prepared = await self._prepare(run, version=version, package_url=package_url,
                                           package_hash=package_hash, package_size=package_size)
            changes = await self._in_thread(pipeline.state_changes, prepared.old_state, prepared.new.state,
                                            timeout_ms=UPGRADE_COMPUTE_TIMEOUT_MS, what="comparing the states")
        except Exception as error:
            _tag_step(error, run.step)
            raise
        self._log("info", "upgrade_dry_run", version=version, state_hash=prepared.new.state_hash,
                  fuel_consumed=prepared.fuel_consumed, changes=changes["total"], sandbox_runs=run.sandbox_runs)
        return {"success": True, "version": version, "from_version": prepared.from_version,
                "state_hash": prepared.new.state_hash, "fuel_consumed": prepared.fuel_consumed,
                "output_size_bytes": prepared.output_size_bytes, "changes": changes}

    def warm_up(self, *, version: str, package_url: str, package_hash: str, package_size: int | None) -> bool:
        """Start fetching, verifying and compiling an approved upgrade's package in the background, once
        per package, so that its execution does not wait for them when the certificate arrives (the
        ratification takes a second or more while a cluster is busy). Runs nothing in the sandbox and
        changes no state; a failure is only logged (the execution fetches again). True if started."""
        try:
            digest = pipeline.check_upgrade_request(current_version=self._store.current_version, version=version,
                                                    package_hash=package_hash)
        except SynapseError:
            return False
        if digest in self._warm or self._sandbox is None:
            return False
        while len(self._warm) >= UPGRADE_WARM_PACKAGES_MAX:
            _, oldest = self._warm.popitem(last=False)
            oldest.cancel()
        self._warm[digest] = asyncio.get_running_loop().create_task(self._warm_package(package_url, digest, package_size),
                                                                    name=f"warm-{digest[:12]}")
        return True

    async def _warm_package(self, package_url: str, digest: str, package_size: int | None) -> bytes | None:
        started_ms = self._now_ms()
        try:
            wasm = await self._fetch(package_url, digest, package_size)
            await self._verify_package(wasm, digest)
            refusals = await self._in_thread(self._sandbox.compile, wasm, timeout_ms=UPGRADE_COMPUTE_TIMEOUT_MS,
                                             what="compiling the package")
        except Exception as error:      # the execution tries again, and reports what fails then
            self._metrics.inc("upgrade_warmups_total", result="failed")
            detail = error.one_line() if isinstance(error, SynapseError) else f"{type(error).__name__}: {error}"
            self._log("warning", "upgrade_warm_up_failed", package_hash=digest, error=detail[:500])
            return None
        self._metrics.inc("upgrade_warmups_total", result="refused" if refusals else "ok")
        self._log("info", "upgrade_warmed_up", package_hash=digest, refused=bool(refusals), took_ms=self._now_ms() - started_ms)
        return wasm

    async def _warmed(self, digest: str) -> bytes | None:
        """The warmed package's bytes (waiting for a warm-up under way), or None."""
        task = self._warm.get(digest)
        if task is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._fetch_timeout_ms / 1000)
        except TimeoutError:
            return None
        except asyncio.CancelledError:          # the warm-up was evicted by a newer one, or this call is cancelled
            if task.cancelled() and not asyncio.current_task().cancelling():
                return None
            raise

    async def execute(self, *, proposal_id: str, version: str, package_url: str, package_hash: str,
                      package_size: int | None, sequence: int) -> UpgradeResult:
        """Run the pipeline for upgrade number `sequence`. Returns the result (success or a verdict
        failure, both recorded); raises a LOCAL failure after recording the attempt (retry later),
        Conflict for a sequence gap, UpgradeRefused for a malformed proposal id or sequence."""
        try:
            result = await self._execute(proposal_id=proposal_id, version=version, package_url=package_url,
                                         package_hash=package_hash, package_size=package_size, sequence=sequence)
            self._forget_package(package_hash)
            return result
        finally:
            release_freed_memory()    # the run's store, instance and states: megabytes a node would keep

    def _forget_package(self, package_hash: str) -> None:
        """The upgrade's outcome is recorded, so nothing runs its package again for it: drop the warmed
        bytes and the compiled module this node kept in memory (a later run of the same package, a dry
        run or a new proposal, reads them back from the disk caches in about a millisecond)."""
        digest = normalize_sha256(package_hash)
        if digest is None:
            return
        warm = self._warm.pop(digest, None)
        if warm is not None:
            warm.cancel()                        # a no-op once it is done; its bytes go with the task
        if self._sandbox is not None:
            self._sandbox.forget(digest)

    async def _execute(self, *, proposal_id: str, version: str, package_url: str, package_hash: str,
                       package_size: int | None, sequence: int) -> UpgradeResult:
        pipeline.check_proposal_id(proposal_id)
        async with self._lock:
            self._refuse_while_store_busy()
            decision = pipeline.check_sequence(applied_sequence=self._store.applied_sequence, sequence=sequence)
            if decision is SequenceDecision.ALREADY_APPLIED:
                return self._recorded_result(sequence, proposal_id)
            run = _Run(self._now_ms)
            try:
                prepared = await self._prepare(run, version=version, package_url=package_url,
                                               package_hash=package_hash, package_size=package_size)
                await self._commit_upgrade(run, prepared, proposal_id=proposal_id, version=version, sequence=sequence)
            except Exception as error:
                return await self._fail(run, error, proposal_id=proposal_id, version=version, sequence=sequence)
            self._metrics.set("upgrade_last_sandbox_runs", run.sandbox_runs)
            self._log("info", "upgrade_executed", proposal_id=proposal_id, sequence=sequence, version=version,
                      from_version=prepared.from_version, state_hash=prepared.new.state_hash,
                      fuel_consumed=prepared.fuel_consumed, sandbox_runs=run.sandbox_runs, steps_ms=run.steps_ms)
            return UpgradeResult(success=True, version=version, state_hash=prepared.new.state_hash, error=None,
                                 sequence=sequence, proposal_id=proposal_id, fuel_consumed=prepared.fuel_consumed)

    async def rollback(self, *, proposal_id: str, sequence: int | None = None, target_proposal_id: str | None = None,
                       version: str | None = None) -> dict:
        """Restore the previous version of the applied chain.

        Local (sequence None, the spec's POST /upgrades/{proposal_id}/rollback): `proposal_id` names the
        upgrade to undo, which must be the latest applied one; a refusal changes and records nothing.
        Network (sequence n, from an EXECUTE_UPGRADE with action "rollback"): `proposal_id` is the
        rollback proposal; `target_proposal_id` and `version` (the version to restore), when given, must
        match this node's chain. A refusal is a verdict: recorded, the sequence consumed, then raised."""
        pipeline.check_proposal_id(proposal_id)
        async with self._lock:
            self._refuse_while_store_busy()
            if sequence is not None:
                decision = pipeline.check_sequence(applied_sequence=self._store.applied_sequence, sequence=sequence)
                if decision is SequenceDecision.ALREADY_APPLIED:
                    return self._recorded_rollback(sequence)
                if pipeline.rollback_already_in_effect(self._store.chain(), self._store.history(),
                                                       target_proposal_id=target_proposal_id, expected_version=version):
                    return await self._commit_rollback_in_effect(proposal_id=proposal_id, sequence=sequence,
                                                                 target_proposal_id=target_proposal_id)
            try:
                plan = pipeline.choose_rollback(self._store.chain(), proposal_id=proposal_id, sequenced=sequence is not None,
                                                target_proposal_id=target_proposal_id, expected_version=version)
            except RollbackError as error:
                if sequence is not None:
                    await self._record_refused_rollback(error, proposal_id=proposal_id, sequence=sequence)
                raise
            return await self._commit_rollback(plan, proposal_id=proposal_id, sequence=sequence,
                                               target_proposal_id=target_proposal_id, version=version)

    def status(self) -> dict:
        """The spec's GET /upgrades/status, plus what a peer needs to compare: state hash and sequence."""
        return {
            "system_available": self._unfinished_store_call is None or self._unfinished_store_call.done(),
            "current_version": self._store.current_version,
            "total_upgrades": self._store.upgrades_total,
            "wasm_available": self._sandbox is not None,
            "ipfs_available": bool(getattr(self._fetcher, "ipfs_gateways", ())),
            "state_hash": self._store.state_hash(),
            "applied_sequence": self._store.applied_sequence,
            "versions": self._store.versions(),
            "busy": self._lock.locked(),
        }

    def history(self) -> list[dict]:
        return self._store.history()

    # -- the pipeline ---------------------------------------------------------------------------

    async def _prepare(self, run: _Run, *, version: str, package_url: str, package_hash: str,
                       package_size: int | None) -> _Prepared:
        from_version, from_state_hash, state_bytes = self._store.snapshot()
        run.advance(Step.CHECK)
        digest = pipeline.check_upgrade_request(current_version=from_version, version=version, package_hash=package_hash)
        run.advance(Step.DOWNLOAD)
        wasm = await self._warmed(digest) or await self._fetch(package_url, digest, package_size)
        run.advance(Step.VERIFY)
        await self._verify_package(wasm, digest)
        run.advance(Step.DRY_RUN)
        run.sandbox_runs += 1
        self._metrics.inc("sandbox_runs_total")
        started_ms = self._now_ms()
        try:
            output = await self._sandbox.run_upgrade_async(wasm, state_bytes)
        except Exception:
            self._observe_since("sandbox_run_seconds", started_ms, result="failed")
            raise
        self._observe_since("sandbox_run_seconds", started_ms, result="ok")
        small = len(state_bytes) + output.output_size_bytes <= UPGRADE_INLINE_STATE_BYTES_MAX
        old_state, new = await self._in_thread(_judge_output, state_bytes, output, version, inline=small,
                                               timeout_ms=UPGRADE_COMPUTE_TIMEOUT_MS, what="checking the new state")
        return _Prepared(from_version=from_version, from_state_hash=from_state_hash, old_state=old_state, new=new,
                         fuel_consumed=output.fuel_consumed, output_size_bytes=output.output_size_bytes)

    async def _commit_upgrade(self, run: _Run, prepared: _Prepared, *, proposal_id: str, version: str, sequence: int) -> None:
        def backup_then_commit() -> None:     # one trip to a thread: on a busy machine each trip waits for a CPU
            run.advance(Step.BACKUP)
            self._store.backup_current()
            run.advance(Step.EXECUTE)
            record = pipeline.build_upgrade_record(now_ms=self._now_ms(), version=version, from_version=prepared.from_version,
                                                   proposal_id=proposal_id, sequence=sequence,
                                                   state_hash=prepared.new.state_hash, fuel_consumed=prepared.fuel_consumed)
            self._store.commit_upgrade(new_state=prepared.new, version=version, proposal_id=proposal_id,
                                       sequence=sequence, record=record)
        await self._store_call(backup_then_commit)
        run.advance(Step.RECORD)

    async def _verify_package(self, wasm: bytes, digest: str) -> None:
        """The bytes' sha256 is the proposal's (HashMismatchError otherwise): for an execution, a dry run or a warm-up."""
        actual = await self._in_thread(sha256_hex, wasm, timeout_ms=UPGRADE_COMPUTE_TIMEOUT_MS, what="hashing the package",
                                       inline=len(wasm) <= UPGRADE_INLINE_HASH_BYTES_MAX)
        pipeline.check_package_digest(actual_sha256=actual, expected_sha256=digest)

    async def _fetch(self, package_url: str, digest: str, package_size: int | None) -> bytes:
        started_ms = self._now_ms()
        try:
            wasm = await asyncio.wait_for(self._fetcher.fetch(package_url, digest, package_size), self._fetch_timeout_ms / 1000)
        except TimeoutError:
            self._observe_since("package_fetch_seconds", started_ms, result="failed")
            raise PackageFetchError(f"the package download did not finish within {self._fetch_timeout_ms} ms") from None
        except Exception:
            self._observe_since("package_fetch_seconds", started_ms, result="failed")
            raise
        self._observe_since("package_fetch_seconds", started_ms, result="ok")
        return wasm

    def _observe_since(self, histogram: str, started_ms: int, **labels: str) -> None:
        self._metrics.observe(histogram, (self._now_ms() - started_ms) / 1000, **labels)

    async def _fail(self, run: _Run, error: Exception, *, proposal_id: str, version: str, sequence: int) -> UpgradeResult:
        failed_step = run.step
        run.advance(Step.FAILED)
        kind = pipeline.classify_failure(error)
        current_version, current_hash, _ = self._store.snapshot()
        record = pipeline.build_failure_record(
            now_ms=self._now_ms(), version=version if is_valid_version(version) else current_version,
            current_version=current_version, proposal_id=proposal_id, sequence=sequence,
            sequence_consumed=kind is FailureKind.VERDICT, state_hash=current_hash, step=failed_step, error=error)
        _tag_step(error, failed_step)
        if kind is FailureKind.LOCAL:
            await self._record_attempt(record)
            self._log("warning", "upgrade_attempt_failed", proposal_id=proposal_id, sequence=sequence, version=str(version)[:64],
                      step=failed_step.value, error=record["error"], retry=True)
            raise error
        await self._store_call(self._store.commit_failure, sequence=sequence, record=record)
        self._log("error", "upgrade_failed", proposal_id=proposal_id, sequence=sequence, version=str(version)[:64],
                  step=failed_step.value, error=record["error"])
        return UpgradeResult(success=False, version=current_version, state_hash=current_hash, error=record["error"],
                             sequence=sequence, proposal_id=proposal_id, fuel_consumed=None)

    async def _record_attempt(self, record: dict) -> None:
        """Best effort: a local failure is raised anyway; not being able to record it must not hide it."""
        try:
            await self._store_call(self._store.record_failure, record)
        except SynapseError as store_error:
            self._log("error", "upgrade_attempt_not_recorded", error=store_error.one_line())

    # -- rollback -------------------------------------------------------------------------------

    async def _commit_rollback(self, plan: pipeline.RollbackPlan, *, proposal_id: str, sequence: int | None,
                               target_proposal_id: str | None, version: str | None) -> dict:
        restored, previous = plan.restored["version"], plan.previous["version"]
        record = pipeline.build_rollback_record(now_ms=self._now_ms(), restored_version=restored, previous_version=previous,
                                                proposal_id=proposal_id, sequence=sequence, state_hash=plan.restored["state_hash"])
        try:
            restored, previous = await self._store_call(
                self._store.commit_rollback, proposal_id=proposal_id, sequence=sequence, record=record,
                target_proposal_id=target_proposal_id, expected_version=version)
        except StoreError as error:
            if sequence is not None:  # local (a damaged backup, a disk error): the network rollback is retried
                current_version, current_hash, _ = self._store.snapshot()
                await self._record_attempt(pipeline.build_failure_record(
                    now_ms=self._now_ms(), version=restored, current_version=current_version, proposal_id=proposal_id,
                    sequence=sequence, sequence_consumed=False, state_hash=current_hash, step=Step.EXECUTE, error=error))
            raise
        self._log("info", "rollback_completed", proposal_id=proposal_id, sequence=sequence, restored_version=restored,
                  previous_version=previous, state_hash=self._store.state_hash())
        return {"message": "Rollback completed", "restored_version": restored, "previous_version": previous,
                "state_hash": self._store.state_hash(), "sequence": sequence, "already_applied": False}

    async def _commit_rollback_in_effect(self, *, proposal_id: str, sequence: int, target_proposal_id: str) -> dict:
        version, state_hash, _ = self._store.snapshot()
        record = pipeline.build_rollback_in_effect_record(now_ms=self._now_ms(), version=version, proposal_id=proposal_id,
                                                          sequence=sequence, state_hash=state_hash,
                                                          target_proposal_id=target_proposal_id)
        await self._store_call(self._store.commit_without_state_change, sequence=sequence, record=record)
        self._log("info", "rollback_already_in_effect", proposal_id=proposal_id, sequence=sequence,
                  target_proposal_id=target_proposal_id, version=version, state_hash=state_hash)
        return {"message": "Rollback already in effect", "restored_version": version, "previous_version": version,
                "state_hash": state_hash, "sequence": sequence, "already_applied": False}

    async def _record_refused_rollback(self, error: RollbackError, *, proposal_id: str, sequence: int) -> None:
        current_version, current_hash, _ = self._store.snapshot()
        record = pipeline.build_failure_record(
            now_ms=self._now_ms(), version=current_version, current_version=current_version, proposal_id=proposal_id,
            sequence=sequence, sequence_consumed=True, state_hash=current_hash, step=Step.CHECK, error=error)
        await self._store_call(self._store.commit_failure, sequence=sequence, record=record)
        self._log("error", "rollback_failed", proposal_id=proposal_id, sequence=sequence, error=record["error"])

    # -- already applied ------------------------------------------------------------------------

    def _recorded_result(self, sequence: int, proposal_id: str) -> UpgradeResult:
        record = pipeline.find_record(self._store.history(), sequence)
        if record is None:
            return UpgradeResult(
                success=False, version=self._store.current_version, state_hash=self._store.state_hash(), sequence=sequence,
                proposal_id=proposal_id, fuel_consumed=None, already_applied=True,
                error=f"sequence {sequence} was applied before the oldest record this node keeps; see the execution log")
        success = bool(record["success"])
        return UpgradeResult(
            success=success, version=record["version"] if success else record["from_version"], state_hash=record["state_hash"],
            error=None if success else (record["error"] or "failed"), sequence=sequence,
            proposal_id=record["proposal_id"] or proposal_id, fuel_consumed=record["fuel_consumed"], already_applied=True)

    def _recorded_rollback(self, sequence: int) -> dict:
        record = pipeline.find_record(self._store.history(), sequence)
        if record is None or not record["success"]:
            return {"message": "Rollback failed" if record else f"sequence {sequence} was applied before the oldest record kept",
                    "restored_version": None, "previous_version": record["from_version"] if record else None,
                    "error": record["error"] if record else None, "sequence": sequence, "already_applied": True}
        return {"message": "Rollback completed", "restored_version": record["version"], "previous_version": record["from_version"],
                "state_hash": record["state_hash"], "sequence": sequence, "already_applied": True}

    # -- threads, timeouts, logs ----------------------------------------------------------------

    def _refuse_while_store_busy(self) -> None:
        if self._unfinished_store_call is not None and not self._unfinished_store_call.done():
            raise Unavailable("a previous disk write of the version store has not finished",
                              hint="check the node's disk; retry when GET /upgrades/status says system_available")

    async def _store_call(self, function: Callable, /, *args, **kwargs):
        self._refuse_while_store_busy()
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._store_timeout_ms / 1000)
        except (TimeoutError, asyncio.CancelledError) as error:
            self._unfinished_store_call = future
            future.add_done_callback(_consume_outcome)
            if isinstance(error, asyncio.CancelledError):
                raise
            raise StoreError(f"a version store write did not finish within {self._store_timeout_ms} ms", definite=False,
                             hint="the write may still complete; check GET /upgrades/status before retrying") from None

    async def _in_thread(self, function: Callable, /, *args, timeout_ms: int, what: str, inline: bool = False):
        """`function(*args)` in a thread, bounded by `timeout_ms`; on the event loop when `inline` (work on
        small inputs: a trip to a thread and back costs more than the work itself on a busy machine)."""
        if inline:
            return function(*args)
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args))
        try:
            return await asyncio.wait_for(future, timeout_ms / 1000)
        except TimeoutError:
            raise Unavailable(f"{what} took more than {timeout_ms} ms", hint="the node is overloaded; retry later") from None

    def _log(self, level: str, event: str, **fields) -> None:
        getattr(self._logger, level)(event, extra={"fields": fields})


def _judge_output(state_bytes: bytes, output: UpgradeOutput, version: str) -> tuple[dict, EncodedState]:
    """Off the event loop: read the old state, check the invariants, encode and hash the new state once
    (the store writes these bytes)."""
    old_state = parse_stored_state(state_bytes)
    pipeline.check_migration_output(old_state, output.state, version)
    return old_state, encode_state(output.state, float_free=output.float_free)


def _tag_step(error: BaseException, step: Step) -> None:
    """Say which pipeline step failed, for the API's error body; never overwrite an inner tag."""
    if not hasattr(error, "pipeline_step"):
        try:
            error.pipeline_step = step.value
        except AttributeError:
            pass


def _consume_outcome(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
