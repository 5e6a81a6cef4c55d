"""Durable file writes, in one place: every file the node writes goes through `write_atomic`.

Why: a node killed at any instant must find either the old bytes or the new ones, whole. The recipe is
a temp file in the same directory (so the rename cannot cross file systems), fsync of its data, an
atomic rename over the target, then fsync of the directory so the rename itself survives a crash.
Temp files are named `.<name>.tmp-<pid>-<random>` so a later open can recognise and delete the ones a
killed writer left (node/store.py does).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

TEMP_MARKER = ".tmp-"


def _no_fault(_name: str) -> None:
    return None


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644,
                 fault_point: Callable[[str], None] = _no_fault, durable: bool = True) -> None:
    """tmp in the same dir + fsync + rename + fsync(dir): readers see the old bytes or the new, whole.
    The file has `mode` from its first byte (a secret is never briefly world-readable).
    `fault_point` lets crash tests kill the process at named instants (node/store.py).
    `durable=False` skips both fsyncs, for files rebuilt from a durable source after a crash (readers
    still see old or new bytes, whole; a power loss may leave the old file, or an empty one)."""
    temp_path = path.parent / f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    descriptor = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            half = len(data) // 2
            _write_all(descriptor, data[:half])
            fault_point(f"mid_write:{path.parent.name}/{path.name}")
            _write_all(descriptor, data[half:])
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        fault_point(f"before_rename:{path.parent.name}/{path.name}")
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def read_private_file(path: Path, *, what: str, size_max_bytes: int, missing_hint: str) -> bytes:
    """Read a secret (a key, a token, a password) that only the node's user may read: never through a
    symlink, only a regular file, and refused with 'chmod 600' advice when group or others can read it.
    Raises FileNotFoundError when it does not exist (callers may create it), ConfigError otherwise."""
    from node.errors import ConfigError

    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error.strerror}", hint=missing_hint) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"the {what} {path} is not a regular file", hint=f"remove {path} and start again")
        if status.st_mode & 0o077:
            raise ConfigError(f"the {what} {path} is accessible by group or others (mode {stat.S_IMODE(status.st_mode):04o})",
                              hint=f"chmod 600 {path}")
        return os.read(descriptor, size_max_bytes + 1)
    finally:
        os.close(descriptor)


def try_exclusive_flock(descriptor: int) -> bool:
    """Take an exclusive flock on `descriptor` without waiting: True if taken, False if another holds it."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_poll_delays_ms(first_ms: int, max_ms: int) -> Iterator[int]:
    """How long a waiter on another process's lock sleeps between tries: `first_ms`, growing by half up to
    `max_ms` (N-1 nodes of one machine polling at a fixed 20 ms made ~10,000 wake-ups a second at N=200)."""
    delay_ms = first_ms
    while True:
        yield delay_ms
        delay_ms = min(delay_ms * 3 // 2, max_ms)
