"""The one way tests wait: poll a condition until it holds, within a bound, and say what was awaited.

Why: a sleep used as synchronization is either too short (a flaky test on a loaded machine) or too
long (a slow suite), and when it is too short the failure says nothing. A test waits instead on the
condition it needs, checked every `interval_s`, for at most `timeout_s`; on timeout the error names
what was awaited and, if `describe` is given, the state that was seen last. The check's truthy result
is returned, so a wait can also fetch what it waited for.

It lives in the package (not under tests/) because the pytest plugin (cluster/pytest_plugin.py) hands
it to users as the `wait_until` fixture: their tests wait the way ours do.

`poll_until` is for plain code and subprocess tests; `poll_until_async` is its twin for the event loop:
its check and describe may be coroutine functions (an HTTP call through a test client), and a plain
check must not block (it runs on the loop between sleeps).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL_S_DEFAULT = 0.02
TIMEOUT_S_MAX = 300.0          # the per-test timeout (pyproject.toml): a longer wait could never fail cleanly


def _check_bounds(timeout_s: float, interval_s: float) -> None:
    if not 0 < timeout_s <= TIMEOUT_S_MAX:
        raise ValueError(f"timeout_s must be in (0, {TIMEOUT_S_MAX}], got {timeout_s}")
    if not 0 < interval_s <= timeout_s:
        raise ValueError(f"interval_s must be in (0, timeout_s], got {interval_s}")


def _timed_out(what: str, timeout_s: float, describe: Callable[[], str] | None) -> AssertionError:
    seen = f"; last seen: {describe()}" if describe is not None else ""
    return AssertionError(f"timed out after {timeout_s} s waiting for {what}{seen}")


def poll_until(check: Callable[[], T], *, what: str, timeout_s: float, interval_s: float = INTERVAL_S_DEFAULT,
               describe: Callable[[], str] | None = None) -> T:
    """Call `check` until it returns something truthy and return that; AssertionError after `timeout_s`."""
    _check_bounds(timeout_s, interval_s)
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, describe)
        time.sleep(interval_s)


async def poll_until_async(check: Callable[[], T | Awaitable[T]], *, what: str, timeout_s: float,
                           interval_s: float = INTERVAL_S_DEFAULT,
                           describe: Callable[[], str | Awaitable[str]] | None = None) -> T:
    """`poll_until` on the event loop: other tasks run while it waits."""
    _check_bounds(timeout_s, interval_s)
    deadline = time.monotonic() + timeout_s
    while True:
        result = await _resolved(check())
        if result:
            return result
        if time.monotonic() >= deadline:
            seen = None if describe is None else await _resolved(describe())
            raise _timed_out(what, timeout_s, None if seen is None else (lambda: seen))
        await asyncio.sleep(interval_s)


async def _resolved(value: T | Awaitable[T]) -> T:
    return await value if inspect.isawaitable(value) else value
