"""The validators' ratification driver: this validator's Raft member (node/raft.py) and the step that
compares its own fold with the replicated state and submits what is missing.

Why it works as it does:
- Validators drive closing and ratification; everybody else only watches. The step
  (`ratification.validator_todo`): close voting (at the deadline by THIS validator's clock, or once its
  tally is decided) naming the votes it holds; publish the counted votes Raft fixed (a CLOSE entry);
  ratify what the counted votes approve; certify its assigned sequence; publish the EXECUTE_UPGRADE
  with the complete certificate (the Raft leader at once, the others only if none shows up within
  `execute_publish_grace_ms`: each copy is flooded to every node); then publish its signature as a
  RATIFY audit entry (gossiped lazily, after the EXECUTE_UPGRADE so that no certificate waits for it).
- Every step is idempotent (Raft commands repeat harmlessly, duplicate entries are deduplicated), so it
  runs on every fold, on every Raft event (which PySyncObj's thread hands to the loop through
  call_soon_threadsafe), and on a ~1 s safety sweep; timeouts and "no leader" are retried with
  exponential backoff (node/wake_loop.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from node.core.certificates import certificate_statement
from node.core.closing import unpack_vote_ids
from node.core.raft_timing import call_timeout_s
from node.core.ratification import (PublishRules, close_body, closed_awaiting_approval, execute_upgrade_body,
                                     validator_todo)
from node.errors import NotFound
from node.governance_fold import GovernanceFold
from node.identity import Identity, verify_signature
from node.local_author import LocalAuthor
from node.local_versions import LocalVersions
from node.logging_setup import log_event
from node.raft import ValidatorRaft, ValidatorRaftConfig
from node.wake_loop import run_woken, stop_tasks

RAFT_DIR_NAME = "raft"

_logger = logging.getLogger("synapse.governance")


class RatificationDriver:
    """Run as an aiohttp cleanup_ctx (`context`) after LocalVersions; `wake()` after new entries."""

    def __init__(self, *, config: ValidatorRaftConfig, identity: Identity, fold: GovernanceFold,
                 versions: LocalVersions, author: LocalAuthor, network_id: str, now_ms: Callable[[], int],
                 settings: Any, fault_point: Callable[[str], None] | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.config = config
        self._identity = identity
        self._fold = fold
        self._versions = versions
        self._author = author
        self._network_id = network_id
        self._now_ms = now_ms
        self._settings = settings
        self._fault_point = fault_point or (lambda _name: None)
        self._logger = logger or _logger
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.raft: ValidatorRaft | None = None
        self._certified_seen_ms: dict[int, int] = {}     # sequences waiting for the leader's EXECUTE_UPGRADE

    def wake(self) -> None:
        self._wake.set()

    async def context(self, app: Any) -> AsyncIterator[None]:
        """Join Raft (bind, journal, dump) and run the step until shutdown; then leave Raft."""
        settings = self._settings
        self.raft = ValidatorRaft(self.config, sign=self._identity.sign, verify=verify_signature,
                                  on_change=self._on_raft_events)
        try:
            await self.raft.start()
            self._tasks.append(asyncio.get_running_loop().create_task(run_woken(
                "ratification", self._wake, self.step, sweep_ms=settings.ratification_sweep_ms,
                retry_delay_first_ms=settings.retry_delay_first_ms, retry_delay_max_ms=settings.retry_delay_max_ms,
                logger=self._logger), name="governance-ratification"))
            yield
        finally:
            tasks, self._tasks = self._tasks, []
            await stop_tasks(tasks, settings.stop_timeout_ms / 1000)
            await self.raft.stop()

    def _on_raft_events(self, events: Iterable[object]) -> None:
        """Raft's VotingClosed / SequenceAssigned / CertificateCompleted, on the loop: there is work."""
        self._wake.set()

    async def step(self) -> None:
        raft = self.raft
        assert raft is not None
        governance, state, now_ms = self._fold.governance, self._versions.network_state(), self._now_ms()
        closable = governance.closing_candidates(state=state, now_ms=now_ms)
        approved = self._approved(governance, raft, state, now_ms)

        def plan() -> Any:
            rules = PublishRules(leading=raft.is_leader(), now_ms=self._now_ms(), certified_seen_ms=self._certified_seen_ms,
                                 grace_ms=self._settings.execute_publish_grace_ms)
            todo = validator_todo(raft.snapshot(), validator_id=self._identity.node_id, closable=closable,
                                  attested=self._fold.close_attested, approved=approved,
                                  published_sequences=governance.certified_sequences(),
                                  audited=self._fold.ratify_audited, rules=rules)
            self._certified_seen_ms = {sequence: self._certified_seen_ms.get(sequence, rules.now_ms)
                                       for sequence in todo.publish_later}
            return todo

        todo = plan()
        timeout_s = call_timeout_s(configured_s=self._settings.raft_call_timeout_ms / 1000,
                                   attempt_s=raft.config.timing.call_attempt_timeout_s)
        for proposal_id in todo.to_close:
            self._log_outcome("close", await raft.close(proposal_id=proposal_id, vote_ids=closable[proposal_id],
                                                        timeout_s=timeout_s))
        if todo.to_close:
            approved = self._approved(governance, raft, state, now_ms)     # what Raft just closed, if it closed
            todo = plan()
        for proposal_id in todo.to_ratify:     # before the CLOSE entries: nothing in Raft waits for them
            action, package_hash, version, votes_digest = approved[proposal_id]
            self._log_outcome("ratify", await raft.ratify(proposal_id=proposal_id, action=action, package_hash=package_hash,
                                                          version=version, votes_digest=votes_digest, timeout_s=timeout_s))
        for record in todo.to_attest:
            await self._publish_close(record)
        for record in todo.to_certify:
            self._log_outcome("certify", await raft.certify(
                proposal_id=record.proposal_id, sequence=record.sequence, action=record.action,
                package_hash=record.package_hash, version=record.version, votes_digest=record.votes_digest,
                timeout_s=timeout_s))
        if todo.to_certify or todo.to_ratify:
            todo = plan()
        for record in todo.to_publish:
            await self._publish_execute(record)
        if todo.to_publish:
            todo = plan()
        for record in todo.to_audit:
            await self._publish_ratify_audit(record)

    def _approved(self, governance: Any, raft: ValidatorRaft, state: Any, now_ms: int) -> dict:
        """{proposal_id: (action, hash, version, votes digest)} this validator would ratify."""
        approved = {view.proposal_id: (view.action, view.package_hash, view.version, view.votes_digest)
                    for view in governance.needing_ratification(state=state, now_ms=now_ms)}
        approved.update(self._approved_by_raft_close(raft.snapshot(), approved, state, now_ms))
        return approved

    def _approved_by_raft_close(self, view: Any, approved: dict, state: Any, now_ms: int) -> dict:
        """Proposals Raft closed that this validator's tally over the counted votes approves, before the
        CLOSE entries come back to it through gossip (a majority of them would name the same set: they
        are copies of this Raft record). Without this, ratification waited for a gossip round trip of
        the CLOSE entries across the whole network: about a second at N = 100 on one machine."""
        found = {}
        for record in closed_awaiting_approval(view, approved):
            approval = self._fold.governance.approval_under_counted(
                record.proposal_id, votes_digest_hex=record.votes_digest, vote_ids=frozenset(unpack_vote_ids(record.vote_ids)),
                state=state, now_ms=now_ms)
            if approval is not None:
                found[record.proposal_id] = approval
        return found

    def _log_outcome(self, what: str, outcome: Any) -> None:
        level = logging.INFO if outcome.accepted else logging.WARNING
        log_event(self._logger, level, f"raft_{what}", proposal_id=outcome.proposal_id, status=outcome.status,
                  sequence=outcome.sequence, message=outcome.message)

    async def _publish_close(self, record: Any) -> None:
        """A CLOSE entry: the counted votes Raft fixed, attested by this validator. Every node takes a
        proposal as closed once a strict majority of validators published the same set."""
        if record.proposal_id in self._fold.close_attested:
            return
        entry = await self._author.append("CLOSE", close_body(record))
        self._fold.close_attested.add(record.proposal_id)
        log_event(self._logger, logging.INFO, "voting_closed", proposal_id=record.proposal_id,
                  votes_counted=len(record.vote_ids) // 32, votes_digest=record.votes_digest, entry_id=entry.id)

    async def _publish_ratify_audit(self, record: Any) -> None:
        """A RATIFY entry: this validator's certificate signature, public for audit (ed25519 is
        deterministic: it is the very signature submitted to Raft)."""
        proposal_id, sequence = record.proposal_id, record.sequence
        if (proposal_id, sequence) in self._fold.ratify_audited:
            return
        statement = certificate_statement(self._network_id, proposal_id, record.action, record.package_hash,
                                          record.version, record.votes_digest, sequence)
        body = {"proposal_id": proposal_id, "sequence": sequence, "statement": statement,
                "signature": self._identity.sign(statement)}
        await self._author.append("RATIFY", body)
        self._fold.ratify_audited.add((proposal_id, sequence))

    async def _publish_execute(self, record: Any) -> None:
        governance = self._fold.governance
        if record.sequence in governance.certified_sequences():
            return
        package_url = package_size = None
        if record.action == "upgrade":
            try:
                view = governance.proposal(record.proposal_id, state=self._versions.network_state(),
                                           now_ms=self._now_ms())
            except NotFound:
                return          # another validator, who has the proposal, publishes it
            package_url, package_size = view.package_url, view.package_size
        body = execute_upgrade_body(record, package_url=package_url, package_size=package_size)
        self._fault_point("before_execute_published")
        entry = await self._author.append("EXECUTE_UPGRADE", body)
        log_event(self._logger, logging.INFO, "execute_published", proposal_id=record.proposal_id,
                  sequence=record.sequence, entry_id=entry.id, signers=[item["validator_id"] for item in body["certificate"]])
