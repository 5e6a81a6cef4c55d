"""Checkers of a chaos run: pure functions over the history and every node's final state and log.

Why it works as it does (Jepsen's checkers, with a Byzantine adversary in the history):
- A checker never asks a node what happened; it judges what was recorded: the history (what was
  asked, and whether it definitely happened, definitely did not, or may have) and every node's
  final log and state read from the outside after the final heal. So `synapse chaos check D`
  re-judges a report folder, and a hand-edited folder proves each checker can fail.
- The scenario safety checks (cluster/safety.py) are reused as they are; the others add what a
  generated history needs: acknowledged writes are durable, a closed-negative proposal never runs,
  a node's version moves only through certified upgrades and rollbacks, one state hash per upgrade
  sequence, nothing the adversary did took effect, and liveness after the final heal.
- The counted votes of a proposal are what a strict majority of the validators published in CLOSE
  entries (node/core/closing.py); an adversary's backdated or equivocating vote must not be among them.
- Each failure names the operations (schedule item ids, `op N`) and nodes that break it. A check that
  cannot be judged (the run never reached it) is skipped, and a skipped check makes the verdict
  `unknown`, never `valid`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cluster.chaos_history import Event, Operation, operations
from cluster.safety import NodeSnapshot, Outcome, executed_with_certificate, logs_converged, nothing_executed_twice, \
    one_version_and_state_hash

SHOWN_MAX = 5
VOTE_ID_HEX_LENGTH = 64
NEGATIVE_STATUSES = ("expired", "rejected")
POSITIVE_STATUSES = ("approved", "ratified", "executed")
DURABLE_OPERATIONS = ("propose", "propose_rollback", "vote", "note")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFacts:
    """Everything the checkers judge, as a report folder holds it."""
    network_id: str
    validators: Mapping[str, bytes]          # validator node_id -> public key (from genesis)
    nodes: Mapping[str, str]                 # "node-3" -> node_id
    genesis_version: str
    liveness_bound_ms: int
    finals: Mapping[str, Mapping]            # "node-3" -> {"process", "state", "log", "proposals"}
    events: tuple[Event, ...]
    aborted: str | None = None               # why the run stopped early, if it did


# --- reading the finals ----------------------------------------------------------------------


def live_labels(facts: RunFacts) -> list[str]:
    return [label for label, final in facts.finals.items()
            if final.get("process") == "up" and isinstance(final.get("log"), list)]


def snapshots(facts: RunFacts) -> list[NodeSnapshot]:
    result = []
    for label in live_labels(facts):
        final = facts.finals[label]
        state = final.get("state") if isinstance(final.get("state"), Mapping) else {}
        result.append(NodeSnapshot(label=label, node_id=facts.nodes.get(label, label), entries=tuple(final["log"]),
                                   version=state.get("version"), state_hash=state.get("state_hash")))
    return result


def _all_entries(facts: RunFacts) -> dict[str, Mapping]:
    entries: dict[str, Mapping] = {}
    for label in live_labels(facts):
        for entry in facts.finals[label]["log"]:
            entries.setdefault(entry["id"], entry)
    return entries


def _label(facts: RunFacts, node_id: object) -> str:
    return next((label for label, known in facts.nodes.items() if known == node_id), str(node_id))


def _success_reports(entries: Mapping[str, Mapping]) -> list[Mapping]:
    return [entry for entry in entries.values() if entry["kind"] == "EXECUTION_REPORT" and entry["body"].get("success") is True]


def counted_votes(entries: Mapping[str, Mapping], validators: Mapping[str, bytes]) -> dict[str, set[str]]:
    """proposal id -> the vote ids a strict majority of the validators published in CLOSE entries."""
    namers: dict[tuple[str, str], set[str]] = defaultdict(set)
    vote_ids: dict[tuple[str, str], str] = {}
    for entry in entries.values():
        if entry["kind"] != "CLOSE" or entry["author"] not in validators:
            continue
        key = (entry["body"].get("proposal_id"), entry["body"].get("votes_digest"))
        namers[key].add(entry["author"])
        vote_ids[key] = entry["body"].get("vote_ids") or ""
    counted: dict[str, set[str]] = {}
    for (proposal_id, _digest), authors in namers.items():
        if len(authors) * 2 > len(validators):
            packed = vote_ids[(proposal_id, _digest)]
            counted[proposal_id] = {packed[offset:offset + VOTE_ID_HEX_LENGTH] for offset in range(0, len(packed), VOTE_ID_HEX_LENGTH)}
    return counted


def _outcome(name: str, expected: str, problems: list[str], nodes: set[str], seen_ok: str) -> Outcome:
    if not problems:
        return Outcome(name=name, ok=True, expected=expected, seen=seen_ok)
    return Outcome(name=name, ok=False, expected=expected, seen=f"{len(problems)} violation(s): {problems[0]}",
                   nodes=tuple(sorted(nodes)), details=tuple(problems[:SHOWN_MAX]))


# --- the checkers beyond cluster/safety.py ---------------------------------------------------


def one_state_hash_per_sequence(facts: RunFacts) -> Outcome:
    name, expected = "one state hash per upgrade sequence", "every node that executed a sequence reports the same state hash"
    by_sequence: dict[object, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for entry in _success_reports(_all_entries(facts)):
        by_sequence[entry["body"].get("sequence")][entry["body"].get("state_hash")].add(_label(facts, entry["author"]))
    problems, nodes = [], set()
    for sequence, hashes in by_sequence.items():
        if len(hashes) > 1:
            shown = "; ".join(f"{state_hash}: {', '.join(sorted(labels))}" for state_hash, labels in hashes.items())
            problems.append(f"sequence {sequence} has {len(hashes)} state hashes ({shown})")
            nodes |= set().union(*hashes.values())
    return _outcome(name, expected, problems, nodes, f"{len(by_sequence)} sequence(s), one state hash each")


def versions_only_by_certified_changes(facts: RunFacts) -> Outcome:
    """Each node's version is the one its last successful execution (upgrade or rollback) produced, and
    that execution's version is the one the certified EXECUTE_UPGRADE named."""
    name = "versions change only by certified upgrades and rollbacks"
    expected = "each node's version = its last certified execution's version (or the genesis version)"
    entries = _all_entries(facts)
    executes = {(entry["body"].get("proposal_id"), entry["body"].get("sequence")): entry["body"].get("version")
                for entry in entries.values() if entry["kind"] == "EXECUTE_UPGRADE"}
    last: dict[str, Mapping] = {}
    problems, nodes = [], set()
    for entry in sorted(_success_reports(entries), key=lambda entry: entry["body"].get("sequence") or 0):
        body, label = entry["body"], _label(facts, entry["author"])
        named = executes.get((body.get("proposal_id"), body.get("sequence")))
        if named != body.get("version"):
            problems.append(f"{label} reports version {body.get('version')} for {body.get('proposal_id')} sequence "
                            f"{body.get('sequence')}, but its EXECUTE_UPGRADE names {named}")
            nodes.add(label)
        last[label] = body
    for snapshot in snapshots(facts):
        wanted = last[snapshot.label]["version"] if snapshot.label in last else facts.genesis_version
        if snapshot.version != wanted:
            problems.append(f"{snapshot.label} runs version {snapshot.version}, but its executions lead to {wanted}")
            nodes.add(snapshot.label)
    return _outcome(name, expected, problems, nodes, f"{len(last)} node(s) changed version, each by certified executions")


