"""Crash safety of the version store, with real `kill -9`.

A child process (tests/integration/crash_child.py) runs real upgrades through the UpgradeManager (real
wasmtime, real package cache, real store) and SIGKILLs itself at a named point of the commit protocol,
or is SIGKILLed by this test after a random delay. The test then reopens the data dir and checks what
an operator would: the node is at the old version or the new one, whole (live state, its digest, its
backup, current_version.txt, history and applied sequence all agree), no temp file is left, and nothing
the child had acknowledged is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from node.core.canonical import state_hash
from node.store import VersionStore, decode_manifest
from tests.integration import crash_child

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 120
PAYLOAD_BYTES = 256 * 1024  # makes every state write take long enough to be cut in the middle


def run_child(data_dir: Path, log_path: Path, *arguments: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.integration.crash_child", "--data-dir", str(data_dir),
               "--payload-bytes", str(PAYLOAD_BYTES), *arguments]
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=log)


def finish(process: subprocess.Popen, already_read: bytes = b"", timeout_s: float = CHILD_TIMEOUT_S) -> list[dict]:
    """Wait for the child (killing it if it overstays) and return the JSON lines it printed."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"the crash child did not finish within {timeout_s} s") from None
    return [json.loads(line) for line in (already_read + output).decode().splitlines() if line.strip()]


def temp_files(data_dir: Path) -> list[Path]:
    """Temp files of the store (the package cache manages its own)."""
    return [path for path in data_dir.rglob(".*.tmp-*") if "cache" not in path.relative_to(data_dir).parts]


def expected_state(version: str) -> dict:
    """What the test package makes of genesis: the same state with global.version replaced."""
    state = crash_child.genesis_state(PAYLOAD_BYTES)
    state["global"]["version"] = version
    return state


def check_whole(data_dir: Path, *, acknowledged: list[dict]) -> VersionStore:
    """Reopen the store and check that every file agrees with the commit point. Returns the open store."""
    store = VersionStore.open(data_dir, genesis_state=crash_child.genesis_state(PAYLOAD_BYTES))
    try:
        version, digest = store.current_version, store.state_hash()
        live = json.loads(store.snapshot()[2])
        assert live == expected_state(version), "the live state is exactly the state of its version"
        assert state_hash(live) == digest
        live_bytes = (data_dir / "state" / "network_state.json").read_bytes()
        assert "sha256:" + hashlib.sha256(live_bytes).hexdigest() == digest
        assert (data_dir / "upgrades" / "versions" / version / "network_state.json").read_bytes() == live_bytes
        assert (data_dir / "upgrades" / "current_version.txt").read_text() == version + "\n"
        history = store.history()
        assert json.loads((data_dir / "upgrades" / "upgrade_history.json").read_text()) == history
        consumed = [record["sequence"] for record in history if record["sequence_consumed"]]
        assert consumed == sorted(set(consumed)), "no sequence was consumed twice"
        assert store.applied_sequence == (consumed[-1] if consumed else 0)
        changes = [record for record in history if record["success"]]
        if changes:
            assert (changes[-1]["version"], changes[-1]["state_hash"]) == (version, digest)
        else:
            assert version == crash_child.GENESIS_VERSION
        for kept in store.versions():
            assert store.version_state(kept) == expected_state(kept)
        assert temp_files(data_dir) == []
        _check_acknowledged(store, acknowledged)
    except BaseException:
        store.close()
        raise
    return store


def _check_acknowledged(store: VersionStore, acknowledged: list[dict]) -> None:
    done = [line for line in acknowledged if "done" in line]
    if not done:
        return
    last = done[-1]
    assert store.applied_sequence >= last["done"], f"acknowledged sequence {last['done']} was lost"
    if store.applied_sequence == last["done"]:
        assert (store.current_version, store.state_hash()) == (last["version"], last["state_hash"])


# --- a kill at each named point of the commit protocol -------------------------------------------

NAMED_POINTS = [
    # (scenario, fault point, version after reopen, applied sequence after reopen)
    ("upgrade", "backup_written", "1.0.0", 0),
    ("upgrade", "mid_write:1.1.0/network_state.json", "1.0.0", 0),
    ("upgrade", "before_rename:1.1.0/network_state.json", "1.0.0", 0),
    ("upgrade", "new_state_written", "1.0.0", 0),
    ("upgrade", "mid_write:upgrades/manifest.json", "1.0.0", 0),
    ("upgrade", "before_rename:upgrades/manifest.json", "1.0.0", 0),
    ("upgrade", "committed", "1.1.0", 1),
    ("upgrade", "mid_write:state/network_state.json", "1.1.0", 1),
    ("upgrade", "live_state_written", "1.1.0", 1),
    ("upgrade", "mid_write:upgrades/current_version.txt", "1.1.0", 1),
    ("upgrade", "current_version_written", "1.1.0", 1),
    ("upgrade", "mid_write:upgrades/upgrade_history.json", "1.1.0", 1),
    ("upgrade", "history_written", "1.1.0", 1),
    ("rollback", "mid_write:upgrades/manifest.json", "1.1.0", 1),
    ("rollback", "committed", "1.0.0", 2),
    ("rollback", "mid_write:state/network_state.json", "1.0.0", 2),
    ("rollback", "mid_write:upgrades/upgrade_history.json", "1.0.0", 2),
    ("failure", "mid_write:upgrades/manifest.json", "1.0.0", 0),
    ("failure", "committed", "1.0.0", 1),
    ("failure", "mid_write:upgrades/upgrade_history.json", "1.0.0", 1),
]


