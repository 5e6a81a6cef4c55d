"""The netns provider's plumbing: subnets, names, namespaces, veths, bridge, routes, rules, tc.

Why it works as it does:
- Every cluster takes one /24 of 198.18.0.0/15 (reserved for benchmarking, RFC 2544), locked like a
  loopback block (cluster/addresses.py: an flock on /tmp/synapse-ng-blocks/198.A.B.lock). Its number
  k (0..511) names everything it makes, so parallel clusters never collide and leftovers are found
  by name: bridge `synbr<k>`, namespaces `synns-<k>-<i>`, host-side veths `synv<k>n<i>` (interface
  names stay under 15 characters). Node i is 198.A.B.i on `eth0` of its namespace; the bridge holds
  198.A.B.254, so the API URLs in cluster.json answer from the root namespace (curl, CLI, tests),
  and a launcher-side server bound there (the package server) is reachable from every node.
- Nothing may leave the machine: a blackhole route for the whole 198.18.0.0/15 sits in the root
  namespace (the bridge's on-link /24 is more specific, so only live clusters' subnets are reached).
  It is shared by every cluster and harmless alone, so it is added when missing and never removed
  while a cluster could be starting (removing it could race with another `up`); `synapse doctor`
  reports it. Namespaces have no default route: a node reaches its own subnet and nothing else.
- The subnet's lock is also passed to every node process (and link-fault helper): the kernel keeps
  an flock while any holder lives, so "lock free" means exactly "no process of this cluster runs".
  That is how a leftover is told from a detached cluster (`synapse cluster up`): the next `up` on the
  subnet or `synapse doctor --fix` removes namespaces, veths and bridges of subnets whose lock is free.
- Faults live inside the namespaces (so they die with them): each namespace's filter table is
  written whole, atomically, from the wanted state (DROP for cut links, NFQUEUE with --queue-bypass
  for delayed or lossy links, so a dead helper never blackholes a link), and bandwidth is a TBF
  qdisc on both ends of the node's veth.
- Every command has a timeout and is checked; teardown ignores what is already gone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.addresses import LOCK_DIR, AddressBlock, BlockLease, _lock_directory, _try_lock
from node.errors import ClusterError, ConfigError, FaultInjectionUnavailable

RANGE = ipaddress.ip_network("198.18.0.0/15")
SUBNETS = 512
BRIDGE_HOST = 254
NODES_MAX = 253
NAMESPACE_PREFIX = "synns-"
BRIDGE_PREFIX = "synbr"
VETH_PREFIX = "synv"
COMMAND_TIMEOUT_S = 20
QUEUE_NUMBER = 7
BANDWIDTH_LATENCY_MS = 400
_NAMESPACE = re.compile(r"^synns-(\d{1,3})-(\d{1,3})$")
_BRIDGE = re.compile(r"^synbr(\d{1,3})$")
_VETH = re.compile(r"^synv(\d{1,3})n(\d{1,3})$")
INSTALL_HINT = "run as root with iproute2 and iptables installed (sudo sh scripts/install-toolchain.sh)"

Runner = Callable[..., subprocess.CompletedProcess]


# --- names -----------------------------------------------------------------------------------


def subnet_block(number: int) -> AddressBlock:
    """Subnet k (0..511) -> the block 198.18.k.0/24 or 198.19.(k-256).0/24."""
    if not 0 <= number < SUBNETS:
        raise ConfigError(f"netns subnet {number} is outside 0..{SUBNETS - 1}")
    return AddressBlock(f"198.{18 + number // 256}.{number % 256}")


def subnet_number(prefix: str) -> int:
    """'198.19.4' -> 260; refuses anything outside 198.18.0.0/15."""
    match = re.fullmatch(r"198\.(18|19)\.(\d{1,3})", prefix or "", flags=re.ASCII)
    if not match or int(match.group(2)) > 255:
        raise ConfigError(f"{prefix!r} is not a netns subnet 198.18.B or 198.19.B", hint="start a new cluster in another --data-dir")
    return (int(match.group(1)) - 18) * 256 + int(match.group(2))


@dataclass(frozen=True, slots=True)
class Names:
    """Everything subnet k makes, by name."""

    number: int

    @property
    def block(self) -> AddressBlock:
        return subnet_block(self.number)

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.number}"

    @property
    def bridge_address(self) -> str:
        return f"{self.block.prefix}.{BRIDGE_HOST}"

    def namespace(self, index: int) -> str:
        """Node `index` (1-based)."""
        return f"{NAMESPACE_PREFIX}{self.number}-{index}"

    def veth(self, index: int) -> str:
        return f"{VETH_PREFIX}{self.number}n{index}"

    def host(self, index: int) -> str:
        return self.block.host(index)


# --- commands --------------------------------------------------------------------------------


def _binary(name: str) -> str | None:
    return shutil.which(name) or next((path for path in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(path)), None)


def command(arguments: Sequence[str], *, run: Runner = subprocess.run, input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """One plumbing command, with a timeout; a failure raises ClusterError with its stderr."""
    try:
        completed = run(list(arguments), input=input_text, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{' '.join(arguments[:6])} did not finish in {COMMAND_TIMEOUT_S} s", definite=False) from None
    except FileNotFoundError:
        raise FaultInjectionUnavailable(f"{arguments[0]} is not installed", hint=INSTALL_HINT) from None
    if check and completed.returncode != 0:
        raise ClusterError(f"{' '.join(arguments[:8])} failed: {completed.stderr.strip()[:300]}", hint="run 'synapse doctor'",
                           definite=False)
    return completed


def in_namespace(namespace: str, arguments: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *arguments]


# --- capability ------------------------------------------------------------------------------


def netns_problem(*, run: Runner = subprocess.run) -> str | None:
    """Why namespaces, veths and bridges cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return f"not root (uid {os.geteuid()}): namespaces, veths and bridges need CAP_SYS_ADMIN and CAP_NET_ADMIN"
    for tool in ("ip", "iptables", "iptables-restore", "tc"):
        if _binary(tool) is None:
            return f"{tool} is not installed"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    return None


