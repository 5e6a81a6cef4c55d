"""Loopback address blocks for local clusters: each cluster gets its own 127.A.B.0/24 (or /23).

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

More than 254 nodes (up to CLUSTER_HOSTS_MAX): the cluster takes a *wide* block, two adjacent /24s
that form one aligned /23, 127.A.B.0/23 with B even. Node i is 127.A.B.i for i <= 254, then
127.A.(B+1).(i-254): .0 and .255 of each /24 stay unused, as in a small block. A wide block holds the
locks of BOTH /24s (taken in ascending order, both or none), so it never overlaps a small block of
another cluster, and the iptables chain of its faults jumps on the /23 (cluster/faults.py). Its
identity stays its first prefix 127.A.B: the width follows from the node count, so a stopped
cluster's file (prefix + nodes) names its block exactly.
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
NODES_MAX = 256                        # the largest local cluster (cluster up, scenario files)
HOSTS_PER_BLOCK_MAX = 254              # per /24: .1 .. .254
WIDTH_MAX = 2                          # /24s per cluster: two adjacent ones form an aligned /23
CLUSTER_HOSTS_MAX = HOSTS_PER_BLOCK_MAX * WIDTH_MAX
ATTEMPTS_MAX = 64


def width_for(hosts: int) -> int:
    """How many adjacent /24s a cluster of `hosts` nodes takes (1, or 2 beyond 254)."""
    if type(hosts) is not int or not 1 <= hosts <= CLUSTER_HOSTS_MAX:
        raise ConfigError(f"a local cluster has 1 to {CLUSTER_HOSTS_MAX} nodes, not {hosts}")
    return -(-hosts // HOSTS_PER_BLOCK_MAX)


@dataclass(frozen=True, slots=True)
class AddressBlock:
    prefix: str     # "127.A.B": the first /24
    width: int = 1  # adjacent /24s: 1, or 2 (B even: one aligned /23)

    def __post_init__(self) -> None:
        third = int(self.prefix.rsplit(".", 1)[1])
        if self.width not in range(1, WIDTH_MAX + 1) or third % self.width or third + self.width > 256:
            raise ValueError(f"{self.prefix} cannot start a block of {self.width} /24s (a /23 starts at an even B)")

    @property
    def hosts_max(self) -> int:
        return HOSTS_PER_BLOCK_MAX * self.width

    @property
    def cidr(self) -> str:
        """The block as one network: 127.A.B.0/24, or 127.A.B.0/23 when wide."""
        return f"{self.prefix}.0/{24 - (self.width - 1)}"

    def prefixes(self) -> tuple[str, ...]:
        """Every /24 of the block, "127.A.B" first (each has its own lock file)."""
        first, second, third = self.prefix.split(".")[:3]
        return tuple(f"{first}.{second}.{int(third) + offset}" for offset in range(self.width))

    def host(self, index: int) -> str:
        """The address of member `index` (1-based): 127.A.B.index, then 127.A.(B+1).(index - 254)."""
        if not 1 <= index <= self.hosts_max:
            raise ValueError(f"a block of {self.width} /24 has hosts 1..{self.hosts_max}, not {index}")
        offset, host = divmod(index - 1, HOSTS_PER_BLOCK_MAX)
        return f"{self.prefixes()[offset]}.{host + 1}"



def parse_block(text: str, *, hosts: int = 1) -> AddressBlock:
    """'127.A.B' -> the AddressBlock for `hosts` nodes; refuses anything outside 127/8, and an odd B
    for more than 254 nodes (a /23 starts at an even B)."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3 or parts[0] != "127" or not all(part.isdigit() and int(part) <= 255 and str(int(part)) == part for part in parts):
        raise ConfigError(f"address block {text!r} is not of the form 127.A.B", hint="for example 127.12.7 (A and B from 0 to 255)")
    try:
        return AddressBlock(text, width_for(hosts))
    except ValueError:
        raise ConfigError(f"address block {text} cannot hold {hosts} nodes",
                          hint=f"beyond {HOSTS_PER_BLOCK_MAX} nodes a cluster takes 127.A.B.0/23: give an even B, e.g. 127.12.6") from None


