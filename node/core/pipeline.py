"""Upgrade pipeline decisions: which step comes next, and whether a result may be accepted.

Why pure: every honest node must reach the same verdict on the same package and state, so the
verdicts are functions of their inputs only. The I/O shell (node/upgrader.py) downloads, runs the
sandbox and writes the store; this module only says what is allowed.

What lives here, and why each decision is made the way it is:

- The steps and ONE transition table (`TRANSITIONS`, `next_step`): check -> download -> verify ->
  dry_run -> backup -> execute -> record, and any step -> failed. `check` (validate the request: hash
  format, version greater than the current one) comes before the download on purpose: a refused
  upgrade must not cost a download. An impossible transition raises AssertionError (a programmer error,
  raised explicitly so `python -O` cannot strip it).
- Failure classes (`classify_failure`). A failure either is a VERDICT (a function of the package bytes
  and the state, or of the proposal itself: the same on every honest node, so it consumes the upgrade's
  sequence and the next one can run) or is LOCAL to this node (network unreachable, wall-clock
  interruption, disk error, a bug: another node may succeed, so the sequence is NOT consumed and the
  caller retries). A hash or size mismatch counts as a verdict: the spec says "Compromised package URL
  -> hash verification fails -> rejected"; a node fed wrong bytes by a man-in-the-middle then fails an
  upgrade that others apply, and its state hash in its EXECUTION_REPORT shows the divergence loudly.
- Exactly-once by sequence (`check_sequence`): sequences are applied strictly in order; an old one is
  "already applied" and a gap is refused (the caller waits for the missing entry).
- Rollback (`choose_rollback`): the version restored is the previous entry of the applied-version chain
  (what this node really ran before), not the semver predecessor; there is nothing before the first one.
- History records (`build_*_record`): bounded in size (texts truncated), timestamped from a `now_ms`
  parameter with a pure UTC formatter (no datetime: core imports no clock).
- `state_changes`: a bounded list of JSON-pointer paths added/removed/changed, for dry-run reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from node.core.canonical import canonical_json, normalize_sha256
from node.core.utc import iso_utc_from_ms
from node.core.semver import is_valid_version, parse_version
from node.errors import (
    Conflict,
    HashFormatError,
    HashMismatchError,
    Interrupted,
    PackageError,
    PackageFetchError,
    RollbackError,
    SandboxError,
    StoreError,
    SynapseError,
    UpgradeRefused,
    VersionError,
)

def check_version_allowed(current_version: str, target_version: str) -> None:
    """An upgrade must move to a strictly greater semver; going back is a rollback, not an upgrade."""
    try:
        target = parse_version(target_version)
    except ValueError as error:
        raise UpgradeRefused(str(error), hint="propose a semver version such as '1.2.0'") from None
    current = parse_version(current_version)
    if not target > current:
        raise VersionError(f"version {target_version} is not greater than the current version {current_version}")


def check_migration_output(old_state: dict, new_state: object, target_version: str) -> None:
    """The output of upgrade() must be the new network state of exactly `target_version`, and keep
    every member: removing members is a governance decision, never a side effect of a migration."""
    if not isinstance(new_state, dict):
        raise UpgradeRefused(f"upgrade() returned a JSON {type(new_state).__name__}, not an object",
                             hint="return the whole network state as a JSON object")
    new_global = new_state.get("global")
    if not isinstance(new_global, dict):
        raise UpgradeRefused("upgrade() returned a state without a 'global' object",
                             hint="keep the input's structure and change only what the migration needs")
    produced_version = new_global.get("version")
    if produced_version != target_version:
        raise UpgradeRefused(f"upgrade() set global.version to {produced_version!r}, but the upgrade is to {target_version!r}",
                             hint="set state['global']['version'] to the proposal's version")
    old_nodes = old_state.get("global", {}).get("nodes", {}) or {}
    new_nodes = new_global.get("nodes")
    if not isinstance(new_nodes, dict):
        raise UpgradeRefused("upgrade() returned a state whose global.nodes is not an object",
                             hint="keep global.nodes as an object keyed by node id")
    removed = sorted(node_id for node_id in old_nodes if node_id not in new_nodes)   # no set of 100,000 ids built twice
    if removed:
        shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        raise UpgradeRefused(f"upgrade() removed {len(removed)} member(s) of global.nodes: {shown}",
                             hint="a migration must keep every member; removing members is a governance decision")


# --- steps: one table ------------------------------------------------------------------------


class Step(Enum):
    START = "start"
    CHECK = "check"          # validate the request: hash format, version greater than the current one
    DOWNLOAD = "download"    # fetch the package (cache first)
    VERIFY = "verify"        # sha256 of the bytes equals the proposal's package_hash
    DRY_RUN = "dry_run"      # run upgrade() on a copy of the live state; check the output
    BACKUP = "backup"        # the current state has an intact copy under versions/<current>/
    EXECUTE = "execute"      # the dry-run's output becomes the live state (one atomic commit)
    RECORD = "record"        # derived files and logs; the upgrade is done
    FAILED = "failed"        # terminal: live state untouched, failure recorded


_FORWARD = (Step.START, Step.CHECK, Step.DOWNLOAD, Step.VERIFY, Step.DRY_RUN, Step.BACKUP, Step.EXECUTE, Step.RECORD)

# Every legal move, in one place: each step to the next one, any unfinished step to FAILED.
TRANSITIONS: Mapping[Step, frozenset[Step]] = {
    **{step: frozenset({after, Step.FAILED}) for step, after in zip(_FORWARD, _FORWARD[1:])},
    Step.RECORD: frozenset(),
    Step.FAILED: frozenset(),
}


def next_step(current: Step, target: Step) -> Step:
    """Return `target` if the table allows current -> target; anything else is a bug in the caller."""
    if target not in TRANSITIONS[current]:
        raise AssertionError(f"impossible pipeline transition {current.value} -> {target.value}")
    return target


# --- failures: verdict or local --------------------------------------------------------------


class FailureKind(Enum):
    VERDICT = "verdict"  # the same on every honest node: record it, consume the sequence
    LOCAL = "local"      # this node's environment: record the attempt, keep the sequence, retry later


def classify_failure(error: BaseException) -> FailureKind:
    """Verdicts depend only on the proposal, the package bytes and the state; everything else is local.
    Unknown exceptions are local: a bug on one node must not make it skip an upgrade others apply."""
    if isinstance(error, (Interrupted, PackageFetchError, StoreError)):
        return FailureKind.LOCAL
    if isinstance(error, (SandboxError, UpgradeRefused, PackageError, RollbackError)):
        return FailureKind.VERDICT
    return FailureKind.LOCAL


def describe_error(error: BaseException) -> str:
    """One line for a history record: the error's class and message (never a traceback)."""
    message = error.one_line() if isinstance(error, SynapseError) else (str(error) or "no message")
    return f"{type(error).__name__}: {message}"


