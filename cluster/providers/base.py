"""The provider interface: what runs a cluster's nodes and breaks its network, whatever the substrate.

Why it works as it does (modelled on CometBFT's e2e runner, `infra.Provider`):
- The scenario runner, `chaos` and the CLI drive a cluster through one object: set up the network,
  start the nodes, stop / kill / pause / resume / restart one, partition and heal, put link faults
  (delay, jitter, loss, bandwidth) and clock skew on nodes, collect logs and states, tear down. Each
  substrate is one provider: `loopback` (processes on 127.A.B.i, iptables; the default, the fastest),
  `netns` (a network namespace per node: real link faults). Code above this interface never learns
  which one runs.
- Two phases, as CometBFT's Setup then StartNodes: `setup()` makes the network (after it,
  `host_address` is where a server of the launcher, such as the package server, must bind so that
  every node reaches it), `start()` makes the genesis and starts the nodes. The package server needs
  the address before the nodes need the server's URL.
- Nodes are named by their 0-based index in `cluster.nodes` (LocalCluster's convention; scenarios
  write node-<index + 1>). Link faults are directed: `delay(sources, destinations)` slows packets
  from each source to each destination; write both directions for a symmetric fault.
- A fault the substrate cannot inject raises FaultInjectionUnavailable *before anything changes*,
  saying which provider can (`capabilities()` answers the same question without trying). `heal()`
  clears every network fault at once: partitions, cuts, delay, loss, bandwidth (skew stays a node's
  own setting, cleared by `skew(nodes, ms=0)`).
- `cluster` is the running LocalCluster (or subclass): its `nodes`, `api(i)`, `wait_for`, `logs(i)`,
  `genesis_path` are what steps and hooks read. Process faults go through the provider so a provider
  whose nodes are not local processes (kubernetes) can map them to its own engine.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from node.errors import ClusterError, FaultInjectionUnavailable

# The fault kinds a provider may offer (`capabilities()` keys), as scenario steps name them.
FAULT_KINDS = ("kill", "stop", "restart", "pause", "resume", "partition", "cut", "delay", "loss", "bandwidth", "skew")
LINK_FAULT_KINDS = ("delay", "loss", "bandwidth")
DELAY_MAX_MS = 60_000
JITTER_MAX_MS = 60_000
BANDWIDTH_MIN_KBIT = 8
BANDWIDTH_MAX_KBIT = 10_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Capability:
    available: bool
    detail: str     # what was found, or why not
    hint: str = ""  # what to do when not available


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkFault:
    """Delay, jitter and loss on packets from one node to another (0-based indexes)."""

    source: int
    destination: int
    delay_ms: int = 0
    jitter_ms: int = 0
    loss_percent: float = 0.0

    def __post_init__(self) -> None:
        if self.source == self.destination:
            raise ValueError(f"a link joins two nodes, not node {self.source} to itself")
        if not (0 <= self.delay_ms <= DELAY_MAX_MS and 0 <= self.jitter_ms <= JITTER_MAX_MS and 0.0 <= self.loss_percent <= 100.0):
            raise ValueError(f"link fault out of range: delay {self.delay_ms} ms, jitter {self.jitter_ms} ms, loss {self.loss_percent} %")

    @property
    def empty(self) -> bool:
        return self.delay_ms == 0 and self.jitter_ms == 0 and self.loss_percent == 0.0


def merge_link_fault(current: LinkFault | None, source: int, destination: int, *, delay_ms: int | None = None,
                     jitter_ms: int | None = None, loss_percent: float | None = None) -> LinkFault:
    """A delay step keeps the link's loss and a loss step keeps its delay: faults add up until heal."""
    base = current or LinkFault(source=source, destination=destination)
    return LinkFault(source=source, destination=destination,
                     delay_ms=base.delay_ms if delay_ms is None else delay_ms,
                     jitter_ms=base.jitter_ms if jitter_ms is None else jitter_ms,
                     loss_percent=base.loss_percent if loss_percent is None else loss_percent)


def unavailable(kind: str, provider: str, why: str = "") -> FaultInjectionUnavailable:
    """The plain refusal for a fault this provider does not have."""
    reason = why or f"the {provider} provider cannot inject {kind}"
    return FaultInjectionUnavailable(f"{kind}: {reason}",
                                     hint=f'{kind} needs provider = "netns" (a network namespace per node, root): set it in the '
                                          f"scenario's [cluster] table, or 'synapse cluster up --provider netns'; "
                                          "'synapse doctor' says what this machine can do")