def probe(*, run: Runner = subprocess.run) -> str | None:
    """Try it for real in a throw-away namespace: a TBF qdisc and an NFQUEUE rule with --queue-bypass.
    Why it fails, or None. (For `synapse doctor`: a kernel may lack sch_tbf or the NFQUEUE target.)"""
    namespace = f"synprobe-{os.getpid()}"
    try:
        command(["ip", "netns", "add", namespace], run=run)
        command(in_namespace(namespace, ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit", "burst", "1600",
                                         "latency", "100ms"]), run=run)
        command(in_namespace(namespace, ["iptables-restore", "-w", "10"]), run=run, input_text=filter_rules([], ["127.0.0.2"]))
    except (ClusterError, FaultInjectionUnavailable) as error:
        return error.message
    finally:
        command(["ip", "netns", "del", namespace], run=run, check=False)
    return None


# --- the subnet lease ------------------------------------------------------------------------


def lock_path(names: Names, lock_dir: Path = LOCK_DIR) -> Path:
    return lock_dir / f"{names.block.prefix}.lock"


def lease_subnet(*, given: int | None = None, lock_dir: Path = LOCK_DIR, numbers: Iterable[int] | None = None) -> BlockLease:
    """Lock a subnet nobody holds (or exactly `given`). What a dead holder left there is the caller's to remove."""
    _lock_directory(lock_dir)
    candidates = [given] if given is not None else list(numbers if numbers is not None else _shuffled(range(SUBNETS)))
    for number in candidates:
        names = Names(number)
        descriptor = _try_lock(lock_path(names, lock_dir))
        if descriptor is not None:
            return BlockLease(names.block, lock_path(names, lock_dir), [descriptor])
    if given is not None:
        raise ConfigError(f"netns subnet {subnet_block(given).prefix}.0/24 is held by a running cluster or launcher",
                          hint="stop the cluster that uses it ('synapse cluster down'), then start this one again")
    raise ConfigError(f"all {SUBNETS} netns subnets of {RANGE} are in use", hint="stop some clusters, or run 'synapse doctor --fix'")


def _shuffled(numbers: range) -> list[int]:
    import random

    return random.SystemRandom().sample(list(numbers), k=len(numbers))


def lock_is_free(path: Path) -> bool:
    descriptor = _try_lock(path)
    if descriptor is None:
        return False
    os.close(descriptor)  # closing drops the probe's own lock
    return True


# --- building and removing -------------------------------------------------------------------


def ensure_blackhole(*, run: Runner = subprocess.run) -> None:
    """The whole range goes nowhere unless a live bridge's /24 is more specific (see the docstring)."""
    listed = command(["ip", "route", "show", "type", "blackhole", str(RANGE)], run=run).stdout
    if str(RANGE) not in listed:
        command(["ip", "route", "replace", "blackhole", str(RANGE)], run=run)


def build(names: Names, nodes: int, *, run: Runner = subprocess.run) -> None:
    """Bridge, namespaces, veths and addresses for nodes 1..`nodes`. On failure, removes what it made."""
    if not 1 <= nodes <= NODES_MAX:
        raise ConfigError(f"a netns cluster has 1 to {NODES_MAX} nodes, not {nodes}",
                          hint="use the loopback provider for larger clusters (up to 256 nodes)")
    ensure_blackhole(run=run)
    root = [f"link add {names.bridge} type bridge", f"addr add {names.bridge_address}/24 dev {names.bridge}",
            f"link set {names.bridge} up"]
    for index in range(1, nodes + 1):
        root += [f"netns add {names.namespace(index)}",
                 f"link add {names.veth(index)} type veth peer name eth0 netns {names.namespace(index)}",
                 f"link set {names.veth(index)} master {names.bridge} up"]
    try:
        command(["ip", "-batch", "-"], run=run, input_text="\n".join(root) + "\n")
        for index in range(1, nodes + 1):
            inside = [f"addr add {names.host(index)}/24 dev eth0", "link set eth0 up", "link set lo up"]
            command(["ip", "-n", names.namespace(index), "-batch", "-"], run=run, input_text="\n".join(inside) + "\n")
    except BaseException:
        remove(names, run=run)
        raise