# --- request checks --------------------------------------------------------------------------

PROPOSAL_ID_LENGTH_MAX = 96


def check_proposal_id(proposal_id: object) -> str:
    if not isinstance(proposal_id, str) or not 1 <= len(proposal_id) <= PROPOSAL_ID_LENGTH_MAX or not proposal_id.isprintable():
        raise UpgradeRefused(f"proposal_id must be a printable string of 1 to {PROPOSAL_ID_LENGTH_MAX} characters",
                             hint="use the proposal id given by POST /upgrades/propose")
    return proposal_id


def check_upgrade_request(*, current_version: str, version: str, package_hash: str) -> str:
    """The CHECK step: the target version must be greater than the current one and the hash well formed.
    Returns the package hash as 64 lowercase hex."""
    check_version_allowed(current_version, version)
    digest = normalize_sha256(package_hash)
    if digest is None:
        raise HashFormatError(f"package_hash {str(package_hash)[:80]!r} is not a sha256 digest")
    return digest


def check_package_digest(*, actual_sha256: str, expected_sha256: str) -> None:
    """The VERIFY step, again on the bytes in hand (the fetcher checks too: this guards the cache path)."""
    if actual_sha256 != expected_sha256:
        raise HashMismatchError(f"package sha256 is {actual_sha256}, but the proposal says {expected_sha256}")


