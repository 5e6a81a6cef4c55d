"""The node's governance as the HTTP API sees it: propose, vote, read proposals and statuses, dry-run a
package, roll back locally. The jobs that run by themselves live beside it: the log fold
(node/governance_fold.py), the upgrade executor (node/upgrade_executor.py) and, on validators, the
ratification driver (node/ratification_driver.py); node/runtime.py wires them together.

Why it works as it does:
- Each operation checks everything a user can get wrong BEFORE anything is written (BadRequest,
  Conflict, VersionError...), then writes one local entry through the node's one LocalAuthor.
- Two proposals from this node cannot both pass the "already proposed" check: check and publish run
  under one lock.
- Reads are computed from the fold with the live network state (reputations, version) and the clock.
- Blocking work (the dry run's sandbox, the store) runs in threads; a second dry run while one runs is
  refused (the sandbox is the node's most expensive resource), not queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.config import Limits
from node.core import proposals
from node.core.entries import Entry
from node.core.schemas import DESCRIPTION_LENGTH_MAX, REASON_LENGTH_MAX
from node.core.governance import ProposalView
from node.errors import ConfigError, Conflict, NotFound, PackageSizeError, SynapseError, Unavailable
from node.governance_fold import GovernanceFold, divergence_of
from node.local_author import LocalAuthor
from node.local_versions import LocalVersions
from node.logging_setup import log_event
from node.package_urls import check_package_url
from node.presentation import proposal_document, ratification_record_document
from node.raft import RaftTiming
from node.ratification_driver import RatificationDriver
from node.upgrade_executor import bounded


_logger = logging.getLogger("synapse.governance")


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernanceSettings:
    """Pace and bounds of the governance jobs. None of these change results, only speed."""
    ratification_sweep_ms: int = 1_000      # safety net of the validator loop (events drive it)
    # A complete certificate is published (EXECUTE_UPGRADE) by the Raft leader; another validator
    # publishes it only if none is in its log this long after it saw the certificate complete.
    execute_publish_grace_ms: int = 3_000
    executor_sweep_ms: int = 3_000          # safety net of the executor (events drive it)
    raft_call_timeout_ms: int = 10_000
    retry_delay_first_ms: int = 200
    retry_delay_max_ms: int = 10_000
    append_timeout_ms: int = 30_000         # one local entry: persisted (fsync) and visible
    store_open_timeout_ms: int = 120_000
    stop_timeout_ms: int = 10_000
    dry_runs_concurrent_max: int = 1
    vote_proposal_wait_ms: int = 2_000      # a vote for a proposal gossip has not brought yet waits this long
    vote_proposal_poll_ms: int = 50
    raft_bind_outgoing: bool = False        # process-wide: only a node process (runtime.serve) sets it
    raft_timing: RaftTiming = field(default_factory=RaftTiming)

    def __post_init__(self) -> None:
        for name in ("ratification_sweep_ms", "execute_publish_grace_ms", "executor_sweep_ms", "raft_call_timeout_ms", "retry_delay_first_ms",
                     "retry_delay_max_ms", "append_timeout_ms", "store_open_timeout_ms", "stop_timeout_ms",
                     "vote_proposal_wait_ms", "vote_proposal_poll_ms"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= 3_600_000:
                raise ConfigError(f"governance setting {name} must be an int in 1..3600000, got {value!r}")
        if type(self.dry_runs_concurrent_max) is not int or not 1 <= self.dry_runs_concurrent_max <= 16:
            raise ConfigError("governance setting dry_runs_concurrent_max must be an int in 1..16")
        if self.retry_delay_max_ms < self.retry_delay_first_ms:
            raise ConfigError("governance setting retry_delay_max_ms must be >= retry_delay_first_ms")


class GovernanceService:
    """The API-facing operations (node/api_governance.py calls one per request)."""

    def __init__(self, *, node_id: str, limits: Limits, fold: GovernanceFold, versions: LocalVersions,
                 author: LocalAuthor, now_ms: Callable[[], int], settings: GovernanceSettings = GovernanceSettings(),
                 driver: RatificationDriver | None = None, logger: logging.Logger | None = None) -> None:
        self.node_id = node_id
        self._limits = limits
        self._fold = fold
        self.governance = fold.governance
        self._versions = versions
        self._author = author
        self._now_ms = now_ms
        self.settings = settings
        self._driver = driver
        self._logger = logger or _logger
        self._publish_lock = asyncio.Lock()
        self._dry_runs = asyncio.Semaphore(settings.dry_runs_concurrent_max)

    def _state(self) -> Mapping:
        return self._versions.network_state()

    async def state_document(self) -> dict:
        return await self._versions.state_document()

    # --- proposals and votes ------------------------------------------------------------------

    async def propose_upgrade(self, *, title: str, description: str, version: str, package_url: str,
                              package_hash: str, package_size: int | None) -> ProposalView:
        """Publish a PROPOSAL (action "upgrade"). Raises BadRequest/HashFormatError/PackageSourceRefused/
        PackageSizeError/VersionError/Conflict, with nothing written, when it may not be proposed."""
        check_package_url(package_url)
        if package_size is not None and package_size > self._limits.package_size_max_bytes:
            raise PackageSizeError(f"package_size {package_size} bytes is over the network's package size limit of "
                                   f"{self._limits.package_size_max_bytes} bytes")
        view = await self._propose(lambda sequence, now_ms: proposals.new_proposal_body(
            action="upgrade", title=title, description=description, version=version, package_url=package_url,
            package_hash=package_hash, package_size=package_size, target_proposal_id=None, author=self.node_id,
            sequence=sequence, now_ms=now_ms, rules=self.governance.rules))
        # The proposer's own node fetches and compiles the package in the background at once (the other
        # nodes only once a majority approves it): a package that cannot be fetched or compiled shows in
        # this node's log long before the vote, and nodes sharing one compiled-module cache (a local
        # cluster) find it compiled when they warm up.
        _, manager = self._versions.require_started()
        manager.warm_up(version=version, package_url=package_url, package_hash=package_hash, package_size=package_size)
        return view

    async def propose_rollback(self, *, target_proposal_id: str, title: str | None, description: str | None) -> ProposalView:
        """Publish a network-wide rollback PROPOSAL of the latest executed upgrade `target_proposal_id`."""
        store, _ = self._versions.require_started()
        target = self.governance.proposal(target_proposal_id, state=self._state(), now_ms=self._now_ms())
        restored_version = restored_version_before(store.chain(), target_proposal_id)
        title = title if title is not None else f"Roll back {target.version} to {restored_version}"
        description = (description if description is not None
                       else bounded(f"Network-wide rollback of {target_proposal_id} ({target.title})", DESCRIPTION_LENGTH_MAX))
        return await self._propose(lambda sequence, now_ms: proposals.new_proposal_body(
            action="rollback", title=title, description=description, version=restored_version, package_url=None,
            package_hash=None, package_size=None, target_proposal_id=target_proposal_id, author=self.node_id,
            sequence=sequence, now_ms=now_ms, rules=self.governance.rules))

    async def _propose(self, make_body: Callable[[int, int], dict]) -> ProposalView:
        self._versions.require_started()
        async with self._publish_lock:        # two proposals of one version from this node cannot both pass the check
            now_ms = self._now_ms()

            def check(body: Mapping[str, Any]) -> None:
                self.governance.check_can_propose(body, state=self._state(), now_ms=now_ms, author=self.node_id)

            # The deadline counts from the entry's own HLC, which a peer's fast clock (within clock_skew_max_ms)
            # may have pulled ahead of this node's clock: counted from now_ms, a voting period shorter than
            # that lead would give a deadline before the entry's clock, and every node would refuse the
            # proposal (bad_deadline) after it was signed and sent. (Built inside append, under its lock,
            # just before the entry: the parents cannot change in between.)
            entry = await self._author.append(
                "PROPOSAL", lambda sequence: make_body(sequence, max(now_ms, self._author.clock_floor_ms())), check)
        log_event(self._logger, logging.INFO, "proposal_created", proposal_id=entry.body["proposal_id"],
                  action=entry.body["action"], version=entry.body["version"], entry_id=entry.id)
        return self.governance.proposal(entry.body["proposal_id"], state=self._state(), now_ms=self._now_ms())

    async def vote(self, proposal_id: str, vote: str) -> tuple[Entry, ProposalView]:
        """Publish this node's VOTE. NotFound for a proposal still unknown after a bounded wait (gossip
        may not have brought it yet: a user proposing on one node and voting at once on another),
        Conflict once voting is closed."""
        body = proposals.new_vote_body(proposal_id, vote)
        await self._wait_until_known(proposal_id)
        self.governance.check_can_vote(proposal_id, state=self._state(), now_ms=self._now_ms())
        entry = await self._author.append("VOTE", body)
        log_event(self._logger, logging.INFO, "vote_cast", proposal_id=proposal_id, vote=vote, entry_id=entry.id)
        return entry, self.governance.proposal(proposal_id, state=self._state(), now_ms=self._now_ms())

    async def _wait_until_known(self, proposal_id: str) -> None:
        """Return once the fold knows `proposal_id` (to vote on it or dry-run it); NotFound after
        settings.vote_proposal_wait_ms.
        Only an id that could be in transit and still open waits: one whose named time lies within this
        node's clock skew bound and its voting period (an id from last week, or from 2099, gets its 404 at
        once, so a stream of made-up ids cannot hold requests open). A poll, not an event: the fold is
        cheap to ask, and a poll cannot miss a wake-up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.vote_proposal_wait_ms / 1000
        while True:
            try:
                self.governance.proposal(proposal_id, state=self._state(), now_ms=self._now_ms())
                return
            except NotFound as error:
                if not self._may_be_in_transit(proposal_id):
                    raise
                if loop.time() >= deadline:
                    raise NotFound(f"{error.message} (waited {self.settings.vote_proposal_wait_ms} ms for gossip to bring it)",
                                   hint="check the id with GET /proposals; if it was just proposed on another node, "
                                        "check that this node reaches its peers (GET /health: peers_up)") from None
            await asyncio.sleep(min(self.settings.vote_proposal_poll_ms / 1000, max(0.0, deadline - loop.time())))

    def _may_be_in_transit(self, proposal_id: str) -> bool:
        named_ms, now_ms = proposals.proposal_id_time_ms(proposal_id), self._now_ms()
        skew_ms = self._limits.clock_skew_max_ms
        return named_ms is not None and now_ms - self.governance.rules.voting_period_ms - skew_ms <= named_ms <= now_ms + skew_ms

    # --- reading ------------------------------------------------------------------------------

    def proposals(self) -> list[ProposalView]:
        return self.governance.proposals(state=self._state(), now_ms=self._now_ms())

    def proposal_document(self, proposal_id: str) -> dict:
        """GET /proposals/{id}: status, tally, votes, ratification, every node's report, divergence."""
        view = self.governance.proposal(proposal_id, state=self._state(), now_ms=self._now_ms())
        document = proposal_document(view)
        sequence = view.execution.sequence if view.execution is not None else None
        divergence = divergence_of(view.reports, sequence)
        document.update(divergence=divergence, diverged=divergence["diverged"],
                        diverged_nodes=divergence["diverged_nodes"], ratification=self._raft_record(proposal_id))
        return document

    def _raft_record(self, proposal_id: str) -> dict | None:
        raft = self._driver.raft if self._driver is not None else None
        if raft is None:
            return None
        try:
            record = raft.snapshot().by_proposal(proposal_id)
        except Unavailable:
            return None
        return ratification_record_document(record) if record is not None else {"proposal_id": proposal_id, "phase": None}

    def _raft_status(self) -> dict | None:
        raft = self._driver.raft if self._driver is not None else None
        return raft.status() if raft is not None else None

    def upgrade_status(self) -> dict:
        _, manager = self._versions.require_started()
        status = manager.status()
        status["node_id"] = self.node_id
        status["validator"] = self._driver is not None
        status["raft"] = self._raft_status()
        status["governance_problems"] = self.governance.problem_counts()
        return status

    def health_facts(self) -> dict:
        """For GET /health: whether this node validates, whom it believes leads Raft (a hint that may
        be a moment stale; nothing is decided from it), and whether its Raft listener is up (it
        rebinds by itself after a failed accept; failures count how often that happened)."""
        raft = self._raft_status()
        transport = (raft.get("transport") or {}) if raft else {}
        return {"validator": self._driver is not None,
                "raft_leader": raft.get("leader") if raft else None,
                "raft_has_quorum": raft.get("has_quorum") if raft else None,
                "raft_listening": transport.get("listening") if raft else None,
                "raft_listener_failures": transport.get("listener_failures") if raft else None}

    def history(self) -> list[dict]:
        _, manager = self._versions.require_started()
        return manager.history()

    # --- dry run and local rollback ------------------------------------------------------------

    async def dry_run(self, proposal_id: str) -> dict:
        """Download, verify and run the proposal's package on a copy of the live state; change nothing.
        Like a vote, it waits a moment for a proposal gossip has not brought yet (test at once after proposing)."""
        store, manager = self._versions.require_started()
        await self._wait_until_known(proposal_id)
        view = self.governance.proposal(proposal_id, state=self._state(), now_ms=self._now_ms())
        if view.action != "upgrade":
            raise Conflict(f"{proposal_id} is a {view.action} proposal: it has no package to test",
                           hint="test the upgrade proposals (action 'upgrade')")
        if self._dry_runs.locked():
            raise Unavailable("another dry run is running on this node", hint="retry when it has finished")
        before = store.state_hash()
        async with self._dry_runs:
            try:
                result = await manager.dry_run(version=view.version, package_url=view.package_url,
                                               package_hash=view.package_hash, package_size=view.package_size)
            except SynapseError as error:
                return {"proposal_id": proposal_id, "success": False, "failed_step": getattr(error, "pipeline_step", None),
                        "error": error.to_dict(), "live_state_hash": before}
        return {"proposal_id": proposal_id, "success": True, "result": result, "live_state_hash": before}

    async def local_rollback(self, proposal_id: str, reason: str | None) -> dict:
        """The spec's operator rollback: restore the version before `proposal_id` on THIS node, and
        publish a ROLLBACK audit entry. RollbackError (409) when it is not the latest applied upgrade."""
        _, manager = self._versions.require_started()
        outcome = await manager.rollback(proposal_id=proposal_id)
        await self._versions.refresh_state()
        body = {"proposal_id": proposal_id, "restored_version": outcome["restored_version"],
                "previous_version": outcome["previous_version"], "state_hash": outcome["state_hash"],
                "reason": bounded(reason or "operator rollback (POST /upgrades/{id}/rollback)", REASON_LENGTH_MAX)}
        document = {"message": outcome["message"], "restored_version": outcome["restored_version"],
                    "previous_version": outcome["previous_version"], "state_hash": outcome["state_hash"],
                    "audit_entry_id": None}
        log_event(self._logger, logging.WARNING, "local_rollback", proposal_id=proposal_id,
                  restored_version=body["restored_version"], previous_version=body["previous_version"],
                  state_hash=body["state_hash"])
        try:    # the rollback is done (committed): failing to publish its audit entry must not hide that
            document["audit_entry_id"] = (await self._author.append("ROLLBACK", body)).id
        except SynapseError as error:
            document["audit_error"] = error.one_line()
            log_event(self._logger, logging.ERROR, "rollback_audit_not_published", proposal_id=proposal_id,
                      error=error.one_line())
        return document


def restored_version_before(chain: Sequence[Mapping], target_proposal_id: str) -> str:
    """The version this node ran before the upgrade `target_proposal_id` (from its applied chain)."""
    for index, link in enumerate(chain):
        if link.get("proposal_id") == target_proposal_id and index > 0:
            return chain[index - 1]["version"]
    raise Conflict(f"{target_proposal_id} is not an upgrade this node has applied, so there is no version to go back to",
                   hint="roll back an executed upgrade (see GET /upgrades/history)")