@pytest.mark.parametrize("scenario, point, version, sequence", NAMED_POINTS, ids=[f"{s}-{p}" for s, p, _, _ in NAMED_POINTS])
def test_a_kill_at_any_point_leaves_the_old_or_the_new_version_whole(tmp_path, scenario, point, version, sequence):
    data_dir, log_path = tmp_path / "node", tmp_path / "child.log"
    process = run_child(data_dir, log_path, "--scenario", scenario, "--kill-at", point)
    acknowledged = finish(process)
    assert process.returncode == -signal.SIGKILL, (
        f"the child was not killed at {point} (exit {process.returncode}): {log_path.read_text()[-2000:]}")
    if point.startswith("mid_write:"):
        assert temp_files(data_dir), "the kill should have left a half-written temp file behind"
    store = check_whole(data_dir, acknowledged=acknowledged)
    try:
        assert (store.current_version, store.applied_sequence) == (version, sequence)
    finally:
        store.close()
    # And the node goes on: the next operations run on the reopened store.
    process = run_child(data_dir, log_path, "--scenario", "loop", "--steps", "3")
    acknowledged = finish(process)
    assert process.returncode == 0, log_path.read_text()[-2000:]
    check_whole(data_dir, acknowledged=acknowledged).close()


# --- kills at random times -----------------------------------------------------------------------


def wait_for_ready(process: subprocess.Popen, timeout_s: float) -> bytes:
    """Read the child's stdout until its 'ready' line (never blocking past the deadline); returns the
    raw bytes read so far (they may end in the middle of a line)."""
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while b'"ready"' not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            raise AssertionError(f"the crash child did not get ready (exit {process.poll()})")
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if readable:
            buffer += os.read(process.stdout.fileno(), 65536)
    return buffer


def classify_crash(data_dir: Path) -> str:
    """Where the kill landed, judged from what it left (before the store repairs anything)."""
    if temp_files(data_dir):
        return "mid_write"
    manifest = decode_manifest((data_dir / "upgrades" / "manifest.json").read_bytes(), data_dir / "manifest.json")
    chain_versions = {link["version"] for link in manifest["chain"]}
    on_disk = {path.name for path in (data_dir / "upgrades" / "versions").iterdir()}
    if on_disk - chain_versions:
        return "before_commit_or_cleanup"
    live = (data_dir / "state" / "network_state.json").read_bytes()
    history = json.loads((data_dir / "upgrades" / "upgrade_history.json").read_text())
    if ("sha256:" + hashlib.sha256(live).hexdigest() != manifest["state_hash"]
            or (data_dir / "upgrades" / "current_version.txt").read_text() != manifest["version"] + "\n"
            or history != manifest["history"]):
        return "after_commit_before_derived"
    return "between_files"


def test_kills_at_random_times_never_leave_a_mix(tmp_path):
    seed = int(os.environ.get("SYNAPSE_TEST_SEED", random.randrange(2**32)))
    runs = int(os.environ.get("SYNAPSE_CRASH_RUNS", "8"))
    print(f"seed={seed} runs={runs} (replay: SYNAPSE_TEST_SEED={seed})")
    generator = random.Random(seed)
    data_dir, log_path = tmp_path / "node", tmp_path / "child.log"
    landed: Counter[str] = Counter()
    for run in range(runs):
        process = run_child(data_dir, log_path, "--scenario", "loop", "--steps", "500")
        already_read = b""
        try:
            already_read = wait_for_ready(process, CHILD_TIMEOUT_S)
            time.sleep(generator.uniform(0.0, 1.0))
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            lines = finish(process, already_read)
        assert process.returncode == -signal.SIGKILL, f"run {run}: the loop finished before the kill; raise --steps"
        landed[classify_crash(data_dir)] += 1
        check_whole(data_dir, acknowledged=lines).close()
    print(f"seed={seed}: where the kills landed: {dict(landed)}")
    process = run_child(data_dir, log_path, "--scenario", "loop", "--steps", "5")
    lines = finish(process)
    assert process.returncode == 0, log_path.read_text()[-2000:]
    store = check_whole(data_dir, acknowledged=lines)
    store.close()
