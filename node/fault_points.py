"""Crash points: a node can be made to kill itself (SIGKILL) at a named instant of an upgrade.

Why: "nothing lost on a crash" is only believable if a node is killed exactly where it hurts, in a
real cluster, and comes back right. Timing a `kill -9` from outside rarely lands inside a commit
that takes milliseconds; a named point always does. The testbed (tests, scenarios, engineers
attacking a local cluster) uses them; production nodes never arm them.

Armed only when BOTH hold: the node process runs with SYNAPSE_FAULT_POINTS=1 in its environment,
and its data dir holds a file `fault_point` whose text is the point's name. One-shot: the file is
removed, and the removal made durable, before the kill, so the restarted node runs normally.

Points: every named step of the version store's commit (node/store.py: "backup_written",
"committed", "live_state_written", "current_version_written", "history_written", and the
"mid_write:..." / "before_rename:..." steps of each atomic file write), "before_report": after
an upgrade's verdict is committed, before this node's EXECUTION_REPORT is written, and, on a
validator, "before_execute_published": a certificate is complete and this validator is about to
publish its EXECUTE_UPGRADE (the Raft leader does so at once; the others only after a grace period,
which is what killing the leader here tests).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable, Mapping

from node.fsutil import fsync_directory
from node.limits import FAULT_POINT_FILE_SIZE_MAX_BYTES

ENVIRONMENT_VARIABLE = "SYNAPSE_FAULT_POINTS"
# The points of an upgrade, in the order a node reaches them (the store's commit steps, then the report).
POINTS = ("backup_written", "committed", "live_state_written", "current_version_written", "history_written",
          "before_report", "before_execute_published")
# The points only a validator reaches (a member armed with one never fires).
VALIDATOR_POINTS = ("before_execute_published",)
FILE_NAME = "fault_point"


def fault_point_for(data_dir: Path, environ: Mapping[str, str]) -> Callable[[str], None] | None:
    """The node's fault-point callback, or None when fault points are not enabled for this process."""
    if environ.get(ENVIRONMENT_VARIABLE) != "1":
        return None
    marker = Path(data_dir) / FILE_NAME

    def fault_point(name: str) -> None:
        try:
            with open(marker, "rb") as file:
                wanted = file.read(FAULT_POINT_FILE_SIZE_MAX_BYTES).decode("utf-8", "replace").strip()
        except FileNotFoundError:
            return
        if wanted != name:
            return
        marker.unlink()
        fsync_directory(marker.parent)
        os.kill(os.getpid(), signal.SIGKILL)

    return fault_point


def arm(data_dir: Path, name: str) -> None:
    """Arm `name` for the node whose data dir this is (it must run with SYNAPSE_FAULT_POINTS=1)."""
    if not name or "\n" in name or len(name.encode()) > FAULT_POINT_FILE_SIZE_MAX_BYTES:
        raise ValueError(f"a fault point name is one line of at most {FAULT_POINT_FILE_SIZE_MAX_BYTES} bytes, got {name!r}")
    (Path(data_dir) / FILE_NAME).write_text(name + "\n")
