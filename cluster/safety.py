"""The safety checks every scenario ends with, as pure functions over what the nodes reported.

Why it works as it does (hashicorp/raft's fault tests and Jepsen's checkers): whatever a scenario
did, the end state must satisfy the same properties, judged from the outside by reading every live
node's log and state, never by trusting what one node says about the others:
  1. logs converged: every live node shows the same entries in the same visible order;
  2. one version and one state hash on every live node;
  3. nothing executed without a valid certificate: every successful EXECUTION_REPORT names an upgrade
     whose EXECUTE_UPGRADE entry carries signatures of a strict majority of the genesis validators,
     checked here again with the node's own certificate code (node/core/certificates.py);
  4. nothing executed twice: no node reports a successful execution of the same sequence or the same
     proposal twice.
Checks 1 and 2 may need time after the last fault (gossip, catch-up): the runner polls them until
the scenario's `settle` deadline. Checks 3 and 4 are about history: once false they stay false.

Entries arrive as the API's JSON (node/api.py entry_to_json: bytes as hex). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from node.core.certificates import verify_certificate
from node.errors import CertificateError

SHOWN_MAX = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSnapshot:
    label: str                       # "node-3"
    node_id: str
    entries: tuple[Mapping, ...]     # GET /log entries, in visible order
    version: str | None              # from GET /state (or /health when /state does not exist)
    state_hash: str | None           # None when the node has no GET /state


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    name: str
    ok: bool
    expected: str
    seen: str
    nodes: tuple[str, ...] = ()      # the nodes the failure concerns (for the log excerpts)
    skipped: bool = False            # could not be judged (says why in `seen`); never counts as a pass
    details: tuple[str, ...] = field(default_factory=tuple)


def logs_converged(snapshots: Sequence[NodeSnapshot]) -> Outcome:
    name, expected = "logs converged", "every live node shows the same entries in the same order"
    if not snapshots:
        return Outcome(name=name, ok=False, expected=expected, seen="no live node to check")
    orders = {snapshot.label: [entry["id"] for entry in snapshot.entries] for snapshot in snapshots}
    union = set().union(*map(set, orders.values()))
    reference = max(orders.values(), key=len)
    differing = [label for label, order in orders.items() if order != reference]
    if not differing:
        return Outcome(name=name, ok=True, expected=expected, seen=f"{len(reference)} entries, same order on {len(orders)} nodes")
    details = []
    for label, order in orders.items():
        missing = union - set(order)
        details.append(f"{label}: {len(order)} entries" + (f", missing {len(missing)}: {', '.join(sorted(missing)[:SHOWN_MAX])}" if missing else ""))
    same_sets = all(set(order) == union for order in orders.values())
    seen = "same entries in different orders" if same_sets else f"{len(union)} distinct entries, not all on every node"
    return Outcome(name=name, ok=False, expected=expected, seen=seen, nodes=tuple(differing), details=tuple(details))


def one_version_and_state_hash(snapshots: Sequence[NodeSnapshot]) -> Outcome:
    name, expected = "one version and one state hash", "every live node on the same version with the same state hash"
    versions = {snapshot.label: snapshot.version for snapshot in snapshots}
    hashes = {snapshot.label: snapshot.state_hash for snapshot in snapshots}
    if not snapshots:
        return Outcome(name=name, ok=False, expected=expected, seen="no live node to check")
    distinct_versions = Counter(versions.values())
    details = tuple(f"{label}: version {versions[label]}, state hash {hashes[label]}" for label in versions)
    if None in distinct_versions:
        return Outcome(name=name, ok=False, expected=expected, seen="a node reported no version", details=details,
                       nodes=tuple(label for label, version in versions.items() if version is None))
    if all(value is None for value in hashes.values()):
        ok = len(distinct_versions) == 1
        return Outcome(name=name, ok=ok, expected=expected, details=details,
                       seen=f"version {next(iter(distinct_versions))} everywhere; the nodes expose no GET /state, so state hashes "
                            "were not compared" if ok else f"versions {dict(distinct_versions)}",
                       nodes=() if ok else _minority_labels(versions))
    distinct_hashes = Counter(hashes.values())
    if len(distinct_versions) == 1 and len(distinct_hashes) == 1 and None not in distinct_hashes:
        return Outcome(name=name, ok=True, expected=expected, details=details,
                       seen=f"version {next(iter(distinct_versions))}, state hash {next(iter(distinct_hashes))} on {len(snapshots)} nodes")
    return Outcome(name=name, ok=False, expected=expected, details=details,
                   seen=f"{len(distinct_versions)} version(s), {len(distinct_hashes)} state hash(es)",
                   nodes=tuple(sorted(set(_minority_labels(versions)) | set(_minority_labels(hashes)))))


def _minority_labels(values: Mapping[str, object]) -> list[str]:
    """The nodes that disagree with the most common value."""
    common, _count = Counter(values.values()).most_common(1)[0]
    return [label for label, value in values.items() if value != common]


def _certificate_body(entry: Mapping) -> dict:
    """An EXECUTE_UPGRADE body from the API's JSON back to the types the certificate code checks."""
    body = dict(entry["body"])
    certificate = []
    for item in body.get("certificate") or []:
        signature = item.get("signature") if isinstance(item, Mapping) else None
        try:
            raw = bytes.fromhex(signature) if isinstance(signature, str) else b""
        except ValueError:
            raw = b""
        certificate.append({"validator_id": item.get("validator_id") if isinstance(item, Mapping) else None, "signature": raw})
    body["certificate"] = certificate
    return body


