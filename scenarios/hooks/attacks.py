"""Scenario hooks for the attacks TOML cannot express: forged votes and forged EXECUTE_UPGRADE entries,
posted straight to a node's gossip endpoint as a hostile peer would.

Why it works as it does:
- An attacker does not use the API of a node it does not own: it speaks gossip (POST /gossip/push, a
  msgpack Push of raw signed entries) to any node it can reach. These hooks do exactly that, with
  entries built and signed by the node's own entry code (node/core/entries.make_entry), so the only
  thing wrong with them is what the attack is about: a stranger's key, a signature that does not
  match its author, or a certificate without a majority of the genesis validators' signatures.
- A "stolen" member key is read from the member's data dir (the scenario runs the cluster locally).
  An entry authored with it must chain after that author's latest visible entry (the log's per-author
  sequence rule), and is pushed to that very node first, so the node itself continues its chain after
  the forged entry instead of equivocating with it (an equivocation would void the member's votes and
  change the story).
- The hooks assert what the door must do (refused: nothing added; or, for a well-signed entry with a
  bad certificate, accepted into the log, since refusal happens at execution) and return a summary.
  What every node then does with it is asserted by the scenario itself (the /metrics refusal counters,
  versions, state hashes), from the outside.

- `bad_token` speaks raw HTTP over a socket: a client library would encode a header as UTF-8, and the
  attack is the single latin-1 byte a hostile or broken client sends.

Use from a scenario:  do = "hook", hook = "hooks.attacks:forge_votes", args = { proposal = "up", on = "node-3" }
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

from node.core.certificates import certificate_statement
from node.core.closing import EMPTY_VOTES_DIGEST
from node.core.entries import make_entry
from node.core.proposals import make_proposal_id
from node.core.hlc import Hlc
from node.gossip import Push, Pushed, decode_message
from node.identity import Identity

PUSH_TIMEOUT_S = 10
RAW_REPLY_BYTES_MAX = 64 * 1024
MUTATING_PATHS = ("/upgrades/propose", "/rollbacks/propose", "/log/notes", "/proposals/{proposal}/vote",
                  "/upgrades/{proposal}/test", "/upgrades/{proposal}/rollback")
FORGED_VOTES_MAX = 100
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _one(driver: Any, selector: Any) -> int:
    indexes = driver.resolve(selector)
    if len(indexes) != 1:
        raise AssertionError(f"the selector {selector!r} names {len(indexes)} nodes; this hook needs exactly one")
    return indexes[0]


def member_key(driver: Any, index: int) -> Identity:
    """The node's own signing key, read from its data dir (what a thief of that disk would hold)."""
    path = driver.handle(index).data_dir / "node_key"
    if not path.is_file():
        raise AssertionError(f"{driver.label(index)} has no key file at {path}")
    identity = Identity.load_or_create(path)
    assert identity.node_id == driver.handle(index).node_id, "the key file belongs to the node"
    return identity


def push(driver: Any, index: int, entries: list) -> Pushed:
    """POST /gossip/push to one node, as a peer would; returns its counts (added, duplicate, refused)."""
    request = urllib.request.Request(driver.handle(index).api_url + "/gossip/push", method="POST",
                                     data=Push(sender="", raws=tuple(entry.raw for entry in entries)).encode(),
                                     headers={"Content-Type": "application/msgpack"})
    try:
        with _NO_PROXY.open(request, timeout=PUSH_TIMEOUT_S) as response:
            return decode_message(response.read(), Pushed, array_length_max=8)
    except OSError as error:
        raise AssertionError(f"{driver.label(index)}: POST /gossip/push failed: {error}") from None


def _latest_of(driver: Any, index: int, author: str) -> dict | None:
    """The author's highest-sequence visible entry in this node's log (JSON), or None."""
    entries = [entry for entry in driver.read_log(index) if entry["author"] == author]
    return max(entries, key=lambda entry: entry["sequence"]) if entries else None


def _chained_entry(driver: Any, index: int, identity: Identity, kind: str, body: dict) -> Any:
    """An entry by `identity` that follows its author's latest entry in node `index`'s log."""
    latest = _latest_of(driver, index, identity.node_id)
    if latest is None:
        sequence, parents, wall_ms = 1, (), _wall_ms()
    else:
        sequence, parents = latest["sequence"] + 1, (latest["id"],)
        wall_ms = max(_wall_ms(), latest["hlc"]["wall_ms"] + 1)
    return make_entry(network_id=driver.cluster.network_id, kind=kind, author=identity.node_id, sequence=sequence,
                      parents=parents, hlc=Hlc(wall_ms, 0), body=body, sign=identity.sign)