def acknowledged_writes_durable(facts: RunFacts) -> Outcome:
    name = "acknowledged writes are in every live log"
    expected = "every ok proposal, vote and note is in every live node's final log"
    logs = {label: {entry["id"] for entry in facts.finals[label]["log"]} for label in live_labels(facts)}
    problems, nodes, checked = [], set(), 0
    for operation in operations(facts.events):
        entry_id = operation.value.get("entry_id")
        if operation.invoke.process != "workload" or operation.invoke.f not in DURABLE_OPERATIONS or operation.outcome != "ok" \
                or not entry_id:
            continue
        checked += 1
        missing = sorted(label for label, ids in logs.items() if entry_id not in ids)
        if missing:
            problems.append(f"op {operation.invoke.op_id} ({operation.invoke.f} on {operation.invoke.node}, entry "
                            f"{entry_id[:16]}) is missing from {', '.join(missing)}")
            nodes |= set(missing)
    return _outcome(name, expected, problems, nodes, f"{checked} acknowledged write(s) on {len(logs)} node(s)")


def _final_statuses(facts: RunFacts) -> dict[str, dict[str, str]]:
    """proposal id -> {node label: final status} from each live node's GET /proposals."""
    statuses: dict[str, dict[str, str]] = defaultdict(dict)
    for label in live_labels(facts):
        for proposal_id, status in (facts.finals[label].get("proposals") or {}).items():
            statuses[proposal_id][label] = status
    return statuses