def _all_entries(snapshots: Sequence[NodeSnapshot]) -> dict[str, Mapping]:
    entries: dict[str, Mapping] = {}
    for snapshot in snapshots:
        for entry in snapshot.entries:
            entries.setdefault(entry["id"], entry)
    return entries


def executed_with_certificate(snapshots: Sequence[NodeSnapshot], *, network_id: str, validators: Mapping[str, bytes],
                              verify: Callable[[bytes, bytes, bytes], bool]) -> Outcome:
    name = "nothing executed without a valid certificate"
    expected = "every successful execution follows an EXECUTE_UPGRADE signed by a majority of the genesis validators"
    entries = _all_entries(snapshots)
    certified: set[tuple[str, int]] = set()
    for entry in entries.values():
        if entry["kind"] != "EXECUTE_UPGRADE":
            continue
        body = _certificate_body(entry)
        try:
            verify_certificate(body, network_id=network_id, validators=validators, verify=verify)
        except (CertificateError, KeyError, TypeError):
            continue
        certified.add((body["proposal_id"], body["sequence"]))
    uncertified = []
    for entry in entries.values():
        body = entry["body"]
        if entry["kind"] == "EXECUTION_REPORT" and body.get("success") is True:
            if (body.get("proposal_id"), body.get("sequence")) not in certified:
                uncertified.append(entry)
    reports = sum(1 for entry in entries.values() if entry["kind"] == "EXECUTION_REPORT" and entry["body"].get("success") is True)
    if not uncertified:
        return Outcome(name=name, ok=True, expected=expected,
                       seen=f"{reports} successful execution report(s), {len(certified)} certified upgrade(s)")
    details = tuple(f"{_label_of(entry, snapshots)} executed proposal {entry['body'].get('proposal_id')} sequence "
                    f"{entry['body'].get('sequence')} (report {entry['id'][:16]}) with no valid certificate in any log"
                    for entry in uncertified[:SHOWN_MAX])
    return Outcome(name=name, ok=False, expected=expected, seen=f"{len(uncertified)} execution(s) without a valid certificate",
                   nodes=tuple(sorted({_label_of(entry, snapshots) for entry in uncertified})), details=details)


def _label_of(entry: Mapping, snapshots: Sequence[NodeSnapshot]) -> str:
    return next((snapshot.label for snapshot in snapshots if snapshot.node_id == entry.get("author")), str(entry.get("author")))


def nothing_executed_twice(snapshots: Sequence[NodeSnapshot]) -> Outcome:
    name, expected = "nothing executed twice", "each node executes each upgrade sequence and each proposal at most once"
    by_sequence: dict[tuple[str, object], list[str]] = defaultdict(list)
    by_proposal: dict[tuple[str, object], list[str]] = defaultdict(list)
    for entry in _all_entries(snapshots).values():
        body = entry["body"]
        if entry["kind"] == "EXECUTION_REPORT" and body.get("success") is True:
            by_sequence[(entry["author"], body.get("sequence"))].append(entry["id"])
            by_proposal[(entry["author"], body.get("proposal_id"))].append(entry["id"])
    details = [f"node {author} reported sequence {sequence} executed {len(ids)} times"
               for (author, sequence), ids in by_sequence.items() if len(ids) > 1]
    details += [f"node {author} reported proposal {proposal} executed {len(ids)} times"
                for (author, proposal), ids in by_proposal.items() if len(ids) > 1]
    if not details:
        return Outcome(name=name, ok=True, expected=expected, seen=f"{len(by_sequence)} execution(s), none repeated")
    authors = {detail.split()[1] for detail in details}
    labels = tuple(sorted(next((s.label for s in snapshots if s.node_id == author), author) for author in authors))
    return Outcome(name=name, ok=False, expected=expected, seen=f"{len(details)} repeated execution(s)", nodes=labels,
                   details=tuple(details[:SHOWN_MAX]))


def safety_outcomes(snapshots: Sequence[NodeSnapshot], *, network_id: str, validators: Mapping[str, bytes],
                    verify: Callable[[bytes, bytes, bytes], bool]) -> list[Outcome]:
    """All four checks, in the order above."""
    return [logs_converged(snapshots), one_version_and_state_hash(snapshots),
            executed_with_certificate(snapshots, network_id=network_id, validators=validators, verify=verify),
            nothing_executed_twice(snapshots)]
