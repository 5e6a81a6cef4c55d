"""The log's persistence: one append-only file of length-prefixed, checksummed records.

Why it works as it does:
- Layout: an 8-byte file header (MAGIC), then records of
      u32 big-endian payload length | u32 big-endian crc32(length bytes + payload) | payload
  where a payload is one entry's canonical bytes. The crc covers the length too, so a torn or
  zero-filled tail (what a crash can leave) never parses as a record.
- append() writes the records then fsyncs: when it returns, the entries are on disk, so an entry
  acknowledged to a local caller survives kill -9 and power loss. append(sync=False) only writes
  (entries received from peers: they survive kill -9, which keeps the page cache, and a power loss
  may cut them, which open() handles as a torn tail; the next synced append flushes them, since an
  fsync covers the whole file). It is blocking: call it in an executor. A failed write (disk full)
  is cut back to the last good record, so a later append never lands behind garbage.
- open() reads every record, stops at the first torn or corrupt one, truncates the file there (so
  appends continue cleanly) and reports how many bytes were dropped (`torn_tail_bytes`, also logged).
  Nothing read from disk is trusted: the caller re-verifies every entry through CrdtLog.add.
- A file whose header is not ours is refused (StoreError) and never truncated: we only cut our own log.
- An exclusive advisory lock (flock) keeps a second node process from appending to the same file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Sequence

from node.fsutil import fsync_directory
from node.errors import StoreError
from node.limits import LOGFILE_APPEND_BATCH_RECORDS_MAX, LOGFILE_RECORD_SIZE_MAX_BYTES

MAGIC = b"SYNLOG\x00\x01"
RECORD_HEADER = struct.Struct(">II")
_READ_CHUNK_BYTES = 1024 * 1024

_logger = logging.getLogger(__name__)


def _checksum(length_bytes: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(length_bytes))


def encode_record(payload: bytes) -> bytes:
    length_bytes = struct.pack(">I", len(payload))
    return length_bytes + struct.pack(">I", _checksum(length_bytes, payload)) + payload


class LogFile:
    """An open, locked log file. Use LogFile.open(path); close() when done (or `with`)."""

    def __init__(self, path: Path, descriptor: int, end_offset: int, torn_tail_bytes: int, record_size_max_bytes: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor
        self._end_offset = end_offset
        self._lock = threading.Lock()
        self._broken: str | None = None
        self.torn_tail_bytes = torn_tail_bytes
        self.record_size_max_bytes = record_size_max_bytes

    @classmethod
    def open(cls, path: Path, *, record_size_max_bytes: int = LOGFILE_RECORD_SIZE_MAX_BYTES) -> tuple["LogFile", list[bytes]]:
        """Open (or create) the log at `path`; return it and the payloads of its intact records, in
        order. A torn or corrupt tail is cut off (see `torn_tail_bytes`). Raises StoreError if the
        file is not a Synapse log, or is locked by another process."""
        path = Path(path)
        created = not path.exists()
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise StoreError(f"cannot open the log file {path}: {error.strerror}") from None
        try:
            _lock_exclusively(descriptor, path)
            payloads, good_offset, file_size = _read_records(descriptor, path, record_size_max_bytes)
            torn_tail_bytes = file_size - good_offset
            if good_offset == 0:
                _write_all(descriptor, MAGIC, 0)
                good_offset = len(MAGIC)
            if torn_tail_bytes > 0 or file_size < good_offset:
                os.ftruncate(descriptor, good_offset)
            os.fsync(descriptor)
            if created:
                fsync_directory(path.parent)
        except BaseException:
            os.close(descriptor)
            raise
        if torn_tail_bytes > 0:
            _logger.warning("log file %s: dropped a torn or corrupt tail of %d bytes after %d good records",
                            path, torn_tail_bytes, len(payloads))
        return cls(path, descriptor, good_offset, max(0, torn_tail_bytes), record_size_max_bytes), payloads

    def append(self, raws: Sequence[bytes], *, sync: bool = True) -> None:
        """Append one record per payload, then fsync (unless `sync` is False). Blocking: run it in an
        executor. All or nothing: on failure the file is cut back and StoreError raised (definite:
        nothing was appended)."""
        if not raws:
            return
        if len(raws) > LOGFILE_APPEND_BATCH_RECORDS_MAX:
            raise StoreError(f"cannot append {len(raws)} records at once (at most {LOGFILE_APPEND_BATCH_RECORDS_MAX})",
                             hint="append in smaller batches")
        for raw in raws:
            if not isinstance(raw, bytes) or not 0 < len(raw) <= self.record_size_max_bytes:
                raise StoreError(f"a log record must be 1..{self.record_size_max_bytes} bytes",
                                 hint="append the canonical bytes (Entry.raw) of entries")
        buffer = b"".join(encode_record(raw) for raw in raws)
        with self._lock:
            descriptor = self._usable_descriptor()
            try:
                _write_all(descriptor, buffer, self._end_offset)
                if sync:
                    os.fsync(descriptor)
            except OSError as error:
                self._cut_back(descriptor)
                raise StoreError(f"cannot append to the log file {self.path}: {error.strerror}") from None
            self._end_offset += len(buffer)

    def _usable_descriptor(self) -> int:
        if self._descriptor is None:
            raise StoreError(f"the log file {self.path} is closed", hint="this is a bug: appends must stop before close()")
        if self._broken is not None:
            raise StoreError(f"the log file {self.path} is unusable: {self._broken}", hint="restart the node")
        return self._descriptor

    def _cut_back(self, descriptor: int) -> None:
        try:
            os.ftruncate(descriptor, self._end_offset)
            os.fsync(descriptor)
        except OSError as error:
            self._broken = f"could not cut a failed append back ({error.strerror})"

    def size_bytes(self) -> int:
        return self._end_offset

    def close(self) -> None:
        """Flush what append(sync=False) wrote, release the lock and the file. Idempotent."""
        with self._lock:
            if self._descriptor is not None:
                try:
                    if self._broken is None:
                        os.fsync(self._descriptor)
                except OSError as error:   # the records stay a torn tail at worst: open() cuts it
                    _logger.warning("log file %s: fsync at close failed: %s", self.path, error.strerror)
                os.close(self._descriptor)  # closing drops the flock
                self._descriptor = None

    def __enter__(self) -> "LogFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _lock_exclusively(descriptor: int, path: Path) -> None:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreError(f"the log file {path} is in use by another process",
                         hint="two nodes cannot share a data directory; stop the other node first") from None


def _read_records(descriptor: int, path: Path, record_size_max_bytes: int) -> tuple[list[bytes], int, int]:
    """(payloads, offset just after the last good record, file size). Offset 0 means no valid header."""
    file_size = os.fstat(descriptor).st_size
    with os.fdopen(os.dup(descriptor), "rb", buffering=_READ_CHUNK_BYTES) as reader:
        header = reader.read(len(MAGIC))
        if header != MAGIC:
            if MAGIC.startswith(header):  # empty, or a header torn while the file was created
                return [], 0, file_size
            raise StoreError(f"{path} is not a Synapse log file (bad header)",
                             hint="move the file away; the node rebuilds its log from peers")
        payloads: list[bytes] = []
        offset = len(MAGIC)
        while True:
            record_header = reader.read(RECORD_HEADER.size)
            if len(record_header) < RECORD_HEADER.size:
                break
            length, checksum = RECORD_HEADER.unpack(record_header)
            if not 0 < length <= record_size_max_bytes:
                break
            payload = reader.read(length)
            if len(payload) < length or _checksum(record_header[:4], payload) != checksum:
                break
            payloads.append(payload)
            offset += RECORD_HEADER.size + length
    return payloads, offset, file_size


def _write_all(descriptor: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, offset)
        view = view[written:]
        offset += written