def closed_negative_never_executed(facts: RunFacts) -> Outcome:
    name = "no proposal both expired/rejected and executed"
    expected = "a proposal expired or rejected on some node is executed on none"
    executed_by: dict[str, set[str]] = defaultdict(set)
    for entry in _success_reports(_all_entries(facts)):
        executed_by[entry["body"].get("proposal_id")].add(_label(facts, entry["author"]))
    problems, nodes = [], set()
    for proposal_id, by_node in _final_statuses(facts).items():
        negative = sorted(label for label, status in by_node.items() if status in NEGATIVE_STATUSES)
        positive = executed_by.get(proposal_id, set()) | {label for label, status in by_node.items() if status == "executed"}
        if negative and positive:
            problems.append(f"{proposal_id}: {by_node[negative[0]]} on {', '.join(negative)}, executed on {', '.join(sorted(positive))}")
            nodes |= set(negative) | positive
    return _outcome(name, expected, problems, nodes, f"{len(_final_statuses(facts))} proposal(s) judged")


def _adversary_problems(operation: Operation, counted: Mapping[str, set[str]], executed: Mapping[str, set[str]],
                        statuses: Mapping[str, Mapping[str, str]], votes: Mapping[str, Mapping[str, list]]) -> list[str]:
    """What this adversary operation achieved that it must not have (empty: nothing)."""
    value, f, op_id = operation.value, operation.invoke.f, operation.invoke.op_id
    problems = []
    if f in ("backdated_vote", "equivocating_vote"):
        proposal_id = value.get("proposal_id")
        for entry_id in value.get("entry_ids") or ([value["entry_id"]] if value.get("entry_id") else []):
            # A backdated vote arrives after the close: no close may name it. An equivocating twin may be
            # named by a close that saw only one twin; it must still never count (governance voids both).
            if f == "backdated_vote" and entry_id in counted.get(proposal_id, set()):
                problems.append(f"op {op_id} ({f}): vote {entry_id[:16]} was counted in the validators' close of {proposal_id}")
            counting = sorted(label for label, records in votes.get(proposal_id, {}).items()
                              if any(record.get("entry_id") == entry_id and record.get("counted") for record in records))
            if counting:
                problems.append(f"op {op_id} ({f}): vote {entry_id[:16]} counts in the tally of {proposal_id} on {', '.join(counting)}")
        if f == "backdated_vote" and value.get("status_before") in NEGATIVE_STATUSES:
            turned = sorted(label for label, status in statuses.get(proposal_id, {}).items() if status in POSITIVE_STATUSES)
            if turned or executed.get(proposal_id):
                problems.append(f"op {op_id} ({f}): {proposal_id} was {value['status_before']} before the vote, then "
                                f"{'executed on ' + ', '.join(sorted(executed.get(proposal_id, ()))) if executed.get(proposal_id) else 'approved on ' + ', '.join(turned)}")
    elif f in ("forged_execute", "minority_execute", "flood"):
        for proposal_id in value.get("proposal_ids") or ([value["proposal_id"]] if value.get("proposal_id") else []):
            if executed.get(proposal_id):
                problems.append(f"op {op_id} ({f}): {proposal_id} executed on {', '.join(sorted(executed[proposal_id]))}")
    return problems


