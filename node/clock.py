"""The node's wall clock: the one place a node process reads the time of day, so the testbed can skew it.

Why it works as it does:
- Everything that dates something reads this clock: the HLC of new entries and the door's "too far in
  the future" check (node/core/crdt_log.py, through gossip and the local author), proposal deadlines and
  the validators' decision to close voting (governance, ratification driver), upgrade records, the
  `ts` of every log line and the `visible_at_ms` of entries. A host whose clock is wrong is wrong in all
  of these at once; injecting one clock is what makes a skewed node behave like a skewed host.
  (Timeouts and rate limits use the monotonic clock, as on a real host: a wrong time of day does not
  make a timeout shorter.)
- A skew is a testbed fault, armed exactly like the crash points (node/fault_points.py): only when the
  node process runs with SYNAPSE_FAULT_POINTS=1 in its environment AND its data dir (0700, the node's
  own user) holds a file `clock_skew_ms` whose text is a signed integer of milliseconds. Nothing on the
  API can arm it: whoever can write that file can already read the node's key. A production node
  (no switch) never opens the file and its clock is `time.time_ns()`.
- A running node picks a new skew up within CLOCK_SKEW_REFRESH_MS (the file is read at most that
  often, never on every call); removing the file clears the skew. A file that is not a number in
  +-CLOCK_SKEW_FAULT_MAX_MS is ignored (skew 0), so a half-written file cannot move the clock anywhere
  absurd. Arming writes atomically (tmp + rename), so a reader never sees half a number.
- Taking a skew away moves the clock back. The HLC does not care (a new entry is always above its
  parents and the node's own latest entry), which is exactly what a real host whose NTP steps back does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from node.fault_points import ENVIRONMENT_VARIABLE
from node.limits import CLOCK_SKEW_FAULT_MAX_MS, CLOCK_SKEW_FILE_SIZE_MAX_BYTES, CLOCK_SKEW_REFRESH_MS

FILE_NAME = "clock_skew_ms"
_NS_PER_MS = 1_000_000


def parse_skew_ms(text: str) -> int | None:
    """The skew a file's text names, or None when it is not an integer in +-CLOCK_SKEW_FAULT_MAX_MS."""
    text = text.strip()
    body = text[1:] if text[:1] in "+-" else text
    if not body.isascii() or not body.isdigit() or len(body) > 12:
        return None
    value = int(text)
    return value if -CLOCK_SKEW_FAULT_MAX_MS <= value <= CLOCK_SKEW_FAULT_MAX_MS else None


class NodeClock:
    """Wall-clock time of this node: real time plus the armed skew (0 unless the testbed armed one)."""

    def __init__(self, *, skew_file: Path | None = None, read_ns: Callable[[], int] = time.time_ns,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns, refresh_ms: int = CLOCK_SKEW_REFRESH_MS) -> None:
        self._skew_file = skew_file
        self._read_ns = read_ns
        self._monotonic_ns = monotonic_ns
        self._refresh_ns = refresh_ms * _NS_PER_MS
        self._skew_ms = 0
        self._next_read_ns: int | None = None

    @property
    def skewable(self) -> bool:
        """True when the testbed may skew this clock (the environment switch was on at start)."""
        return self._skew_file is not None

    def skew_ms(self) -> int:
        """The offset now added to real time, in milliseconds (re-read from the file at most every refresh)."""
        if self._skew_file is None:
            return 0
        now_ns = self._monotonic_ns()
        if self._next_read_ns is None or now_ns >= self._next_read_ns:
            self._next_read_ns = now_ns + self._refresh_ns
            self._skew_ms = self._read_file()
        return self._skew_ms

    def _read_file(self) -> int:
        try:
            with open(self._skew_file, "rb") as handle:  # type: ignore[arg-type]
                data = handle.read(CLOCK_SKEW_FILE_SIZE_MAX_BYTES)
        except OSError:
            return 0
        return parse_skew_ms(data.decode("ascii", "replace")) or 0

    def now_ns(self) -> int:
        return self._read_ns() + self.skew_ms() * _NS_PER_MS

    def now_ms(self) -> int:
        return self.now_ns() // _NS_PER_MS

    def now_s(self) -> float:
        """For log records: `record.created` is seconds; this is the same instant on this node's clock."""
        return self.now_ns() / 1e9

    def shift_s(self, real_s: float) -> float:
        """A real-time instant in seconds (a log record's creation) as this node's clock shows it."""
        return real_s + self.skew_ms() / 1000


def clock_for(data_dir: Path, environ: Mapping[str, str]) -> NodeClock:
    """The node's clock: skewable through DATA_DIR/clock_skew_ms only when SYNAPSE_FAULT_POINTS=1."""
    if environ.get(ENVIRONMENT_VARIABLE) != "1":
        return NodeClock()
    return NodeClock(skew_file=Path(data_dir) / FILE_NAME)


def arm_skew(data_dir: Path, skew_ms: int) -> None:
    """Skew the clock of the node whose data dir this is by `skew_ms` (it must run with SYNAPSE_FAULT_POINTS=1)."""
    if type(skew_ms) is not int or not -CLOCK_SKEW_FAULT_MAX_MS <= skew_ms <= CLOCK_SKEW_FAULT_MAX_MS:
        raise ValueError(f"a clock skew is an integer of milliseconds from {-CLOCK_SKEW_FAULT_MAX_MS} to "
                         f"{CLOCK_SKEW_FAULT_MAX_MS}, got {skew_ms!r}")
    path = Path(data_dir) / FILE_NAME
    temporary = path.with_name(f".{FILE_NAME}.tmp")
    temporary.write_text(f"{skew_ms}\n")
    os.replace(temporary, path)


def clear_skew(data_dir: Path) -> bool:
    """Remove the node's skew (its clock is real time again within a refresh). True if one was armed."""
    try:
        (Path(data_dir) / FILE_NAME).unlink()
    except FileNotFoundError:
        return False
    return True


def armed_skew_ms(data_dir: Path) -> int:
    """The skew armed in a data dir (0 when none or unreadable): what `synapse cluster status` may show."""
    try:
        with open(Path(data_dir) / FILE_NAME, "rb") as handle:
            return parse_skew_ms(handle.read(CLOCK_SKEW_FILE_SIZE_MAX_BYTES).decode("ascii", "replace")) or 0
    except OSError:
        return 0
