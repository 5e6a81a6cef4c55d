"""A background step that runs when woken, at least every sweep, and after a failure with backoff.

Why: the executor and the validators' ratification driver are event-driven (a new log entry or a Raft
event wakes them) with a slow timer as a safety net, and a failing step (no Raft leader, a download
that timed out) must be retried without spinning and without stopping the node. One loop for both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from node.errors import SynapseError
from node.logging_setup import log_event


def backoff_s(failures: int, *, first_ms: int, max_ms: int) -> float:
    return min(first_ms * 2 ** min(failures - 1, 30), max_ms) / 1000


async def run_woken(name: str, wake: asyncio.Event, step: Callable[[], Awaitable[None]], *, sweep_ms: int,
                    retry_delay_first_ms: int, retry_delay_max_ms: int, logger: logging.Logger) -> None:
    """Run `step` when `wake` is set, at least every `sweep_ms`, and after a failure with backoff.
    Runs until cancelled."""
    failures = 0
    while True:
        if failures:
            await asyncio.sleep(backoff_s(failures, first_ms=retry_delay_first_ms, max_ms=retry_delay_max_ms))
        else:
            try:
                await asyncio.wait_for(wake.wait(), sweep_ms / 1000)
            except TimeoutError:
                pass
        wake.clear()
        try:
            await step()
            failures = 0
        except asyncio.CancelledError:
            raise
        except SynapseError as error:
            failures += 1
            log_event(logger, logging.WARNING, f"{name}_step_failed", error=type(error).__name__,
                      message=error.one_line(), definite=error.definite, failures=failures)
        except Exception:  # noqa: BLE001 - a bug in one step must not stop the node's governance
            failures += 1
            logger.exception(f"{name}_step_crashed", extra={"fields": {"failures": failures}})


async def stop_tasks(tasks: list[asyncio.Task], timeout_s: float) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)
