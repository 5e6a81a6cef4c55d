"""Scenario hooks that read governance facts TOML checks cannot express: reports, certificates, tallies,
history records, dry runs.

Why it works as it does:
- Every hook looks through the nodes' public HTTP API only (GET /proposals/{id}, /upgrades/history,
  POST /upgrades/{id}/test), on each selected node, exactly as an operator with curl would, and never
  trusts one node's word about the others: a property "on every node" is read on every node.
- A hook that finds the property false raises AssertionError with what it saw (the runner retries it
  under the step's `within`, and shows the last message as "seen"). A node that does not answer is
  "not yet" as well (AssertionError), since under `within` a restarting node must not break the step.
- Hooks return a one-line summary of what they saw, shown in the run's progress and report.

Use from a scenario:  do = "hook", hook = "hooks.governance:reports", args = { proposal = "up", success = true }
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote


def _nodes(driver: Any, on: Any) -> list[int]:
    return driver.resolve(on if on is not None else "live")


def _get(driver: Any, index: int, path: str) -> Any:
    try:
        response = driver.api(index).get(path)
    except OSError as error:
        raise AssertionError(f"{driver.label(index)}: GET {path} got no answer ({error})") from None
    if response.status != 200 or not isinstance(response.data, dict):
        raise AssertionError(f"{driver.label(index)}: GET {path} answered {response.status}: {response.text[:200]}")
    return response.data


def proposal_document(driver: Any, index: int, proposal: str) -> dict:
    """GET /proposals/{id} on one node, for the proposal saved as `proposal`."""
    return _get(driver, index, f"/proposals/{quote(driver.saved[proposal], safe='')}")


def _label_of(driver: Any, node_id: str) -> str:
    for index in range(1, driver.node_count + 1):
        if driver.handle(index).node_id == node_id:
            return driver.label(index)
    return node_id


def _labels(driver: Any, node_ids: Iterable[str]) -> str:
    return ", ".join(sorted(_label_of(driver, node_id) for node_id in node_ids))


def reports(driver: Any, proposal: str, success: bool, error_contains: str | None = None, count: int | None = None,
            on: Any = None) -> str:
    """On each selected node: EXECUTION_REPORTs of the proposal from `count` distinct nodes (default:
    every node of the cluster), all with `success`, all naming one state hash, no divergence flagged,
    and (when given) every error containing `error_contains`."""
    wanted = count if count is not None else driver.node_count
    seen_hash = None
    for index in _nodes(driver, on):
        document = proposal_document(driver, index, proposal)
        rows = document["reports"]
        authors = {row["node_id"] for row in rows}
        if len(authors) < wanted:
            raise AssertionError(f"{driver.label(index)} holds reports from {len(authors)} of {wanted} nodes "
                                 f"({_labels(driver, authors) or 'none'})")
        wrong = [row for row in rows if row["success"] is not success]
        if wrong:
            raise AssertionError(f"{driver.label(index)}: {_label_of(driver, wrong[0]['node_id'])} reported "
                                 f"success={wrong[0]['success']} (error {wrong[0]['error']!r:.200}), expected success={success}")
        if error_contains is not None:
            unlike = [row for row in rows if error_contains not in (row["error"] or "")]
            if unlike:
                raise AssertionError(f"{driver.label(index)}: {_label_of(driver, unlike[0]['node_id'])} reported error "
                                     f"{unlike[0]['error']!r:.300}, which does not name {error_contains!r}")
        hashes = {row["state_hash"] for row in rows}
        if len(hashes) != 1 or document["diverged"]:
            raise AssertionError(f"{driver.label(index)}: reports name {len(hashes)} state hashes, diverged="
                                 f"{document['diverged']} ({document['diverged_nodes']})")
        seen_hash = hashes.pop()
    outcome = "successful" if success else f"failed ({error_contains})" if error_contains else "failed"
    return f"{wanted} {outcome} reports with state hash {str(seen_hash)[:23]}... on every selected node"


def certificate(driver: Any, proposal: str, signers_min: int | None = None, on: Any = None) -> str:
    """On each selected node: the proposal's EXECUTE_UPGRADE carries a certificate signed by at least
    `signers_min` (default: a strict majority of) genesis validators, and the RATIFY audit entries of at
    least that many validators are valid."""
    validators = {driver.handle(index).node_id for index in range(1, driver.node_count + 1) if driver.handle(index).is_validator}
    wanted = signers_min if signers_min is not None else len(validators) // 2 + 1
    signers: Sequence[str] = ()
    for index in _nodes(driver, on):
        document = proposal_document(driver, index, proposal)
        execution = document["execution"]
        if execution is None:
            raise AssertionError(f"{driver.label(index)} holds no certified EXECUTE_UPGRADE for {driver.saved[proposal]}")
        signers = execution["certificate_signers"]
        strangers = set(signers) - validators
        if strangers or len(set(signers)) < wanted:
            raise AssertionError(f"{driver.label(index)}: certificate signed by {_labels(driver, signers)}; wanted >= {wanted} "
                                 f"validators{', not ' + _labels(driver, strangers) if strangers else ''}")
        audited = {row["validator_id"] for row in document["ratifications"] if row["valid"]}
        if len(audited & validators) < wanted:
            raise AssertionError(f"{driver.label(index)}: valid RATIFY entries from {_labels(driver, audited) or 'nobody'}; "
                                 f"wanted >= {wanted}")
    return f"certificate signed by {_labels(driver, signers)}"


def tally(driver: Any, proposal: str, on: Any = None, approval_weight: int | None = None,
          rejection_weight: int | None = None, uncounted_reason: str | None = None, uncounted_min: int = 1) -> str:
    """On each selected node: the proposal's tally weights (when given), and at least `uncounted_min`
    voters whose vote did not count for `uncounted_reason` (zero_reputation, after_deadline, ...)."""
    summary = ""
    for index in _nodes(driver, on):
        document = proposal_document(driver, index, proposal)
        weights = document["tally"]
        for name, wanted in (("approval_weight", approval_weight), ("rejection_weight", rejection_weight)):
            if wanted is not None and weights[name] != wanted:
                raise AssertionError(f"{driver.label(index)}: {name} {weights[name]}, expected {wanted} (tally {weights})")
        if uncounted_reason is not None:
            refused = [row for row in document["votes"] if not row["counted"] and row["reason"] == uncounted_reason]
            if len(refused) < uncounted_min:
                reasons = sorted({str(row["reason"]) for row in document["votes"]})
                raise AssertionError(f"{driver.label(index)}: {len(refused)} vote(s) not counted for {uncounted_reason}, "
                                     f"expected >= {uncounted_min} (reasons seen: {', '.join(reasons)})")
        summary = (f"approval {weights['approval_weight']}, rejection {weights['rejection_weight']} of "
                   f"{weights['total_weight']}" + (f"; {len(refused)} vote(s) void: {uncounted_reason}" if uncounted_reason else ""))
    return summary


def history(driver: Any, proposal: str, event: str, on: Any = None, success: bool | None = None,
            failed_step: str | None = None, error_contains: str | None = None) -> str:
    """On each selected node: GET /upgrades/history holds a record of `event` (upgrade, rollback,
    failed) for the proposal, with `success`, `failed_step` and an error naming `error_contains` when given."""
    proposal_id = driver.saved[proposal]
    record: dict = {}
    for index in _nodes(driver, on):
        records = [item for item in _get(driver, index, "/upgrades/history")["history"]
                   if item.get("proposal_id") == proposal_id and item.get("event") == event]
        if not records:
            raise AssertionError(f"{driver.label(index)}: no {event!r} record for {proposal_id} in GET /upgrades/history")
        record = records[-1]
        for name, wanted in (("success", success), ("failed_step", failed_step)):
            if wanted is not None and record.get(name) != wanted:
                raise AssertionError(f"{driver.label(index)}: {event} record has {name}={record.get(name)!r}, expected {wanted!r}")
        if error_contains is not None and error_contains not in (record.get("error") or ""):
            raise AssertionError(f"{driver.label(index)}: {event} record's error {record.get('error')!r:.300} does not name "
                                 f"{error_contains!r}")
    return f"{event} record: {record.get('result', '')[:160]}"


def dry_run(driver: Any, proposal: str, success: bool, error_contains: str | None = None, on: Any = "node-1") -> str:
    """POST /upgrades/{id}/test on the selected nodes: the dry run's verdict, and the live state untouched
    (GET /state's hash before and after, and the dry run's own live_state_hash)."""
    proposal_id = driver.saved[proposal]
    summary = ""
    for index in _nodes(driver, on):
        before = _get(driver, index, "/state")["state_hash"]
        try:
            response = driver.api(index).post(f"/upgrades/{quote(proposal_id, safe='')}/test", {})
        except OSError as error:
            raise AssertionError(f"{driver.label(index)}: POST /upgrades/{proposal_id}/test got no answer ({error})") from None
        if response.status != 200 or not isinstance(response.data, dict):
            raise AssertionError(f"{driver.label(index)}: POST /upgrades/{proposal_id}/test answered {response.status}: "
                                 f"{response.text[:200]}")
        result = response.data
        after = _get(driver, index, "/state")["state_hash"]
        if result["success"] is not success:
            raise AssertionError(f"{driver.label(index)}: dry run success={result['success']}, expected {success}: {result!r:.300}")
        error = result.get("error") or {}
        text = f"{error.get('error')}: {error.get('message')}" if isinstance(error, dict) and error else str(error or "")
        if error_contains is not None and error_contains not in text:
            raise AssertionError(f"{driver.label(index)}: dry run error {text!r:.300} does not name {error_contains!r}")
        if not before == after == result["live_state_hash"]:
            raise AssertionError(f"{driver.label(index)}: the dry run changed the live state ({before} -> {after})")
        summary = f"dry run success={result['success']}" + (f", error {text[:120]}" if text else "") + ", live state untouched"
    return summary


def raft_leader(driver: Any, on: Any = "validators") -> str:
    """Every selected live validator names the same Raft leader in GET /health, has a quorum, and that
    leader is a live node of this run (a killed leader may still be named until the others notice)."""
    answers = {}
    for index in _nodes(driver, on):
        if not driver.processes.live(index):
            continue
        health = _get(driver, index, "/health")
        if not health.get("raft_leader") or health.get("raft_has_quorum") is not True:
            raise AssertionError(f"{driver.label(index)}: raft_leader {health.get('raft_leader')!r}, "
                                 f"raft_has_quorum {health.get('raft_has_quorum')!r}")
        answers[driver.label(index)] = health["raft_leader"]
    if len(set(answers.values())) != 1:
        raise AssertionError(f"the validators name different leaders: {answers}")
    leader = next(iter(answers.values()))
    named = [index for index in range(1, driver.node_count + 1)
             if leader in (driver.handle(index).node_id, driver.handle(index).raft_address)]
    if not named or not driver.processes.live(named[0]):
        state = driver.processes.state(named[0]) if named else "not a node of this cluster"
        raise AssertionError(f"the validators still name {leader} as leader, which is {state}")
    return f"one Raft leader, {driver.label(named[0])} ({leader}), named by {', '.join(answers)}"


def validators_crashed(driver: Any, count: int = 1) -> str:
    """Exactly `count` validator processes have exited on their own (an armed crash point fired, e.g. on
    the node that led Raft when it was armed); they are marked down, so `restart nodes = "down"` brings
    them back."""
    exited = [index for index in range(1, driver.node_count + 1)
              if driver.handle(index).is_validator and not driver.handle(index).running]
    if len(exited) != count:
        codes = ", ".join(f"{driver.label(index)} (exit {driver.handle(index).process.poll()})" for index in exited)
        raise AssertionError(f"{len(exited)} validator processes have exited ({codes or 'none'}); wanted {count}")
    for index in exited:
        driver.processes.mark_crashed(index)
    return f"crashed: {', '.join(map(driver.label, exited))}"


def execute_published_by(driver: Any, proposal: str, not_by: Any = "down", on: Any = None) -> str:
    """On each selected node: the proposal's certified EXECUTE_UPGRADE was published by at least one
    validator, and by none of the nodes `not_by` names (e.g. a leader that died before publishing)."""
    excluded = {driver.handle(index).node_id for index in driver.resolve(not_by)}
    publishers: Sequence[str] = ()
    for index in _nodes(driver, on):
        execution = proposal_document(driver, index, proposal)["execution"]
        if execution is None:
            raise AssertionError(f"{driver.label(index)} holds no certified EXECUTE_UPGRADE for {driver.saved[proposal]}")
        publishers = execution["published_by"]
        if not publishers or excluded & set(publishers):
            raise AssertionError(f"{driver.label(index)}: EXECUTE_UPGRADE published by {_labels(driver, publishers) or 'nobody'}; "
                                 f"wanted someone other than {_labels(driver, excluded)}")
    return f"EXECUTE_UPGRADE published by {_labels(driver, publishers)}"