class SequenceDecision(Enum):
    APPLY = "apply"
    ALREADY_APPLIED = "already_applied"


def check_sequence(*, applied_sequence: int, sequence: object) -> SequenceDecision:
    """Upgrades apply strictly in sequence order, each at most once."""
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise UpgradeRefused(f"upgrade sequence must be an integer >= 1, got {sequence!r}",
                             hint="use the sequence number of the EXECUTE_UPGRADE entry")
    if sequence <= applied_sequence:
        return SequenceDecision.ALREADY_APPLIED
    if sequence > applied_sequence + 1:
        raise Conflict(f"upgrade sequence {sequence} cannot run before sequence {applied_sequence + 1}",
                       hint="apply EXECUTE_UPGRADE entries in sequence order; wait for the missing one")
    return SequenceDecision.APPLY


# --- rollback --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackPlan:
    restored: Mapping  # chain link {"version", "state_hash", "proposal_id", "sequence"} to go back to
    previous: Mapping  # the chain link being undone (the current version)


def choose_rollback(chain: Sequence[Mapping], *, proposal_id: str, sequenced: bool,
                    target_proposal_id: str | None = None, expected_version: str | None = None) -> RollbackPlan:
    """Go back one step in the applied-version chain (oldest first, current last).

    A local (unsequenced) rollback names the upgrade to undo, as in the spec's
    POST /upgrades/{proposal_id}/rollback: it must be the latest applied upgrade, so an operator never
    undoes a newer upgrade by naming an older one. A network rollback (sequenced) is named by its own
    proposal id; its target and expected restored version, when given, must match this node's chain."""
    assert chain, "the applied-version chain always holds at least the first version"
    current = chain[-1]
    if len(chain) < 2:
        raise RollbackError(f"cannot roll back: version {current['version']} is the first version this node has",
                            hint="there is no earlier version to restore")
    undo_id = proposal_id if not sequenced else target_proposal_id
    if undo_id is not None and undo_id != current["proposal_id"]:
        raise RollbackError(_not_latest_message(chain, undo_id),
                            hint="roll back the latest applied upgrade first (see GET /upgrades/history)")
    restored = chain[-2]
    if expected_version is not None and expected_version != restored["version"]:
        raise RollbackError(f"rollback expects to restore version {expected_version}, but the version before "
                            f"{current['version']} on this node is {restored['version']}",
                            hint="compare this node's history with the network's; the chains differ")
    return RollbackPlan(restored=restored, previous=current)


def rollback_already_in_effect(chain: Sequence[Mapping], history: Sequence[Mapping], *,
                               target_proposal_id: str | None, expected_version: str | None) -> bool:
    """A network rollback this node's operator already carried out locally (POST /upgrades/{id}/rollback):
    the target upgrade is no longer in the applied chain, a successful local rollback of it is recorded,
    and the node already stands on the version the network restores. Applying it is then a no-op that
    succeeds, so every honest node reports the same outcome and state hash."""
    if target_proposal_id is None or expected_version is None or not chain:
        return False
    if chain[-1]["version"] != expected_version or any(link["proposal_id"] == target_proposal_id for link in chain):
        return False
    return any(record.get("event") == "rollback" and record.get("success") and record.get("sequence") is None
               and record.get("proposal_id") == target_proposal_id for record in history)


def build_rollback_in_effect_record(*, now_ms: int, version: str, proposal_id: str, sequence: int,
                                    state_hash: str, target_proposal_id: str) -> dict:
    return _record(now_ms=now_ms, event="rollback", version=version, from_version=version,
                   proposal_id=proposal_id, sequence=sequence, sequence_consumed=True, success=True,
                   result=f"Already on {version}: {target_proposal_id[:PROPOSAL_ID_LENGTH_MAX]} was rolled back "
                          "here by the operator before the network decided it",
                   state_hash=state_hash)


