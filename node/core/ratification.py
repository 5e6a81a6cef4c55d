"""The ratification state machine that the validators' Raft cluster replicates (node/raft.py).

Why this shape:
  * Raft gives every validator the same sequence of commands; this machine turns that sequence into
    the same state on every validator. It is pure and deterministic: no clock, no randomness, no
    dependence on which validator leads (a cut-off leader may believe it still leads, so "am I
    leader" decides nothing), and every input is checked, because a command that raised inside a
    replicated method would jam PySyncObj's apply loop forever. Bad input returns a refused outcome
    and changes nothing.
  * Voting is closed here first (node/core/closing.py): each validator, at the deadline by its own
    clock (or once its tally is decided early), submits close(proposal, vote ids, validator,
    signature) naming the votes it received; the machine fixes the counted set by the strict-majority
    rule of closing.counted_votes, exactly once, and emits VotingClosed. A voter's own timestamp
    decides nothing. Ratifications name the counted set's digest and are refused until it is fixed.
  * Then two phases, because an upgrade's sequence number does not exist until a majority agreed:
      1. ratify(proposal, action, package hash, version, validator, signature): each validator's
         SIGNED consent (certificates.ratify_statement). When a strict majority of the validator set
         ratified the same (proposal, action, hash, version), the machine assigns the next upgrade
         sequence number (1, 2, ...) to it, exactly once. The signature means one validator cannot
         ratify in the name of others and burn sequence numbers that would never be certified
         (executors apply upgrades strictly in sequence order, so a hole would stall the network).
      2. certify(proposal, sequence, validator, signature): each validator signs the certificate
         statement for its assigned sequence; the machine verifies the signature (ed25519 verify is
         deterministic) and marks the certificate complete at a strict majority. Any validator then
         publishes the EXECUTE_UPGRADE entry; duplicates are harmless (executors dedupe by sequence).
  * Every command is idempotent (a repeat returns "already_..." and changes nothing), so validators
    re-submit freely after restarts, timeouts and leader changes.
  * One validator ratifies each proposal once; a different (action, hash, version) for the same
    proposal is refused, so two tuples can never both reach a majority (two majorities intersect).
  * Limits: a validator may hold at most `pending_per_validator_max` ratifications that have not yet
    reached a majority (a faulty validator fills only its own quota), and at most `sequences_max`
    sequences exist.
  * The per-proposal phases follow ONE transition table; an impossible transition raises (a bug).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from node.core.certificates import (
    SIGNATURE_SIZE_BYTES,
    VALIDATORS_MAX,
    Verify,
    build_certificate,
    certificate_statement,
    ratify_statement,
)
from node.core.closing import close_statement, counted_votes, pack_vote_ids, unpack_vote_ids, votes_digest
from node.core.quorum import majority_of
from node.errors import CertificateError, ConfigError, IntegrityError, InvalidTransition

STATE_FORMAT = 2               # 2: closes and the counted votes

CLOSING = "closing"            # validators' closes arriving, the counted votes not fixed yet
COLLECTING = "collecting"      # voting closed; ratifications arriving, no majority yet
ASSIGNED = "assigned"          # a majority ratified: sequence number assigned, signatures arriving
CERTIFIED = "certified"        # a majority signed the certificate statement
PHASES = (CLOSING, COLLECTING, ASSIGNED, CERTIFIED)

PHASE_TRANSITIONS: dict[tuple[str, str], str] = {
    (CLOSING, "votes_counted"): COLLECTING,
    (COLLECTING, "majority_ratified"): ASSIGNED,
    (ASSIGNED, "majority_signed"): CERTIFIED,
}

# Outcome statuses. Accepted ones changed the state or repeated an earlier command exactly.
ACCEPTED_STATUSES = ("close_recorded", "voting_closed", "already_closed", "ratification_recorded", "already_ratified", "sequence_assigned",
                     "signature_recorded", "already_signed", "certificate_complete")
REFUSED_STATUSES = ("bad_arguments", "unknown_validator", "bad_signature", "conflicting_close", "not_closed",
                    "wrong_votes", "conflicting_ratification",
                    "quota_full", "sequences_full", "not_assigned", "wrong_sequence")


def next_phase(phase: str, event: str) -> str:
    try:
        return PHASE_TRANSITIONS[(phase, event)]
    except KeyError:
        raise InvalidTransition(f"a ratification in phase {phase!r} cannot take event {event!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class RatificationLimits:
    pending_per_validator_max: int = 64
    sequences_max: int = 100_000

    def __post_init__(self) -> None:
        if self.pending_per_validator_max < 1 or self.sequences_max < 1:
            raise ConfigError("ratification limits pending_per_validator_max and sequences_max must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class VotingClosed:
    """Event: the counted votes of a proposal are fixed; validators publish them (a CLOSE entry)."""
    proposal_id: str
    votes_digest: str
    vote_ids: bytes              # closing.pack_vote_ids form


@dataclass(frozen=True, slots=True, kw_only=True)
class SequenceAssigned:
    """Event: a strict majority ratified; validators should now sign the certificate statement."""
    sequence: int
    proposal_id: str
    action: str
    package_hash: str | None
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateCompleted:
    """Event: a strict majority signed; any validator may now publish the EXECUTE_UPGRADE entry."""
    sequence: int
    proposal_id: str
    action: str
    package_hash: str | None
    version: str
    votes_digest: str
    signatures: tuple[tuple[str, bytes], ...]


Event = VotingClosed | SequenceAssigned | CertificateCompleted


@dataclass(frozen=True, slots=True, kw_only=True)
class RatificationOutcome:
    """What one replicated command did. `accepted` is False when it was refused and changed nothing."""
    status: str
    proposal_id: str
    sequence: int | None
    message: str
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        assert self.status in ACCEPTED_STATUSES + REFUSED_STATUSES, self.status

    @property
    def accepted(self) -> bool:
        return self.status in ACCEPTED_STATUSES


@dataclass(frozen=True, slots=True, kw_only=True)
class RatificationRecord:
    """A read-only copy of one proposal's ratification. `action`, `package_hash` and `version` are
    those of the ratified tuple once assigned (None while collecting: ratifications may disagree).
    `vote_ids` / `votes_digest` are the counted votes once voting closed (None while closing)."""
    proposal_id: str
    phase: str
    closed_by: tuple[str, ...]
    vote_ids: bytes | None
    votes_digest: str | None
    sequence: int | None
    action: str | None
    package_hash: str | None
    version: str | None
    ratifications: tuple[tuple[str, str, str | None, str], ...]   # (validator, action, hash, version)
    signatures: tuple[tuple[str, bytes], ...]                     # (validator, certificate signature)

    @property
    def ratified_by(self) -> tuple[str, ...]:
        return tuple(validator_id for validator_id, *_ in self.ratifications)

    @property
    def signed_by(self) -> tuple[str, ...]:
        return tuple(validator_id for validator_id, _ in self.signatures)


@dataclass(frozen=True, slots=True, kw_only=True)
class RatificationView:
    """A consistent, immutable snapshot of the whole replicated state."""
    next_sequence: int
    records: tuple[RatificationRecord, ...]

    def by_proposal(self, proposal_id: str) -> RatificationRecord | None:
        return next((record for record in self.records if record.proposal_id == proposal_id), None)

    def by_sequence(self, sequence: int) -> RatificationRecord | None:
        return next((record for record in self.records if record.sequence == sequence), None)

    def assigned(self) -> tuple[RatificationRecord, ...]:
        """Records with a sequence number, in sequence order."""
        return tuple(sorted((r for r in self.records if r.sequence is not None), key=lambda r: r.sequence))


@dataclass(slots=True)
class _Record:
    phase: str = CLOSING
    closes: dict[str, bytes] = field(default_factory=dict)       # validator -> packed vote ids it named
    vote_ids: bytes | None = None                                 # the counted votes, once fixed
    votes_digest: str | None = None
    ratifications: dict[str, tuple[str, str | None, str, bytes]] = field(default_factory=dict)
    sequence: int | None = None
    ratified: tuple[str, str | None, str] | None = None          # (action, hash, version) once assigned
    signatures: dict[str, bytes] = field(default_factory=dict)


def _refused(status: str, proposal_id: object, message: str, sequence: int | None = None) -> RatificationOutcome:
    shown = proposal_id if isinstance(proposal_id, str) else repr(proposal_id)[:100]
    return RatificationOutcome(status=status, proposal_id=shown, sequence=sequence, message=message)


class RatificationMachine:
    """The deterministic replicated state. Methods never raise on bad input: they return an outcome."""

    def __init__(self, *, network_id: str, validators: Mapping[str, bytes], verify: Verify,
                 limits: RatificationLimits = RatificationLimits()) -> None:
        if not 1 <= len(validators) <= VALIDATORS_MAX:
            raise ConfigError(f"the validator set must hold 1 to {VALIDATORS_MAX} validators, not {len(validators)}")
        self._network_id = network_id
        self._validators = dict(validators)
        self._verify = verify
        self._limits = limits
        self._majority = majority_of(len(self._validators))
        self._records: dict[str, _Record] = {}
        self._sequences: dict[int, str] = {}
        self._next_sequence = 1
        # validator -> its closes and ratifications waiting for a majority (the quota), kept as commands
        # apply: a scan of every record per command made apply cost grow with the history (issue 11).
        self._pending: Counter[str] = Counter()

    # --- closing the vote ----------------------------------------------------------------------

    def close(self, *, proposal_id: str, vote_ids: bytes, validator_id: str, signature: bytes) -> RatificationOutcome:
        """A validator's signed close: the votes it received for `proposal_id` before its deadline (or
        its early decision). The first close of each validator counts; the counted set is fixed once
        the closes decide it (closing.counted_votes)."""
        if not isinstance(validator_id, str) or validator_id not in self._validators:
            return _refused("unknown_validator", proposal_id, f"{validator_id!r} is not in the validator set")
        try:
            statement = close_statement(self._network_id, proposal_id, vote_ids, validator_id)
        except CertificateError as error:
            return _refused("bad_arguments", proposal_id, error.message)
        if not self._signature_valid(validator_id, statement, signature):
            return _refused("bad_signature", proposal_id, f"the close signature of {validator_id} does not verify")
        record = self._records.get(proposal_id)
        if record is not None and validator_id in record.closes:
            if record.closes[validator_id] != vote_ids:
                return _refused("conflicting_close", proposal_id,
                                f"{validator_id} already closed {proposal_id} naming other votes", record.sequence)
            return RatificationOutcome(status="already_closed", proposal_id=proposal_id, sequence=record.sequence,
                                       message=f"{validator_id} had already closed {proposal_id}")
        if record is not None and record.phase != CLOSING:
            return RatificationOutcome(status="already_closed", proposal_id=proposal_id, sequence=record.sequence,
                                       message=f"voting on {proposal_id} was already closed")
        if self._pending_count(validator_id) >= self._limits.pending_per_validator_max:
            return _refused("quota_full", proposal_id, f"{validator_id} already has "
                            f"{self._limits.pending_per_validator_max} closes or ratifications waiting for a majority")
        if record is None:
            record = self._records[proposal_id] = _Record()
        record.closes[validator_id] = vote_ids
        self._pending[validator_id] += 1
        counted = counted_votes({v: frozenset(unpack_vote_ids(packed)) for v, packed in record.closes.items()},
                                len(self._validators))
        if counted is None:
            return RatificationOutcome(status="close_recorded", proposal_id=proposal_id, sequence=None,
                                       message=f"{validator_id} closed {proposal_id} "
                                               f"({len(record.closes)} of {len(self._validators)} closes)")
        record.phase = next_phase(record.phase, "votes_counted")
        self._pending.subtract(tuple(record.closes))   # no ratification yet: ratify is refused until closed
        record.vote_ids = pack_vote_ids(counted)
        record.votes_digest = votes_digest(record.vote_ids)
        event = VotingClosed(proposal_id=proposal_id, votes_digest=record.votes_digest, vote_ids=record.vote_ids)
        return RatificationOutcome(status="voting_closed", proposal_id=proposal_id, sequence=None,
                                   message=f"voting on {proposal_id} closed with {len(counted)} counted votes",
                                   events=(event,))

    # --- phase 1 -----------------------------------------------------------------------------

    def ratify(self, *, proposal_id: str, action: str, package_hash: str | None, version: str, votes_digest: str,
               validator_id: str, signature: bytes) -> RatificationOutcome:
        if not isinstance(validator_id, str) or validator_id not in self._validators:
            return _refused("unknown_validator", proposal_id, f"{validator_id!r} is not in the validator set")
        try:
            statement = ratify_statement(self._network_id, proposal_id, action, package_hash, version, votes_digest,
                                         validator_id)
        except CertificateError as error:
            return _refused("bad_arguments", proposal_id, error.message)
        if not self._signature_valid(validator_id, statement, signature):
            return _refused("bad_signature", proposal_id, f"the ratify signature of {validator_id} does not verify")
        ratified = (action, package_hash, version)
        record = self._records.get(proposal_id)
        if record is None or record.phase == CLOSING:
            return _refused("not_closed", proposal_id, f"voting on {proposal_id} is not closed yet: close it first")
        if votes_digest != record.votes_digest:
            return _refused("wrong_votes", proposal_id, f"{proposal_id} closed with the votes {record.votes_digest[:12]}, "
                            f"not {votes_digest[:12]}", record.sequence)
        refusal = self._ratify_refusal(proposal_id, record, ratified, validator_id)
        if refusal is not None:
            return refusal
        record.ratifications[validator_id] = (*ratified, signature)
        if record.phase == COLLECTING:
            self._pending[validator_id] += 1
        agreeing = sum(1 for value in record.ratifications.values() if value[:3] == ratified)
        if record.phase != COLLECTING or agreeing < self._majority:
            return RatificationOutcome(status="ratification_recorded", proposal_id=proposal_id,
                                       sequence=record.sequence,
                                       message=f"{validator_id} ratified {proposal_id} ({agreeing} of {len(self._validators)})")
        return self._assign(proposal_id, record, ratified)

    def _ratify_refusal(self, proposal_id: str, record: _Record | None, ratified: tuple,
                        validator_id: str) -> RatificationOutcome | None:
        """None when the ratification may be recorded; otherwise the outcome to return unchanged."""
        sequence = record.sequence if record is not None else None
        if record is not None and validator_id in record.ratifications:
            if record.ratifications[validator_id][:3] != ratified:
                return _refused("conflicting_ratification", proposal_id,
                                f"{validator_id} already ratified {proposal_id} with another action, hash or version",
                                sequence)
            return RatificationOutcome(status="already_ratified", proposal_id=proposal_id, sequence=sequence,
                                       message=f"{validator_id} had already ratified {proposal_id}")
        if record is not None and record.ratified is not None and record.ratified != ratified:
            return _refused("conflicting_ratification", proposal_id,
                            f"{proposal_id} was ratified as sequence {sequence} with another action, hash or version",
                            sequence)
        collecting = record is None or record.phase == COLLECTING
        if collecting and self._pending_count(validator_id) >= self._limits.pending_per_validator_max:
            return _refused("quota_full", proposal_id,
                            f"{validator_id} already has {self._limits.pending_per_validator_max} closes or "
                            "ratifications waiting for a majority")
        if collecting and len(self._sequences) >= self._limits.sequences_max:
            return _refused("sequences_full", proposal_id, f"all {self._limits.sequences_max} upgrade sequences are used")
        return None

    def _assign(self, proposal_id: str, record: _Record, ratified: tuple) -> RatificationOutcome:
        record.phase = next_phase(record.phase, "majority_ratified")
        self._pending.subtract(tuple(record.ratifications))
        record.sequence, record.ratified = self._next_sequence, ratified
        self._sequences[record.sequence] = proposal_id
        self._next_sequence += 1
        action, package_hash, version = ratified
        event = SequenceAssigned(sequence=record.sequence, proposal_id=proposal_id, action=action,
                                 package_hash=package_hash, version=version)
        return RatificationOutcome(status="sequence_assigned", proposal_id=proposal_id, sequence=record.sequence,
                                   message=f"{proposal_id} is upgrade sequence {record.sequence}", events=(event,))

    def _pending_count(self, validator_id: str) -> int:
        """Records where `validator_id` closed (voting not closed yet) or ratified (no majority yet)."""
        return self._pending[validator_id]

    # --- phase 2 -----------------------------------------------------------------------------

    def certify(self, *, proposal_id: str, sequence: int, validator_id: str, signature: bytes) -> RatificationOutcome:
        if not isinstance(validator_id, str) or validator_id not in self._validators:
            return _refused("unknown_validator", proposal_id, f"{validator_id!r} is not in the validator set")
        record = self._records.get(proposal_id) if isinstance(proposal_id, str) else None
        if record is None or record.sequence is None:
            return _refused("not_assigned", proposal_id, f"{proposal_id!r} has no sequence number yet: ratify it first")
        if type(sequence) is not int or sequence != record.sequence:
            return _refused("wrong_sequence", proposal_id,
                            f"{proposal_id} is sequence {record.sequence}, not {sequence!r}", record.sequence)
        if validator_id in record.signatures:
            return RatificationOutcome(status="already_signed", proposal_id=proposal_id, sequence=sequence,
                                       message=f"{validator_id} had already signed sequence {sequence}")
        action, package_hash, version = record.ratified
        statement = certificate_statement(self._network_id, proposal_id, action, package_hash, version,
                                          record.votes_digest, sequence)
        if not self._signature_valid(validator_id, statement, signature):
            return _refused("bad_signature", proposal_id,
                            f"the certificate signature of {validator_id} for sequence {sequence} does not verify", sequence)
        record.signatures[validator_id] = signature
        if record.phase != ASSIGNED or len(record.signatures) < self._majority:
            return RatificationOutcome(status="signature_recorded", proposal_id=proposal_id, sequence=sequence,
                                       message=f"{validator_id} signed sequence {sequence} "
                                               f"({len(record.signatures)} of {len(self._validators)})")
        record.phase = next_phase(record.phase, "majority_signed")
        event = CertificateCompleted(sequence=sequence, proposal_id=proposal_id, action=action,
                                     package_hash=package_hash, version=version, votes_digest=record.votes_digest,
                                     signatures=tuple(sorted(record.signatures.items())))
        return RatificationOutcome(status="certificate_complete", proposal_id=proposal_id, sequence=sequence,
                                   message=f"the certificate of sequence {sequence} is complete", events=(event,))

    def _signature_valid(self, validator_id: str, statement: bytes, signature: object) -> bool:
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE_BYTES:
            return False
        try:
            return bool(self._verify(self._validators[validator_id], statement, signature))
        except Exception:  # noqa: BLE001 - a raise inside a replicated method would jam Raft's apply loop forever
            return False

    # --- reading, persistence ----------------------------------------------------------------

    def view(self) -> RatificationView:
        records = tuple(_record_view(proposal_id, record) for proposal_id, record in self._records.items())
        return RatificationView(next_sequence=self._next_sequence, records=records)

    def to_plain(self) -> dict:
        """Plain data (dicts, lists, str, int, bytes, None) for PySyncObj's full dump."""
        return {"format": STATE_FORMAT, "next_sequence": self._next_sequence,
                "records": [[proposal_id, record.phase, record.sequence,
                             list(record.ratified) if record.ratified else None,
                             [[validator_id, *value] for validator_id, value in record.ratifications.items()],
                             [[validator_id, sig] for validator_id, sig in record.signatures.items()],
                             [[validator_id, packed] for validator_id, packed in record.closes.items()],
                             record.vote_ids]
                            for proposal_id, record in self._records.items()]}

    @classmethod
    def from_plain(cls, data: object, *, network_id: str, validators: Mapping[str, bytes], verify: Verify,
                   limits: RatificationLimits = RatificationLimits()) -> "RatificationMachine":
        """Rebuild from `to_plain()` output; raises IntegrityError on anything malformed."""
        machine = cls(network_id=network_id, validators=validators, verify=verify, limits=limits)
        try:
            machine._load(data)
        except (TypeError, ValueError, KeyError, CertificateError) as error:
            raise IntegrityError(f"the ratification dump is malformed: {error!r}") from None
        return machine

    def _load(self, data: object) -> None:
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError("unknown dump format")
        for proposal_id, phase, sequence, ratified, ratifications, signatures, closes, vote_ids in data["records"]:
            if (phase not in PHASES or (phase in (CLOSING, COLLECTING)) != (sequence is None)
                    or (phase == CLOSING) != (vote_ids is None) or not isinstance(proposal_id, str)):
                raise ValueError(f"record {proposal_id!r} is inconsistent")
            record = _Record(phase=phase, sequence=sequence, ratified=tuple(ratified) if ratified else None)
            record.closes = {validator_id: packed for validator_id, packed in closes}
            if vote_ids is not None:
                unpack_vote_ids(vote_ids)
                record.vote_ids, record.votes_digest = vote_ids, votes_digest(vote_ids)
            record.ratifications = {v: (a, h, ver, sig) for v, a, h, ver, sig in ratifications}
            record.signatures = {validator_id: sig for validator_id, sig in signatures}
            self._records[proposal_id] = record
            self._pending.update(_pending_validators(record))
            if sequence is not None:
                if type(sequence) is not int or sequence in self._sequences:
                    raise ValueError(f"sequence {sequence!r} is invalid or assigned twice")
                self._sequences[sequence] = proposal_id
        self._next_sequence = data["next_sequence"]
        if type(self._next_sequence) is not int or self._next_sequence != len(self._sequences) + 1:
            raise ValueError("next_sequence does not follow the assigned sequences")


