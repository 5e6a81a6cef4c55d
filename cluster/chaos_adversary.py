"""The chaos adversary: a Byzantine member (and validator) that signs with stolen keys and speaks gossip.

Why it works as it does:
- The adversary holds the keys of the nodes it controls (read from their data dirs, as a thief of
  those disks would) and pushes signed entries straight to nodes' gossip endpoints, as the attack
  hooks of the scenarios do (scenarios/hooks/attacks.py: `member_key`, `push` and `forge_execute`
  are reused, not copied). The only thing wrong with each entry is what the attack is about.
- Each action returns (outcome, value) for the history: `ok` when at least one node took the entry
  into its log (the checkers must then find it had no effect), `fail` when nothing was sent because
  a precondition did not hold (the proposal is still open, the author's clock has moved past the
  deadline) or every node refused it at the door, `info` when a push may or may not have landed.
  The value names the entry ids and proposal ids the checkers look for.
- A backdated vote is only an attack after the validators closed voting; before, it is just a vote.
  So it is sent only when the node it asks says the proposal is closed, and `status_before` records
  what that node said: the checkers hold the closed outcome to it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.scenario_steps import load_hook
from node.core.entries import make_entry
from node.core.proposals import make_proposal_id
from node.core.hlc import Hlc

REPOSITORY = Path(__file__).resolve().parent.parent
FLOOD_BATCH_MAX = 50
REVIVABLE_LOOKED_MAX = 8
_BYTES_FIELDS = {"CLOSE": ("vote_ids",), "RATIFY": ("signature", "statement")}


def _attacks() -> Any:
    """scenarios/hooks/attacks.py, loaded as the scenario runner loads hooks."""
    module_name = load_hook("hooks.attacks:push", REPOSITORY / "scenarios").__module__
    return sys.modules[module_name]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _pushed(driver: Any, targets: list[int], entries: list) -> tuple[str, dict]:
    """Push to each target; ok if any took an entry, fail if every answering node refused, info otherwise."""
    attacks, results, added, answered = _attacks(), {}, 0, 0
    for index in targets:
        try:
            outcome = attacks.push(driver, index, entries)
        except AssertionError as error:
            results[driver.label(index)] = f"no answer: {error}"
            continue
        answered += 1
        added += outcome.added
        results[driver.label(index)] = {"added": outcome.added, "duplicate": outcome.duplicate, "refused": outcome.refused}
    kind = "ok" if added else ("fail" if answered == len(targets) else "info")
    return kind, {"pushed": results}


def _reader(driver: Any, preferred: int) -> int | None:
    live = driver.live_indexes()
    return preferred if preferred in live else (live[0] if live else None)


def _latest_of(entries: list[dict], author: str) -> dict | None:
    mine = [entry for entry in entries if entry["author"] == author]
    return max(mine, key=lambda entry: entry["sequence"]) if mine else None


def _closed_on(driver: Any, member: int, proposal_id: str) -> tuple[int | None, str]:
    """(a live node, the member's own first, where the validators' close has reached the proposal; its status)."""
    live = driver.live_indexes()
    statuses = []
    for index in sorted(live, key=lambda index: index != member):
        status = (driver.api(index).get(f"/proposals/{proposal_id}").data or {}).get("status")
        if status not in (None, "voting"):
            return index, status
        statuses.append(f"{driver.label(index)}: {status}")
    return None, "; ".join(statuses) or "no live node"


def revivable(driver: Any, member: int, proposal_ids: list[str], looked_max: int = REVIVABLE_LOOKED_MAX) -> str | None:
    """The latest of `proposal_ids` that a live node shows expired, that the member has not voted on, and
    that it can still vote on with a backdated clock: its own latest entry is older than the deadline
    (a vote must chain after it, with a later clock, or it would equivocate and void itself)."""
    live = driver.live_indexes()
    if not live:
        return None
    entries = driver.read_log(member if member in live else live[0])
    author = driver.handle(member).node_id
    member_latest_ms = max((entry["hlc"]["wall_ms"] for entry in entries if entry["author"] == author), default=0)
    deadlines = {entry["body"].get("proposal_id"): entry["body"].get("voting_deadline_ms", 0)
                 for entry in entries if entry["kind"] == "PROPOSAL"}
    # A proposal the member voted on already (or equivocated on: it is disqualified there) is no test.
    voted = {entry["body"].get("proposal_id") for entry in entries if entry["kind"] == "VOTE" and entry["author"] == author}
    for proposal_id in reversed(proposal_ids[-looked_max:]):
        if deadlines.get(proposal_id, 0) <= member_latest_ms or proposal_id in voted:
            continue
        if (driver.api(live[0]).get(f"/proposals/{proposal_id}").data or {}).get("status") == "expired":
            return proposal_id
    return None


def backdated_vote(driver: Any, member: int, proposal_id: str, vote: str) -> tuple[str, dict]:
    reader, status = _closed_on(driver, member, proposal_id)
    if reader is None:
        return "fail", {"error": f"{proposal_id} is not closed on any live node ({status}): a vote now is no attack, not sent",
                        "proposal_id": proposal_id}
    entries = driver.read_log(reader)
    proposed = next((entry for entry in entries if entry["kind"] == "PROPOSAL" and entry["body"].get("proposal_id") == proposal_id), None)
    identity = _attacks().member_key(driver, member)
    # The member's own node knows its newest entries; another node may not have them yet, and a vote
    # chained after an older one would be a twin of the newest (equivocation voids it: no test at all).
    own = driver.read_log(member) if member in driver.live_indexes() else entries
    latest = _latest_of(own, identity.node_id)
    clock = (proposed["hlc"]["wall_ms"], proposed["hlc"]["logical"] + 1)
    if latest is not None:
        clock = max(clock, (latest["hlc"]["wall_ms"], latest["hlc"]["logical"] + 1))
    if clock[0] >= proposed["body"]["voting_deadline_ms"]:
        return "fail", {"error": f"{driver.label(member)} wrote entries after the deadline of {proposal_id}: a vote cannot "
                                 "be dated before it and chain after them; not sent", "proposal_id": proposal_id}
    parents = (proposed["id"],) + ((latest["id"],) if latest is not None else ())
    entry = make_entry(network_id=driver.cluster.network_id, kind="VOTE", author=identity.node_id,
                       sequence=(latest["sequence"] + 1) if latest else 1, parents=parents, hlc=Hlc(*clock),
                       body={"proposal_id": proposal_id, "vote": vote}, sign=identity.sign)
    targets = sorted({reader, member} & set(driver.live_indexes()))
    kind, value = _pushed(driver, targets, [entry])
    return kind, {**value, "entry_id": entry.id, "proposal_id": proposal_id, "status_before": status, "dated_ms": clock[0]}


def equivocating_vote(driver: Any, member: int, proposal_id: str) -> tuple[str, dict]:
    """Two different votes with one sequence number, each pushed to a different node."""
    live = driver.live_indexes()
    reader = _reader(driver, member)
    if reader is None or len(live) < 2:
        return "fail", {"error": "fewer than two live nodes to equivocate to: not sent"}
    identity = _attacks().member_key(driver, member)
    entries = driver.read_log(reader)
    latest = _latest_of(entries, identity.node_id)
    sequence = (latest["sequence"] + 1) if latest else 1
    wall_ms = max(_wall_ms(), (latest["hlc"]["wall_ms"] + 1) if latest else 0)
    votes = [make_entry(network_id=driver.cluster.network_id, kind="VOTE", author=identity.node_id, sequence=sequence,
                        parents=(latest["id"],) if latest else (), hlc=Hlc(wall_ms, 0),
                        body={"proposal_id": proposal_id, "vote": vote}, sign=identity.sign)
             for vote in ("approval", "rejection")]
    others = [index for index in live if index != reader]
    first_kind, first = _pushed(driver, [reader], votes[:1])
    second_kind, second = _pushed(driver, [others[0]], votes[1:])
    kinds = {first_kind, second_kind}
    kind = "ok" if "ok" in kinds else "info" if "info" in kinds else "fail"
    return kind, {"entry_ids": [vote.id for vote in votes], "proposal_id": proposal_id, "sequence": sequence,
                  "pushed": {**first["pushed"], **second["pushed"]}}


def _rebuilt(document: Mapping, network_id: str) -> Any:
    """An entry from its API JSON (bytes fields back from hex), re-signed with its own signature: the
    same bytes and id when the JSON is faithful; None when it is not."""
    body = dict(document["body"])
    for name in _BYTES_FIELDS.get(document["kind"], ()):
        if isinstance(body.get(name), str):
            body[name] = bytes.fromhex(body[name])
    if document["kind"] == "EXECUTE_UPGRADE":
        body["certificate"] = [{**item, "signature": bytes.fromhex(item["signature"])} for item in body.get("certificate", [])]
    signature = bytes.fromhex(document["signature"])
    entry = make_entry(network_id=network_id, kind=document["kind"], author=document["author"], sequence=document["sequence"],
                       parents=tuple(document["parents"]), hlc=Hlc(document["hlc"]["wall_ms"], document["hlc"]["logical"]),
                       body=body, sign=lambda _message: signature)
    return entry if entry.id == document["id"] else None


def replay(driver: Any, target: int, entry_kind: str) -> tuple[str, dict]:
    """Push an entry already in the network's log again (the oldest of its kind) to a node."""
    reader = _reader(driver, target)
    if reader is None or target not in driver.live_indexes():
        return "fail", {"error": f"{driver.label(target)} is not live: not sent"}
    document = next((entry for entry in driver.read_log(reader, kind=entry_kind)), None)
    if document is None:
        return "fail", {"error": f"no {entry_kind} entry in the log yet: nothing to replay"}
    entry = _rebuilt(document, driver.cluster.network_id)
    if entry is None:
        return "fail", {"error": f"entry {document['id'][:16]} could not be rebuilt from its JSON: not sent"}
    kind, value = _pushed(driver, [target], [entry, entry])
    # A node that already holds it answers "duplicate": the replay was delivered (ok), and must change nothing.
    return ("info" if kind == "info" else "ok"), {**value, "entry_id": entry.id, "entry_kind": entry_kind}


