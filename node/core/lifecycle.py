"""The proposal lifecycle: its statuses and the ONE transition table (h11's shape).

    voting -> approved | rejected | expired     (the validators' close decides: node/core/closing.py)
    approved -> ratified                        (a certified EXECUTE_UPGRADE is in the log)
    ratified -> executed | failed               (THIS node's EXECUTION_REPORT)
    executed | failed -> rolled_back

An impossible transition raises InvalidTransition (the exception the ratification phases and the
upgrade pipeline raise too). Log entries are untrusted, so `derive_status` walks the table through
the facts and turns a fact that does not fit into a note instead of a corrupted status.
"""

from __future__ import annotations

from node.errors import InvalidTransition

VOTING, APPROVED, REJECTED, EXPIRED = "voting", "approved", "rejected", "expired"
RATIFIED, EXECUTED, FAILED, ROLLED_BACK = "ratified", "executed", "failed", "rolled_back"
STATUSES = (VOTING, APPROVED, REJECTED, EXPIRED, RATIFIED, EXECUTED, FAILED, ROLLED_BACK)

TRANSITIONS: dict[tuple[str, str], str] = {
    (VOTING, "approve"): APPROVED,
    (VOTING, "reject"): REJECTED,
    (VOTING, "expire"): EXPIRED,
    (APPROVED, "ratify"): RATIFIED,
    (RATIFIED, "execute"): EXECUTED,
    (RATIFIED, "fail"): FAILED,
    (EXECUTED, "roll_back"): ROLLED_BACK,
    (FAILED, "roll_back"): ROLLED_BACK,
}
# A version may be proposed again only once every earlier proposal of it ended in one of these.
VERSION_FREE_STATUSES = (REJECTED, EXPIRED, FAILED, ROLLED_BACK)


def next_status(status: str, event: str) -> str:
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise InvalidTransition(f"a proposal with status {status!r} cannot take event {event!r}") from None


def derive_status(*, outcome: str, certified: bool, local_report_success: bool | None,
                  rolled_back: bool) -> tuple[str, tuple[str, ...]]:
    """The proposal's status by walking the transition table through the facts, and notes about facts
    that did not fit (untrusted entries never corrupt the status: they become notes)."""
    notes = []
    status = VOTING
    if certified:
        if outcome != APPROVED:
            notes.append(f"ratified by a majority of validators although this node's tally says {outcome}")
        status = next_status(next_status(status, "approve"), "ratify")
    elif outcome != VOTING:
        status = next_status(status, {APPROVED: "approve", REJECTED: "reject", EXPIRED: "expire"}[outcome])
    for present, event, what in ((local_report_success is not None, "execute" if local_report_success else "fail",
                                  "this node's execution report"),
                                 (rolled_back, "roll_back", "a rollback")):
        if not present:
            continue
        try:
            status = next_status(status, event)
        except InvalidTransition as error:
            notes.append(f"{what} was ignored: {error.message}")
    return status, tuple(notes)