def forge_votes(driver: Any, proposal: str, on: Any = "node-1", strangers: int = 5, impersonate: Any = "all",
                vote: str = "approval") -> str:
    """Push forged votes on the proposal to one node: `strangers` votes signed by keys that are not
    members (unknown author), and one vote per impersonated member whose signature is a stranger's (bad
    signature). The node must refuse every one at the door: nothing added."""
    if not 0 <= strangers <= FORGED_VOTES_MAX:
        raise AssertionError(f"strangers must be 0..{FORGED_VOTES_MAX}")
    index = _one(driver, on)
    body = {"proposal_id": driver.saved[proposal], "vote": vote}
    entries = []
    for _ in range(strangers):
        stranger = Identity.generate()
        entries.append(make_entry(network_id=driver.cluster.network_id, kind="VOTE", author=stranger.node_id, sequence=1,
                                  parents=(), hlc=Hlc(_wall_ms(), 0), body=body, sign=stranger.sign))
    impersonated = driver.resolve(impersonate) if impersonate else []
    for victim in impersonated:
        thief = Identity.generate()
        entries.append(make_entry(network_id=driver.cluster.network_id, kind="VOTE", author=driver.handle(victim).node_id,
                                  sequence=1, parents=(), hlc=Hlc(_wall_ms(), 0), body=body, sign=thief.sign))
    outcome = push(driver, index, entries)
    if outcome.added or outcome.refused != len(entries):
        raise AssertionError(f"{driver.label(index)} took {outcome.added} of {len(entries)} forged votes "
                             f"(refused {outcome.refused}, duplicate {outcome.duplicate})")
    return (f"{driver.label(index)} refused all {len(entries)} forged votes: {strangers} by unknown keys, "
            f"{len(impersonated)} with bad signatures")


def forge_execute(driver: Any, version: str, package: str, certificate: str = "minority", signers: Any = "node-1",
                  author: Any = "node-5", proposal: str | None = None, sequence: int | None = None,
                  push_to: Any = None) -> str:
    """Push an EXECUTE_UPGRADE whose certificate is not a majority of the genesis validators:
      certificate = "minority": real signatures of `signers` only (a minority of validators);
      certificate = "forged":   every validator's id, each "signed" by a stranger's key.
    Signed with a member's real key (`author`), the door accepts it (certificates are judged by every
    node before executing), so this hook asserts it was ADDED; the scenario asserts that no node
    executes it. With author = "stranger" (a key no member has), the door must refuse it: nothing added.
    `proposal` (a saved proposal) defaults to a made-up id; `sequence` defaults to the next upgrade
    sequence of the pushed node (`push_to`, default the author's own node; required for a stranger)."""
    stranger = author == "stranger"
    author_index = None if stranger else _one(driver, author)
    target = _one(driver, push_to) if push_to is not None else author_index
    if target is None:
        raise AssertionError("an EXECUTE_UPGRADE by a stranger needs push_to (the node to push it to)")
    identity = Identity.generate() if stranger else member_key(driver, author_index)
    served = driver.served[package]
    proposal_id = driver.saved[proposal] if proposal else make_proposal_id("upgrade", _wall_ms(), identity.node_id, 999_999)
    if sequence is None:
        state = driver.read_state(target) or {}
        sequence = int(state.get("applied_sequence", 0)) + 1
    statement = certificate_statement(driver.cluster.network_id, proposal_id, "upgrade", served.sha256, version,
                                      EMPTY_VOTES_DIGEST, sequence)
    if certificate == "minority":
        items = [{"validator_id": driver.handle(index).node_id, "signature": member_key(driver, index).sign(statement)}
                 for index in driver.resolve(signers)]
        validators = sum(1 for index in range(1, driver.node_count + 1) if driver.handle(index).is_validator)
        if len(items) * 2 > validators:
            raise AssertionError(f"{len(items)} of {validators} validators is a majority, not a minority: fix the scenario")
    elif certificate == "forged":
        items = [{"validator_id": driver.handle(index).node_id, "signature": Identity.generate().sign(statement)}
                 for index in range(1, driver.node_count + 1) if driver.handle(index).is_validator]
    else:
        raise AssertionError(f"certificate must be 'minority' or 'forged', not {certificate!r}")
    body = {"proposal_id": proposal_id, "action": "upgrade", "version": version, "package_url": served.http_url,
            "package_hash": served.sha256, "package_size": served.size, "votes_digest": EMPTY_VOTES_DIGEST,
            "sequence": sequence, "certificate": items}
    entry = _chained_entry(driver, target, identity, "EXECUTE_UPGRADE", body)
    outcome = push(driver, target, [entry])
    if stranger:
        if outcome.added or outcome.refused != 1:
            raise AssertionError(f"{driver.label(target)} took an EXECUTE_UPGRADE signed by a stranger's key "
                                 f"(added {outcome.added}, refused {outcome.refused})")
        return f"{driver.label(target)} refused at the door an EXECUTE_UPGRADE signed by a stranger's key"
    if outcome.added != 1:
        raise AssertionError(f"{driver.label(target)} did not take the member-signed EXECUTE_UPGRADE into its log "
                             f"(added {outcome.added}, refused {outcome.refused}, duplicate {outcome.duplicate})")
    return (f"EXECUTE_UPGRADE {entry.id[:16]} signed by {driver.label(author_index)}, {certificate} certificate "
            f"({len(items)} signature(s)) for sequence {sequence} of {quote(proposal_id)}, pushed to {driver.label(target)}")


