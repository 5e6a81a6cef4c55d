"""Proposals as users make them: ids, the governance rules, the bodies the API builds, and the rules a
PROPOSAL must meet (in the fold) and a new proposal must meet against the others (at the API).

Why it works as it does:
  * Proposal ids keep the spec's `upgrade_<date>_<time>` form, plus a suffix derived from the author
    and its entry sequence (known before signing): nobody can squat another author's id, because the
    fold refuses a proposal whose suffix does not match its own author and sequence.
  * Validation errors here are for users (BadRequest, Conflict, VersionError with what to do).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from node.core.canonical import normalize_sha256
from node.core.entries import Entry
from node.core.schemas import check_new_body
from node.core.utc import utc_ms, utc_parts
from node.errors import BadRequest, ConfigError, HashFormatError

ACTIONS = ("upgrade", "rollback")
# The fold's reading of ids in entries (kept as it was: refusing more entries than before is a change of
# the log's rules). The API checks ids it is given with the stricter schemas.PROPOSAL_ID_FULL.
PROPOSAL_ID_PATTERN = re.compile(r"^(upgrade|rollback)_(\d{8})_(\d{6})_([0-9a-f]{8})$")
_NODE_ID = re.compile(r"^[0-9a-f]{16}$")
_MS_PER_DAY = 86_400_000
_YEAR_10000_MS = 253_402_300_800_000


def proposal_id_suffix(author: str, sequence: int) -> str:
    """8 hex of sha256('<author>:<sequence>'): unique per (author, entry sequence), known before signing."""
    return hashlib.sha256(f"{author}:{sequence}".encode()).hexdigest()[:8]


def make_proposal_id(action: str, now_ms: int, author: str, sequence: int) -> str:
    """`upgrade_20251003_120000_3fa9c2d1`: action, UTC date and time of now_ms, author/sequence suffix.
    `sequence` is the author's log sequence of the PROPOSAL entry that will carry this id."""
    if action not in ACTIONS:
        raise BadRequest(f"action must be one of {ACTIONS}, not {action!r}")
    if type(now_ms) is not int or not 0 <= now_ms < _YEAR_10000_MS:
        raise BadRequest(f"now_ms must be a Unix time in milliseconds before the year 10000, not {now_ms!r}")
    if not isinstance(author, str) or not _NODE_ID.match(author) or type(sequence) is not int or sequence < 1:
        raise BadRequest("author must be a node id (16 lowercase hex) and sequence an integer >= 1")
    year, month, day, hour, minute, second = utc_parts(now_ms)
    return f"{action}_{year:04d}{month:02d}{day:02d}_{hour:02d}{minute:02d}{second:02d}_{proposal_id_suffix(author, sequence)}"


def proposal_id_time_ms(proposal_id: str) -> int | None:
    """The UTC second a proposal id names (its proposer's clock), in Unix ms; None if it names none."""
    match = PROPOSAL_ID_PATTERN.match(proposal_id) if isinstance(proposal_id, str) else None
    if match is None:
        return None
    date, time_of_day = match.group(2), match.group(3)
    year, month, day = int(date[:4]), int(date[4:6]), int(date[6:])
    hour, minute, second = int(time_of_day[:2]), int(time_of_day[2:4]), int(time_of_day[4:])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return None
    return utc_ms(year, month, day, hour, minute, second)


def proposal_id_matches(proposal_id: str, *, action: str, author: str, sequence: int) -> bool:
    match = PROPOSAL_ID_PATTERN.match(proposal_id) if isinstance(proposal_id, str) else None
    return match is not None and match.group(1) == action and match.group(4) == proposal_id_suffix(author, sequence)


# --- rules --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernanceRules:
    """Thresholds come from genesis (governance section); limits bound what the fold keeps."""
    approval_threshold_pct: int = 50
    quorum_pct: int = 50
    voting_period_ms: int = 60_000
    voting_period_max_ms: int = 30 * _MS_PER_DAY     # a proposal's deadline may not lie further out
    proposals_max: int = 10_000
    open_proposals_per_author_max: int = 16          # proposals of one author whose voting periods overlap
    votes_per_proposal_max: int = 100_000
    orphan_proposals_max: int = 1_000                # ids referenced by votes/reports before the proposal
    problems_max: int = 1_000

    def __post_init__(self) -> None:
        for name in ("approval_threshold_pct", "quorum_pct"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 100:
                raise ConfigError(f"governance.{name} must be an integer percentage 0..100, not {value!r}")
        if type(self.voting_period_ms) is not int or not 1 <= self.voting_period_ms <= self.voting_period_max_ms:
            raise ConfigError(f"governance.voting_period_ms must be 1..{self.voting_period_max_ms}, not {self.voting_period_ms!r}")
        for name in ("proposals_max", "open_proposals_per_author_max", "votes_per_proposal_max", "orphan_proposals_max",
                     "problems_max"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ConfigError(f"governance limit {name} must be an integer >= 1")


def new_proposal_body(*, action: str, title: str, description: str, version: str, package_url: str | None,
                      package_hash: str | None, package_size: int | None, target_proposal_id: str | None,
                      author: str, sequence: int, now_ms: int, rules: GovernanceRules) -> dict:
    """The PROPOSAL body for a user's request; `sequence` is the author's next log sequence. Judged by
    the PROPOSAL schema (node/core/schemas.py) before anything is signed, in the API's words."""
    if package_hash is not None:
        normalized = normalize_sha256(package_hash)
        if normalized is None:
            raise HashFormatError(f"package_hash {str(package_hash)[:80]!r} is not a SHA256 digest")
        package_hash = normalized
    if action not in ACTIONS:
        raise BadRequest(f"action must be 'upgrade' or 'rollback', not {str(action)[:40]!r}")
    body = {"proposal_id": make_proposal_id(action, now_ms, author, sequence), "action": action, "title": title,
            "description": description, "version": version, "package_url": package_url,
            "package_hash": package_hash, "package_size": package_size,
            "voting_deadline_ms": now_ms + rules.voting_period_ms, "target_proposal_id": target_proposal_id}
    check_new_body("PROPOSAL", body)
    return body


def new_vote_body(proposal_id: str, vote: str) -> dict:
    body = {"proposal_id": proposal_id, "vote": vote}
    check_new_body("VOTE", body)
    return body


def proposal_refusal(entry: Entry, rules: GovernanceRules) -> tuple[str, str] | None:
    """(reason, message) when a PROPOSAL entry must be refused, else None. The schema (types, the
    fields each action needs) was checked by entries.py; these are the rules between entry and body."""
    body = entry.body
    if not proposal_id_matches(body["proposal_id"], action=body["action"], author=entry.author, sequence=entry.sequence):
        return ("proposal_id_mismatch",
                f"proposal id {body['proposal_id']!r} was not made by author {entry.author} at sequence {entry.sequence} "
                f"(expected the suffix {proposal_id_suffix(entry.author, entry.sequence)})")
    period_ms = body["voting_deadline_ms"] - entry.hlc.wall_ms
    if not 0 < period_ms <= rules.voting_period_max_ms:
        return ("bad_deadline", f"proposal {body['proposal_id']} has a voting period of {period_ms} ms; "
                                f"it must be 1..{rules.voting_period_max_ms} ms after the proposal")
    target = body["target_proposal_id"]
    if body["action"] == "rollback" and not (isinstance(target, str) and target.startswith("upgrade_")):
        return ("bad_target", f"rollback proposal {body['proposal_id']} must target an upgrade proposal, not {target!r}")
    return None