class Provider(abc.ABC):
    """Runs one cluster. Use `setup()`, `start()`, then `close()` (or `with provider:` for all three)."""

    name: ClassVar[str]

    def __init__(self, **cluster_options: Any) -> None:
        """`cluster_options` are LocalCluster's (nodes, validators, data_dir, governance, limits, ...)."""
        self.cluster_options = dict(cluster_options)
        self.cluster: Any = None

    # --- lifecycle -------------------------------------------------------------------------

    @abc.abstractmethod
    def setup(self) -> None:
        """Make the network the nodes will live on; nothing runs yet. Idempotent."""

    @property
    @abc.abstractmethod
    def host_address(self) -> str:
        """An address of this machine that every node can reach (bind launcher-side servers to it)."""

    @abc.abstractmethod
    def start(self, **late_options: Any) -> None:
        """Genesis, keys, configs, then every node started and healthy. `late_options` are cluster
        options only known after setup (ipfs_gateways on a server bound to host_address)."""

    @abc.abstractmethod
    def close(self, *, remove_data: bool = False) -> None:
        """Stop every node, clear every fault, remove everything the provider made. Safe twice."""

    def __enter__(self) -> "Provider":
        self.setup()
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self.close(remove_data=exc_type is None)

    # --- process faults (the cluster's own signals; a remote provider overrides) -------------

    def kill(self, index: int) -> int | None:
        return self.cluster.kill(index)

    def stop(self, index: int) -> int | None:
        return self.cluster.stop(index)

    def restart(self, index: int) -> None:
        self.cluster.restart(index)

    def pause(self, index: int) -> None:
        self.cluster.pause(index)

    def resume(self, index: int) -> None:
        self.cluster.resume(index)

    # --- network faults ----------------------------------------------------------------------

    @abc.abstractmethod
    def capabilities(self) -> Mapping[str, Capability]:
        """For each kind of FAULT_KINDS: can this provider inject it on this machine now?"""

    def require(self, kind: str) -> None:
        """Raise FaultInjectionUnavailable (nothing changed) unless `kind` can be injected."""
        capability = self.capabilities().get(kind)
        if capability is None or not capability.available:
            raise unavailable(kind, self.name, capability.detail if capability else "")

    @abc.abstractmethod
    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Nodes in different groups can no longer talk (both ways); nodes in no group keep every link."""

    @abc.abstractmethod
    def cut(self, sources: Sequence[int], destinations: Sequence[int]) -> None:
        """Drop every packet from each source to each destination (one way)."""

    @abc.abstractmethod
    def cut_links(self) -> list[tuple[int, int]]:
        """The (source, destination) pairs cut now, read back from the substrate."""

    def delay(self, sources: Sequence[int], destinations: Sequence[int], *, ms: int, jitter_ms: int = 0) -> None:
        """Hold each packet from a source to a destination `ms` (+- uniform `jitter_ms`) before it goes."""
        raise unavailable("delay", self.name)

    def loss(self, sources: Sequence[int], destinations: Sequence[int], *, percent: float) -> None:
        """Drop `percent` % of the packets from each source to each destination, at random."""
        raise unavailable("loss", self.name)

    def bandwidth(self, nodes: Sequence[int], *, kbit: int) -> None:
        """Limit each node's link to `kbit` kbit/s, each way."""
        raise unavailable("bandwidth", self.name)

    def skew(self, nodes: Sequence[int], *, ms: int) -> None:
        """Offset each node's clock by `ms` (positive: ahead)."""
        raise unavailable("skew", self.name)

    def link_faults(self) -> list[LinkFault]:
        """Delay and loss in force now (empty where the provider has none)."""
        return []

    @abc.abstractmethod
    def heal(self) -> None:
        """Clear every network fault: partitions, cuts, delay, loss, bandwidth."""

    # --- a running cluster another process started -------------------------------------------

    @classmethod
    def attach(cls, data_dir: Path, document: Mapping[str, Any]) -> "Provider":
        """Faults on the live nodes of a cluster `synapse cluster up` left running (DIR/cluster.json as
        `document`): partition, cut, delay, loss, bandwidth and heal outlive this object, and `close()`
        leaves the nodes running. For `synapse cluster fault`, through `attach_provider` (providers/__init__.py),
        which also knows the providers whose attached form is a class of its own (netns_attached.py)."""
        raise ClusterError(f"the {cls.name} provider cannot attach to a running cluster",
                           hint="use 'synapse cluster fault' (it edits the loopback block's chain itself)")

    # --- collecting ----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What cluster.json records about the provider (`provider` is its name)."""
        return {"provider": self.name}

    def collect(self, folder: Path) -> Path:
        """Every node's log files and, for live nodes, its /health and /state, into folder/node-<i>/."""
        folder = Path(folder)
        for handle in self.cluster.nodes:
            target = folder / f"node-{handle.index + 1}"
            target.mkdir(parents=True, exist_ok=True)
            for name in ("node.log", "stderr.log", "stdout.log"):
                source = handle.data_dir / name
                if source.exists():
                    target.joinpath(name).write_bytes(source.read_bytes())
            final: dict[str, Any] = {"running": handle.running}
            if handle.running and not handle.paused:
                for key, path in (("health", "/health"), ("state", "/state")):
                    try:
                        final[key] = self.cluster.api(handle.index).get(path).data
                    except OSError as error:
                        final[key] = f"unreadable: {error}"
            target.joinpath("final.json").write_text(json.dumps(final, indent=2, default=str) + "\n")
        return folder