def backdated_vote(driver: Any, proposal: str, voter: Any = "node-5", push_to: Any = None, vote: str = "approval") -> str:
    """After voting closed, a member signs a vote with its OWN key whose clock claims it was cast one tick
    after the proposal (long before the deadline), its parents being its latest entry and the proposal,
    and pushes it to a node (default: its own). The vote is well signed, so the door takes it (it is
    kept as evidence); the scenario asserts that it never changes the closed outcome."""
    voter_index = _one(driver, voter)
    target = _one(driver, push_to) if push_to is not None else voter_index
    identity = member_key(driver, voter_index)
    proposal_id = driver.saved[proposal]
    entries = driver.read_log(target)
    proposed = next((entry for entry in entries if entry["kind"] == "PROPOSAL"
                     and entry["body"].get("proposal_id") == proposal_id), None)
    if proposed is None:
        raise AssertionError(f"{driver.label(target)} has no PROPOSAL {proposal_id} to backdate a vote against")
    latest = _latest_of(driver, target, identity.node_id)
    clock = (proposed["hlc"]["wall_ms"], proposed["hlc"]["logical"] + 1)
    if latest is not None and (latest["hlc"]["wall_ms"], latest["hlc"]["logical"]) >= clock:
        raise AssertionError(f"{driver.label(voter_index)} wrote entries after the proposal: pick a voter who did not")
    parents = (proposed["id"],) + ((latest["id"],) if latest is not None else ())
    entry = make_entry(network_id=driver.cluster.network_id, kind="VOTE", author=identity.node_id,
                       sequence=(latest["sequence"] + 1) if latest else 1,
                       parents=parents, hlc=Hlc(*clock), body={"proposal_id": proposal_id, "vote": vote},
                       sign=identity.sign)
    outcome = push(driver, target, [entry])
    if outcome.added != 1:
        raise AssertionError(f"{driver.label(target)} did not take the member-signed backdated vote into its log "
                             f"(added {outcome.added}, refused {outcome.refused}, duplicate {outcome.duplicate})")
    return (f"{driver.label(voter_index)} signed a {vote} vote {entry.id[:16]} dated {clock[0]}.{clock[1]} (one tick after "
            f"the proposal) and pushed it to {driver.label(target)} after voting closed")


def _raw_post(host: str, port: int, path: str, authorization: bytes) -> tuple[int, bytes]:
    request = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nAuthorization: " + authorization + b"\r\nContent-Length: 2\r\n\r\n{}")
    with socket.create_connection((host, port), timeout=PUSH_TIMEOUT_S) as connection:
        connection.sendall(request)
        reply = b""
        while len(reply) < RAW_REPLY_BYTES_MAX:
            chunk = connection.recv(RAW_REPLY_BYTES_MAX)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    parts = status_line.split()
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), rest.partition(b"\r\n\r\n")[2]


def bad_token(driver: Any, on: Any = "node-1", token_hex: str = "e9", proposal: str | None = None) -> str:
    """POST every mutating route with `Authorization: Bearer <the bytes of token_hex>` (default: one
    latin-1 byte, 0xe9): each must answer 401 with the API's JSON error, never a 500."""
    token = bytes.fromhex(token_hex)
    proposal_id = driver.saved[proposal] if proposal else "upgrade_20251003_120000_3fa9c2d1"
    answered = 0
    for index in driver.resolve(on):
        split = urlsplit(driver.handle(index).api_url)
        for template in MUTATING_PATHS:
            path = template.replace("{proposal}", quote(proposal_id, safe=""))
            status, body = _raw_post(split.hostname, split.port, path, b"Bearer " + token)
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if status != 401 or not isinstance(document, dict) or not document.get("hint"):
                raise AssertionError(f"{driver.label(index)}: POST {path} with a bearer token of bytes {token_hex} answered "
                                     f"{status}: {body[:200]!r}, not a 401 with the API's JSON error")
            answered += 1
    return f"{answered} mutating call(s) with a non-ASCII token: each a 401"
