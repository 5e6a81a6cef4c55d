"""Shrink an invalid chaos run: remove faults and operations while the run stays invalid.

Why it works as it does (delta debugging on real clusters; Jepsen does not shrink, QuickCheck does):
- A candidate is the schedule minus a chunk of its items (cluster/chaos_plan.py `Schedule.without`:
  removing a fault removes its heal too, so nothing is left unhealed). Only fault starts and
  operations are chunked; heals follow their faults.
- The first candidate drops every fault at once: most bugs found under chaos turn out not to need
  the faults, and that one run halves the schedule. Then ddmin: split the items into n chunks, try
  the schedule without each chunk; keep the first that still fails, else split finer.
- "Still invalid" means: the verdict is invalid AND one of the checks that failed originally fails
  again (a different failure is a different bug, not a smaller copy of this one).
- Each candidate is a real run on a fresh cluster, so shrinking costs one run per candidate; the
  number of runs is bounded (`runs_max`) and each candidate's folder is kept under `shrink/`, so the
  evidence of every step is there. Real clusters are not deterministic: a candidate that passes by
  luck is simply not kept, so the result is smaller or equal, never wrong about being invalid.
- Choosing candidates (`removal_candidates`) is pure; running them is `Shrinker.run`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cluster.chaos_plan import Schedule, schedule_lines

HEAL_OPS = ("restart", "resume", "heal", "recover", "unskew")
RUNS_MAX_DEFAULT = 8
SHRUNK_FILE_NAME = "shrunk-schedule.jsonl"


def removable_ids(schedule: Schedule) -> list[int]:
    """Items a shrink may remove directly: every item but the heals (they go with their fault)."""
    return [item.id for item in schedule.items if not (item.source == "nemesis" and item.op in HEAL_OPS)]


def removal_candidates(item_ids: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """ddmin: `item_ids` split into `parts` contiguous chunks (as even as possible); one candidate per chunk."""
    assert parts >= 1, parts
    parts = min(parts, len(item_ids)) or 1
    size, extra = divmod(len(item_ids), parts)
    chunks, start = [], 0
    for number in range(parts):
        end = start + size + (1 if number < extra else 0)
        if end > start:
            chunks.append(tuple(item_ids[start:end]))
        start = end
    return chunks


def fault_ids(schedule: Schedule) -> tuple[int, ...]:
    return tuple(item.id for item in schedule.items if item.source == "nemesis" and item.op not in HEAL_OPS)


@dataclass(slots=True)
class Shrinker:
    """Runs candidates through `attempt(schedule, label) -> failing check names` (empty: not invalid)."""
    schedule: Schedule
    failing: frozenset[str]
    attempt: Callable[[Schedule, str], frozenset[str]]
    runs_max: int = RUNS_MAX_DEFAULT
    echo: Callable[[str], None] = print
    runs: int = 0
    log: list[str] = field(default_factory=list)

    def _still_invalid(self, candidate: Schedule) -> bool:
        self.runs += 1
        failed = self.attempt(candidate, f"trial-{self.runs}")
        kept = bool(failed & self.failing)
        line = (f"trial {self.runs}: {len(candidate.items)} items -> "
                + (f"still invalid ({', '.join(sorted(failed & self.failing))}): kept" if kept else
                   f"{'invalid otherwise (' + ', '.join(sorted(failed)) + ')' if failed else 'not invalid'}: dropped"))
        self.log.append(line)
        self.echo(line)
        return kept

    def run(self) -> Schedule:
        current = self.schedule
        faults = fault_ids(current)
        if faults and self.runs < self.runs_max and self._still_invalid(current.without(faults)):
            current = current.without(faults)
        parts = 2
        while self.runs < self.runs_max:
            ids = removable_ids(current)
            if len(ids) <= 1:
                break
            reduced = False
            for chunk in removal_candidates(ids, parts):
                if self.runs >= self.runs_max:
                    break
                candidate = current.without(chunk)
                if self._still_invalid(candidate):
                    current, parts, reduced = candidate, max(parts - 1, 2), True
                    break
            if not reduced:
                if parts >= len(ids):
                    break
                parts = min(len(ids), parts * 2)
        return current


def write_shrunk(folder: Path, schedule: Schedule) -> Path:
    path = Path(folder) / SHRUNK_FILE_NAME
    path.write_text("\n".join(schedule_lines(schedule)) + "\n")
    return path
