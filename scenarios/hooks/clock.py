"""Scenario hooks about the nodes' clocks (node/clock.py): what a skewed node shows from outside.

Why it works as it does:
- A node's time of day is read where an operator reads it: GET /health `time_ms` (its clock now) and,
  on a testbed node, `clock_skew_ms` (the skew the testbed armed). The runner's own clock brackets the
  request, so the offset measured is the node's clock minus real time, give or take the request's
  duration (the tolerance covers that and a loaded machine).
- A node that does not answer, or whose offset is not the expected one, is "not yet" (AssertionError),
  so under `within` a node that picks its skew up within its refresh passes.

Use from a scenario: do = "hook", hook = "hooks.clock:offsets", args = { expected = { "node-2" = 20000 } }
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

TOLERANCE_MS = 2_000


def offsets(driver: Any, expected: Mapping[str, int], tolerance_ms: int = TOLERANCE_MS, on: Any = "live") -> str:
    """Each selected node's clock is real time plus its expected offset (0 for a node not named), within
    `tolerance_ms`, and its /health says the same skew."""
    seen = []
    for index in driver.resolve(on):
        label = driver.label(index)
        wanted = int(expected.get(label, 0))
        before_ms = time.time_ns() // 1_000_000
        try:
            response = driver.api(index).get("/health")
        except OSError as error:
            raise AssertionError(f"{label}: GET /health got no answer ({error})") from None
        after_ms = time.time_ns() // 1_000_000
        health = response.data if isinstance(response.data, dict) else {}
        if "time_ms" not in health:
            raise AssertionError(f"{label}: GET /health shows no time_ms: {response.text[:200]}")
        offset_ms = health["time_ms"] - (before_ms + after_ms) // 2
        if abs(offset_ms - wanted) > tolerance_ms + (after_ms - before_ms):
            raise AssertionError(f"{label}: clock {offset_ms:+d} ms from real time, expected {wanted:+d} ms")
        if health.get("clock_skew_ms") != wanted:
            raise AssertionError(f"{label}: /health clock_skew_ms is {health.get('clock_skew_ms')!r}, expected {wanted}")
        seen.append(f"{label} {offset_ms:+d} ms")
    return "clocks: " + ", ".join(seen)