def _not_latest_message(chain: Sequence[Mapping], undo_id: str) -> str:
    current = chain[-1]
    for link in chain[1:-1]:
        if link["proposal_id"] == undo_id:
            return (f"upgrade {undo_id} (version {link['version']}) is not the latest applied upgrade: "
                    f"{current['proposal_id']} (version {current['version']}) was applied after it")
    return (f"no applied upgrade on this node has proposal id {undo_id[:PROPOSAL_ID_LENGTH_MAX]!r}; "
            f"the latest is {current['proposal_id']} (version {current['version']})")


# --- history records -------------------------------------------------------------------------

TEXT_LENGTH_MAX = 500
RECORD_SIZE_MAX_BYTES = 2048
EVENTS = ("upgrade", "rollback", "failed")
RECORD_FIELDS = frozenset({
    "event", "version", "from_version", "executed_at", "executed_at_ms", "proposal_id", "sequence",
    "sequence_consumed", "success", "result", "state_hash", "error", "failed_step", "fuel_consumed",
})


def bound_text(text: str, length_max: int = TEXT_LENGTH_MAX) -> str:
    """Truncate to `length_max` characters, saying so, so a hostile error message cannot bloat history."""
    if len(text) <= length_max:
        return text
    suffix = " ...[truncated]"
    return text[: length_max - len(suffix)] + suffix


def _record(*, now_ms: int, event: str, version: str, from_version: str, proposal_id: str | None,
            sequence: int | None, sequence_consumed: bool, success: bool, result: str, state_hash: str,
            error: str | None = None, failed_step: str | None = None, fuel_consumed: int | None = None) -> dict:
    record = {
        "event": event, "version": version, "from_version": from_version,
        "executed_at": iso_utc_from_ms(now_ms), "executed_at_ms": now_ms,
        "proposal_id": proposal_id, "sequence": sequence, "sequence_consumed": sequence_consumed,
        "success": success, "result": bound_text(result), "state_hash": state_hash,
        "error": None if error is None else bound_text(error), "failed_step": failed_step,
        "fuel_consumed": fuel_consumed,
    }
    check_record(record)
    return record


def build_upgrade_record(*, now_ms: int, version: str, from_version: str, proposal_id: str, sequence: int,
                         state_hash: str, fuel_consumed: int | None) -> dict:
    return _record(now_ms=now_ms, event="upgrade", version=version, from_version=from_version,
                   proposal_id=proposal_id, sequence=sequence, sequence_consumed=True, success=True,
                   result="Migration completed successfully", state_hash=state_hash, fuel_consumed=fuel_consumed)


def build_rollback_record(*, now_ms: int, restored_version: str, previous_version: str, proposal_id: str,
                          sequence: int | None, state_hash: str) -> dict:
    return _record(now_ms=now_ms, event="rollback", version=restored_version, from_version=previous_version,
                   proposal_id=proposal_id, sequence=sequence, sequence_consumed=sequence is not None,
                   success=True, result=f"Rolled back from {previous_version} to {restored_version}",
                   state_hash=state_hash)


def build_failure_record(*, now_ms: int, version: str, current_version: str, proposal_id: str,
                         sequence: int | None, sequence_consumed: bool, state_hash: str, step: Step,
                         error: BaseException) -> dict:
    """`version` is the version attempted; `state_hash` the unchanged current state's."""
    text = describe_error(error)
    return _record(now_ms=now_ms, event="failed", version=version, from_version=current_version,
                   proposal_id=proposal_id, sequence=sequence, sequence_consumed=sequence_consumed,
                   success=False, result=f"Upgrade failed at step {step.value}: {text}", state_hash=state_hash,
                   error=text, failed_step=step.value)


