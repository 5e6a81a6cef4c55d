"""A chaos run's history: every operation as Jepsen records it, in one JSON-lines file.

Why it works as it does:
- Each operation is two events: `invoke` when it starts, then exactly one completion: `ok` (it
  happened), `fail` (it definitely did not happen: the node refused it, or a precondition did not
  hold so nothing was sent) or `info` (it may have happened: a timeout, a node that died mid-call).
  Checkers rely on this distinction: an `ok` vote must be in every final log; a `fail` must not be
  counted on; an `info` may go either way.
- Nemesis and adversary events share the file with the workload (`process` says which), so one
  timeline shows what was done to the cluster next to what it was asked; adversary events carry
  `adversary: true`, and checkers know that whatever they did must not have taken effect.
- Events are frozen dataclasses; the recorder takes its clock as a parameter (tests pass a fake one),
  and writes each event as it happens, so a run that dies half-way still leaves its history.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

EVENT_TYPES = ("invoke", "ok", "fail", "info")
PROCESSES = ("workload", "nemesis", "adversary", "checker")
HISTORY_FILE_NAME = "history.jsonl"
EVENTS_MAX = 100_000


class HistoryError(ValueError):
    """A history file that cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    index: int                  # position in the history
    type: str                   # invoke | ok | fail | info
    process: str                # workload | nemesis | adversary | checker (the final liveness probe)
    op_id: int                  # the schedule item (0 for operations the runner adds, like the liveness probe)
    f: str                      # the operation: propose, vote, kill, backdated_vote, ...
    node: str | None            # "node-3", or None for cluster-wide faults (partitions, heals)
    time_ms: int                # since the start of the schedule
    wall_ms: int                # wall clock (to line up with node logs)
    value: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise HistoryError(f"event {self.index}: type must be one of {', '.join(EVENT_TYPES)}, not {self.type!r}")
        if self.process not in PROCESSES:
            raise HistoryError(f"event {self.index}: process must be one of {', '.join(PROCESSES)}, not {self.process!r}")

    @property
    def adversary(self) -> bool:
        return self.process == "adversary"

    def as_dict(self) -> dict:
        return {"index": self.index, "type": self.type, "process": self.process, "op_id": self.op_id, "f": self.f,
                "node": self.node, "time_ms": self.time_ms, "wall_ms": self.wall_ms, "adversary": self.adversary,
                "value": dict(self.value)}

    @classmethod
    def from_dict(cls, document: Mapping) -> "Event":
        return cls(index=int(document["index"]), type=str(document["type"]), process=str(document["process"]),
                   op_id=int(document["op_id"]), f=str(document["f"]), node=document.get("node"),
                   time_ms=int(document["time_ms"]), wall_ms=int(document.get("wall_ms", 0)),
                   value=dict(document.get("value") or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """An invoke paired with its completion (None while it never completed: treat as info)."""
    invoke: Event
    completion: Event | None

    @property
    def outcome(self) -> str:
        return self.completion.type if self.completion is not None else "info"

    @property
    def value(self) -> Mapping:
        return {**self.invoke.value, **(self.completion.value if self.completion is not None else {})}


class HistoryRecorder:
    """Appends events (to memory and, when given, to an open file, flushed per event)."""

    def __init__(self, *, clock_ms: Callable[[], int], wall_ms: Callable[[], int], sink: IO[str] | None = None) -> None:
        self._clock_ms = clock_ms
        self._wall_ms = wall_ms
        self._sink = sink
        self.events: list[Event] = []

    def record(self, type_: str, *, process: str, op_id: int, f: str, node: str | None, value: Mapping | None = None) -> Event:
        if len(self.events) >= EVENTS_MAX:
            raise HistoryError(f"more than {EVENTS_MAX} events: shorten the schedule")
        event = Event(index=len(self.events), type=type_, process=process, op_id=op_id, f=f, node=node,
                      time_ms=self._clock_ms(), wall_ms=self._wall_ms(), value=dict(value or {}))
        self.events.append(event)
        if self._sink is not None:
            self._sink.write(json.dumps(event.as_dict(), sort_keys=True, default=str) + "\n")
            self._sink.flush()
        return event


def operations(events: Iterable[Event]) -> list[Operation]:
    """Pair each invoke with the next completion of the same (process, op_id, f, node)."""
    pending: dict[tuple, Event] = {}
    paired: list[Operation] = []
    for event in events:
        key = (event.process, event.op_id, event.f, event.node)
        if event.type == "invoke":
            pending[key] = event
            continue
        invoke = pending.pop(key, None)
        if invoke is not None:
            paired.append(Operation(invoke=invoke, completion=event))
    paired += [Operation(invoke=invoke, completion=None) for invoke in pending.values()]
    paired.sort(key=lambda operation: operation.invoke.index)
    return paired


def read_history(path: Path) -> list[Event]:
    events = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise HistoryError(f"cannot read {path}: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(Event.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as error:
            raise HistoryError(f"{path}:{number}: not a history event ({error})") from None
    return events