class BlockLease:
    """An address block held for as long as this object is open (a context manager). `lock_path` is
    the first /24's lock; a wide block holds one descriptor per /24."""

    def __init__(self, block: AddressBlock, lock_path: Path, descriptors: Sequence[int]) -> None:
        self.block = block
        self.lock_path = lock_path
        self._descriptors: list[int] = list(descriptors)

    def release(self) -> None:
        while self._descriptors:
            os.close(self._descriptors.pop())  # closing drops the flock

    @property
    def held(self) -> bool:
        return bool(self._descriptors)

    @property
    def descriptors(self) -> tuple[int, ...]:
        """The open lock files (empty once released): passed to children that must hold the block while they live."""
        return tuple(self._descriptors)

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
    for index in range(1, hosts + 1):  # block.host refuses an index beyond the block
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


def _lock_all(block: AddressBlock, lock_dir: Path) -> BlockLease | None:
    """The locks of every /24 of `block`, taken in ascending order: all of them, or none (None)."""
    descriptors: list[int] = []
    for prefix in block.prefixes():
        descriptor = _try_lock(lock_dir / f"{prefix}.lock")
        if descriptor is None:
            for held in descriptors:
                os.close(held)
            return None
        descriptors.append(descriptor)
    return BlockLease(block, lock_dir / f"{block.prefix}.lock", descriptors)


def _lease_if_free(block: AddressBlock, *, hosts: int, ports: Sequence[int],
                   lock_dir: Path) -> tuple[BlockLease | None, str]:
    """(a lease, "") when the block's lock was free and every address can be bound; else (None, "locked")
    or (None, "in_use"), holding nothing."""
    lease = _lock_all(block, lock_dir)
    if lease is None:
        return None, "locked"
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
    """Lock a free block for `hosts` members using `ports` on each (a wide block beyond 254). Release it
    with the lease."""
    width = width_for(hosts)
    _lock_directory(lock_dir)
    rng = rng or random.Random()
    candidates = rng.sample([(a, b) for a in SECOND_OCTETS for b in THIRD_OCTETS if b % width == 0], k=attempts_max)
    for second, third in candidates:
        block = AddressBlock(f"127.{second}.{third}", width)
        lease, _why = _lease_if_free(block, hosts=hosts, ports=ports, lock_dir=lock_dir)
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
    return _lock_all(block, lock_dir)


def acquire_given_block(block: AddressBlock, *, hosts: int, ports: Sequence[int], lock_dir: Path = LOCK_DIR) -> BlockLease:
    """Lock this very block (a stopped cluster's, whose configs name its addresses), as wide as
    `hosts` nodes need, or say why not."""
    block = parse_block(block.prefix, hosts=hosts)
    _lock_directory(lock_dir)
    lease, why = _lease_if_free(block, hosts=hosts, ports=ports, lock_dir=lock_dir)
    if lease is not None:
        return lease
    if why == "locked":
        raise ConfigError(f"address block {block.cidr} is held by another cluster being started or run here",
                          hint="wait for it, or stop the cluster that uses it")
    raise ConfigError(f"an address of block {block.cidr} is in use (a node of this cluster may still run)",
                      hint="see 'synapse cluster status'; stop what listens there, then start the cluster again")


def lock_block(block: AddressBlock, *, lock_dir: Path = LOCK_DIR) -> BlockLease:
    """Lock this block without probing its addresses: for a cluster some of whose nodes listen there while
    others restart (`synapse cluster restart`), so that no new cluster takes it meanwhile."""
    lease = lock_running_block(block, lock_dir=lock_dir)
    if lease is None:
        raise ConfigError(f"address block {block.cidr} is held by another command starting or restarting nodes there",
                          hint="wait for it to finish, then try again")
    return lease