def forged_execute(driver: Any, member: int, certificate: str, signers: list[int], package: str, version: str) -> tuple[str, dict]:
    """An EXECUTE_UPGRADE signed by the member, for a made-up proposal, with a forged or minority certificate."""
    live = driver.live_indexes()
    if not live:
        return "fail", {"error": "no live node: not sent"}
    proposal_id = make_proposal_id("upgrade", _wall_ms(), driver.handle(member).node_id, 999_999)
    driver.saved["__chaos_forged"] = proposal_id
    push_to = member if member in live else live[0]
    try:
        seen = _attacks().forge_execute(driver, version=version, package=package, certificate=certificate,
                                        signers=[f"node-{index}" for index in signers], author=f"node-{member}",
                                        proposal="__chaos_forged", push_to=f"node-{push_to}")
    except AssertionError as error:
        return "info", {"error": str(error), "proposal_id": proposal_id}
    return "ok", {"proposal_id": proposal_id, "certificate": certificate, "seen": seen}


def flood(driver: Any, member: int, count: int, batch: int, package: Any) -> tuple[str, dict]:
    """The member proposes `count` upgrades at once through its own API (nobody votes for them)."""
    if member not in driver.live_indexes():
        return "fail", {"error": f"{driver.label(member)} is not live: not sent"}
    proposal_ids, refused = [], []
    for number in range(min(count, FLOOD_BATCH_MAX)):
        body = {"title": f"flood {batch}.{number}", "version": f"8.{batch % 10}.{number}", "package_url": package.http_url,
                "package_hash": f"sha256:{package.sha256}", "package_size": package.size}
        try:
            response = driver.api(member).post("/upgrades/propose", body)
        except OSError as error:
            refused.append(f"no answer: {error}")
            continue
        if response.status == 201:
            proposal_ids.append(response.data["proposal_id"])
        else:
            refused.append(f"{response.status}")
    kind = "ok" if proposal_ids else "fail"
    return kind, {"proposal_ids": proposal_ids, "refused": refused}
