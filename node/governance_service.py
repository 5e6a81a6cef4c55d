"""Governance inside the running node: the I/O shell around the pure governance, the validators' Raft
ratification, the upgrade executor and the version store.

Why it works as it does:
- One fold, every node. Each batch of newly visible log entries (gossip's on_visible, and the stored
  log at start) is folded into the pure `Governance`; verdicts (tally, status) are computed from it
  when asked, with the CURRENT network state (reputations, version) and the clock. Folding only sets
  two wake-up events: the executor's and the validator's. Nothing slow runs in on_visible.
- Validators drive closing and ratification, everybody else only watches. A validator compares its
  own fold with the replicated Raft state (`ratification.validator_todo`) and submits what is missing:
  close voting (at the deadline by ITS clock, or once its tally is decided) naming the votes it holds,
  publish the counted votes Raft fixed (a CLOSE entry), ratify what the counted votes approve, certify
  its assigned sequence, then publish the EXECUTE_UPGRADE with the complete certificate. Every step is idempotent (Raft commands repeat harmlessly, duplicate EXECUTE_UPGRADE
  entries are deduplicated by sequence), so the step runs on every fold, on every Raft event (which
  PySyncObj's thread hands to the loop through call_soon_threadsafe, node/raft.py), and on a ~1 s
  safety sweep; timeouts and "no leader" are retried with exponential backoff.
- Every node executes, and trusts no publisher. An EXECUTE_UPGRADE counts only with a valid majority
  certificate over (network, proposal, action, package hash, version, sequence) from the GENESIS
  validator set; anything else is refused, logged and counted (`synapse_execute_refused_total`),
  whoever signed the entry. Upgrades apply strictly in sequence order (next = the store's
  applied_sequence + 1; later ones wait), exactly once (the store's manifest is the commit point), as
  soon as they are visible (event-driven; a sweep every few seconds is only a safety net). The package
  URL and size are taken from the PROPOSAL the community voted on when this node has it: they are not
  covered by the certificate, and a member republishing a certificate with a hostile URL must not be
  able to make every node fail the upgrade on a hash mismatch.
- Verdicts are the same everywhere, local failures are retried. UpgradeManager returns a verdict
  (success, or a deterministic failure that consumes the sequence and leaves the state untouched) or
  raises a LOCAL failure (download, disk, wall clock), which is retried with backoff and never
  reported as the network's result. After each verdict the node publishes an EXECUTION_REPORT (version,
  state hash, error); a report missing after a crash (committed but not yet reported) is published at
  the next start from the store's history.
- Divergence is loud. The reports of one sequence are compared; a node whose state hash differs from
  the strict majority's is flagged in GET /proposals/{id} (`diverged`, `diverged_nodes`) and logged at
  ERROR once per (sequence, disagreement).
- Local entries go through `gossip.publish` with an entry built here, and are rebuilt if another
  local entry took the sequence first (Conflict, nothing written): a PROPOSAL's id is derived from its
  author's entry sequence, so the body can only be built once the sequence is known.
- Blocking work (opening the store, reading the state) runs in threads, every await has a timeout,
  every loop has a bounded backoff, and a consumer's failure never stops the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.config import Genesis, Limits, initial_network_state
from node.core import governance as core_governance
from node.core.certificates import certificate_statement, verify_certificate
from node.core.crdt_log import CrdtLog
from node.core.entries import Entry, safe_text
from node.core.governance import CertifiedExecution, Governance, GovernanceRules, ProposalView, ReportView
from node.core.ratification import close_body, execute_upgrade_body, validator_todo
from node.errors import (
    CertificateError,
    ConfigError,
    Conflict,
    NotFound,
    PackageSizeError,
    RollbackError,
    SynapseError,
    Unavailable,
)
from node.identity import Identity, verify_signature
from node.logging_setup import log_event
from node.metrics import Metrics
from node.packages import FetchLimits, PackageCache, PackageFetcher, check_package_url
from node.raft import RaftTiming, ValidatorRaft, ValidatorRaftConfig
from node.sandbox import Sandbox, SandboxLimits
from node.store import VersionStore
from node.upgrader import UpgradeManager, UpgradeResult

if TYPE_CHECKING:
    from node.runtime import Prepared

RAFT_DIR_NAME = "raft"
COMPILED_DIR_NAME = "compiled"
RAFT_SECRET_FILE_NAME = "raft_secret"
RAFT_SECRET_SIZE_MAX_BYTES = 1024
PUBLISH_ATTEMPTS_MAX = 8          # rebuilds of a local entry whose sequence another local entry took
REPORT_ERROR_LENGTH_MAX = 1000    # EXECUTION_REPORT.error
ROLLBACK_REASON_LENGTH_MAX = 1000
LOGGED_DIVERGENCES_MAX = 10_000

_logger = logging.getLogger("synapse.governance")

Publish = Callable[[Entry], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernanceSettings:
    """Pace and bounds of the service's loops. None of these change results, only speed."""
    ratification_sweep_ms: int = 1_000      # safety net of the validator loop (events drive it)
    executor_sweep_ms: int = 3_000          # safety net of the executor (events drive it)
    raft_call_timeout_ms: int = 10_000
    retry_delay_first_ms: int = 200
    retry_delay_max_ms: int = 10_000
    append_timeout_ms: int = 30_000         # one local entry: persisted (fsync) and visible
    store_open_timeout_ms: int = 120_000
    stop_timeout_ms: int = 10_000
    dry_runs_concurrent_max: int = 1
    raft_bind_outgoing: bool = False        # process-wide: only a node process (runtime.serve) sets it
    raft_timing: RaftTiming = field(default_factory=RaftTiming)

    def __post_init__(self) -> None:
        for name in ("ratification_sweep_ms", "executor_sweep_ms", "raft_call_timeout_ms", "retry_delay_first_ms",
                     "retry_delay_max_ms", "append_timeout_ms", "store_open_timeout_ms", "stop_timeout_ms"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= 3_600_000:
                raise ConfigError(f"governance setting {name} must be an int in 1..3600000, got {value!r}")
        if type(self.dry_runs_concurrent_max) is not int or not 1 <= self.dry_runs_concurrent_max <= 16:
            raise ConfigError("governance setting dry_runs_concurrent_max must be an int in 1..16")
        if self.retry_delay_max_ms < self.retry_delay_first_ms:
            raise ConfigError("governance setting retry_delay_max_ms must be >= retry_delay_first_ms")


# --- pure helpers -------------------------------------------------------------------------------


def divergence_of(reports: Sequence[ReportView], sequence: int | None) -> dict:
    """Compare the state hashes that nodes reported for one upgrade sequence. The majority is the hash
    of MORE than half of the reports; without one, every reporting node is flagged."""
    relevant = [report for report in reports if sequence is None or report.sequence == sequence]
    groups: dict[str, list[str]] = {}
    for report in relevant:
        groups.setdefault(report.state_hash, []).append(report.node_id)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    majority = ranked[0][0] if ranked and len(ranked[0][1]) * 2 > len(relevant) else None
    diverged_nodes = sorted(node for state_hash, nodes in groups.items() if state_hash != majority for node in nodes)
    return {"diverged": len(groups) > 1, "majority_state_hash": majority, "diverged_nodes": diverged_nodes,
            "reports": len(relevant), "state_hashes": {state_hash: sorted(nodes) for state_hash, nodes in ranked}}


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


def backoff_s(failures: int, *, first_ms: int, max_ms: int) -> float:
    return min(first_ms * 2 ** min(failures - 1, 30), max_ms) / 1000


# --- the service ----------------------------------------------------------------------------------


class GovernanceService:
    """See the module docstring. Build it with `for_node`, subscribe `on_visible` to the log, add
    `context` to the app's cleanup_ctx (after the log is loaded), and serve api_governance's routes."""

    def __init__(self, *, genesis: Genesis, identity: Identity, limits: Limits, data_dir: Path, log: CrdtLog,
                 publish: Publish, metrics: Metrics, now_ms: Callable[[], int], ipfs_gateways: Sequence[str] = (),
                 raft_config: ValidatorRaftConfig | None = None, on_version: Callable[[str], None] | None = None,
                 settings: GovernanceSettings = GovernanceSettings(), logger: logging.Logger | None = None,
                 fault_point: Callable[[str], None] | None = None, package_ca_file: Path | None = None,
                 package_private_addresses_allowed: bool = True, planted_bugs: frozenset[str] = frozenset()) -> None:
        """`fault_point`: node/fault_points.py (crash tests); None in production. `package_ca_file`:
        extra CAs trusted for https:// package downloads (config packages.ca_file)."""
        self._package_ca_file = package_ca_file
        self._package_private_addresses_allowed = package_private_addresses_allowed
        self.genesis = genesis
        self._fault_point = fault_point or (lambda _name: None)
        self.node_id = identity.node_id
        self._identity = identity
        self._limits = limits
        self._data_dir = Path(data_dir)
        self._log = log
        self._publish = publish
        self._metrics = metrics
        self._now_ms = now_ms
        self._ipfs_gateways = tuple(ipfs_gateways)
        self._raft_config = raft_config
        self._on_version = on_version or (lambda version: None)
        self.settings = settings
        self._logger = logger or _logger
        self.validators = {member.node_id: member.public_key for member in genesis.validators}
        self.governance = Governance(
            network_id=genesis.network_id, validators=self.validators, verify=verify_signature,
            local_node_id=identity.node_id,
            rules=GovernanceRules(approval_threshold_pct=genesis.governance.approval_threshold_pct,
                                  quorum_pct=genesis.governance.quorum_pct,
                                  voting_period_ms=genesis.governance.voting_period_ms,
                                  open_proposals_per_author_max=genesis.governance.open_proposals_per_author_max),
            planted_bugs=planted_bugs)
        self._genesis_state = initial_network_state(genesis)
        self._state: Mapping = self._genesis_state
        self.store: VersionStore | None = None
        self.manager: UpgradeManager | None = None
        self.raft: ValidatorRaft | None = None
        self._fetcher: PackageFetcher | None = None
        self._execute_wake = asyncio.Event()
        self._ratify_wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._publish_lock = asyncio.Lock()
        self._execution_lock = asyncio.Lock()
        self._dry_runs = asyncio.Semaphore(settings.dry_runs_concurrent_max)
        self._equivocations_seen = 0
        self._reported_sequences: set[int] = set()       # sequences this node's EXECUTION_REPORT covers
        self._ratify_audited: set[tuple[str, int]] = set()
        self._close_attested: set[str] = set()            # proposals whose CLOSE entry this validator published
        self._divergences_logged: set[tuple] = set()

    @classmethod
    def for_node(cls, prepared: "Prepared", *, log: CrdtLog, publish: Publish, metrics: Metrics,
                 now_ms: Callable[[], int], on_version: Callable[[str], None] | None = None,
                 settings: GovernanceSettings = GovernanceSettings(),
                 fault_point: Callable[[str], None] | None = None,
                 planted_bugs: frozenset[str] = frozenset()) -> "GovernanceService":
        """The service of one node process (runtime.Node), from what runtime.prepare checked."""
        genesis, identity, config = prepared.genesis, prepared.identity, prepared.config
        raft_config = None
        if prepared.member.validator:
            partners = tuple(member.raft_address for member in genesis.validators if member.node_id != identity.node_id)
            raft_config = ValidatorRaftConfig(
                self_address=prepared.member.raft_address, partner_addresses=partners,
                data_dir=config.data_dir / RAFT_DIR_NAME, password=read_raft_password(config.data_dir),
                network_id=genesis.network_id, validator_id=identity.node_id,
                validators={member.node_id: member.public_key for member in genesis.validators},
                timing=settings.raft_timing, bind_outgoing=settings.raft_bind_outgoing)
        return cls(genesis=genesis, identity=identity, limits=prepared.limits, data_dir=config.data_dir, log=log,
                   publish=publish, metrics=metrics, now_ms=now_ms, ipfs_gateways=config.ipfs_gateways,
                   raft_config=raft_config, on_version=on_version, settings=settings, fault_point=fault_point,
                   package_ca_file=config.package_ca_file,
                   package_private_addresses_allowed=config.package_private_addresses_allowed, planted_bugs=planted_bugs)

    # --- lifecycle ----------------------------------------------------------------------------

    async def context(self, app: Any) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: start (store, sandbox, fetcher, Raft, loops), then stop on shutdown."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Open the store, build the sandbox, fetcher and upgrade manager, join Raft (validators), start
        the loops. On failure, whatever was opened is closed again before the error propagates."""
        assert self.store is None, "GovernanceService.start() twice"
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        limits = self._limits
        self.store = await asyncio.wait_for(asyncio.to_thread(
            VersionStore.open, self._data_dir, genesis_state=self._genesis_state, fault_point=self._fault_point,
            logger=logging.getLogger("synapse.store")), self.settings.store_open_timeout_ms / 1000)
        for repair in self.store.repairs:
            log_event(self._logger, logging.WARNING, "store_repaired_at_start", repair=repair)
        sandbox = Sandbox(SandboxLimits(fuel=limits.sandbox_fuel, memory_size_max_bytes=limits.sandbox_memory_max_bytes,
                                        module_size_max_bytes=limits.package_size_max_bytes,
                                        output_size_max_bytes=limits.sandbox_output_max_bytes,
                                        wall_timeout_ms=limits.sandbox_wall_timeout_ms),
                          compiled_cache_dir=self._data_dir / COMPILED_DIR_NAME)
        self._fetcher = PackageFetcher(PackageCache(self.store.cache_dir), ipfs_gateways=self._ipfs_gateways,
                                       ca_file=self._package_ca_file,
                                       private_addresses_allowed=self._package_private_addresses_allowed,
                                       limits=FetchLimits(package_size_max_bytes=limits.package_size_max_bytes),
                                       logger=logging.getLogger("synapse.packages"))
        self.manager = UpgradeManager(self.store, self._fetcher, sandbox, now_ms=self._now_ms,
                                      logger=logging.getLogger("synapse.upgrader"))
        await self._refresh_state()
        if self._raft_config is not None:
            self.raft = ValidatorRaft(self._raft_config, sign=self._identity.sign, verify=verify_signature,
                                      on_change=self._on_raft_events)
            await self.raft.start()
            self._tasks.append(self._spawn_loop("ratification", self._ratify_wake, self._ratification_step,
                                                self.settings.ratification_sweep_ms))
        self._tasks.append(self._spawn_loop("executor", self._execute_wake, self.execute_pending,
                                            self.settings.executor_sweep_ms))
        log_event(self._logger, logging.INFO, "governance_started", validator=self.raft is not None,
                  version=self.store.current_version, applied_sequence=self.store.applied_sequence,
                  state_hash=self.store.state_hash())

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.stop_timeout_ms / 1000)
        if self.raft is not None:
            await self.raft.stop()
        if self._fetcher is not None:
            await self._fetcher.close()
        if self.store is not None:
            self.store.close()

    def _spawn_loop(self, name: str, wake: asyncio.Event, step: Callable[[], Awaitable[None]], sweep_ms: int) -> asyncio.Task:
        return asyncio.get_running_loop().create_task(self._loop(name, wake, step, sweep_ms), name=f"governance-{name}")

    async def _loop(self, name: str, wake: asyncio.Event, step: Callable[[], Awaitable[None]], sweep_ms: int) -> None:
        """Run `step` when woken, at least every `sweep_ms`, and after a failure with backoff."""
        failures = 0
        while True:
            if failures:
                await asyncio.sleep(backoff_s(failures, first_ms=self.settings.retry_delay_first_ms,
                                              max_ms=self.settings.retry_delay_max_ms))
            else:
                try:
                    await asyncio.wait_for(wake.wait(), sweep_ms / 1000)
                except TimeoutError:
                    pass
            wake.clear()
            try:
                await step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except SynapseError as error:
                failures += 1
                log_event(self._logger, logging.WARNING, f"{name}_step_failed", error=type(error).__name__,
                          message=error.one_line(), definite=error.definite, failures=failures)
            except Exception:  # noqa: BLE001 - a bug in one step must not stop the node's governance
                failures += 1
                self._logger.exception(f"{name}_step_crashed", extra={"fields": {"failures": failures}})

    # --- folding the log ----------------------------------------------------------------------

    def on_visible(self, entries: Sequence[Entry]) -> None:
        """Fold newly visible entries (called by the runtime for every batch; cheap, never raises)."""
        touched_reports: set[str] = set()
        for entry in entries:
            self.governance.apply(entry)
            if entry.kind == "EXECUTE_UPGRADE":
                self._check_execute(entry)
            elif entry.kind == "EXECUTION_REPORT":
                touched_reports.add(entry.body["proposal_id"])
                if entry.author == self.node_id:
                    self._reported_sequences.add(entry.body["sequence"])
            elif entry.kind == "RATIFY" and entry.author == self.node_id:
                self._ratify_audited.add((entry.body["proposal_id"], entry.body["sequence"]))
            elif entry.kind == "CLOSE" and entry.author == self.node_id:
                self._close_attested.add(entry.body["proposal_id"])
        equivocations = self._log.equivocations()
        if len(equivocations) != self._equivocations_seen:
            self._equivocations_seen = len(equivocations)
            self.governance.note_equivocations(equivocations)
        for proposal_id in sorted(touched_reports):
            self._check_divergence(proposal_id)
        if any(entry.kind != "NOTE" for entry in entries):
            self._execute_wake.set()
            self._ratify_wake.set()

    def _check_execute(self, entry: Entry) -> None:
        """Refuse (log, count) an EXECUTE_UPGRADE without a valid majority certificate, whoever sent it."""
        try:
            verify_certificate(entry.body, network_id=self.genesis.network_id, validators=self.validators,
                               verify=verify_signature)
        except CertificateError as error:     # each entry is folded once per process: counted once
            self._metrics.inc("execute_refused_total", reason="bad_certificate")
            log_event(self._logger, logging.ERROR, "execute_refused", entry_id=entry.id, author=entry.author,
                      proposal_id=entry.body["proposal_id"], sequence=entry.body["sequence"], reason=error.message)

    def _check_divergence(self, proposal_id: str) -> None:
        try:
            view = self.governance.proposal(proposal_id, state=self._state, now_ms=self._now_ms())
        except NotFound:
            return
        sequence = view.execution.sequence if view.execution is not None else None
        divergence = divergence_of(view.reports, sequence)
        if not divergence["diverged"]:
            return
        mine = self.node_id in divergence["diverged_nodes"]
        key = (proposal_id, sequence, tuple(sorted((h, tuple(n)) for h, n in divergence["state_hashes"].items())))
        if key in self._divergences_logged or len(self._divergences_logged) >= LOGGED_DIVERGENCES_MAX:
            return
        self._divergences_logged.add(key)
        self._metrics.inc("state_divergences_total", this_node="true" if mine else "false")
        log_event(self._logger, logging.ERROR, "state_diverged", proposal_id=proposal_id, sequence=sequence,
                  this_node_diverged=mine, majority_state_hash=divergence["majority_state_hash"],
                  diverged_nodes=divergence["diverged_nodes"], state_hashes=divergence["state_hashes"])

    def _on_raft_events(self, events: Iterable[object]) -> None:
        """Raft's VotingClosed / SequenceAssigned / CertificateCompleted, on the loop: the validator has work."""
        self._ratify_wake.set()

    # --- the network state ------------------------------------------------------------------------

    def _require_started(self) -> tuple[VersionStore, UpgradeManager]:
        if self.store is None or self.manager is None:
            raise Unavailable("the node's governance is still starting", hint="retry in a moment")
        return self.store, self.manager

    async def _refresh_state(self) -> None:
        """Re-read the live state after the store changed (only this service changes it)."""
        store, _ = self._require_started()
        version, _state_hash, raw = await asyncio.wait_for(asyncio.to_thread(store.snapshot),
                                                           self.settings.store_open_timeout_ms / 1000)
        self._state = await asyncio.to_thread(json.loads, raw)
        self._on_version(version)
        self._metrics.set("applied_sequence", store.applied_sequence)

    def network_state(self) -> Mapping:
        """The live network state as this service last read it (reputations and version for governance)."""
        return self._state

    async def state_document(self) -> dict:
        store, _ = self._require_started()
        version, state_hash, raw = await asyncio.wait_for(asyncio.to_thread(store.snapshot),
                                                          self.settings.store_open_timeout_ms / 1000)
        return {"version": version, "state_hash": state_hash, "applied_sequence": store.applied_sequence,
                "state": await asyncio.to_thread(json.loads, raw)}

    # --- publishing local entries -------------------------------------------------------------

    async def _append(self, kind: str, make_body: Callable[[int], Mapping[str, Any]],
                      check: Callable[[Mapping[str, Any]], None] | None = None) -> Entry:
        """Build (with this node's next sequence), check, persist and publish a local entry. Rebuilt when
        another local entry took the sequence meanwhile (gossip refuses with Conflict, writing nothing)."""
        async with asyncio.timeout(self.settings.append_timeout_ms / 1000):
            for _attempt in range(PUBLISH_ATTEMPTS_MAX):
                body = make_body(self._log.next_sequence(self.node_id))
                if check is not None:
                    check(body)
                entry = self._log.new_entry(kind=kind, author=self.node_id, body=body, sign=self._identity.sign,
                                            now_ms=self._now_ms())
                try:
                    await self._publish(entry)
                except Conflict:
                    if entry.sequence == self._log.next_sequence(self.node_id):
                        raise
                    continue
                return entry
        raise Unavailable(f"could not publish a {kind} entry: {PUBLISH_ATTEMPTS_MAX} other local entries took its sequence",
                          hint="retry when the node is less busy")

    # --- API operations: proposals and votes ----------------------------------------------------

    async def propose_upgrade(self, *, title: str, description: str, version: str, package_url: str,
                              package_hash: str, package_size: int | None) -> ProposalView:
        """Publish a PROPOSAL (action "upgrade"). Raises BadRequest/HashFormatError/PackageSourceRefused/
        PackageSizeError/VersionError/Conflict, with nothing written, when it may not be proposed."""
        check_package_url(package_url)
        if package_size is not None and package_size > self._limits.package_size_max_bytes:
            raise PackageSizeError(f"package_size {package_size} bytes is over the network's package size limit of "
                                   f"{self._limits.package_size_max_bytes} bytes")
        return await self._propose(lambda sequence, now_ms: core_governance.new_proposal_body(
            action="upgrade", title=title, description=description, version=version, package_url=package_url,
            package_hash=package_hash, package_size=package_size, target_proposal_id=None, author=self.node_id,
            sequence=sequence, now_ms=now_ms, rules=self.governance.rules))

    async def propose_rollback(self, *, target_proposal_id: str, title: str | None, description: str | None) -> ProposalView:
        """Publish a network-wide rollback PROPOSAL of the latest executed upgrade `target_proposal_id`."""
        store, _ = self._require_started()
        target = self.governance.proposal(target_proposal_id, state=self._state, now_ms=self._now_ms())
        restored_version = restored_version_before(store.chain(), target_proposal_id)
        title = title if title is not None else f"Roll back {target.version} to {restored_version}"
        description = (description if description is not None
                       else bounded(f"Network-wide rollback of {target_proposal_id} ({target.title})", 4000))
        return await self._propose(lambda sequence, now_ms: core_governance.new_proposal_body(
            action="rollback", title=title, description=description, version=restored_version, package_url=None,
            package_hash=None, package_size=None, target_proposal_id=target_proposal_id, author=self.node_id,
            sequence=sequence, now_ms=now_ms, rules=self.governance.rules))

    async def _propose(self, make_body: Callable[[int, int], dict]) -> ProposalView:
        self._require_started()
        async with self._publish_lock:        # two proposals of one version from this node cannot both pass the check
            now_ms = self._now_ms()

            def check(body: Mapping[str, Any]) -> None:
                self.governance.check_can_propose(body, state=self._state, now_ms=now_ms, author=self.node_id)

            entry = await self._append("PROPOSAL", lambda sequence: make_body(sequence, now_ms), check)
        log_event(self._logger, logging.INFO, "proposal_created", proposal_id=entry.body["proposal_id"],
                  action=entry.body["action"], version=entry.body["version"], entry_id=entry.id)
        return self.governance.proposal(entry.body["proposal_id"], state=self._state, now_ms=self._now_ms())

    async def vote(self, proposal_id: str, vote: str) -> tuple[Entry, ProposalView]:
        """Publish this node's VOTE. NotFound for an unknown proposal, Conflict once voting is closed."""
        body = core_governance.new_vote_body(proposal_id, vote)
        self.governance.check_can_vote(proposal_id, state=self._state, now_ms=self._now_ms())
        entry = await self._append("VOTE", lambda sequence: body)
        log_event(self._logger, logging.INFO, "vote_cast", proposal_id=proposal_id, vote=vote, entry_id=entry.id)
        return entry, self.governance.proposal(proposal_id, state=self._state, now_ms=self._now_ms())

    # --- API operations: reading ----------------------------------------------------------------

    def proposals(self) -> list[ProposalView]:
        return self.governance.proposals(state=self._state, now_ms=self._now_ms())

    def proposal_document(self, proposal_id: str) -> dict:
        """GET /proposals/{id}: status, tally, votes, ratification, every node's report, divergence."""
        view = self.governance.proposal(proposal_id, state=self._state, now_ms=self._now_ms())
        document = view.to_dict()
        sequence = view.execution.sequence if view.execution is not None else None
        divergence = divergence_of(view.reports, sequence)
        document.update(divergence=divergence, diverged=divergence["diverged"],
                        diverged_nodes=divergence["diverged_nodes"], ratification=self._raft_record(proposal_id))
        return document

    def _raft_record(self, proposal_id: str) -> dict | None:
        if self.raft is None:
            return None
        try:
            record = self.raft.snapshot().by_proposal(proposal_id)
        except Unavailable:
            return None
        return record.to_dict() if record is not None else {"proposal_id": proposal_id, "phase": None}

    def upgrade_status(self) -> dict:
        _, manager = self._require_started()
        status = manager.status()
        status["node_id"] = self.node_id
        status["validator"] = self._raft_config is not None
        status["raft"] = self.raft.status() if self.raft is not None else None
        status["governance_problems"] = self.governance.problem_counts()
        return status

    def health_facts(self) -> dict:
        """For GET /health: whether this node validates and whom it believes leads Raft (a hint that may
        be a moment stale; nothing is decided from it)."""
        raft = self.raft.status() if self.raft is not None else None
        return {"validator": self._raft_config is not None,
                "raft_leader": raft.get("leader") if raft else None,
                "raft_has_quorum": raft.get("has_quorum") if raft else None}

    def history(self) -> list[dict]:
        _, manager = self._require_started()
        return manager.history()

    # --- API operations: dry run and local rollback ---------------------------------------------

    async def dry_run(self, proposal_id: str) -> dict:
        """Download, verify and run the proposal's package on a copy of the live state; change nothing."""
        store, manager = self._require_started()
        view = self.governance.proposal(proposal_id, state=self._state, now_ms=self._now_ms())
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
        _, manager = self._require_started()
        outcome = await manager.rollback(proposal_id=proposal_id)
        await self._refresh_state()
        body = {"proposal_id": proposal_id, "restored_version": outcome["restored_version"],
                "previous_version": outcome["previous_version"], "state_hash": outcome["state_hash"],
                "reason": bounded(reason or "operator rollback (POST /upgrades/{id}/rollback)", ROLLBACK_REASON_LENGTH_MAX)}
        document = {"message": outcome["message"], "restored_version": outcome["restored_version"],
                    "previous_version": outcome["previous_version"], "state_hash": outcome["state_hash"],
                    "audit_entry_id": None}
        log_event(self._logger, logging.WARNING, "local_rollback", proposal_id=proposal_id,
                  restored_version=body["restored_version"], previous_version=body["previous_version"],
                  state_hash=body["state_hash"])
        try:    # the rollback is done (committed): failing to publish its audit entry must not hide that
            document["audit_entry_id"] = (await self._append("ROLLBACK", lambda sequence: body)).id
        except SynapseError as error:
            document["audit_error"] = error.one_line()
            log_event(self._logger, logging.ERROR, "rollback_audit_not_published", proposal_id=proposal_id,
                      error=error.one_line())
        return document

    # --- the executor (every node) ----------------------------------------------------------------

    async def execute_pending(self) -> None:
        """Apply every certified EXECUTE_UPGRADE that is next in sequence; report each verdict once.
        Serialized: a step that overlapped another could report one verdict twice."""
        store, _ = self._require_started()
        async with self._execution_lock:
            await self._execute_in_order(store)

    async def _execute_in_order(self, store: VersionStore) -> None:
        while True:
            executions = {execution.sequence: execution for execution in self.governance.certified_executions()}
            for sequence in sorted(executions):
                if sequence <= store.applied_sequence and sequence not in self._reported_sequences:
                    await self._apply(executions[sequence])     # already applied: publishes the recorded verdict
            applied_sequence = store.applied_sequence
            following = executions.get(applied_sequence + 1)
            if following is None:
                return
            await self._apply(following)
            if store.applied_sequence == applied_sequence:     # a bug, never a reason to spin
                raise Unavailable(f"upgrade sequence {following.sequence} was run but the store did not advance",
                                  hint="see the node log; the executor retries with backoff")

    async def _apply(self, execution: CertifiedExecution) -> None:
        verify_certificate(execution.body, network_id=self.genesis.network_id, validators=self.validators,
                           verify=verify_signature)
        package_url, package_size, target = self._voted_package(execution)
        _, manager = self._require_started()
        if execution.body["action"] == "upgrade":
            result = await manager.execute(proposal_id=execution.proposal_id, version=execution.body["version"],
                                           package_url=package_url, package_hash=execution.body["package_hash"],
                                           package_size=package_size, sequence=execution.sequence)
            report = report_body_of_upgrade(execution, result)
        else:
            report = await self._apply_rollback(execution, target)
        await self._refresh_state()
        if execution.sequence not in self._reported_sequences:
            self._fault_point("before_report")
            entry = await self._append("EXECUTION_REPORT", lambda sequence: report)
            self._reported_sequences.add(execution.sequence)
            self._metrics.inc("upgrades_reported_total", action=execution.body["action"],
                              result="success" if report["success"] else "failed")
            log_event(self._logger, logging.INFO if report["success"] else logging.ERROR, "execution_reported",
                      proposal_id=execution.proposal_id, sequence=execution.sequence, success=report["success"],
                      version=report["version"], state_hash=report["state_hash"], error=report["error"],
                      entry_id=entry.id)

    def _voted_package(self, execution: CertifiedExecution) -> tuple[str | None, int | None, str | None]:
        """(package_url, package_size, target_proposal_id) from the PROPOSAL the community voted on when
        it matches what the certificate signed; else the EXECUTE_UPGRADE entry's own (unsigned) fields."""
        body = execution.body
        try:
            view = self.governance.proposal(execution.proposal_id, state=self._state, now_ms=self._now_ms())
        except NotFound:
            return body["package_url"], body["package_size"], None
        if (view.action, view.version, view.package_hash) != (body["action"], body["version"], body["package_hash"]):
            return body["package_url"], body["package_size"], None
        return view.package_url, view.package_size, view.target_proposal_id

    async def _apply_rollback(self, execution: CertifiedExecution, target: str | None) -> dict:
        store, manager = self._require_started()
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

    # --- ratification (validators only) -----------------------------------------------------------

    async def _ratification_step(self) -> None:
        raft = self.raft
        assert raft is not None
        now_ms = self._now_ms()
        closable = self.governance.closing_candidates(state=self._state, now_ms=now_ms)
        approved = {view.proposal_id: (view.action, view.package_hash, view.version, view.votes_digest)
                    for view in self.governance.needing_ratification(state=self._state, now_ms=now_ms)}

        def plan() -> Any:
            return validator_todo(raft.snapshot(), validator_id=self.node_id, closable=closable,
                                  attested=self._close_attested, approved=approved,
                                  published_sequences=self.governance.certified_sequences())

        todo = plan()
        timeout_s = self.settings.raft_call_timeout_ms / 1000
        for proposal_id in todo.to_close:
            self._log_outcome("close", await raft.close(proposal_id=proposal_id, vote_ids=closable[proposal_id],
                                                        timeout_s=timeout_s))
        if todo.to_close:
            todo = plan()
        for record in todo.to_attest:
            await self._publish_close(record)
        for proposal_id in todo.to_ratify:
            action, package_hash, version, votes_digest = approved[proposal_id]
            outcome = await raft.ratify(proposal_id=proposal_id, action=action, package_hash=package_hash,
                                        version=version, votes_digest=votes_digest, timeout_s=timeout_s)
            self._log_outcome("ratify", outcome)
        for record in todo.to_certify:
            outcome = await raft.certify(proposal_id=record.proposal_id, sequence=record.sequence, action=record.action,
                                         package_hash=record.package_hash, version=record.version,
                                         votes_digest=record.votes_digest, timeout_s=timeout_s)
            self._log_outcome("certify", outcome)
            if outcome.accepted:
                await self._publish_ratify_audit(record)
        if todo.to_certify or todo.to_ratify:
            todo = plan()
        for record in todo.to_publish:
            await self._publish_execute(record)

    async def _publish_close(self, record: Any) -> None:
        """A CLOSE entry: the counted votes Raft fixed, attested by this validator. Every node takes a
        proposal as closed once a strict majority of validators published the same set."""
        if record.proposal_id in self._close_attested:
            return
        body = close_body(record)
        entry = await self._append("CLOSE", lambda sequence: body)
        self._close_attested.add(record.proposal_id)
        log_event(self._logger, logging.INFO, "voting_closed", proposal_id=record.proposal_id,
                  votes_counted=len(record.vote_ids) // 32, votes_digest=record.votes_digest, entry_id=entry.id)

    def _log_outcome(self, what: str, outcome: Any) -> None:
        level = logging.INFO if outcome.accepted else logging.WARNING
        log_event(self._logger, level, f"raft_{what}", proposal_id=outcome.proposal_id, status=outcome.status,
                  sequence=outcome.sequence, message=outcome.message)

    async def _publish_ratify_audit(self, record: Any) -> None:
        """A RATIFY entry: this validator's certificate signature, public for audit (ed25519 is
        deterministic: it is the very signature submitted to Raft)."""
        proposal_id, sequence = record.proposal_id, record.sequence
        if (proposal_id, sequence) in self._ratify_audited:
            return
        statement = certificate_statement(self.genesis.network_id, proposal_id, record.action, record.package_hash,
                                          record.version, record.votes_digest, sequence)
        body = {"proposal_id": proposal_id, "sequence": sequence, "statement": statement,
                "signature": self._identity.sign(statement)}
        await self._append("RATIFY", lambda entry_sequence: body)
        self._ratify_audited.add((proposal_id, sequence))

    async def _publish_execute(self, record: Any) -> None:
        if record.sequence in self.governance.certified_sequences():
            return
        package_url = package_size = None
        if record.action == "upgrade":
            try:
                view = self.governance.proposal(record.proposal_id, state=self._state, now_ms=self._now_ms())
            except NotFound:
                return          # another validator, who has the proposal, publishes it
            package_url, package_size = view.package_url, view.package_size
        body = execute_upgrade_body(record, package_url=package_url, package_size=package_size)
        entry = await self._append("EXECUTE_UPGRADE", lambda sequence: body)
        log_event(self._logger, logging.INFO, "execute_published", proposal_id=record.proposal_id,
                  sequence=record.sequence, entry_id=entry.id, signers=[item["validator_id"] for item in body["certificate"]])


def restored_version_before(chain: Sequence[Mapping], target_proposal_id: str) -> str:
    """The version this node ran before the upgrade `target_proposal_id` (from its applied chain)."""
    for index, link in enumerate(chain):
        if link.get("proposal_id") == target_proposal_id and index > 0:
            return chain[index - 1]["version"]
    raise Conflict(f"{target_proposal_id} is not an upgrade this node has applied, so there is no version to go back to",
                   hint="roll back an executed upgrade (see GET /upgrades/history)")


def read_raft_password(data_dir: Path) -> str:
    """The validators' shared Raft secret (runtime.prepare already checked its mode and digest)."""
    path = Path(data_dir) / RAFT_SECRET_FILE_NAME
    try:
        with open(path, "rb") as handle:
            return handle.read(RAFT_SECRET_SIZE_MAX_BYTES).strip().decode("ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the Raft secret {path}: {error}",
                          hint="copy raft_secret from the directory 'synapse genesis create' made for this node") from None
