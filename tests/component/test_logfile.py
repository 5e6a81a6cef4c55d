"""LogFile on a real file: durability, torn and corrupt tails, foreign files, locking, failed writes.

What a crash can leave at the end of the file: half a record, a zero-filled extension, garbage. In
every case the records before the damage come back, the rest is cut off, and appends continue.
"""

import errno
import os
import stat

import pytest

from node.core.crdt_log import AddStatus
from node.core.entries import decode_entry
from node.errors import EntryRefused, StoreError
from node.logfile import MAGIC, RECORD_HEADER, LogFile, encode_record
from tests.logtools import NOW_MS, identities, new_log, note_body, write

PAYLOADS = [b"first record", b"second" * 10, b"\x00third\xff" * 3, b"fourth"]


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "log.bin"


def filled(path, payloads=PAYLOADS) -> list[int]:
    """Write `payloads` and return the file offset where each record ends."""
    log_file, existing = LogFile.open(path)
    assert existing == []
    ends = []
    for payload in payloads:
        log_file.append([payload])
        ends.append(path.stat().st_size)
    log_file.close()
    return ends


def reopened(path) -> tuple[LogFile, list[bytes]]:
    return LogFile.open(path)


def test_records_survive_reopen_and_the_file_is_private(log_path):
    filled(log_path)
    log_file, payloads = reopened(log_path)
    with log_file:
        assert payloads == PAYLOADS and log_file.torn_tail_bytes == 0
        log_file.append([b"fifth", b"sixth"])
    assert reopened(log_path)[1] == PAYLOADS + [b"fifth", b"sixth"]
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert log_path.read_bytes().startswith(MAGIC)


def check_damage_recovery(path, good_count: int, expected_size: int) -> None:
    """After damage: the first `good_count` records come back, the file is cut to `expected_size`,
    and an append then a reopen give the good records plus the new one."""
    damaged_size = path.stat().st_size
    log_file, payloads = reopened(path)
    assert payloads == PAYLOADS[:good_count]
    assert log_file.torn_tail_bytes == damaged_size - expected_size > 0
    assert path.stat().st_size == expected_size
    log_file.append([b"after recovery"])
    log_file.close()
    log_file, payloads = reopened(path)
    log_file.close()
    assert payloads == PAYLOADS[:good_count] + [b"after recovery"] and log_file.torn_tail_bytes == 0


@pytest.mark.parametrize("cut_into_record", [0, 1, 2])
def test_a_tail_truncated_mid_record_is_dropped(log_path, cut_into_record):
    for cut_inside in (3, RECORD_HEADER.size + 2):  # inside the next record's header, inside its payload
        ends = filled(log_path)
        record_start = ends[cut_into_record]
        with open(log_path, "r+b") as handle:
            handle.truncate(record_start + cut_inside)
        check_damage_recovery(log_path, cut_into_record + 1, record_start)
        log_path.unlink()


def test_garbage_appended_is_dropped(log_path):
    ends = filled(log_path)
    with open(log_path, "ab") as handle:
        handle.write(b"\x00\x00\x00\x05garbage that is not a record")
    check_damage_recovery(log_path, len(PAYLOADS), ends[-1])


def test_a_zero_filled_tail_is_dropped(log_path):
    ends = filled(log_path)
    with open(log_path, "ab") as handle:
        handle.write(b"\x00" * 4096)  # what some file systems leave after a crash that extended the file
    check_damage_recovery(log_path, len(PAYLOADS), ends[-1])


@pytest.mark.parametrize("where", ["length", "checksum", "payload"])
def test_a_flipped_byte_drops_that_record_and_everything_after(log_path, where):
    ends = filled(log_path)
    offset = ends[1] + {"length": 3, "checksum": 5, "payload": RECORD_HEADER.size + 4}[where]
    data = bytearray(log_path.read_bytes())
    data[offset] ^= 0x40
    log_path.write_bytes(bytes(data))
    check_damage_recovery(log_path, 2, ends[1])


def test_a_declared_length_beyond_the_limit_is_corruption_not_an_allocation(log_path):
    ends = filled(log_path)
    data = bytearray(log_path.read_bytes())
    data[ends[0]:ends[0] + 4] = (0xFFFFFFF0).to_bytes(4, "big")
    log_path.write_bytes(bytes(data))
    check_damage_recovery(log_path, 1, ends[0])


