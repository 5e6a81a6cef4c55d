"""Scenario hooks that judge how long the network took, from the log's own timestamps.

Why it works as it does:
- Ratification time is read from one node's log (GET /log, as curl would): from the last approving
  VOTE of the proposal (the moment the tally could decide) to the first EXECUTE_UPGRADE (a validator
  holds a certificate). Both are HLC wall times of their authors; on one machine every node reads the
  same clock, so their difference is the network's time, not clock skew. Entries are signed, so no
  single node can fake another's time stamp; each author only stamps its own entries.
- With `at_least_ms` the hook is a physical lower bound: 200 ms added on every validator link puts a
  Raft round trip (leader -> follower -> leader) at >= 400 ms, and a ratification needs several.
- It saves the measured milliseconds as `save_as` (driver.saved) for a test to compare two runs.

Use: do = "hook", hook = "hooks.timing:ratification", args = { proposal = "up", at_least_ms = 400, save_as = "ms" }
"""

from __future__ import annotations

from typing import Any


def ratification_ms(entries: list[dict], proposal_id: str) -> int:
    """Last approving VOTE -> first EXECUTE_UPGRADE of the proposal, in HLC wall milliseconds."""
    votes = [entry["hlc"]["wall_ms"] for entry in entries
             if entry["kind"] == "VOTE" and entry["body"].get("proposal_id") == proposal_id and entry["body"].get("vote") == "approval"]
    executes = [entry["hlc"]["wall_ms"] for entry in entries
                if entry["kind"] == "EXECUTE_UPGRADE" and entry["body"].get("proposal_id") == proposal_id]
    if not votes or not executes:
        raise AssertionError(f"{len(votes)} approving vote(s) and {len(executes)} EXECUTE_UPGRADE entries of {proposal_id} so far")
    return min(executes) - max(votes)


def ratification(driver: Any, proposal: str, on: Any = "node-1", at_least_ms: int = 0, at_most_ms: int | None = None,
                 save_as: str | None = None) -> str:
    (index,) = driver.resolve(on)
    took_ms = ratification_ms(driver.read_log(index), driver.saved[proposal])
    if took_ms < at_least_ms:
        raise AssertionError(f"ratification took {took_ms} ms, less than {at_least_ms} ms")
    if at_most_ms is not None and took_ms > at_most_ms:
        raise AssertionError(f"ratification took {took_ms} ms, more than {at_most_ms} ms")
    if save_as:
        driver.saved[save_as] = took_ms
    return f"ratification took {took_ms} ms (last approving vote -> first EXECUTE_UPGRADE, on {driver.label(index)})"