def _pending_validators(record: _Record) -> tuple[str, ...]:
    """The validators whose quota `record` takes: its closers while closing, its ratifiers while collecting."""
    if record.phase == CLOSING:
        return tuple(record.closes)
    if record.phase == COLLECTING:
        return tuple(record.ratifications)
    return ()


def _record_view(proposal_id: str, record: _Record) -> RatificationRecord:
    action, package_hash, version = record.ratified if record.ratified else (None, None, None)
    return RatificationRecord(
        proposal_id=proposal_id, phase=record.phase, closed_by=tuple(sorted(record.closes)), vote_ids=record.vote_ids,
        votes_digest=record.votes_digest, sequence=record.sequence, action=action,
        package_hash=package_hash, version=version,
        ratifications=tuple((v, a, h, ver) for v, (a, h, ver, _sig) in sorted(record.ratifications.items())),
        signatures=tuple(sorted(record.signatures.items())))


# --- what a validator should do next (pure planning for the node's ratification driver) ---------


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishRules:
    """Who publishes a complete certificate, and when. One EXECUTE_UPGRADE is enough for the network,
    and each one is flooded to every node (N x fanout messages): the validator that leads Raft
    publishes it at once; the others publish only if none is visible to them `grace_ms` after they
    saw the certificate complete (the leader crashed or is cut off). `leading` may be stale (two
    leaders for a moment): that costs a duplicate entry, never a missing one."""
    leading: bool
    now_ms: int
    certified_seen_ms: Mapping[int, int]          # sequence -> when this validator first saw it certified
    grace_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidatorTodo:
    to_close: tuple[str, ...]                       # proposal ids this validator should close (Raft)
    to_attest: tuple[RatificationRecord, ...]       # closed votes this validator should publish (CLOSE entry)
    to_ratify: tuple[str, ...]                      # proposal ids this validator should ratify
    to_certify: tuple[RatificationRecord, ...]      # assigned sequences it should sign
    to_publish: tuple[RatificationRecord, ...]      # complete certificates to publish now (EXECUTE_UPGRADE)
    publish_later: tuple[int, ...]                  # complete certificates another validator should publish first
    to_audit: tuple[RatificationRecord, ...]        # its signatures to publish as RATIFY audit entries