def test_a_header_torn_at_creation_is_repaired(log_path):
    log_path.write_bytes(MAGIC[:3])
    log_file, payloads = LogFile.open(log_path)
    with log_file:
        assert payloads == [] and log_file.torn_tail_bytes == 3
        log_file.append([b"x"])
    assert reopened(log_path)[1] == [b"x"]


def test_a_file_that_is_not_a_log_is_refused_and_left_alone(log_path):
    content = b'{"this": "is somebody else\'s file"}'
    log_path.write_bytes(content)
    with pytest.raises(StoreError, match="not a Synapse log"):
        LogFile.open(log_path)
    assert log_path.read_bytes() == content


def test_a_second_opener_is_refused_until_the_first_closes(log_path):
    log_file, _ = LogFile.open(log_path)
    with pytest.raises(StoreError, match="in use by another process"):
        LogFile.open(log_path)
    log_file.close()
    log_file.close()  # idempotent
    LogFile.open(log_path)[0].close()


def test_bad_appends_are_refused_and_write_nothing(log_path):
    filled(log_path)
    size = log_path.stat().st_size
    log_file, _ = reopened(log_path)
    with log_file:
        for bad in ([b""], [b"x" * (log_file.record_size_max_bytes + 1)], ["text"], [b"ok", None]):
            with pytest.raises(StoreError):
                log_file.append(bad)
        log_file.append([])
        assert log_path.stat().st_size == size
    with pytest.raises(StoreError, match="closed"):
        log_file.append([b"late"])


def test_a_failed_write_is_cut_back_so_later_appends_are_not_lost(log_path, monkeypatch):
    filled(log_path)
    size = log_path.stat().st_size
    log_file, _ = reopened(log_path)
    real_pwrite = os.pwrite

    def disk_full_halfway(descriptor, data, offset):
        real_pwrite(descriptor, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with log_file:
        monkeypatch.setattr(os, "pwrite", disk_full_halfway)
        with pytest.raises(StoreError, match="No space left") as caught:
            log_file.append([b"lost", b"also lost"])
        assert caught.value.definite
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        assert log_path.stat().st_size == size
        log_file.append([b"kept"])
    log_file, payloads = reopened(log_path)
    log_file.close()
    assert payloads == PAYLOADS + [b"kept"] and log_file.torn_tail_bytes == 0


def test_entries_read_back_are_verified_again_not_trusted(log_path):
    alice, bob = identities(2)
    source = new_log([alice, bob])
    entries = [write(source, alice), write(source, bob), write(source, alice, body=note_body("third"))]
    log_file, _ = LogFile.open(log_path)
    with log_file:
        log_file.append([entry.raw for entry in entries])
    # Someone with disk access rewrites the second entry's text, with a valid record checksum.
    forged = entries[1].raw.replace(b"hello", b"HELLO")
    assert forged != entries[1].raw
    log_path.write_bytes(MAGIC + b"".join(encode_record(raw) for raw in (entries[0].raw, forged, entries[2].raw)))
    log_file, raws = LogFile.open(log_path)
    log_file.close()
    assert raws[1] == forged and log_file.torn_tail_bytes == 0  # the file layer cannot tell...
    loaded = new_log([alice, bob])
    outcomes = []
    for raw in raws:
        try:
            outcomes.append(loaded.add(decode_entry(raw, entry_size_max_bytes=65536), now_ms=NOW_MS).status)
        except EntryRefused as refusal:
            outcomes.append(refusal.reason)
    assert outcomes == [AddStatus.ADDED, "bad_signature", AddStatus.PENDING]
    assert [e.id for e in loaded.visible()] == [entries[0].id]


def test_an_unsynced_append_is_written_and_flushed_by_the_next_synced_one_or_by_close(log_path, monkeypatch):
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: (fsynced.append(os.fstat(descriptor).st_size), real_fsync(descriptor)))
    log_file, _ = LogFile.open(log_path)
    fsynced.clear()
    log_file.append([b"from a peer"], sync=False)
    assert fsynced == [] and log_path.stat().st_size == len(MAGIC) + len(encode_record(b"from a peer"))
    log_file.append([b"our own entry"])   # one fsync of the whole file, the peer's record with it
    assert fsynced == [log_path.stat().st_size]
    log_file.append([b"from another peer"], sync=False)
    log_file.close()
    assert fsynced[-1] == log_path.stat().st_size, "close flushes what was only written"
    _, payloads = reopened(log_path)
    assert payloads == [b"from a peer", b"our own entry", b"from another peer"]
