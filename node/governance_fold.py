"""The log fold inside the running node: every newly visible entry goes into the pure `Governance`
(node/core/governance.py), refusals are logged and counted, and the node's jobs that wait on the log
(the executor, the validators' ratification driver) are woken.

Why it works as it does:
- Folding is cheap and never raises: on_visible only collects; verdicts are computed when asked.
- Every node judges every EXECUTE_UPGRADE itself: one without a valid majority certificate is refused,
  logged and counted (`synapse_execute_refused_total`), whoever signed the entry.
- Divergence is loud: the reports of one sequence are compared; a node whose state hash differs from
  the strict majority's is flagged and logged at ERROR once per (sequence, disagreement).
- Timings (node/metrics.py HISTOGRAMS): the moment a valid EXECUTE_UPGRADE is first folded live (not
  while the stored log is replayed at start, see `replaying`) is remembered per sequence (bounded), for
  the executor's `ratified_to_executed_seconds`, and `vote_to_ratified_seconds` observes it minus the
  proposal's decision time (the deciding vote's HLC time, or the voting deadline) as soon as this node
  knows that: gossip may bring a certificate before the proposal or its votes.
- This node's own entries seen in the log (reports, closes, RATIFY audits) are remembered here, so the
  jobs that publish them never publish one twice, also after a restart (the stored log is folded first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from node.core.certificates import verify_certificate
from node.core.crdt_log import CrdtLog
from node.core.entries import Entry
from node.core.gossip_rules import BoundedMap
from node.core.governance import Governance, ReportView
from node.core.quorum import is_majority
from node.errors import CertificateError, NotFound
from node.identity import verify_signature
from node.logging_setup import log_event
from node.metrics import Metrics
from node.limits import (GOVERNANCE_LOGGED_DIVERGENCES_MAX, GOVERNANCE_REPORTED_PROPOSALS_MAX, GOVERNANCE_VOTES_TOUCHED_MAX,
                         METRICS_TIMINGS_PENDING_MAX)


_logger = logging.getLogger("synapse.governance")


def divergence_of(reports: Sequence[ReportView], sequence: int | None) -> dict:
    """Compare the state hashes that nodes reported for one upgrade sequence. The majority is the hash
    of MORE than half of the reports; without one, every reporting node is flagged."""
    relevant = [report for report in reports if sequence is None or report.sequence == sequence]
    groups: dict[str, list[str]] = {}
    for report in relevant:
        groups.setdefault(report.state_hash, []).append(report.node_id)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    majority = ranked[0][0] if ranked and is_majority(len(ranked[0][1]), len(relevant)) else None
    diverged_nodes = sorted(node for state_hash, nodes in groups.items() if state_hash != majority for node in nodes)
    return {"diverged": len(groups) > 1, "majority_state_hash": majority, "diverged_nodes": diverged_nodes,
            "reports": len(relevant), "state_hashes": {state_hash: sorted(nodes) for state_hash, nodes in ranked}}


class GovernanceFold:
    """Subscribe `on_visible` to the log; `wake(callback)` registers what runs after a batch folded."""

    def __init__(self, *, governance: Governance, log: CrdtLog, node_id: str, network_id: str,
                 validators: Mapping[str, bytes], metrics: Metrics, state: Callable[[], Mapping],
                 now_ms: Callable[[], int], logger: logging.Logger | None = None) -> None:
        self.governance = governance
        self._log = log
        self._node_id = node_id
        self._network_id = network_id
        self._validators = validators
        self._metrics = metrics
        self._state = state
        self._now_ms = now_ms
        self._logger = logger or _logger
        self._wakers: list[Callable[[], None]] = []
        self._equivocations_seen = 0
        self._divergences_logged: set[tuple] = set()
        self.reported_sequences: set[int] = set()            # sequences this node's EXECUTION_REPORT covers
        self.ratify_audited: set[tuple[str, int]] = set()    # (proposal, sequence) of this node's RATIFY entries
        self.close_attested: set[str] = set()                # proposals whose CLOSE entry this node published
        self.votes_touched: set[str] = set()                 # proposals with new votes since the executor looked
        self._report_hashes = BoundedMap(GOVERNANCE_REPORTED_PROPOSALS_MAX)  # proposal -> state hashes its reports name
        self.certificate_seen_ms = BoundedMap(METRICS_TIMINGS_PENDING_MAX)  # sequence -> when a valid one was folded live
        self._replaying = False
        self._ratification_untimed = BoundedMap(METRICS_TIMINGS_PENDING_MAX)  # sequence -> (proposal, seen ms)

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Fold the stored log at start: state as usual, but no timing (those events happened before)."""
        self._replaying = True
        try:
            yield
        finally:
            self._replaying = False

    def wake(self, callback: Callable[[], None]) -> None:
        self._wakers.append(callback)

    def on_visible(self, entries: Sequence[Entry]) -> None:
        """Fold newly visible entries (called for every batch; cheap, never raises)."""
        touched_reports: set[str] = set()
        for entry in entries:
            self.governance.apply(entry)
            self._note_own_or_checked(entry, touched_reports)
            if entry.kind == "VOTE" and len(self.votes_touched) < GOVERNANCE_VOTES_TOUCHED_MAX:
                self.votes_touched.add(entry.body["proposal_id"])
        equivocations = self._log.equivocations()
        if len(equivocations) != self._equivocations_seen:
            self._equivocations_seen = len(equivocations)
            self.governance.note_equivocations(equivocations)
        for proposal_id in sorted(touched_reports):
            self._check_divergence(proposal_id)
        if self._ratification_untimed:
            self._time_ratifications()
        if any(entry.kind != "NOTE" for entry in entries):
            for wake in self._wakers:
                wake()

    def _note_own_or_checked(self, entry: Entry, touched_reports: set[str]) -> None:
        mine = entry.author == self._node_id
        if entry.kind == "EXECUTE_UPGRADE":
            self._check_execute(entry)
        elif entry.kind == "EXECUTION_REPORT":
            # A divergence needs two different state hashes among a proposal's reports: until then the
            # whole view is not built for each report (at N nodes that was N views per node per upgrade).
            hashes = self._report_hashes.get(entry.body["proposal_id"])
            if hashes is None:
                hashes = set()
                self._report_hashes.put(entry.body["proposal_id"], hashes)
            hashes.add(entry.body["state_hash"])
            if len(hashes) > 1:
                touched_reports.add(entry.body["proposal_id"])
            if mine:
                self.reported_sequences.add(entry.body["sequence"])
        elif entry.kind == "RATIFY" and mine:
            self.ratify_audited.add((entry.body["proposal_id"], entry.body["sequence"]))
        elif entry.kind == "CLOSE" and mine:
            self.close_attested.add(entry.body["proposal_id"])

    def _check_execute(self, entry: Entry) -> None:
        """Refuse (log, count) an EXECUTE_UPGRADE without a valid majority certificate, whoever sent it."""
        try:
            verify_certificate(entry.body, network_id=self._network_id, validators=self._validators,
                               verify=verify_signature)
        except CertificateError as error:     # each entry is folded once per process: counted once
            self._metrics.inc("execute_refused_total", reason="bad_certificate")
            log_event(self._logger, logging.ERROR, "execute_refused", entry_id=entry.id, author=entry.author,
                      proposal_id=entry.body["proposal_id"], sequence=entry.body["sequence"], reason=error.message)
            return
        if not self._replaying:
            self._time_ratification(entry)

    def _time_ratification(self, entry: Entry) -> None:
        """The first valid certificate of a sequence seen live: remember when; it is timed from the
        decision once this node knows the decision (the certificate may arrive before the votes)."""
        sequence = entry.body["sequence"]
        if sequence in self.certificate_seen_ms:    # another validator's EXECUTE_UPGRADE for it: timed once
            return
        seen_ms = self._now_ms()
        self.certificate_seen_ms.put(sequence, seen_ms)
        self._ratification_untimed.put(sequence, (entry.body["proposal_id"], seen_ms))

    def _time_ratifications(self) -> None:
        """Observe vote -> ratified for each certificate whose proposal's decision time is now known."""
        for sequence, (proposal_id, seen_ms) in list(self._ratification_untimed.items()):
            try:
                view = self.governance.proposal(proposal_id, state=self._state(), now_ms=self._now_ms())
            except NotFound:
                continue       # the proposal has not reached this node yet
            if view.decided_at_ms is None:
                if view.closed:    # closed without a decision time (decided before any vote): nothing to time
                    del self._ratification_untimed[sequence]
                continue           # else the votes that decided it have not reached this node yet
            del self._ratification_untimed[sequence]
            self._metrics.observe("vote_to_ratified_seconds", (seen_ms - view.decided_at_ms) / 1000)

    def _check_divergence(self, proposal_id: str) -> None:
        try:
            view = self.governance.proposal(proposal_id, state=self._state(), now_ms=self._now_ms())
        except NotFound:
            return
        sequence = view.execution.sequence if view.execution is not None else None
        divergence = divergence_of(view.reports, sequence)
        if not divergence["diverged"]:
            return
        mine = self._node_id in divergence["diverged_nodes"]
        key = (proposal_id, sequence, tuple(sorted((h, tuple(n)) for h, n in divergence["state_hashes"].items())))
        if key in self._divergences_logged or len(self._divergences_logged) >= GOVERNANCE_LOGGED_DIVERGENCES_MAX:
            return
        self._divergences_logged.add(key)
        self._metrics.inc("state_divergences_total", this_node="true" if mine else "false")
        log_event(self._logger, logging.ERROR, "state_diverged", proposal_id=proposal_id, sequence=sequence,
                  this_node_diverged=mine, majority_state_hash=divergence["majority_state_hash"],
                  diverged_nodes=divergence["diverged_nodes"], state_hashes=divergence["state_hashes"])
