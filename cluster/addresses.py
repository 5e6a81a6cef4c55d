"""Loopback address blocks for local clusters: each cluster gets its own 127.A.B.0/24.

Why: tests run clusters in parallel (`pytest -n auto`) and nodes need fixed, known addresses before
they start (genesis lists them; PySyncObj cannot bind port 0). "Find a free port, close it, hope
nobody takes it" races. Instead every cluster takes a whole /24 of the loopback range (on Linux every
127/8 address answers on `lo` with no setup) and uses fixed ports per role on it, so two clusters
never share an address at all.

A block is owned through an exclusive, non-blocking `fcntl.flock` on /tmp/synapse-ng-blocks/127.A.B.lock.
The kernel drops the lock when the holder's file descriptor closes, including when the process dies
(even by SIGKILL), so a crashed test never leaks a block. The descriptor is not inherited by children
(Python opens files non-inheritable), so node processes never keep a block alive. Blocks are tried in
a random order to keep parallel workers from contending, and a locked block is still checked by
binding every (address, port) it will use: something outside our locks may be listening there.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from node.errors import ConfigError

LOCK_DIR = Path("/tmp/synapse-ng-blocks")
# 127.64.0.0 - 127.127.255.255: far from 127.0.0.1 and Debian's 127.0.1.1 host entry.
SECOND_OCTETS = range(64, 128)
THIRD_OCTETS = range(0, 256)
HOSTS_PER_BLOCK_MAX = 254
ATTEMPTS_MAX = 64


@dataclass(frozen=True, slots=True)
class AddressBlock:
    prefix: str  # "127.A.B"

    def host(self, index: int) -> str:
        """The address of member `index` (1-based): 127.A.B.index."""
        if not 1 <= index <= HOSTS_PER_BLOCK_MAX:
            raise ValueError(f"a block has hosts 1..{HOSTS_PER_BLOCK_MAX}, not {index}")
        return f"{self.prefix}.{index}"


def parse_block(text: str) -> AddressBlock:
    """'127.A.B' -> AddressBlock; refuses anything outside 127/8."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3 or parts[0] != "127" or not all(part.isdigit() and int(part) <= 255 and str(int(part)) == part for part in parts):
        raise ConfigError(f"address block {text!r} is not of the form 127.A.B", hint="for example 127.12.7 (A and B from 0 to 255)")
    return AddressBlock(text)


class BlockLease:
    """An address block held for as long as this object is open (a context manager)."""

    def __init__(self, block: AddressBlock, lock_path: Path, descriptor: int) -> None:
        self.block = block
        self.lock_path = lock_path
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing drops the flock
            self._descriptor = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def __enter__(self) -> "BlockLease":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"BlockLease({self.block.prefix}, held={self.held})"


def _lock_directory(lock_dir: Path) -> None:
    try:
        lock_dir.mkdir(mode=0o777, parents=True, exist_ok=True)
        if lock_dir.stat().st_uid == os.getuid():
            os.chmod(lock_dir, 0o1777)  # shared by every user's test runs, like /tmp
    except OSError as error:
        raise ConfigError(f"cannot use the address lock directory {lock_dir}: {error.strerror}",
                          hint=f"make {lock_dir} writable, or remove it") from None


def _try_lock(lock_path: Path) -> int | None:
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def block_is_free(block: AddressBlock, *, hosts: int, ports: Sequence[int]) -> bool:
    """True if every (127.A.B.i, port) can be bound now. Raises if loopback aliases do not work here."""
    for index in range(1, hosts + 1):
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # Like the servers themselves: a TIME_WAIT left by an earlier cluster does not block a bind.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((block.host(index), port))
                except OSError as error:
                    if error.errno == errno.EADDRNOTAVAIL:
                        raise ConfigError(f"cannot bind {block.host(index)}: this system does not route all of 127/8 to loopback",
                                          hint="run local clusters on Linux, or add the loopback aliases") from None
                    return False
    return True