def adversary_without_effect(facts: RunFacts) -> Outcome:
    name, expected = "no adversary action took effect", \
        "no backdated or equivocating vote counted, no forged/minority EXECUTE or flooded proposal executed, no entry twice in a log"
    entries = _all_entries(facts)
    counted = counted_votes(entries, facts.validators)
    executed: dict[str, set[str]] = defaultdict(set)
    for entry in _success_reports(entries):
        executed[entry["body"].get("proposal_id")].add(_label(facts, entry["author"]))
    statuses = _final_statuses(facts)
    votes: dict[str, dict[str, list]] = defaultdict(dict)     # proposal id -> node -> vote records
    for label in live_labels(facts):
        for proposal_id, records in (facts.finals[label].get("votes") or {}).items():
            votes[proposal_id][label] = records
    problems, nodes, judged = [], set(), 0
    for operation in operations(facts.events):
        if operation.invoke.process != "adversary" or operation.outcome == "fail":
            continue
        judged += 1
        found = _adversary_problems(operation, counted, executed, statuses, votes)
        problems += found
        nodes |= {label for problem in found for label in facts.nodes if label in problem}
    for label in live_labels(facts):
        ids = [entry["id"] for entry in facts.finals[label]["log"]]
        if len(ids) != len(set(ids)):
            problems.append(f"{label}'s log shows {len(ids) - len(set(ids))} entry id(s) more than once (a replay took)")
            nodes.add(label)
    return _outcome(name, expected, problems, nodes, f"{judged} adversary action(s) sent, none took effect")


def liveness_after_heal(facts: RunFacts) -> Outcome:
    name = "liveness after the final heal"
    expected = f"a fresh upgrade, proposed and approved after the heal, executes on every live node within {facts.liveness_bound_ms} ms"
    probes = [operation for operation in operations(facts.events) if operation.invoke.f == "liveness"]
    if not probes:
        return Outcome(name=name, ok=False, skipped=True, expected=expected, seen="the run never reached the liveness probe")
    probe = probes[-1]
    proposal_id = probe.value.get("proposal_id")
    reporters = {_label(facts, entry["author"]) for entry in _success_reports(_all_entries(facts))
                 if entry["body"].get("proposal_id") == proposal_id}
    missing = sorted(set(live_labels(facts)) - reporters)
    elapsed_ms = probe.value.get("elapsed_ms")
    problems = []
    if probe.outcome != "ok":
        problems.append(f"op liveness ({proposal_id}): {probe.value.get('error') or probe.outcome}")
    if missing:
        problems.append(f"{proposal_id} has no successful execution report from {', '.join(missing)}")
    if isinstance(elapsed_ms, int) and elapsed_ms > facts.liveness_bound_ms:
        problems.append(f"{proposal_id} took {elapsed_ms} ms, more than {facts.liveness_bound_ms} ms")
    return _outcome(name, expected, problems, set(missing), f"{proposal_id} executed on every live node in {elapsed_ms} ms")


# --- all of them -----------------------------------------------------------------------------

CHECK_NAMES = ("logs converged", "one version and one state hash", "nothing executed without a valid certificate",
               "nothing executed twice", "one state hash per upgrade sequence",
               "versions change only by certified upgrades and rollbacks", "acknowledged writes are in every live log",
               "no proposal both expired/rejected and executed", "no adversary action took effect", "liveness after the final heal")


def judge(facts: RunFacts, *, verify: Callable[[bytes, bytes, bytes], bool]) -> list[Outcome]:
    """Every checker, in CHECK_NAMES order."""
    nodes = snapshots(facts)
    if not nodes:
        return [Outcome(name=name, ok=False, skipped=True, expected="judged on the live nodes' final logs",
                        seen="no live node's final log was recorded") for name in CHECK_NAMES]
    return [logs_converged(nodes), one_version_and_state_hash(nodes),
            executed_with_certificate(nodes, network_id=facts.network_id, validators=facts.validators, verify=verify),
            nothing_executed_twice(nodes), one_state_hash_per_sequence(facts), versions_only_by_certified_changes(facts),
            acknowledged_writes_durable(facts), closed_negative_never_executed(facts), adversary_without_effect(facts),
            liveness_after_heal(facts)]


def verdict(outcomes: Sequence[Outcome], *, aborted: str | None = None) -> str:
    """invalid if any check failed; unknown if the run broke off or a check could not be judged; else valid."""
    if any(not outcome.ok and not outcome.skipped for outcome in outcomes):
        return "invalid"
    if aborted or any(outcome.skipped for outcome in outcomes) or not outcomes:
        return "unknown"
    return "valid"