def validator_todo(view: RatificationView, *, validator_id: str, closable: Iterable[str],
                   attested: Iterable[str], approved: Mapping[str, tuple[str, str | None, str, str]],
                   published_sequences: Iterable[int], audited: Iterable[tuple[str, int]],
                   rules: PublishRules) -> ValidatorTodo:
    """Compare this validator's governance view with the replicated state: `closable` are the
    proposals whose deadline passed by its clock or whose tally is decided; `attested` the proposals
    whose CLOSE entry it already published; `approved` what its tally over the COUNTED votes approved
    ({proposal_id: (action, hash, version, votes_digest)}); `published_sequences` the sequences whose
    EXECUTE_UPGRADE is in its log; `audited` the (proposal, sequence) of its own RATIFY entries. A
    validator signs a sequence only for a tuple it approves itself: it never signs on the word of the
    majority alone. Its RATIFY audit entry (gossiped lazily) waits until the EXECUTE_UPGRADE is in
    its log, so that no EXECUTE_UPGRADE names a RATIFY as a parent its receivers may lack (they would
    have to pull it before the certificate becomes visible). Safe to call repeatedly; every action is
    idempotent."""
    published, attested_ids, audited_pairs = set(published_sequences), set(attested), set(audited)
    to_close = []
    for proposal_id in sorted(set(closable)):
        record = view.by_proposal(proposal_id)
        if record is None or (record.phase == CLOSING and validator_id not in record.closed_by):
            to_close.append(proposal_id)
    to_attest = tuple(record for record in view.records
                      if record.phase != CLOSING and record.proposal_id not in attested_ids)
    to_ratify, to_certify, to_publish, publish_later, to_audit = [], [], [], [], []
    for proposal_id in sorted(approved):
        record = view.by_proposal(proposal_id)
        if (record is not None and record.phase == COLLECTING and validator_id not in record.ratified_by
                and record.votes_digest == approved[proposal_id][3]):
            to_ratify.append(proposal_id)
    for record in view.assigned():
        agrees = approved.get(record.proposal_id) == (record.action, record.package_hash, record.version,
                                                     record.votes_digest)
        if record.phase == ASSIGNED and agrees and validator_id not in record.signed_by:
            to_certify.append(record)
        if record.phase == CERTIFIED and record.sequence not in published:
            seen_ms = rules.certified_seen_ms.get(record.sequence)
            if rules.leading or (seen_ms is not None and rules.now_ms - seen_ms >= rules.grace_ms):
                to_publish.append(record)
            else:
                publish_later.append(record.sequence)
        if (record.sequence in published and validator_id in record.signed_by
                and (record.proposal_id, record.sequence) not in audited_pairs):
            to_audit.append(record)
    return ValidatorTodo(to_close=tuple(to_close), to_attest=to_attest, to_ratify=tuple(to_ratify),
                         to_certify=tuple(to_certify), to_publish=tuple(to_publish),
                         publish_later=tuple(publish_later), to_audit=tuple(to_audit))


