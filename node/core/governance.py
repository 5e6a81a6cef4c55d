"""The governance fold: every PROPOSAL, VOTE, CLOSE, EXECUTE_UPGRADE, EXECUTION_REPORT, ROLLBACK and
RATIFY entry collected per proposal, and the views the API and the runtime ask for.

Why it works as it does:
  * Every node folds the same signed log entries, so every node must reach the same verdict from the
    same entries. The fold only COLLECTS entries per proposal; verdicts are computed when asked, as a
    pure function of (the collected entries, the current network state's reputations, now_ms). So the
    result never depends on the order in which entries of different proposals arrived, and votes that
    arrive before their proposal are kept (bounded) until it does.
  * WHICH votes count is not decided here: a vote's timestamp is chosen by its voter, so a vote
    claiming a time before a long-gone deadline proves nothing. The validators close voting through
    Raft (node/core/closing.py) naming the votes they received in time, and each publishes the counted
    set in a CLOSE entry; a proposal is closed on a node once a strict majority of validators published
    the same set. Only then does its status leave "voting": the tally (node/core/tally.py) over the
    counted votes decides approved, rejected or expired, and ratification and the certificate sign the
    set's digest. Before that, the tally of the votes this node holds is shown as provisional (and
    drives the validators' early close). Votes outside the counted set are shown as "not_counted".
  * The lifecycle is one transition table (node/core/lifecycle.py); entries are untrusted, so the fold
    records refusals as problems instead of corrupting the status.
  * A certificate signed by a majority of validators is the network's decision: when this node's own
    tally disagrees (its state or clock differ), the proposal is still shown as ratified, with a note.
  * Views are plain frozen data; their JSON form is node/presentation.py's job.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from node.core.certificates import VALIDATORS_MAX, Verify, certificate_signers, certificate_statement
from node.core.closing import unpack_vote_ids, votes_digest
from node.core.entries import Entry
from node.core.lifecycle import APPROVED, EXECUTED, ROLLED_BACK, VOTING, derive_status
from node.core.lifecycle import VERSION_FREE_STATUSES
from node.core.proposals import GovernanceRules, proposal_refusal
from node.core.semver import parse_version
from node.core.quorum import majority_of
from node.core.tally import Ballot, Tally, VoteRecord, count_votes, reputations_from_state
from node.core.utc import format_utc_ms
from node.errors import CertificateError, ConfigError, Conflict, NotFound, VersionError


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionView:
    """The certified EXECUTE_UPGRADE of a proposal (the first in canonical order, lowest sequence)."""
    sequence: int
    entry_id: str
    published_by: tuple[str, ...]            # validators who published an identical-sequence entry
    certificate_signers: tuple[str, ...]
    body: dict


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportView:
    node_id: str
    sequence: int
    success: bool
    version: str
    state_hash: str
    error: str | None
    entry_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackView:
    """A node's local rollback (ROLLBACK audit entry) or the network rollback proposal that undid it."""
    node_id: str | None
    restored_version: str
    previous_version: str | None
    reason: str
    entry_id: str | None
    rollback_proposal_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RatifyAuditView:
    validator_id: str
    sequence: int
    valid: bool                              # a validator's signature over this proposal's certificate statement
    entry_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalView:
    proposal_id: str
    action: str
    title: str
    description: str
    version: str
    package_url: str | None
    package_hash: str | None
    package_size: int | None
    target_proposal_id: str | None
    author: str
    entry_id: str
    created_ms: int
    voting_deadline_ms: int
    status: str
    tally: Tally
    decided_at_ms: int | None
    votes: tuple[VoteRecord, ...]
    closed: bool                             # a strict majority of validators published the counted votes
    votes_digest: str | None                 # digest of the counted votes, once closed
    closed_by: tuple[str, ...]               # validators whose CLOSE entry names that set
    execution: ExecutionView | None
    reports: tuple[ReportView, ...]
    rollbacks: tuple[RollbackView, ...]
    ratifications: tuple[RatifyAuditView, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """An entry the fold refused or voided, kept as evidence (bounded) and counted by reason."""
    reason: str
    message: str
    entry_id: str | None
    author: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CertifiedExecution:
    """A certified EXECUTE_UPGRADE, as the executor needs it: apply in `sequence` order, once each."""
    sequence: int
    proposal_id: str
    entry_id: str
    body: dict


# --- the fold -----------------------------------------------------------------------------------


def _order_key(entry: Entry) -> tuple:
    return (entry.hlc.wall_ms, entry.hlc.logical, entry.author, entry.id)


@dataclass(slots=True)
class _Execute:
    entry_id: str
    author: str
    order_key: tuple
    body: dict
    signers: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class _RatifyAudit:
    validator_id: str
    sequence: int
    entry_id: str
    statement: bytes


@dataclass(slots=True)
class _Bucket:
    """Everything the log holds about one proposal id."""
    proposal: Entry | None = None
    ballots: dict[str, Ballot] = field(default_factory=dict)
    executes: dict[str, _Execute] = field(default_factory=dict)
    reports: dict[str, Entry] = field(default_factory=dict)     # author -> latest EXECUTION_REPORT
    rollbacks: dict[str, Entry] = field(default_factory=dict)   # author -> latest ROLLBACK audit entry
    ratify_audits: dict[str, _RatifyAudit] = field(default_factory=dict)
    closes: dict[str, set[str]] = field(default_factory=dict)        # votes digest -> validators who published it
    close_vote_ids: dict[str, frozenset[str]] = field(default_factory=dict)   # votes digest -> the vote ids


class Governance:
    """Folds visible log entries; answers questions about proposals for the API and the validators.

    `apply(entry)` in log order (any order works: verdicts are computed at query time); call
    `note_equivocations(CrdtLog.equivocations())` whenever the log reports new ones. Every query
    takes the current network `state` (for reputations and the current version) and `now_ms`.
    Not thread-safe: use it from the event loop only.
    """

    def __init__(self, *, network_id: str, validators: Mapping[str, bytes], verify: Verify, local_node_id: str,
                 rules: GovernanceRules = GovernanceRules(), planted_bugs: frozenset[str] = frozenset()) -> None:
        if not 1 <= len(validators) <= VALIDATORS_MAX:
            raise ConfigError(f"the validator set must hold 1 to {VALIDATORS_MAX} validators, not {len(validators)}")
        self._network_id = network_id
        self._validators = dict(validators)
        self._verify = verify
        self._local_node_id = local_node_id
        self._rules = rules
        self._planted_bugs = planted_bugs      # node/planted_bugs.py: testbed only, empty in production
        self._buckets: dict[str, _Bucket] = {}
        self._applied: set[str] = set()
        self._void: set[str] = set()
        self._equivocation_pairs: set[tuple[str, str]] = set()
        self._authors: dict[str, str] = {}                     # entry id -> author, for applied governance entries
        self._proposals_by_author: dict[str, list[Entry]] = {}
        # Kept as entries fold, so that folding a proposal does not scan the history (issue 11):
        self._orphans = 0                                      # buckets without a proposal (yet)
        self._deadlines_by_author: dict[str, list[int]] = {}   # sorted voting deadlines of each author's proposals
        self._top_sequence_by_author: dict[str, int] = {}      # highest sequence among each author's proposals
        self._irregular_authors: set[str] = set()              # authors with a void (equivocated) governance entry
        self._problems: deque[Problem] = deque(maxlen=rules.problems_max)
        self._problem_counts: Counter[str] = Counter()
        self._handlers: dict[str, Callable[[Entry], None]] = {
            "PROPOSAL": self._apply_proposal, "VOTE": self._apply_vote, "EXECUTE_UPGRADE": self._apply_execute,
            "EXECUTION_REPORT": self._apply_report, "ROLLBACK": self._apply_rollback, "RATIFY": self._apply_ratify,
            "CLOSE": self._apply_close,
        }

    @property
    def rules(self) -> GovernanceRules:
        return self._rules

    # --- folding ----------------------------------------------------------------------------

    def apply(self, entry: Entry) -> None:
        """Fold one visible entry. Idempotent; never raises on a bad entry (it becomes a Problem)."""
        handler = self._handlers.get(entry.kind)
        if handler is None or entry.id in self._applied:
            return
        self._applied.add(entry.id)
        self._authors[entry.id] = entry.author
        handler(entry)

    def note_equivocations(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Void both entries of each pair (same author and sequence, different content)."""
        for first, second in pairs:
            pair = (min(first, second), max(first, second))
            if pair in self._equivocation_pairs:
                continue
            self._equivocation_pairs.add(pair)
            self._void.update(pair)
            author = self._authors.get(first) or self._authors.get(second)
            if author is not None:
                self._irregular_authors.add(author)
            self._problem("equivocation", f"entries {pair[0][:12]} and {pair[1][:12]} share an author and a sequence: "
                          "both are void", pair[0], author)

    def problems(self) -> tuple[Problem, ...]:
        """The most recent problems (bounded by rules.problems_max), oldest first."""
        return tuple(self._problems)

    def problem_counts(self) -> dict[str, int]:
        """Every problem ever recorded, by reason (for metrics)."""
        return dict(self._problem_counts)

    def _problem(self, reason: str, message: str, entry_id: str | None, author: str | None) -> None:
        self._problems.append(Problem(reason=reason, message=message, entry_id=entry_id, author=author))
        self._problem_counts[reason] += 1

    def _bucket(self, proposal_id: str, entry: Entry) -> _Bucket | None:
        """The bucket of `proposal_id`, created if the limits allow: proposals_max for proposals,
        orphan_proposals_max for ids that only votes, reports or executions have named so far."""
        bucket = self._buckets.get(proposal_id)
        if bucket is not None:
            return bucket
        orphans = self._orphans
        full = (len(self._buckets) - orphans >= self._rules.proposals_max if entry.kind == "PROPOSAL"
                else orphans >= self._rules.orphan_proposals_max)
        if full:
            self._problem("full", f"too many proposals are tracked: {entry.kind} for {proposal_id!r} ignored",
                          entry.id, entry.author)
            return None
        bucket = self._buckets[proposal_id] = _Bucket()
        self._orphans += 1
        return bucket

    def _apply_proposal(self, entry: Entry) -> None:
        body = entry.body
        proposal_id = body["proposal_id"]
        refusal = proposal_refusal(entry, self._rules)
        existing = self._buckets.get(proposal_id)
        if refusal is None and existing is not None and existing.proposal is not None:
            # Only an equivocating author can make two proposals with one id (the id is bound to author
            # and sequence); until the log reports the pair, keep the one first in log order.
            loser = max(existing.proposal, entry, key=_order_key)
            existing.proposal = min(existing.proposal, entry, key=_order_key)
            self._problem("duplicate_proposal", f"two proposals carry the id {proposal_id}: entry "
                          f"{loser.id[:12]} is ignored", loser.id, loser.author)
            return
        if refusal is None:
            refusal = self._open_proposals_refusal(entry)
        if refusal is not None:
            self._problem(refusal[0], refusal[1], entry.id, entry.author)
            return
        bucket = self._bucket(proposal_id, entry)
        if bucket is not None:
            if bucket.proposal is None:
                self._orphans -= 1
            bucket.proposal = entry
            self._proposals_by_author.setdefault(entry.author, []).append(entry)
            insort(self._deadlines_by_author.setdefault(entry.author, []), entry.body["voting_deadline_ms"])
            top = self._top_sequence_by_author.get(entry.author, 0)
            self._top_sequence_by_author[entry.author] = max(top, entry.sequence)
            if entry.id in self._void:
                self._irregular_authors.add(entry.author)

    def _open_proposals_refusal(self, entry: Entry) -> tuple[str, str] | None:
        """One member may not hold more than open_proposals_per_author_max proposals whose voting periods
        overlap (and so fill proposals_max for everyone). Judged only from the author's own EARLIER
        proposals (lower sequence): those are its causal ancestors, folded before this entry on every
        node, so every node reaches the same verdict whatever else has arrived."""
        created_ms = entry.hlc.wall_ms
        if entry.author not in self._irregular_authors and self._top_sequence_by_author.get(entry.author, 0) < entry.sequence:
            # The usual case: every proposal of the author is earlier and none is void; count by bisection.
            deadlines = self._deadlines_by_author.get(entry.author, [])
            open_count = len(deadlines) - bisect_left(deadlines, created_ms)
        else:  # an equivocating author: the scan, as the rule reads
            open_count = sum(1 for earlier in self._proposals_by_author.get(entry.author, ())
                             if earlier.sequence < entry.sequence and earlier.body["voting_deadline_ms"] >= created_ms
                             and earlier.id not in self._void)
        if open_count < self._rules.open_proposals_per_author_max:
            return None
        return ("too_many_open_proposals", f"author {entry.author} already has {open_count} proposals open for voting; "
                f"at most {self._rules.open_proposals_per_author_max} may overlap (proposal {entry.body['proposal_id']})")

    def _apply_vote(self, entry: Entry) -> None:
        bucket = self._bucket(entry.body["proposal_id"], entry)
        if bucket is None:
            return
        if len(bucket.ballots) >= self._rules.votes_per_proposal_max:
            self._problem("full", f"proposal {entry.body['proposal_id']} already holds "
                          f"{self._rules.votes_per_proposal_max} vote entries", entry.id, entry.author)
            return
        bucket.ballots[entry.id] = Ballot(voter=entry.author, choice=entry.body["vote"], author_sequence=entry.sequence,
                                          order_key=_order_key(entry), entry_id=entry.id)

    def _apply_execute(self, entry: Entry) -> None:
        try:
            signers = certificate_signers(entry.body, network_id=self._network_id, validators=self._validators,
                                          verify=self._verify)
        except CertificateError as error:
            signers, message = frozenset(), error.message
        else:
            message = f"the certificate holds valid signatures of {len(signers)} of {len(self._validators)} validators"
        if len(signers) < majority_of(len(self._validators)):
            self._problem("bad_certificate", f"EXECUTE_UPGRADE for {entry.body['proposal_id']!r} refused: {message}",
                          entry.id, entry.author)
            return
        bucket = self._bucket(entry.body["proposal_id"], entry)
        if bucket is not None and len(bucket.executes) < 4 * len(self._validators):
            bucket.executes[entry.id] = _Execute(entry_id=entry.id, author=entry.author, order_key=_order_key(entry),
                                                 body=entry.body, signers=tuple(sorted(signers)))

    def _apply_report(self, entry: Entry) -> None:
        bucket = self._bucket(entry.body["proposal_id"], entry)
        previous = bucket.reports.get(entry.author) if bucket is not None else None
        if bucket is not None and (previous is None or previous.sequence < entry.sequence):
            bucket.reports[entry.author] = entry

    def _apply_rollback(self, entry: Entry) -> None:
        bucket = self._bucket(entry.body["proposal_id"], entry)
        previous = bucket.rollbacks.get(entry.author) if bucket is not None else None
        if bucket is not None and (previous is None or previous.sequence < entry.sequence):
            bucket.rollbacks[entry.author] = entry

    def _apply_ratify(self, entry: Entry) -> None:
        bucket = self._bucket(entry.body["proposal_id"], entry)
        if bucket is None or len(bucket.ratify_audits) >= 4 * len(self._validators):
            return
        public_key = self._validators.get(entry.author)
        # The signature is checked once, here; evaluation checks that the signed statement is this
        # proposal's certificate statement at the claimed sequence.
        signed = public_key is not None and bool(self._verify(public_key, entry.body["statement"], entry.body["signature"]))
        if not signed:
            self._problem("bad_ratify", f"RATIFY for {entry.body['proposal_id']!r} has no valid validator signature",
                          entry.id, entry.author)
            return
        bucket.ratify_audits[entry.id] = _RatifyAudit(validator_id=entry.author, sequence=entry.body["sequence"],
                                                      entry_id=entry.id, statement=entry.body["statement"])

    def _apply_close(self, entry: Entry) -> None:
        """A validator's CLOSE: the votes Raft counted. Kept per digest; a set counts once a strict
        majority of validators published it (an equivocating validator adds to two digests, and is
        still only one of the majority each needs)."""
        body = entry.body
        if entry.author not in self._validators:
            self._problem("bad_close", f"CLOSE for {body['proposal_id']!r} by {entry.author}, who is not a validator",
                          entry.id, entry.author)
            return
        try:
            vote_ids = frozenset(unpack_vote_ids(body["vote_ids"]))
        except CertificateError as error:
            self._problem("bad_close", f"CLOSE for {body['proposal_id']!r}: {error.message}", entry.id, entry.author)
            return
        if votes_digest(body["vote_ids"]) != body["votes_digest"]:
            self._problem("bad_close", f"CLOSE for {body['proposal_id']!r}: votes_digest does not match its vote ids",
                          entry.id, entry.author)
            return
        bucket = self._bucket(body["proposal_id"], entry)
        if bucket is None:
            return
        if body["votes_digest"] not in bucket.closes and len(bucket.closes) >= 2 * len(self._validators):
            return
        bucket.closes.setdefault(body["votes_digest"], set()).add(entry.author)
        bucket.close_vote_ids[body["votes_digest"]] = vote_ids

    def _closed(self, bucket: _Bucket) -> tuple[str, frozenset[str], tuple[str, ...]] | None:
        """(digest, counted vote ids, validators) of the set a strict majority of validators published."""
        needed = majority_of(len(self._validators))
        closed = sorted(digest for digest, validators in bucket.closes.items() if len(validators) >= needed)
        if not closed:
            return None
        return closed[0], bucket.close_vote_ids[closed[0]], tuple(sorted(bucket.closes[closed[0]]))

    # --- queries ------------------------------------------------------------------------------

    def proposals(self, *, state: Mapping, now_ms: int) -> list[ProposalView]:
        """Every known, valid proposal, in log order (oldest first)."""
        views = self._views(reputations_from_state(state), now_ms)
        return sorted(views.values(), key=lambda view: _order_key(self._buckets[view.proposal_id].proposal))

    def proposal(self, proposal_id: str, *, state: Mapping, now_ms: int) -> ProposalView:
        """One proposal in detail; raises NotFound."""
        bucket = self._buckets.get(proposal_id) if isinstance(proposal_id, str) else None
        if bucket is None or bucket.proposal is None or bucket.proposal.id in self._void:
            raise NotFound(f"no proposal {str(proposal_id)[:100]!r} is known to this node",
                           hint="list proposals with GET /proposals; a new proposal takes a moment to reach every node")
        reputations = reputations_from_state(state)
        rollback = None
        if bucket.proposal.body["action"] == "upgrade":
            rollbacks = [self._evaluate(other_id, other, reputations, now_ms, None)
                         for other_id, other in self._live_buckets()
                         if other.proposal.body["target_proposal_id"] == proposal_id]
            rollback = _executed_rollback(rollbacks)
        return self._evaluate(proposal_id, bucket, reputations, now_ms, rollback)

    def needing_ratification(self, *, state: Mapping, now_ms: int) -> list[ProposalView]:
        """Proposals whose counted votes approve them, with no certified EXECUTE_UPGRADE yet, oldest
        first: what a validator should ratify (with the counted votes' digest)."""
        return [view for view in self.proposals(state=state, now_ms=now_ms) if view.status == APPROVED]

    def approval_under_counted(self, proposal_id: str, *, votes_digest_hex: str, vote_ids: frozenset[str],
                               state: Mapping, now_ms: int) -> tuple[str, str | None, str, str] | None:
        """For a validator whose Raft replica closed `proposal_id` with these counted votes: what
        `needing_ratification` will say once a majority of CLOSE entries (copies of that Raft record)
        reach its log. (action, hash, version, digest) if approved and not certified, else None."""
        bucket = self._buckets.get(proposal_id)
        if bucket is None or bucket.proposal is None or bucket.proposal.id in self._void:
            return None
        view = self._evaluate(proposal_id, bucket, reputations_from_state(state), now_ms, None,
                              closed=(votes_digest_hex, vote_ids, ()))
        if view.status != APPROVED:
            return None
        return view.action, view.package_hash, view.version, votes_digest_hex

    def closing_candidates(self, *, state: Mapping, now_ms: int) -> dict[str, tuple[str, ...]]:
        """For a validator: {proposal_id: vote ids to name} of every proposal that is not closed and
        whose deadline has passed by `now_ms` (this validator's clock) or whose provisional tally is
        already decided. Each voter's latest vote (highest author sequence, then highest id) is named:
        the tally counts only that one."""
        candidates = {}
        for view in self.proposals(state=state, now_ms=now_ms):
            if view.closed or not (now_ms > view.voting_deadline_ms or view.tally.outcome != VOTING):
                continue
            latest: dict[str, Ballot] = {}
            for ballot in self._buckets[view.proposal_id].ballots.values():
                kept = latest.get(ballot.voter)
                if kept is None or (ballot.author_sequence, ballot.entry_id) > (kept.author_sequence, kept.entry_id):
                    latest[ballot.voter] = ballot
            candidates[view.proposal_id] = tuple(sorted(ballot.entry_id for ballot in latest.values()))
        return candidates

    def certified_executions(self) -> list[CertifiedExecution]:
        """Every EXECUTE_UPGRADE with a valid certificate, one per sequence (the first in log order),
        in sequence order. The certificate is the authority: this does not need the proposal."""
        by_sequence: dict[int, _Execute] = {}
        for bucket in self._buckets.values():
            for execute in bucket.executes.values():
                sequence = execute.body["sequence"]
                if sequence not in by_sequence or execute.order_key < by_sequence[sequence].order_key:
                    by_sequence[sequence] = execute
        return [CertifiedExecution(sequence=sequence, proposal_id=by_sequence[sequence].body["proposal_id"],
                                   entry_id=by_sequence[sequence].entry_id, body=by_sequence[sequence].body)
                for sequence in sorted(by_sequence)]

    def certified_sequences(self) -> set[int]:
        return {execution.sequence for execution in self.certified_executions()}

    # --- validation rules shared with the API ------------------------------------------------

    def check_can_propose(self, body: Mapping, *, state: Mapping, now_ms: int, author: str | None = None) -> None:
        """Raise Conflict / NotFound / VersionError if this PROPOSAL body may not be proposed now (by
        `author`, whose open proposals are bounded)."""
        open_count = sum(1 for earlier in self._proposals_by_author.get(author, ())
                         if earlier.body["voting_deadline_ms"] >= now_ms and earlier.id not in self._void)
        if open_count >= self._rules.open_proposals_per_author_max:
            raise Conflict(f"this node already has {open_count} proposals open for voting; the network allows at most "
                           f"{self._rules.open_proposals_per_author_max} per member at a time",
                           hint="wait until one of them reaches its voting deadline (GET /proposals)")
        views = {view.proposal_id: view for view in self.proposals(state=state, now_ms=now_ms)
                 if view.proposal_id != body["proposal_id"]}     # checking an already folded body is harmless
        current = current_version(state)
        if body["action"] == "upgrade":
            check_upgrade_allowed(body, views, current)
        else:
            check_rollback_allowed(body, views, current)

    def check_can_vote(self, proposal_id: str, *, state: Mapping, now_ms: int) -> ProposalView:
        """Raise NotFound for an unknown proposal, Conflict when voting is closed; else its view."""
        view = self.proposal(proposal_id, state=state, now_ms=now_ms)
        if now_ms > view.voting_deadline_ms:
            raise Conflict(f"voting on {proposal_id} closed at its deadline {format_utc_ms(view.voting_deadline_ms)} "
                           f"(voting_deadline_ms={view.voting_deadline_ms})",
                           hint="votes cast after the deadline do not count")
        if view.status != VOTING or view.closed:
            raise Conflict(f"voting on {proposal_id} is closed: the proposal is already {view.status}",
                           hint="the validators closed voting; see GET /proposals/" + proposal_id)
        if view.tally.outcome != VOTING:
            raise Conflict(f"voting on {proposal_id} is decided ({view.tally.outcome}): the outcome can no longer change",
                           hint="the validators are closing voting; see GET /proposals/" + proposal_id)
        return view

    # --- evaluation ---------------------------------------------------------------------------

    def _live_buckets(self) -> list[tuple[str, _Bucket]]:
        return [(proposal_id, bucket) for proposal_id, bucket in self._buckets.items()
                if bucket.proposal is not None and bucket.proposal.id not in self._void]

    def _views(self, reputations: Mapping[str, int], now_ms: int) -> dict[str, ProposalView]:
        live = self._live_buckets()
        views = {proposal_id: self._evaluate(proposal_id, bucket, reputations, now_ms, None)
                 for proposal_id, bucket in live if bucket.proposal.body["action"] == "rollback"}
        rollbacks_by_target: dict[str, list[ProposalView]] = {}
        for view in views.values():
            rollbacks_by_target.setdefault(view.target_proposal_id, []).append(view)
        for proposal_id, bucket in live:
            if bucket.proposal.body["action"] == "upgrade":
                rollback = _executed_rollback(rollbacks_by_target.get(proposal_id, []))
                views[proposal_id] = self._evaluate(proposal_id, bucket, reputations, now_ms, rollback)
        return views

    def _evaluate(self, proposal_id: str, bucket: _Bucket, reputations: Mapping[str, int], now_ms: int,
                  network_rollback: ProposalView | None,
                  closed: tuple[str, frozenset[str], tuple[str, ...]] | None = None) -> ProposalView:
        """`closed`: (digest, counted ids, validators) to use instead of the CLOSE entries' majority."""
        entry = bucket.proposal
        body = entry.body
        disqualified = {ballot.voter for ballot in bucket.ballots.values() if ballot.entry_id in self._void}
        closed = self._closed(bucket) if closed is None else closed
        counted_ids = None if closed is None else closed[1]
        if counted_ids is not None and "backdated_vote" in self._planted_bugs:
            # The planted hole: a vote dated (by its voter) before the deadline counts, counted or not.
            counted_ids = counted_ids | {ballot.entry_id for ballot in bucket.ballots.values()
                                         if ballot.wall_ms <= body["voting_deadline_ms"]}
        count = count_votes(bucket.ballots.values(), reputations=reputations, disqualified=disqualified,
                            deadline_ms=body["voting_deadline_ms"], now_ms=now_ms,
                            threshold_pct=self._rules.approval_threshold_pct, quorum_pct=self._rules.quorum_pct,
                            counted_ids=counted_ids)
        execution, notes = _execution_of(body, bucket)
        outcome = count.tally.outcome
        if closed is None and execution is not None:
            # The certificate signs the counted votes' digest; the CLOSE entries that list them travel
            # lazily (gossip_settings.lazy_kinds) and may come after it. Nothing disagrees yet.
            outcome = APPROVED
            notes.append("the validators' CLOSE entries naming the counted votes have not all reached this node yet")
        elif closed is None:
            outcome = VOTING       # only the validators' close decides; the tally above is provisional
            if count.tally.outcome != VOTING or now_ms > body["voting_deadline_ms"]:
                notes.append(f"the provisional tally says {count.tally.outcome}; waiting for the validators to close voting")
        elif missing := closed[1] - set(bucket.ballots):
            outcome = VOTING
            notes.append(f"voting closed with {len(closed[1])} counted votes; {len(missing)} of them have not reached "
                         "this node yet")
        if execution is not None and closed is not None and execution.body["votes_digest"] != closed[0]:
            notes.append("the certified execution names other counted votes than the validators' close")
        reports = tuple(_report_view(report) for _author, report in sorted(bucket.reports.items())
                        if report.id not in self._void)
        local_report = next((report for report in reports if report.node_id == self._local_node_id), None)
        if local_report is not None and (execution is None or local_report.sequence != execution.sequence):
            notes.append(f"this node's execution report names sequence {local_report.sequence}, "
                         "which is not this proposal's certified sequence: ignored")
            local_report = None
        rollbacks = tuple(_rollback_view(rollback) for _author, rollback in sorted(bucket.rollbacks.items())
                          if rollback.id not in self._void)
        if network_rollback is not None:
            rollbacks += (RollbackView(node_id=None, restored_version=network_rollback.version, previous_version=body["version"],
                                       reason=network_rollback.title, entry_id=None,
                                       rollback_proposal_id=network_rollback.proposal_id),)
        locally_rolled_back = any(r.node_id == self._local_node_id for r in rollbacks) or network_rollback is not None
        status, status_notes = derive_status(outcome=outcome, certified=execution is not None,
                                             local_report_success=None if local_report is None else local_report.success,
                                             rolled_back=locally_rolled_back)
        notes.extend(status_notes)
        notes.extend(_state_hash_notes(reports))
        return ProposalView(
            proposal_id=proposal_id, action=body["action"], title=body["title"], description=body["description"],
            version=body["version"], package_url=body["package_url"], package_hash=body["package_hash"],
            package_size=body["package_size"], target_proposal_id=body["target_proposal_id"], author=entry.author,
            entry_id=entry.id, created_ms=entry.hlc.wall_ms, voting_deadline_ms=body["voting_deadline_ms"],
            status=status, tally=count.tally, decided_at_ms=count.decided_at_ms, votes=count.votes,
            closed=closed is not None, votes_digest=None if closed is None else closed[0],
            closed_by=() if closed is None else closed[2], execution=execution,
            reports=reports, rollbacks=rollbacks,
            ratifications=self._ratify_views(proposal_id, body, bucket, None if closed is None else closed[0]),
            notes=tuple(notes))

    def _ratify_views(self, proposal_id: str, body: Mapping, bucket: _Bucket,
                      closed_digest: str | None) -> tuple[RatifyAuditView, ...]:
        views = []
        for audit in sorted(bucket.ratify_audits.values(), key=lambda a: (a.sequence, a.validator_id, a.entry_id)):
            try:
                expected = certificate_statement(self._network_id, proposal_id, body["action"], body["package_hash"],
                                                 body["version"], closed_digest, audit.sequence)
            except CertificateError:       # not closed on this node yet: nothing to compare with
                expected = None
            views.append(RatifyAuditView(validator_id=audit.validator_id, sequence=audit.sequence,
                                         valid=audit.statement == expected, entry_id=audit.entry_id))
        return tuple(views)


def _execution_of(body: Mapping, bucket: _Bucket) -> tuple[ExecutionView | None, list[str]]:
    notes, matching = [], []
    for execute in sorted(bucket.executes.values(), key=lambda e: e.order_key):
        certified = (execute.body["action"], execute.body["version"], execute.body["package_hash"])
        if certified != (body["action"], body["version"], body["package_hash"]):
            notes.append(f"EXECUTE_UPGRADE {execute.entry_id[:12]} certifies another action, version or package hash "
                         "than this proposal: ignored")
            continue
        matching.append(execute)
    if not matching:
        return None, notes
    sequences = sorted({execute.body["sequence"] for execute in matching})
    if len(sequences) > 1:
        notes.append(f"validators certified this proposal under several sequences {sequences}: using {sequences[0]}")
    chosen = [execute for execute in matching if execute.body["sequence"] == sequences[0]]
    first = chosen[0]
    return ExecutionView(sequence=sequences[0], entry_id=first.entry_id,
                         published_by=tuple(sorted({execute.author for execute in chosen})),
                         certificate_signers=first.signers, body=first.body), notes


def _executed_rollback(rollbacks: Sequence[ProposalView]) -> ProposalView | None:
    return next((view for view in rollbacks if view.status in (EXECUTED, ROLLED_BACK)), None)


def _report_view(entry: Entry) -> ReportView:
    body = entry.body
    return ReportView(node_id=entry.author, sequence=body["sequence"], success=body["success"], version=body["version"],
                      state_hash=body["state_hash"], error=body["error"], entry_id=entry.id)


def _rollback_view(entry: Entry) -> RollbackView:
    body = entry.body
    return RollbackView(node_id=entry.author, restored_version=body["restored_version"],
                        previous_version=body["previous_version"], reason=body["reason"], entry_id=entry.id,
                        rollback_proposal_id=None)


def _state_hash_notes(reports: Sequence[ReportView]) -> list[str]:
    hashes: dict[str, list[str]] = {}
    for report in reports:
        if report.success:
            hashes.setdefault(report.state_hash, []).append(report.node_id)
    if len(hashes) <= 1:
        return []
    shown = "; ".join(f"{state_hash}: {', '.join(nodes)}" for state_hash, nodes in sorted(hashes.items()))
    return [f"nodes that executed this upgrade disagree on the resulting state hash ({shown})"]


# --- what a new proposal must meet against the others (the API checks it before writing) ----------


def current_version(state: Mapping) -> str | None:
    global_state = state.get("global") if isinstance(state, Mapping) else None
    version = global_state.get("version") if isinstance(global_state, Mapping) else None
    try:
        parse_version(version)
    except ValueError:
        return None
    return version


def check_upgrade_allowed(body: Mapping, views: Mapping[str, ProposalView], current: str | None) -> None:
    version = body["version"]
    if current is not None and not parse_version(version) > parse_version(current):
        raise VersionError(f"version {version} is not greater than the network's current version {current}")
    for view in views.values():
        # Parsed, not as text: versions differing only in build metadata are one version (semver precedence).
        if view.action == "upgrade" and parse_version(view.version) == parse_version(version) \
                and view.status not in VERSION_FREE_STATUSES:
            raise Conflict(f"version {version} is already proposed by {view.proposal_id} (status {view.status})",
                           hint="vote on that proposal, or propose another version")


def check_rollback_allowed(body: Mapping, views: Mapping[str, ProposalView], current: str | None) -> None:
    target_id = body["target_proposal_id"]
    target = views.get(target_id)
    if target is None:
        raise NotFound(f"no proposal {target_id!r} is known to this node",
                       hint="give the id of the executed upgrade to undo (GET /proposals)")
    if target.action != "upgrade" or target.status != EXECUTED:
        raise Conflict(f"{target_id} is a {target.action} with status {target.status}: only an executed upgrade can be rolled back")
    if current is not None and parse_version(target.version) != parse_version(current):
        raise Conflict(f"only the latest executed upgrade can be rolled back: the network runs {current}, "
                       f"{target_id} installed {target.version}", hint="roll back the latest upgrade first")
    if current is not None and not parse_version(body["version"]) < parse_version(current):
        raise VersionError(f"a rollback must go back to a version older than the current {current}, not {body['version']}",
                           hint="give the version the network ran before the upgrade")
    for view in views.values():
        if view.action == "rollback" and view.target_proposal_id == target_id and view.status not in VERSION_FREE_STATUSES:
            raise Conflict(f"{view.proposal_id} already proposes to roll back {target_id} (status {view.status})",
                           hint="vote on that proposal instead")