def existing(*, run: Runner = subprocess.run) -> dict[int, dict[str, list[str]]]:
    """Subnet number -> {"namespaces": [...], "links": [...]} of every namespace and link we made."""
    found: dict[int, dict[str, list[str]]] = {}
    for line in command(["ip", "netns", "list"], run=run, check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAMESPACE.match(name)
        if match:
            found.setdefault(int(match.group(1)), {"namespaces": [], "links": []})["namespaces"].append(name)
    for line in command(["ip", "-o", "link", "show"], run=run, check=False).stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        match = _BRIDGE.match(name) or _VETH.match(name)
        if match:
            found.setdefault(int(match.group(1)), {"namespaces": [], "links": []})["links"].append(name)
    return found


def remove(names: Names, *, run: Runner = subprocess.run) -> list[str]:
    """Delete the subnet's veths, namespaces and bridge (whatever exists). Returns what it removed."""
    mine = existing(run=run).get(names.number, {"namespaces": [], "links": []})
    removed = []
    # The host end first: deleting a veth deletes its peer at once, where a namespace's devices only
    # go when the kernel gets round to destroying it.
    for link in sorted(mine["links"], key=lambda name: name == names.bridge):
        if command(["ip", "link", "del", link], run=run, check=False).returncode == 0:
            removed.append(link)
    for namespace in mine["namespaces"]:
        if command(["ip", "netns", "del", namespace], run=run, check=False).returncode == 0:
            removed.append(namespace)
    return removed


def remove_stale(*, lock_dir: Path = LOCK_DIR, run: Runner = subprocess.run, only: int | None = None) -> list[str]:
    """Remove what dead clusters left: subnets with our names whose lock nobody holds."""
    removed = []
    for number in sorted(existing(run=run)):
        if only is not None and number != only:
            continue
        names = Names(number)
        descriptor = _try_lock(lock_path(names, lock_dir))   # held while removing: no `up` can take it meanwhile
        if descriptor is None:
            continue
        try:
            removed += remove(names, run=run)
        finally:
            os.close(descriptor)
    return removed


def stale(*, lock_dir: Path = LOCK_DIR, run: Runner = subprocess.run) -> dict[int, dict[str, list[str]]]:
    return {number: things for number, things in existing(run=run).items() if lock_is_free(lock_path(Names(number), lock_dir))}


# --- faults ----------------------------------------------------------------------------------


def filter_rules(dropped: Iterable[str], queued: Iterable[str]) -> str:
    """The whole filter table of one namespace: DROP to cut destinations, NFQUEUE to slowed ones."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f"-A OUTPUT -d {host}/32 -j DROP" for host in sorted(set(dropped))]
    lines += [f"-A OUTPUT -d {host}/32 -j NFQUEUE --queue-num {QUEUE_NUMBER} --queue-bypass" for host in sorted(set(queued))]
    return "\n".join(lines + ["COMMIT"]) + "\n"


def write_rules(namespace: str, dropped: Iterable[str], queued: Iterable[str], *, run: Runner = subprocess.run) -> None:
    command(in_namespace(namespace, ["iptables-restore", "-w", "10"]), run=run, input_text=filter_rules(dropped, queued))


def read_dropped(namespace: str, *, run: Runner = subprocess.run) -> list[str]:
    """The destinations this namespace drops now, read back from its filter table."""
    listing = command(in_namespace(namespace, ["iptables", "-w", "10", "-S", "OUTPUT"]), run=run).stdout
    return [match.group(1) for match in re.finditer(r"^-A OUTPUT -d (\S+?)(?:/32)? -j DROP$", listing, flags=re.MULTILINE)]


def set_bandwidth(names: Names, index: int, kbit: int | None, *, run: Runner = subprocess.run) -> None:
    """TBF at `kbit` on both ends of node `index`'s veth (None: remove it)."""
    ends = [in_namespace(names.namespace(index), ["tc"]) + ["qdisc", "{verb}", "dev", "eth0", "root"],
            ["tc", "qdisc", "{verb}", "dev", names.veth(index), "root"]]
    for end in ends:
        if kbit is None:
            command([part.replace("{verb}", "del") for part in end], run=run, check=False)
            continue
        burst_bytes = max(1600, kbit * 1000 // 8 // 100)  # 10 ms of traffic, at least one full frame
        command([part.replace("{verb}", "replace") for part in end] + ["tbf", "rate", f"{kbit}kbit", "burst", str(burst_bytes),
                                                                       "latency", f"{BANDWIDTH_LATENCY_MS}ms"], run=run)


def planned_links(faults: Mapping[tuple[int, int], object]) -> dict[int, list[int]]:
    """source -> sorted destinations with a link fault (for the per-namespace rules)."""
    by_source: dict[int, list[int]] = {}
    for source, destination in sorted(faults):
        by_source.setdefault(source, []).append(destination)
    return by_source
