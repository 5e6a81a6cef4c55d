"""The upgrade executor (every node): applies certified EXECUTE_UPGRADEs in sequence order, exactly once,
and publishes one EXECUTION_REPORT per verdict.

Why it works as it does:
- Every node executes, and trusts no publisher. An EXECUTE_UPGRADE counts only with a valid majority
  certificate over (network, proposal, action, package hash, version, counted votes, sequence) from the
  GENESIS validator set (checked again right before applying).
- Strictly in sequence order (next = the store's applied_sequence + 1; later ones wait), exactly once
  (the store's manifest is the commit point), as soon as they are visible: the log fold wakes it; a
  sweep every few seconds is only a safety net. Serialized: an overlapping step could report twice.
- The package URL and size are taken from the PROPOSAL the community voted on when this node has it:
  they are not covered by the certificate, and a member republishing a certificate with a hostile URL
  must not be able to make every node fail the upgrade on a hash mismatch.
- Verdicts are the same everywhere, local failures are retried. UpgradeManager returns a verdict
  (success, or a deterministic failure that consumes the sequence and leaves the state untouched) or
  raises a LOCAL failure (download, disk, wall clock), which is retried with backoff and never reported
  as the network's result. A report missing after a crash (committed, not yet reported) is published
  at the next start from the store's history.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from node.core.certificates import verify_certificate
from node.core.entries import safe_text
from node.core.schemas import REASON_LENGTH_MAX
from node.core.governance import CertifiedExecution
from node.core.gossip_rules import BoundedMap
from node.core.lifecycle import APPROVED
from node.errors import NotFound, RollbackError, Unavailable
from node.governance_fold import GovernanceFold
from node.identity import verify_signature
from node.limits import UPGRADE_WARMED_PROPOSALS_MAX
from node.local_author import LocalAuthor
from node.local_versions import LocalVersions
from node.logging_setup import log_event
from node.metrics import Metrics
from node.store import VersionStore
from node.upgrader import UpgradeResult
from node.wake_loop import run_woken, stop_tasks

REPORT_ERROR_LENGTH_MAX = REASON_LENGTH_MAX    # EXECUTION_REPORT.error (node/core/schemas.py)

_logger = logging.getLogger("synapse.governance")


def bounded(text: str | None, length_max: int) -> str | None:
    """A text for an entry this node writes: at most `length_max` characters, and no character the
    entry schemas refuse (an error may quote a package's own words, such as its function names)."""
    if text is None:
        return None
    text = safe_text(text)
    if len(text) <= length_max:
        return text
    return text[: length_max - 15] + " ...[truncated]"


def report_body_of_upgrade(execution: CertifiedExecution, result: UpgradeResult) -> dict:
    return {"proposal_id": execution.proposal_id, "sequence": execution.sequence, "success": result.success,
            "version": result.version, "state_hash": result.state_hash,
            "error": bounded(result.error, REPORT_ERROR_LENGTH_MAX)}


class UpgradeExecutor:
    """Run as an aiohttp cleanup_ctx (`context`) after LocalVersions; `wake()` after new entries."""

    def __init__(self, *, fold: GovernanceFold, versions: LocalVersions, author: LocalAuthor, network_id: str,
                 validators: Mapping[str, bytes], metrics: Metrics, now_ms: Callable[[], int],
                 settings: Any, fault_point: Callable[[str], None] | None = None,
                 logger: logging.Logger | None = None) -> None:
        self._fold = fold
        self._versions = versions
        self._author = author
        self._network_id = network_id
        self._validators = validators
        self._metrics = metrics
        self._now_ms = now_ms
        self._settings = settings
        self._fault_point = fault_point or (lambda _name: None)
        self._logger = logger or _logger
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._warmed = BoundedMap(UPGRADE_WARMED_PROPOSALS_MAX)      # proposals whose package was warmed up

    def wake(self) -> None:
        self._wake.set()

    async def context(self, app: Any) -> AsyncIterator[None]:
        settings = self._settings
        self._tasks.append(asyncio.get_running_loop().create_task(run_woken(
            "executor", self._wake, self.execute_pending, sweep_ms=settings.executor_sweep_ms,
            retry_delay_first_ms=settings.retry_delay_first_ms, retry_delay_max_ms=settings.retry_delay_max_ms,
            logger=self._logger), name="governance-executor"))
        try:
            yield
        finally:
            tasks, self._tasks = self._tasks, []
            await stop_tasks(tasks, settings.stop_timeout_ms / 1000)

    async def execute_pending(self) -> None:
        """Apply every certified EXECUTE_UPGRADE that is next in sequence; report each verdict once."""
        store, manager = self._versions.require_started()
        self._warm_approved(manager)
        async with self._lock:
            await self._execute_in_order(store)

    async def _execute_in_order(self, store: VersionStore) -> None:
        while True:
            executions = {execution.sequence: execution for execution in self._fold.governance.certified_executions()}
            for sequence in sorted(executions):
                if sequence <= store.applied_sequence and sequence not in self._fold.reported_sequences:
                    await self._apply(executions[sequence])     # already applied: publishes the recorded verdict
            applied_sequence = store.applied_sequence
            following = executions.get(applied_sequence + 1)
            if following is None:
                return
            await self._apply(following)
            self._time_execution(following)
            if store.applied_sequence == applied_sequence:     # a bug, never a reason to spin
                raise Unavailable(f"upgrade sequence {following.sequence} was run but the store did not advance",
                                  hint="see the node log; the executor retries with backoff")

    async def _apply(self, execution: CertifiedExecution) -> None:
        verify_certificate(execution.body, network_id=self._network_id, validators=self._validators,
                           verify=verify_signature)
        package_url, package_size, target = self._voted_package(execution)
        _, manager = self._versions.require_started()
        if execution.body["action"] == "upgrade":
            result = await manager.execute(proposal_id=execution.proposal_id, version=execution.body["version"],
                                           package_url=package_url, package_hash=execution.body["package_hash"],
                                           package_size=package_size, sequence=execution.sequence)
            report = report_body_of_upgrade(execution, result)
        else:
            report = await self._apply_rollback(execution, target)
        await self._versions.refresh_state()
        if execution.sequence not in self._fold.reported_sequences:
            self._fault_point("before_report")
            entry = await self._author.append("EXECUTION_REPORT", report)
            self._fold.reported_sequences.add(execution.sequence)
            self._metrics.inc("upgrades_reported_total", action=execution.body["action"],
                              result="success" if report["success"] else "failed")
            log_event(self._logger, logging.INFO if report["success"] else logging.ERROR, "execution_reported",
                      proposal_id=execution.proposal_id, sequence=execution.sequence, success=report["success"],
                      version=report["version"], state_hash=report["state_hash"], error=report["error"],
                      entry_id=entry.id)

    def _warm_approved(self, manager: Any) -> None:
        """Proposals whose tally the new votes decided as approved: fetch and compile their package now
        (UpgradeManager.warm_up), while the validators ratify. Nothing runs before the certificate."""
        touched, self._fold.votes_touched = self._fold.votes_touched, set()
        state, now_ms = self._versions.network_state(), self._now_ms()
        for proposal_id in sorted(touched):
            if proposal_id in self._warmed:
                continue
            try:
                view = self._fold.governance.proposal(proposal_id, state=state, now_ms=now_ms)
            except NotFound:
                continue
            if view.action != "upgrade" or view.execution is not None or view.tally.outcome != APPROVED:
                continue
            self._warmed.put(proposal_id, now_ms)
            manager.warm_up(version=view.version, package_url=view.package_url, package_hash=view.package_hash,
                            package_size=view.package_size)

    def _time_execution(self, execution: CertifiedExecution) -> None:
        """This node ran the sequence and reported it: the time since it saw the certificate."""
        seen_ms = self._fold.certificate_seen_ms.get(execution.sequence)     # kept: it also marks the sequence as timed
        if seen_ms is not None and execution.sequence in self._fold.reported_sequences:
            self._metrics.observe("ratified_to_executed_seconds", (self._now_ms() - seen_ms) / 1000,
                                  action=execution.body["action"])

    def _voted_package(self, execution: CertifiedExecution) -> tuple[str | None, int | None, str | None]:
        """(package_url, package_size, target_proposal_id) from the PROPOSAL the community voted on when
        it matches what the certificate signed; else the EXECUTE_UPGRADE entry's own (unsigned) fields."""
        body = execution.body
        try:
            view = self._fold.governance.proposal(execution.proposal_id, state=self._versions.network_state(),
                                                  now_ms=self._now_ms())
        except NotFound:
            return body["package_url"], body["package_size"], None
        if (view.action, view.version, view.package_hash) != (body["action"], body["version"], body["package_hash"]):
            return body["package_url"], body["package_size"], None
        return view.package_url, view.package_size, view.target_proposal_id

    async def _apply_rollback(self, execution: CertifiedExecution, target: str | None) -> dict:
        store, manager = self._versions.require_started()
        base = {"proposal_id": execution.proposal_id, "sequence": execution.sequence}
        try:
            outcome = await manager.rollback(proposal_id=execution.proposal_id, sequence=execution.sequence,
                                             target_proposal_id=target, version=execution.body["version"])
        except RollbackError as error:     # a verdict: recorded by the manager, sequence consumed
            return {**base, "success": False, "version": store.current_version, "state_hash": store.state_hash(),
                    "error": bounded(f"{type(error).__name__}: {error.one_line()}", REPORT_ERROR_LENGTH_MAX)}
        if outcome.get("restored_version") is None:      # applied before, and it had failed
            return {**base, "success": False, "version": store.current_version, "state_hash": store.state_hash(),
                    "error": bounded(str(outcome.get("error") or outcome["message"]), REPORT_ERROR_LENGTH_MAX)}
        return {**base, "success": True, "version": outcome["restored_version"], "state_hash": outcome["state_hash"],
                "error": None}