def check_record(record: object) -> None:
    """A history record as the store accepts it: the known fields, sane types, bounded size."""
    if not isinstance(record, dict) or set(record) != RECORD_FIELDS:
        raise StoreError("history record has the wrong fields",
                         hint="build records with node.core.pipeline.build_*_record")
    problems = [name for name, ok in (
        ("event", record["event"] in EVENTS),
        ("version", is_valid_version(record["version"])),
        ("from_version", is_valid_version(record["from_version"])),
        ("success", isinstance(record["success"], bool)),
        ("sequence", record["sequence"] is None or (type(record["sequence"]) is int and record["sequence"] >= 1)),
        ("sequence_consumed", isinstance(record["sequence_consumed"], bool)),
        ("executed_at_ms", type(record["executed_at_ms"]) is int),
        ("proposal_id", record["proposal_id"] is None or isinstance(record["proposal_id"], str)),
    ) if not ok]
    if problems:
        raise StoreError(f"history record has bad field(s): {', '.join(problems)}",
                         hint="build records with node.core.pipeline.build_*_record")
    size_bytes = len(canonical_json(record))
    if size_bytes > RECORD_SIZE_MAX_BYTES:
        raise StoreError(f"history record is {size_bytes} bytes, more than {RECORD_SIZE_MAX_BYTES}",
                         hint="texts in records must go through bound_text")


def find_record(history: Sequence[Mapping], sequence: int) -> Mapping | None:
    """The record that consumed `sequence`, if the bounded history still holds it."""
    for record in reversed(history):
        if record.get("sequence") == sequence and record.get("sequence_consumed"):
            return record
    return None


def append_bounded(items: Sequence, item: object, *, length_max: int) -> list:
    """Append, dropping the oldest items beyond `length_max`."""
    assert length_max >= 1
    return [*items, item][-length_max:]


def append_attempt(history: Sequence[Mapping], record: Mapping, *, length_max: int) -> list:
    """Append a failed attempt that consumed nothing; if the newest record is an earlier attempt at the
    same (proposal, sequence), the new one replaces it (latest attempt wins), so a retry loop against an
    unreachable URL leaves one record, not hundreds."""
    if history and not record["sequence_consumed"]:
        last = history[-1]
        if (not last["sequence_consumed"] and last["event"] == "failed" and record["event"] == "failed"
                and (last["proposal_id"], last["sequence"]) == (record["proposal_id"], record["sequence"])):
            return [*history[:-1], record]
    return append_bounded(history, record, length_max=length_max)


# --- dry-run report --------------------------------------------------------------------------

CHANGES_MAX = 100
_PATH_LENGTH_MAX = 200
_DIFF_DEPTH_MAX = 32


def state_changes(old: object, new: object, *, changes_max: int = CHANGES_MAX) -> dict:
    """What a migration changed, as JSON-pointer paths (RFC 6901). A whole added or removed subtree is
    one path; lists and leaves compare as values. At most `changes_max` paths are listed per kind,
    `total` counts them all."""
    found = {"added": [], "removed": [], "changed": []}
    counts = {"added": 0, "removed": 0, "changed": 0}

    def note(kind: str, path: str) -> None:
        counts[kind] += 1
        if len(found[kind]) < changes_max:
            found[kind].append(path if len(path) <= _PATH_LENGTH_MAX else path[: _PATH_LENGTH_MAX - 3] + "...")

    def child(path: str, key: object) -> str:
        return path + "/" + str(key).replace("~", "~0").replace("/", "~1")

    def walk(before: dict, after: dict, path: str, depth: int) -> None:
        # An equal leaf costs a comparison, not a call and a path: a state's members are mostly unchanged.
        for key in sorted(before.keys() | after.keys()):
            if key not in after:
                note("removed", child(path, key))
            elif key not in before:
                note("added", child(path, key))
            else:
                was, now = before[key], after[key]
                if isinstance(was, dict) and isinstance(now, dict) and depth + 1 < _DIFF_DEPTH_MAX:
                    walk(was, now, child(path, key), depth + 1)
                elif was != now or type(was) is not type(now):
                    note("changed", child(path, key))

    if isinstance(old, dict) and isinstance(new, dict) and _DIFF_DEPTH_MAX > 0:
        walk(old, new, "", 0)
    elif old != new or type(old) is not type(new):
        note("changed", "/")
    total = sum(counts.values())
    return {**found, "total": total, "truncated": any(counts[kind] > len(found[kind]) for kind in counts)}
