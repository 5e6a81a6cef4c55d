"""The `loopback` provider: today's launcher, wrapped. Nodes are processes on 127.A.B.i, partitions iptables.

Why it works as it does:
- It adds nothing to LocalCluster (cluster/local.py) and NetworkFaults (cluster/faults.py); it only
  speaks the provider interface over them, so the default stays the fastest way to run a cluster
  (no namespaces to build, every 127/8 address already answers on `lo`).
- Partitions are opened lazily: a run without them needs neither root nor iptables.
- Delay, loss and bandwidth do not exist here (loopback has no per-link queue we could hold
  packets in without NFQUEUE rules on every 127.A.B pair, and no netem): they raise
  FaultInjectionUnavailable naming the `netns` provider, before anything changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cluster.addresses import width_for
from cluster.faults import NetworkFaults, network_capability
from cluster.local import LocalCluster
from cluster.providers.base import FAULT_KINDS, LINK_FAULT_KINDS, Capability, Provider

LOOPBACK_HOST = "127.0.0.1"


class LoopbackProvider(Provider):
    name = "loopback"

    def __init__(self, **cluster_options: Any) -> None:
        super().__init__(**cluster_options)
        self._network: NetworkFaults | None = None

    @classmethod
    def adopt(cls, cluster: LocalCluster) -> "LoopbackProvider":
        """A provider over a LocalCluster someone else started (tests, hooks that built their own)."""
        provider = cls()
        provider.cluster = cluster
        return provider

    def setup(self) -> None:
        """Nothing to build: every 127/8 address answers on lo."""

    @property
    def host_address(self) -> str:
        return LOOPBACK_HOST

    def start(self, **late_options: Any) -> None:
        if self.cluster is None:
            self.cluster = LocalCluster(**{**self.cluster_options, **late_options})
        self.cluster.start()

    def close(self, *, remove_data: bool = False) -> None:
        try:
            if self._network is not None:
                self._network.close()
                self._network = None
        finally:
            if self.cluster is not None:
                self.cluster.close(remove_data=remove_data)

    # --- network faults ----------------------------------------------------------------------

    def capabilities(self) -> Mapping[str, Capability]:
        firewall = network_capability()
        found = {kind: Capability(available=True, detail="signals to the node's process group")
                 for kind in ("kill", "stop", "restart", "pause", "resume")}
        for kind in ("partition", "cut"):
            found[kind] = Capability(available=firewall.available, detail=firewall.detail, hint=firewall.hint)
        for kind in (*LINK_FAULT_KINDS, "skew"):
            found[kind] = Capability(available=False, detail=f"the loopback provider has no {kind}",
                                     hint='use provider = "netns"' if kind != "skew" else "")
        assert set(found) == set(FAULT_KINDS), sorted(found)
        return found

    def _faults(self) -> NetworkFaults:
        if self._network is None:
            self._network = NetworkFaults.open(self._block_prefix(), width=width_for(len(self.cluster.nodes)))
        return self._network

    def _block_prefix(self) -> str:
        return self._host(0).rsplit(".", 1)[0]

    def _host(self, index: int) -> str:
        return self.cluster.nodes[index].api_url.split("//", 1)[1].rsplit(":", 1)[0]

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        self._faults().partition([[self._host(index) for index in group] for group in groups])

    def cut(self, sources: Sequence[int], destinations: Sequence[int]) -> None:
        self._faults().cut([self._host(index) for index in sources], [self._host(index) for index in destinations])

    def cut_links(self) -> list[tuple[int, int]]:
        if self._network is None:
            return []
        index_of = {self._host(handle.index): handle.index for handle in self.cluster.nodes}
        return [(index_of[source], index_of[destination]) for source, destination in self._network.rules()
                if source in index_of and destination in index_of]

    def heal(self) -> None:
        if self._network is not None:
            self._network.heal()