def closed_awaiting_approval(view: RatificationView, approved: Iterable[str]) -> tuple[RatificationRecord, ...]:
    """Records Raft closed whose ratification or certificate still needs this validator's approval
    (COLLECTING: to ratify; ASSIGNED: to sign the sequence), other than the proposals in `approved`: the
    driver tallies them over the counted votes of its own Raft replica instead of waiting for the CLOSE
    entries (copies of that record) to come back through gossip."""
    known = set(approved)
    return tuple(record for record in view.records
                 if record.phase in (COLLECTING, ASSIGNED) and record.vote_ids is not None and record.proposal_id not in known)


def close_body(record: RatificationRecord) -> dict:
    """The CLOSE entry body for a record whose votes are counted (what a validator attests)."""
    if record.phase == CLOSING or record.vote_ids is None:
        raise InvalidTransition(f"voting on {record.proposal_id} is not closed yet",
                                hint="wait for the VotingClosed event before publishing")
    return {"proposal_id": record.proposal_id, "votes_digest": record.votes_digest, "vote_ids": record.vote_ids}


def execute_upgrade_body(record: RatificationRecord, *, package_url: str | None,
                         package_size: int | None) -> dict:
    """The EXECUTE_UPGRADE body for a certified record. URL and size come from the proposal: they are
    not signed, because the package is checked against the signed hash before anything runs."""
    if record.phase != CERTIFIED:
        raise InvalidTransition(f"sequence {record.sequence} of {record.proposal_id} is {record.phase}, not certified",
                                hint="wait for the CertificateCompleted event before publishing")
    return {"proposal_id": record.proposal_id, "action": record.action, "version": record.version,
            "package_url": package_url, "package_hash": record.package_hash, "package_size": package_size,
            "votes_digest": record.votes_digest, "sequence": record.sequence,
            "certificate": build_certificate(dict(record.signatures))}
