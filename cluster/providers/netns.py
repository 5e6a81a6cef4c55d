"""The `netns` provider: one network namespace per node on a bridge; real delay, jitter, loss, bandwidth.

Why it works as it does (the plumbing and its names: netns_net.py; the packet holder: link_delay.py):
- Each node has its own address (198.A.B.i), port space and TCP stack, so what the network does to
  one link is done to that link alone. Nodes run through `ip netns exec` inside their namespace; the
  launcher, tests and curl reach their APIs from the root namespace through the bridge's address.
- NetnsCluster is LocalCluster with three hooks changed (the block lease, the node command, the
  network release), so starting, waiting, restarting, logs and cluster.json are LocalCluster's own.
  The subnet's lock descriptor is passed to every node and helper: the subnet stays taken exactly
  as long as one of its processes lives (a detached `synapse cluster up` included), and anything
  found under a free lock is a leftover, removed by the next `up` of that subnet or `doctor --fix`.
- The provider keeps the wanted fault state (cut links, link faults, bandwidth) and rewrites the
  affected namespaces' filter tables whole from it, so rules never drift from what it reports.
  A namespace with delayed or lossy links gets one link_delay helper (at most one per node, owned by
  the cluster: its process group, the launcher's death signal, stopped by heal and close).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cluster.addresses import BlockLease
from cluster.local import LocalCluster, NodeHandle, _die_with_parent
from cluster.providers import netns_net as net
from cluster.providers.base import FAULT_KINDS, Capability, LinkFault, Provider, merge_link_fault
from cluster.template import python_child_environment
from node.errors import ClusterError, FaultInjectionUnavailable

HELPER_READY_TIMEOUT_S = 15.0
HELPER_STOP_TIMEOUT_S = 5.0


def _descriptor(lease: BlockLease) -> int:
    """The lease's open lock file: passed to children so they hold the subnet while they live."""
    if not lease.descriptors:
        raise ClusterError("the subnet lease was already released")
    return lease.descriptors[0]


def take_subnet(nodes: int, given_prefix: str | None = None) -> tuple[BlockLease, net.Names]:
    """Lock a subnet, remove what dead clusters left (on it and elsewhere), build bridge and namespaces."""
    problem = net.netns_problem()
    if problem:
        raise FaultInjectionUnavailable(f"the netns provider cannot run here: {problem}", hint=net.INSTALL_HINT)
    lease = net.lease_subnet(given=net.subnet_number(given_prefix) if given_prefix else None)
    names = net.Names(net.subnet_number(lease.block.prefix))
    try:
        net.remove(names)      # our lock proves no process of an earlier cluster on this subnet lives
        net.remove_stale()     # and whatever other dead clusters left (each removed under its own lock)
        net.build(names, nodes)
    except BaseException:
        lease.release()
        raise
    return lease, names


class NetnsCluster(LocalCluster):
    """LocalCluster whose nodes live in namespaces of one subnet. `lease`: a subnet already built."""

    _forks_from_template = False  # the template lives in the root namespace; nodes start via `ip netns exec`

    def __init__(self, *args: Any, lease: tuple[BlockLease, net.Names] | None = None, **options: Any) -> None:
        super().__init__(*args, **options)
        self._prepared = lease
        self.names: net.Names | None = None
        self.on_release: list = []   # the provider's helpers stop here, before the namespaces go

    def _lease_block(self, given_prefix: str | None) -> BlockLease:
        if self._prepared is not None and given_prefix is None:
            lease, self.names = self._prepared
            self._prepared = None
            return lease
        lease, self.names = take_subnet(self._node_count, given_prefix)
        return lease

    def _node_command(self, handle: NodeHandle) -> tuple[list[str], dict]:
        assert self.names is not None and self._lease is not None, "the subnet is leased before nodes start"
        command, options = super()._node_command(handle)
        return net.in_namespace(self.names.namespace(handle.index + 1), command), {**options, "pass_fds": (_descriptor(self._lease),)}

    def _release_network(self) -> None:
        try:
            while self.on_release:
                self.on_release.pop()()
        finally:
            if self.names is not None:
                net.remove(self.names)
            elif self._prepared is not None:
                net.remove(self._prepared[1])

    def close(self, *, remove_data: bool = False) -> None:
        super().close(remove_data=remove_data)
        if self._prepared is not None:   # built but never started: release what setup took
            self._prepared[0].release()
            self._prepared = None

    def _provider_document(self) -> dict:
        names = self.names
        if names is None:
            return {"provider": "netns"}
        return {"provider": "netns", "netns": {"subnet": f"{names.block.prefix}.0/24", "bridge": names.bridge,
                                               "bridge_address": names.bridge_address,
                                               "namespaces": [names.namespace(h.index + 1) for h in self.nodes]}}


