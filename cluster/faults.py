"""Fault injection for local clusters: network partitions (iptables) and process faults (signals).

Why it works as it does:
- Every node of a local cluster has its own loopback address 127.A.B.i (cluster/addresses.py) and
  binds its OUTGOING sockets to it too (gossip's connector and the Raft transport). So a packet's
  source and destination addresses name the two nodes it travels between, and a partition is plain
  iptables: `-s X -d Y -j DROP` for every cut pair, both directions for a partition, one for a cut.
  Every packet of a TCP connection (data and ACKs) carries those addresses, so connections that
  already exist are cut as well as new ones. (A one-way cut therefore stops TCP both ways for
  connections in either direction, since replies are dropped too: it is the classic "asymmetric
  link" nemesis, observed through TCP.) Clients outside the cluster (the scenario runner, curl) use
  127.0.0.1 as their source and are never cut, so the runner can watch both sides of a partition.
- The rules live in a chain of their own per cluster block (`SYNAPSE-127-A-B`), jumped to from OUTPUT
  only for `-d 127.A.B.0/24` (`/23` for a wide block of more than 254 nodes, cluster/addresses.py):
  nothing outside the cluster's block can ever be dropped, and every address is checked to lie in
  the block before a rule is written. Rules are written with one
  `iptables-restore --noflush` batch, so a partition appears at once rather than pair by pair.
  Heal flushes the chain; `close` removes the jump and the chain. A run killed by SIGKILL may leave
  a chain behind: `remove_stale_chain` removes it, and LocalCluster calls it right after acquiring a
  block (whose lock proves no live run uses that chain).
- Where the machine cannot do this (not root, no iptables), `NetworkFaults.open` raises
  FaultInjectionUnavailable saying why and what to do, before changing anything: a scenario that needs
  partitions stops with that message and never pretends. `tc netem` is not used (not in every kernel).
- Process faults are signals to the node's process group, through the cluster object (LocalCluster or
  the CLI's detached cluster): kill = SIGKILL, stop = SIGTERM, pause = SIGSTOP, resume = SIGCONT,
  restart = start again from the same data dir. `ProcessFaults` remembers which nodes it took down, so
  "live" nodes and the final safety checks know whom to ask.
- Node groups ("leader", "validators", "majority", ...) are resolved here, with the run's seeded
  random generator for random picks, so a randomized run replays from its seed.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.addresses import NODES_MAX, AddressBlock
from cluster.scenario import Selector
from node.config import load_config
from node.core.quorum import majority_of
from node.errors import ClusterError, FaultInjectionUnavailable

IPTABLES_TIMEOUT_S = 15
IPTABLES_WAIT_S = 10        # -w: wait this long for the xtables lock held by another run
CHAIN_PREFIX = "SYNAPSE-"
RULES_MAX = NODES_MAX * NODES_MAX       # every ordered pair of the largest cluster
_BLOCK = re.compile(r"^127\.(\d{1,3})\.(\d{1,3})$")
_CHAIN = re.compile(r"^SYNAPSE-127-(\d{1,3})-(\d{1,3})$")
INSTALL_HINT = "run as root with iptables installed (sudo sh scripts/install-toolchain.sh), or run scenarios without partitions"


# --- capability ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Capability:
    available: bool
    detail: str   # what was found, or why not
    hint: str = ""


def _iptables_binary() -> str | None:
    return shutil.which("iptables") or next((path for path in ("/usr/sbin/iptables", "/sbin/iptables") if os.path.exists(path)), None)


def network_capability(*, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Capability:
    """Whether this process can write iptables rules, and if not, why and what to do."""
    binary = _iptables_binary()
    if binary is None:
        return Capability(available=False, detail="iptables is not installed", hint=INSTALL_HINT)
    if os.geteuid() != 0:
        return Capability(available=False, detail=f"not root (uid {os.geteuid()}): iptables needs CAP_NET_ADMIN", hint=INSTALL_HINT)
    if shutil.which("iptables-restore") is None and not os.path.exists(binary + "-restore"):
        return Capability(available=False, detail="iptables-restore is not installed", hint=INSTALL_HINT)
    try:
        probe = run([binary, "-w", str(IPTABLES_WAIT_S), "-S", "OUTPUT"], capture_output=True, text=True, timeout=IPTABLES_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Capability(available=False, detail=f"iptables did not run: {error}", hint=INSTALL_HINT)
    if probe.returncode != 0:
        return Capability(available=False, detail=f"iptables -S OUTPUT failed: {probe.stderr.strip()[:200]}",
                          hint="check that the kernel has netfilter (nf_tables or ip_tables) and that this is not a restricted container")
    version = run([binary, "--version"], capture_output=True, text=True, timeout=IPTABLES_TIMEOUT_S).stdout.strip()
    return Capability(available=True, detail=version or binary)


# --- iptables plumbing -----------------------------------------------------------------------


def chain_name(block_prefix: str) -> str:
    """'127.12.7' -> 'SYNAPSE-127-12-7' (iptables chain names are at most 28 characters)."""
    match = _BLOCK.match(block_prefix)
    if not match or not all(0 <= int(part) <= 255 for part in match.groups()):
        raise ClusterError(f"{block_prefix!r} is not a loopback block 127.A.B", hint="partitions work on a local cluster's block")
    return CHAIN_PREFIX + block_prefix.replace(".", "-")


def block_of_chain(chain: str) -> str | None:
    match = _CHAIN.match(chain)
    return f"127.{match.group(1)}.{match.group(2)}" if match else None


class _Iptables:
    def __init__(self, run: Callable[..., subprocess.CompletedProcess]) -> None:
        self._run = run
        self._binary = _iptables_binary() or "iptables"

    def call(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            completed = self._run([self._binary, "-w", str(IPTABLES_WAIT_S), *arguments], capture_output=True, text=True,
                                  timeout=IPTABLES_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"iptables {' '.join(arguments)} did not finish in {IPTABLES_TIMEOUT_S} s",
                               hint="another program may hold the xtables lock; retry", definite=False) from None
        if check and completed.returncode != 0:
            raise ClusterError(f"iptables {' '.join(arguments)} failed: {completed.stderr.strip()[:300]}",
                               hint="run 'synapse doctor'", definite=False)
        return completed

    def restore(self, lines: Sequence[str]) -> None:
        text = "*filter\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"
        try:
            completed = self._run([self._binary + "-restore", "-w", str(IPTABLES_WAIT_S), "--noflush"], input=text,
                                  capture_output=True, text=True, timeout=IPTABLES_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"iptables-restore did not finish in {IPTABLES_TIMEOUT_S} s", definite=False) from None
        if completed.returncode != 0:
            raise ClusterError(f"iptables-restore refused the rules: {completed.stderr.strip()[:300]}", hint="run 'synapse doctor'",
                               definite=False)

    def chain_exists(self, chain: str) -> bool:
        return self.call("-S", chain, check=False).returncode == 0

    def list_chains(self) -> list[str]:
        listing = self.call("-S").stdout
        return [line.split()[1] for line in listing.splitlines() if line.startswith("-N ")]


def _jump_rule(block_prefix: str, chain: str, width: int = 1) -> tuple[str, ...]:
    return ("OUTPUT", "-d", AddressBlock(block_prefix, width).cidr, "-j", chain)


def _stale_jumps(block_prefix: str) -> list[tuple[str, str, int]]:
    """(prefix, chain, width) of every jump that may cover this /24: its own chain's (as a small or a
    wide block), and, for an odd B, the /23 jump of a wide block that started at B-1."""
    first, second, third = block_prefix.split(".")
    jumps = [(block_prefix, chain_name(block_prefix), 1)]
    if int(third) % 2 == 0:
        jumps.append((block_prefix, chain_name(block_prefix), 2))
    else:
        enclosing = f"{first}.{second}.{int(third) - 1}"
        jumps.append((enclosing, chain_name(enclosing), 2))
    return jumps


def remove_stale_chain(block_prefix: str, *, width: int = 1,
                       run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> bool:
    """Remove what a killed run left on the block's `width` /24s (chains and jumps that could drop its
    traffic). True if something was removed.

    Call it right after acquiring the block (its locks prove nobody else uses these chains, and that no
    live wide block covers them: a wide block holds both /24s' locks). A machine without iptables or
    root has no chain to remove: then it does nothing."""
    if not network_capability(run=run).available:
        return False
    chain_name(block_prefix)  # refuses anything but a loopback block 127.A.B
    iptables, removed = _Iptables(run), False
    for prefix in AddressBlock(block_prefix, width).prefixes():
        for jump_prefix, chain, jump_width in _stale_jumps(prefix):
            while iptables.call("-D", *_jump_rule(jump_prefix, chain, jump_width), check=False).returncode == 0:
                removed = True
        chain = chain_name(prefix)
        if iptables.chain_exists(chain):
            iptables.call("-F", chain)
            iptables.call("-X", chain)
            removed = True
    return removed


def synapse_chains(*, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Every SYNAPSE-127-A-B chain on this machine (for `synapse doctor` and leak checks)."""
    return [chain for chain in _Iptables(run).list_chains() if block_of_chain(chain)]


# --- network faults --------------------------------------------------------------------------


class NetworkFaults:
    """Partitions and cuts between the nodes of one address block. Use `open`, then close (or `with`)."""

    def __init__(self, block_prefix: str, iptables: _Iptables, width: int = 1) -> None:
        self.block_prefix = block_prefix
        self.width = width
        self.chain = chain_name(block_prefix)
        self.cidr = AddressBlock(block_prefix, width).cidr
        self._network = ipaddress.ip_network(self.cidr)
        self._iptables = iptables
        self._rules: list[tuple[str, str]] = []
        self._open = True

    @classmethod
    def open(cls, block_prefix: str, *, width: int = 1,
             run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> "NetworkFaults":
        """Check the machine can do it, remove any stale chain of this block (`width` /24s: 2 for a
        cluster of more than 254 nodes), and install an empty chain."""
        capability = network_capability(run=run)
        if not capability.available:
            raise FaultInjectionUnavailable(f"network partitions are not possible on this machine: {capability.detail}", hint=capability.hint)
        chain = chain_name(block_prefix)
        remove_stale_chain(block_prefix, width=width, run=run)
        iptables = _Iptables(run)
        iptables.call("-N", chain)
        try:
            iptables.call("-I", *_jump_rule(block_prefix, chain, width))
        except BaseException:
            iptables.call("-X", chain, check=False)
            raise
        return cls(block_prefix, iptables, width)

    @classmethod
    def attach(cls, block_prefix: str, *, width: int = 1,
               run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> "NetworkFaults":
        """The block's chain as it is now, created if missing, with its cuts read back: for a partition
        made by hand on a running cluster (`synapse cluster fault`), which outlives the command that
        made it. The caller holds the block's lock file while it changes rules (cluster/cli_fault.py)."""
        capability = network_capability(run=run)
        if not capability.available:
            raise FaultInjectionUnavailable(f"network partitions are not possible on this machine: {capability.detail}", hint=capability.hint)
        iptables, chain = _Iptables(run), chain_name(block_prefix)
        if not iptables.chain_exists(chain):
            return cls.open(block_prefix, width=width, run=run)
        if iptables.call("-C", *_jump_rule(block_prefix, chain, width), check=False).returncode != 0:
            iptables.call("-I", *_jump_rule(block_prefix, chain, width))
        faults = cls(block_prefix, iptables, width)
        faults._rules = faults.rules()
        return faults

    def _check_host(self, host: str) -> str:
        try:
            inside = ipaddress.ip_address(host) in self._network
        except ValueError:
            inside = False
        if not inside:
            raise ClusterError(f"{host!r} is not an address of the cluster block {self.cidr}",
                               hint="partitions only ever cut traffic between the cluster's own nodes")
        return host

    def _add(self, pairs: Iterable[tuple[str, str]]) -> None:
        if not self._open:
            raise ClusterError("these network faults are closed", hint="open new NetworkFaults for the cluster")
        fresh = [(self._check_host(source), self._check_host(destination)) for source, destination in pairs if source != destination]
        fresh = list(dict.fromkeys(pair for pair in fresh if pair not in self._rules))
        if len(self._rules) + len(fresh) > RULES_MAX:
            raise ClusterError(f"more than {RULES_MAX} cut pairs", hint="heal before cutting again")
        if fresh:
            self._iptables.restore([f"-A {self.chain} -s {source}/32 -d {destination}/32 -j DROP" for source, destination in fresh])
            self._rules.extend(fresh)

    def cut(self, sources: Iterable[str], destinations: Iterable[str]) -> None:
        """Drop every packet from each source to each destination (one way; see the module docstring)."""
        destinations = list(destinations)
        self._add((source, destination) for source in sources for destination in destinations)

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Nodes in different groups can no longer talk (both directions). Nodes in no group keep every link."""
        seen: set[str] = set()
        for group in groups:
            overlap = seen & set(group)
            if overlap:
                raise ClusterError(f"node {sorted(overlap)[0]} is in two partition groups", hint="give each node to one group")
            seen |= set(group)
        pairs = [(source, destination) for first, group in enumerate(groups) for other, opposite in enumerate(groups)
                 if first != other for source in group for destination in opposite]
        self._add(pairs)

    def heal(self) -> None:
        """Remove every cut: all links work again."""
        if self._open:
            self._iptables.call("-F", self.chain)
        self._rules.clear()

    def rules(self) -> list[tuple[str, str]]:
        """The cut pairs as iptables holds them now (read back, not remembered)."""
        listing = self._iptables.call("-S", self.chain).stdout
        pairs = []
        for line in listing.splitlines():
            match = re.match(r"^-A \S+ -s (\S+?)(?:/32)? -d (\S+?)(?:/32)? -j DROP$", line)
            if match:
                pairs.append((match.group(1), match.group(2)))
        return pairs

    def close(self) -> None:
        """Remove the chain and its jump. Safe to call twice."""
        if self._open:
            self._open = False
            self._rules.clear()
            remove_stale_chain(self.block_prefix, width=self.width, run=self._iptables._run)

    def __enter__(self) -> "NetworkFaults":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- node groups -----------------------------------------------------------------------------


class NoLeaderYet(ClusterError):
    """A step names the Raft leader while the validators have none (an election is under way, or lost)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    index: int        # 1-based, as node-<index>
    node_id: str
    host: str         # its own loopback address
    validator: bool
    state: str = "up"  # up | killed | stopped | paused, as the run left it

    @property
    def live(self) -> bool:
        return self.state == "up"


def majority_indexes(nodes: Sequence[NodeView]) -> list[int]:
    """The lowest-indexed strict majority of all nodes (with the default genesis: the validators first)."""
    return [node.index for node in nodes][: majority_of(len(nodes))]


def minority_indexes(nodes: Sequence[NodeView]) -> list[int]:
    """Everyone not in the majority: the highest-indexed (len - 1) // 2 nodes."""
    return [node.index for node in nodes][majority_of(len(nodes)):]


def resolve(selector: Selector, nodes: Sequence[NodeView], *, leader: Callable[[], int | None], rng: random.Random,
            excluded: Iterable[int] = ()) -> list[int]:
    """The 1-based indexes a selector names now, sorted. `excluded` are nodes already taken by other
    partition groups (for "rest"). Raises ClusterError when a group is empty or unknown now."""
    by_index = {node.index: node for node in nodes}
    chosen: set[int] = set(selector.indexes)
    for node_id in selector.node_ids:
        match = [node.index for node in nodes if node.node_id == node_id]
        if not match:
            raise ClusterError(f"no node has id {node_id}", hint="see the node table printed at start (or cluster.json)")
        chosen.update(match)
    for group in selector.groups:
        chosen.update(_group(group, nodes, leader, set(excluded)))
    for count, group in selector.random_picks:
        among = set(_group(group, nodes, leader, set(excluded))) if group else set(by_index)
        candidates = sorted(index for index in among if by_index[index].live and index not in chosen)
        if count > len(candidates):
            raise ClusterError(f"cannot pick {count} random live node(s){' of ' + group if group else ''}: only {len(candidates)} left")
        chosen.update(rng.sample(candidates, count))
    if not chosen:
        raise ClusterError(f"the selector {selector.text!r} names no node now", hint="check which nodes are live at this step")
    return sorted(chosen)


def _group(group: str, nodes: Sequence[NodeView], leader: Callable[[], int | None], excluded: set[int]) -> list[int]:
    if group == "all":
        return [node.index for node in nodes]
    if group == "live":
        return [node.index for node in nodes if node.live]
    if group == "down":
        return [node.index for node in nodes if node.state in ("killed", "stopped")]
    if group == "paused":
        return [node.index for node in nodes if node.state == "paused"]
    if group == "validators":
        return [node.index for node in nodes if node.validator]
    if group == "non_validators":
        return [node.index for node in nodes if not node.validator]
    if group == "majority":
        return majority_indexes(nodes)
    if group == "minority":
        return minority_indexes(nodes)
    if group == "rest":
        return [node.index for node in nodes if node.index not in excluded]
    leader_index = leader()
    if leader_index is None:
        raise NoLeaderYet("the validators have no Raft leader now",
                          hint='an assert step that names "leader" waits for an election within its `within` (e.g. within = "30s")')
    if group == "leader":
        return [leader_index]
    assert group == "followers", group
    return [node.index for node in nodes if node.validator and node.index != leader_index]


# --- process faults --------------------------------------------------------------------------


class ProcessFaults:
    """Signals to nodes through a cluster object with kill/stop/restart/pause/resume(index0).

    The cluster object indexes nodes from 0 (LocalCluster); scenarios and this class from 1."""

    ACTIONS = ("kill", "stop", "restart", "pause", "resume")

    def __init__(self, cluster: object, node_count: int) -> None:
        self._cluster = cluster
        self._state = {index: "up" for index in range(1, node_count + 1)}

    def state(self, index: int) -> str:
        """'up', 'killed', 'stopped' or 'paused'."""
        return self._state[index]

    def live(self, index: int) -> bool:
        return self._state[index] == "up"

    def apply(self, action: str, indexes: Sequence[int]) -> None:
        if action not in self.ACTIONS:
            raise ClusterError(f"unknown process fault {action!r}", hint=f"one of {', '.join(self.ACTIONS)}")
        for index in indexes:
            getattr(self, "_" + action)(index)

    def _kill(self, index: int) -> None:
        if self._state[index] in ("killed", "stopped"):
            return
        self._cluster.kill(index - 1)
        self._state[index] = "killed"

    def _stop(self, index: int) -> None:
        if self._state[index] in ("killed", "stopped"):
            return
        if self._state[index] == "paused":
            self._cluster.resume(index - 1)  # a stopped process never handles SIGTERM
        self._cluster.stop(index - 1)
        self._state[index] = "stopped"

    def mark_crashed(self, index: int) -> None:
        """The node killed itself (an armed crash point): it is down, like a killed one."""
        self._state[index] = "killed"

    def _restart(self, index: int) -> None:
        if self._state[index] == "paused":
            self._cluster.resume(index - 1)
        self._cluster.restart(index - 1)
        self._state[index] = "up"

    def _pause(self, index: int) -> None:
        if self._state[index] != "up":
            raise ClusterError(f"node-{index} is {self._state[index]}: only a running node can be paused")
        self._cluster.pause(index - 1)
        self._state[index] = "paused"

    def _resume(self, index: int) -> None:
        if self._state[index] != "paused":
            raise ClusterError(f"node-{index} is {self._state[index]}, not paused", hint="resume only what a pause step paused")
        self._cluster.resume(index - 1)
        self._state[index] = "up"

    def resume_all(self) -> None:
        """Before the final checks and teardown: a paused node would never answer nor stop."""
        for index, state in self._state.items():
            if state == "paused":
                self._resume(index)


# --- checking that partitions can hold -------------------------------------------------------


def _proc_address(text: str) -> tuple[str, int]:
    """'0100007F:1F90' (/proc/net/tcp, IPv4 little-endian) -> ('127.0.0.1', 8080)."""
    address_hex, port_hex = text.split(":")
    octets = bytes.fromhex(address_hex)[::-1]
    return ".".join(str(octet) for octet in octets), int(port_hex, 16)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for descriptor in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(descriptor.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _tcp_rows() -> list[list[str]]:
    """The IPv4 TCP sockets of this network namespace, one split line of /proc/net/tcp each ([] if unreadable)."""
    try:
        with open("/proc/net/tcp", encoding="ascii") as handle:
            return [line.split() for line in handle.readlines()[1:]]
    except OSError:
        return []


def block_listeners(block_prefix: str, width: int = 1) -> list[str]:
    """The addresses of the block that something listens on now (from /proc/net/tcp): a running
    cluster's nodes hold their block this way once the launcher that locked it has exited."""
    network = ipaddress.ip_network(AddressBlock(block_prefix, width).cidr)
    rows = _tcp_rows()
    listening = set()
    for row in rows:
        if len(row) > 3 and row[3] == "0A":  # LISTEN
            host, port = _proc_address(row[1])
            if ipaddress.ip_address(host) in network:
                listening.add(f"{host}:{port}")
    return sorted(listening)


def unbound_peer_connections(hosts_by_pid: Mapping[int, str], block_prefix: str, width: int = 1) -> list[str]:
    """Connections a node holds to another address of its block from a source address that is not its
    own: iptables rules by source address cannot cut those, so a partition would not hold."""
    network = ipaddress.ip_network(AddressBlock(block_prefix, width).cidr)
    rows = _tcp_rows()
    by_inode = {row[9]: row for row in rows if len(row) > 9 and row[3] in ("01", "02")}  # ESTABLISHED, SYN_SENT
    problems = []
    for pid, own_host in hosts_by_pid.items():
        for inode in _socket_inodes(pid):
            row = by_inode.get(inode)
            if row is None:
                continue
            (local_host, local_port), (remote_host, remote_port) = _proc_address(row[1]), _proc_address(row[2])
            if ipaddress.ip_address(remote_host) in network and remote_host != own_host and local_host != own_host:
                problems.append(f"{own_host} (pid {pid}) talks to {remote_host}:{remote_port} from {local_host}:{local_port}")
    return problems


def raft_delay_note(*, sources: Sequence[int], destinations: Sequence[int], validators: set[int], one_way_ms: int,
                    election_timeout_min_ms: int) -> str | None:
    """What a delay between validators means for their Raft, when it matters: a round trip between two
    validators (delayed one way, or both) above a tenth of the election timeout's minimum (etcd's rule:
    the election timeout is at least 10 round trips). Elections then split and repeat, and a call cut by a
    leader change is resubmitted: ratification took 2.5-18 s under 200 ms each way with the LAN defaults."""
    validator_pairs = {(source, destination) for source in sources for destination in destinations
                       if source != destination and {source, destination} <= validators}
    if not validator_pairs:
        return None
    both_ways = any((destination, source) in validator_pairs for source, destination in validator_pairs)
    round_trip_ms = one_way_ms * (2 if both_ways else 1)
    if 10 * round_trip_ms <= election_timeout_min_ms:
        return None
    return (f"note: a Raft round trip between validators is now >= {round_trip_ms} ms, and their election timeout "
            f"({election_timeout_min_ms} ms at least) is under 10 of them: expect leader changes; a network on such links "
            f"sets limits raft_election_timeout_min_ms / _max_ms and raft_heartbeat_ms (README: Raft on a slow network)")


def raft_delay_note_from_configs(*, sources: Sequence[int], destinations: Sequence[int], one_way_ms: int,
                                 validator_configs: Mapping[int, Path]) -> str | None:
    """raft_delay_note with the election timeout the validators run with: the smallest
    raft_election_timeout_min_ms in their own configs (`validator_configs`: 1-based index -> config.toml)."""
    if not validator_configs:
        return None
    minimum_ms = min(load_config(path).limits.raft_election_timeout_min_ms for path in validator_configs.values())
    return raft_delay_note(sources=sources, destinations=destinations, validators=set(validator_configs),
                           one_way_ms=one_way_ms, election_timeout_min_ms=minimum_ms)