def _lease_if_free(block: AddressBlock, *, hosts: int, ports: Sequence[int],
                   lock_dir: Path) -> tuple[BlockLease | None, str]:
    """(a lease, "") when the block's lock was free and every address can be bound; else (None, "locked")
    or (None, "in_use"), holding nothing."""
    lock_path = lock_dir / f"{block.prefix}.lock"
    descriptor = _try_lock(lock_path)
    if descriptor is None:
        return None, "locked"
    lease = BlockLease(block, lock_path, descriptor)
    try:
        if block_is_free(block, hosts=hosts, ports=ports):
            return lease, ""
    except BaseException:
        lease.release()
        raise
    lease.release()
    return None, "in_use"


def acquire_block(*, hosts: int, ports: Sequence[int], lock_dir: Path = LOCK_DIR,
                  rng: random.Random | None = None, attempts_max: int = ATTEMPTS_MAX) -> BlockLease:
    """Lock a free block for `hosts` members using `ports` on each. Release it with the lease."""
    if not 1 <= hosts <= HOSTS_PER_BLOCK_MAX:
        raise ConfigError(f"a local cluster has 1 to {HOSTS_PER_BLOCK_MAX} nodes, not {hosts}")
    _lock_directory(lock_dir)
    rng = rng or random.Random()
    candidates = rng.sample([(a, b) for a in SECOND_OCTETS for b in THIRD_OCTETS], k=attempts_max)
    for second, third in candidates:
        lease, _why = _lease_if_free(AddressBlock(f"127.{second}.{third}"), hosts=hosts, ports=ports, lock_dir=lock_dir)
        if lease is not None:
            return lease
    raise ConfigError(f"no free loopback block found after {attempts_max} tries under {lock_dir}",
                      hint="too many clusters are running: stop some, or check for leftover node processes")


def lock_running_block(block: AddressBlock, *, lock_dir: Path = LOCK_DIR) -> BlockLease | None:
    """The lock of a block whose nodes may be running (their sockets are the block's, so no bind check):
    held while something changes what belongs to the block, e.g. the iptables chain of a hand-made
    partition (cluster/cli_fault.py, `synapse doctor --fix`), so that no two such changes interleave and
    none runs while a launcher (`cluster up`, a scenario run, a test) holds the block. None when held."""
    _lock_directory(lock_dir)
    descriptor = _try_lock(lock_dir / f"{block.prefix}.lock")
    return None if descriptor is None else BlockLease(block, lock_dir / f"{block.prefix}.lock", descriptor)


def acquire_given_block(block: AddressBlock, *, hosts: int, ports: Sequence[int], lock_dir: Path = LOCK_DIR) -> BlockLease:
    """Lock this very block (a stopped cluster's, whose configs name its addresses), or say why not."""
    _lock_directory(lock_dir)
    lease, why = _lease_if_free(block, hosts=hosts, ports=ports, lock_dir=lock_dir)
    if lease is not None:
        return lease
    if why == "locked":
        raise ConfigError(f"address block {block.prefix}.0/24 is held by another cluster being started or run here",
                          hint="wait for it, or stop the cluster that uses it")
    raise ConfigError(f"an address of block {block.prefix}.0/24 is in use (a node of this cluster may still run)",
                      hint="see 'synapse cluster status'; stop what listens there, then start the cluster again")


def lock_block(block: AddressBlock, *, lock_dir: Path = LOCK_DIR) -> BlockLease:
    """Lock this block without probing its addresses: for a cluster some of whose nodes listen there while
    others restart (`synapse cluster restart`), so that no new cluster takes it meanwhile."""
    lease = lock_running_block(block, lock_dir=lock_dir)
    if lease is None:
        raise ConfigError(f"address block {block.prefix}.0/24 is held by another command starting or restarting nodes there",
                          hint="wait for it to finish, then try again")
    return lease