class NetnsProvider(Provider):
    name = "netns"

    def __init__(self, **cluster_options: Any) -> None:
        super().__init__(**cluster_options)
        self._prepared: tuple[BlockLease, net.Names] | None = None
        self._cut: set[tuple[int, int]] = set()
        self._links: dict[tuple[int, int], LinkFault] = {}
        self._bandwidth: dict[int, int] = {}
        self._helpers: dict[int, subprocess.Popen] = {}
        self.seed = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def setup(self) -> None:
        if self._prepared is None and self.cluster is None:
            self._prepared = take_subnet(int(self.cluster_options.get("nodes", 5)))

    @property
    def names(self) -> net.Names:
        if self.cluster is not None and self.cluster.names is not None:
            return self.cluster.names
        if self._prepared is None:
            raise ClusterError("the netns provider is not set up", hint="call setup() first")
        return self._prepared[1]

    @property
    def host_address(self) -> str:
        return self.names.bridge_address

    def start(self, **late_options: Any) -> None:
        self.setup()
        if self.cluster is None:
            self.cluster = NetnsCluster(lease=self._prepared, **{**self.cluster_options, **late_options})
            self._prepared = None
            self.cluster.on_release.append(self._stop_helpers)
        self.cluster.start()

    def close(self, *, remove_data: bool = False) -> None:
        if self.cluster is not None:
            self.cluster.close(remove_data=remove_data)  # stops helpers, removes the namespaces, releases the subnet
        elif self._prepared is not None:
            lease, names = self._prepared
            self._prepared = None
            try:
                net.remove(names)
            finally:
                lease.release()
        self._cut.clear()
        self._links.clear()
        self._bandwidth.clear()

    def describe(self) -> dict[str, Any]:
        return self.cluster._provider_document() if self.cluster is not None else {"provider": self.name}

    # --- capabilities --------------------------------------------------------------------------

    def capabilities(self) -> Mapping[str, Capability]:
        problem = net.netns_problem()
        found = {kind: Capability(available=problem is None, detail=problem or "namespaces, veths, per-namespace iptables",
                                  hint=net.INSTALL_HINT if problem else "") for kind in FAULT_KINDS}
        queue = nfqueue_problem()
        for kind in ("delay", "loss"):
            if problem is None and queue:
                found[kind] = Capability(available=False, detail=queue, hint="pip install NetfilterQueue (needs libnetfilter-queue-dev)")
        found["skew"] = Capability(available=False, detail="clock skew is not a network fault of this provider")
        return found

    # --- partitions ----------------------------------------------------------------------------

    def _check_nodes(self, indexes: Sequence[int]) -> list[int]:
        count = len(self.cluster.nodes)
        for index in indexes:
            if not 0 <= index < count:
                raise ClusterError(f"no node {index}: this cluster has nodes 0..{count - 1}", hint="index nodes from 0")
        return list(indexes)

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        seen: set[int] = set()
        for group in groups:
            if seen & set(group):
                raise ClusterError(f"node {sorted(seen & set(group))[0]} is in two partition groups", hint="give each node to one group")
            seen |= set(self._check_nodes(group))
        pairs = {(source, destination) for first, group in enumerate(groups) for other, opposite in enumerate(groups)
                 if first != other for source in group for destination in opposite}
        self._cut |= pairs
        self._write_rules({source for source, _ in pairs})

    def cut(self, sources: Sequence[int], destinations: Sequence[int]) -> None:
        pairs = {(source, destination) for source in self._check_nodes(sources) for destination in self._check_nodes(destinations)
                 if source != destination}
        self._cut |= pairs
        self._write_rules({source for source, _ in pairs})

    def cut_links(self) -> list[tuple[int, int]]:
        index_of = {self.names.host(handle.index + 1): handle.index for handle in self.cluster.nodes}
        found = []
        for handle in self.cluster.nodes:
            for host in net.read_dropped(self.names.namespace(handle.index + 1)):
                if host in index_of:
                    found.append((handle.index, index_of[host]))
        return sorted(found)

    # --- link faults ---------------------------------------------------------------------------

    def delay(self, sources: Sequence[int], destinations: Sequence[int], *, ms: int, jitter_ms: int = 0) -> None:
        self.require("delay")
        self._set_links(sources, destinations, delay_ms=ms, jitter_ms=jitter_ms)

    def loss(self, sources: Sequence[int], destinations: Sequence[int], *, percent: float) -> None:
        self.require("loss")
        self._set_links(sources, destinations, loss_percent=float(percent))

    def _set_links(self, sources: Sequence[int], destinations: Sequence[int], **fault: Any) -> None:
        touched = set()
        for source in self._check_nodes(sources):
            for destination in self._check_nodes(destinations):
                if source == destination:
                    continue
                self._links[(source, destination)] = merge_link_fault(self._links.get((source, destination)), source, destination, **fault)
                touched.add(source)
        for source in sorted(touched):
            self._configure_helper(source)
        self._write_rules(touched)

    def link_faults(self) -> list[LinkFault]:
        return [fault for _, fault in sorted(self._links.items()) if not fault.empty]

    def bandwidth(self, nodes: Sequence[int], *, kbit: int) -> None:
        self.require("bandwidth")
        for index in self._check_nodes(nodes):
            net.set_bandwidth(self.names, index + 1, kbit)
            self._bandwidth[index] = kbit

    def heal(self) -> None:
        sources = {source for source, _ in self._cut} | {source for source, _ in self._links}
        self._cut.clear()
        self._links.clear()
        self._write_rules(sources)
        self._stop_helpers()
        for index in list(self._bandwidth):
            net.set_bandwidth(self.names, index + 1, None)
            del self._bandwidth[index]

    # --- the namespaces' rules and helpers -----------------------------------------------------

    def _write_rules(self, sources: set[int]) -> None:
        for source in sorted(sources):
            dropped = [self.names.host(destination + 1) for (origin, destination) in self._cut if origin == source]
            queued = [self.names.host(destination + 1) for (origin, destination), fault in self._links.items()
                      if origin == source and not fault.empty]
            net.write_rules(self.names.namespace(source + 1), dropped, queued)

    def _helper_config(self, source: int) -> Path:
        return Path(self.cluster.data_dir) / f"link-faults-node-{source + 1}.json"

    def _write_helper_config(self, source: int) -> Path:
        links = {self.names.host(destination + 1): {"delay_ms": fault.delay_ms, "jitter_ms": fault.jitter_ms,
                                                    "loss_percent": fault.loss_percent}
                 for (origin, destination), fault in self._links.items() if origin == source}
        path = self._helper_config(source)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"links": links}))
        os.replace(temporary, path)
        return path

    def _helper_command(self, source: int, config: Path) -> list[str]:
        return net.in_namespace(self.names.namespace(source + 1), [sys.executable, "-m", "cluster.providers.link_delay",
                                                                  "--config", str(config), "--queue", str(net.QUEUE_NUMBER),
                                                                  "--seed", str(self.seed + source)])

    def _configure_helper(self, source: int) -> None:
        path = self._write_helper_config(source)
        helper = self._helpers.get(source)
        if helper is not None and helper.poll() is None:
            helper.send_signal(signal.SIGHUP)
            return
        self._helpers[source] = self._start_helper(source, path)

    def _helper_options(self) -> dict:
        """Owned by this launcher: its process group, its death signal, the subnet's lock."""
        return {"pass_fds": (_descriptor(self.cluster._lease),), "process_group": 0, "preexec_fn": _die_with_parent(os.getpid())}

    def _start_helper(self, source: int, config: Path) -> subprocess.Popen:
        env = helper_environment()
        command = self._helper_command(source, config)
        log = open(Path(self.cluster.data_dir) / f"link-faults-node-{source + 1}.log", "ab")
        try:
            helper = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, close_fds=True,
                                      **self._helper_options())
        finally:
            log.close()
        ready, _, _ = select.select([helper.stdout], [], [], HELPER_READY_TIMEOUT_S)
        line = helper.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self._stop(helper)
            raise ClusterError(f"the link-fault helper of node-{source + 1} did not start (said {line[:200]!r})",
                               hint=f"see {Path(self.cluster.data_dir) / f'link-faults-node-{source + 1}.log'}")
        return helper

    @staticmethod
    def _signal(helper: subprocess.Popen, signal_number: int) -> None:
        if helper.poll() is None:
            try:
                os.killpg(helper.pid, signal_number)
            except ProcessLookupError:
                pass

    def _stop(self, helper: subprocess.Popen) -> None:
        self._signal(helper, signal.SIGTERM)
        try:
            helper.wait(timeout=HELPER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._signal(helper, signal.SIGKILL)
            helper.wait(timeout=HELPER_STOP_TIMEOUT_S)
        if helper.stdout is not None:
            helper.stdout.close()

    def _stop_helpers(self) -> None:
        helpers = list(self._helpers.values())
        self._helpers.clear()
        for helper in helpers:   # all at once: each releases what it holds and unbinds
            self._signal(helper, signal.SIGTERM)
        for helper in helpers:
            self._stop(helper)

    def helper_pids(self) -> list[int]:
        return [helper.pid for helper in self._helpers.values() if helper.poll() is None]


def helper_environment() -> dict[str, str]:
    return python_child_environment(os.environ)


def nfqueue_problem() -> str | None:
    """Why delay and loss cannot run here (the NetfilterQueue package), or None."""
    try:
        import netfilterqueue  # noqa: F401
    except ImportError as error:
        return f"the NetfilterQueue package is not importable: {error}"
    return None


__all__ = ["NetnsCluster", "NetnsProvider", "nfqueue_problem", "take_subnet"]
