"""Faults as Chaos Mesh objects: a fault description in, `NetworkChaos` / `PodChaos` dicts out.

Why it works as it does:
- Pure: `chaos_objects` maps a validated `Fault` (1-based node indexes, as node-<i> everywhere) to plain
  dicts and touches nothing; applying and deleting them is apply.py's job. Tests check the mapping and
  validate every object against the Chaos Mesh CRD schemas vendored in cluster/k8s/crds/.
- `fault_from_params` reads the same keys as the scenario steps of issue 12 (`from`, `to`, `ms`,
  `jitter_ms`, `percent`, `nodes`, `kbit`, partition `groups`), with the scenario parser's own selectors
  (cluster/scenario.py parse_selector, cluster/faults.py resolve). Only what is known before the run
  can be named: node indexes, names, ids and the static groups; `leader`, `followers` and `live` depend
  on the running network and are refused here (resolve them first, then pass indexes).
- Pods are selected by the labels manifests.py puts on them: this network's instance label always, plus
  the role when a set is exactly the validators or the members (readable in `kubectl get networkchaos`),
  else the node label `In` the set. Every object carries `synapse-ng.io/fault`, so heal is "delete every
  chaos object with that label".
- Semantics, which differ from the loopback provider in ways a scenario writer must know:
  partition cuts both directions between each pair of groups (one NetworkChaos per pair); delay and loss
  act on packets sent from `from` to `to` (direction "to"), so `from = to = validators` delays both
  directions of every validator link; bandwidth limits everything the nodes send; kill is `pod-kill`
  (the StatefulSet starts the pod again at once, unlike a killed local process that stays down until
  restarted); pause is `pod-failure` (the container is replaced by a pause image until healed: the node
  is gone, its connections reset, rather than frozen with SIGSTOP). Clock skew needs Chaos Mesh's
  TimeChaos, not mapped here yet: it is refused with that reason.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Mapping

from cluster.faults import NodeView, resolve
from cluster.k8s.manifests import APP_NAME, FIELD_MANAGER, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, LABEL_NODE
from cluster.scenario import parse_selector
from node.errors import ConfigError, SynapseError

CHAOS_API_VERSION = "chaos-mesh.org/v1alpha1"
LABEL_FAULT = "synapse-ng.io/fault"
NETWORK_KINDS = ("partition", "delay", "loss", "bandwidth")
POD_KINDS = ("kill", "pause")
FAULT_KINDS = NETWORK_KINDS + POD_KINDS
UNAVAILABLE = {"skew": "clock skew on Kubernetes needs Chaos Mesh's TimeChaos, which this provider does not map yet"}
DELAY_MS_MAX = 60_000
BANDWIDTH_KBIT_MAX = 10_000_000
DURATION_S_MAX = 86_400
# Chaos Mesh's documented defaults for its token bucket (tbf): the queue and the bucket, in bytes.
BANDWIDTH_LIMIT_BYTES = 20_971_520
BANDWIDTH_BUFFER_BYTES = 10_000
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """What the mapping needs to know about the network (manifests.py's labels and namespace)."""

    nodes: int
    validators: int
    namespace: str
    network_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    kind: str
    groups: tuple[tuple[int, ...], ...] = ()   # partition: disjoint sets of nodes cut from each other
    sources: tuple[int, ...] = ()              # delay/loss: `from`; bandwidth/kill/pause: `nodes`
    targets: tuple[int, ...] = ()              # delay/loss: `to`
    ms: int = 0
    jitter_ms: int = 0
    percent: int = 0
    kbit: int = 0
    duration_s: int | None = None              # None: until healed (the object is deleted)

    def __post_init__(self) -> None:
        if self.kind in UNAVAILABLE:
            raise ConfigError(f"fault {self.kind!r} is not available on Kubernetes: {UNAVAILABLE[self.kind]}")
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault {self.kind!r:.40}", hint=f"faults are {', '.join(FAULT_KINDS)}")
        if self.kind == "partition":
            self._check_partition()
        elif not self.sources:
            raise ConfigError(f"a {self.kind} fault names no node")
        if self.kind in ("delay", "loss") and not self.targets:
            raise ConfigError(f"a {self.kind} fault needs both 'from' and 'to' nodes")
        _check_range("ms", self.ms, 1 if self.kind == "delay" else 0, DELAY_MS_MAX if self.kind == "delay" else 0)
        _check_range("jitter_ms", self.jitter_ms, 0, DELAY_MS_MAX if self.kind == "delay" else 0)
        _check_range("percent", self.percent, 1 if self.kind == "loss" else 0, 100 if self.kind == "loss" else 0)
        _check_range("kbit", self.kbit, 1 if self.kind == "bandwidth" else 0, BANDWIDTH_KBIT_MAX if self.kind == "bandwidth" else 0)
        if self.duration_s is not None:
            _check_range("duration", self.duration_s, 1, DURATION_S_MAX)

    def _check_partition(self) -> None:
        if len(self.groups) < 2 or not all(self.groups):
            raise ConfigError("a partition needs at least two non-empty groups of nodes")
        seen: set[int] = set()
        for group in self.groups:
            if seen & set(group):
                raise ConfigError(f"node {sorted(seen & set(group))[0]} is in two partition groups", hint="partition groups are disjoint")
            seen |= set(group)


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        allowed = "not used by this fault" if high == 0 else f"an integer from {low} to {high:,}"
        raise ConfigError(f"{name} is {value!r:.20}: {allowed}")


def _selector(indexes: tuple[int, ...], topology: Topology) -> dict:
    chosen = set(indexes)
    if not all(1 <= index <= topology.nodes for index in chosen):
        raise ConfigError(f"node {max(chosen)} does not exist: the network has nodes 1 to {topology.nodes}")
    labels = {LABEL_NAME: APP_NAME, LABEL_INSTANCE: topology.network_id}
    selector: dict = {"namespaces": [topology.namespace], "labelSelectors": labels}
    if chosen == set(range(1, topology.validators + 1)):
        labels[LABEL_COMPONENT] = "validator"
    elif chosen == set(range(topology.validators + 1, topology.nodes + 1)):
        labels[LABEL_COMPONENT] = "member"
    elif chosen != set(range(1, topology.nodes + 1)):
        selector["expressionSelectors"] = [{"key": LABEL_NODE, "operator": "In", "values": [f"node-{index}" for index in sorted(chosen)]}]
    return selector


def _object(kind: str, name: str, fault: Fault, topology: Topology, spec: dict) -> dict:
    if fault.duration_s is not None:
        spec["duration"] = f"{fault.duration_s}s"
    labels = {LABEL_NAME: APP_NAME, LABEL_INSTANCE: topology.network_id, LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_FAULT: fault.kind}
    return {"apiVersion": CHAOS_API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": topology.namespace, "labels": labels}, "spec": spec}


def _network_spec(fault: Fault, topology: Topology) -> dict:
    spec = {"action": fault.kind, "mode": "all", "selector": _selector(fault.sources, topology), "direction": "to"}
    if fault.kind == "bandwidth":
        spec["bandwidth"] = {"rate": f"{fault.kbit}kbit", "limit": BANDWIDTH_LIMIT_BYTES, "buffer": BANDWIDTH_BUFFER_BYTES}
        return spec
    spec["target"] = {"mode": "all", "selector": _selector(fault.targets, topology)}
    if fault.kind == "delay":
        spec["delay"] = {"latency": f"{fault.ms}ms", "jitter": f"{fault.jitter_ms}ms", "correlation": "0"}
    else:
        spec["loss"] = {"loss": str(fault.percent), "correlation": "0"}
    return spec


def chaos_objects(fault: Fault, topology: Topology, *, name: str) -> list[dict]:
    """The Chaos Mesh objects that make `fault` happen (delete them to heal). `name` prefixes their names."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"chaos name {name!r:.60} is not a short DNS label", hint="1-42 lowercase letters, digits and '-'")
    if fault.kind == "partition":
        pairs = [(first, second) for position, first in enumerate(fault.groups) for second in fault.groups[position + 1:]]
        return [_object("NetworkChaos", f"{name}-{number}" if len(pairs) > 1 else name, fault, topology,
                        {"action": "partition", "mode": "all", "selector": _selector(first, topology), "direction": "both",
                         "target": {"mode": "all", "selector": _selector(second, topology)}})
                for number, (first, second) in enumerate(pairs, start=1)]
    if fault.kind in NETWORK_KINDS:
        return [_object("NetworkChaos", name, fault, topology, _network_spec(fault, topology))]
    action = "pod-kill" if fault.kind == "kill" else "pod-failure"
    spec = {"action": action, "mode": "all", "selector": _selector(fault.sources, topology)}
    if fault.kind == "kill":
        spec["gracePeriod"] = 0    # as SIGKILL on the loopback provider
    return [_object("PodChaos", name, fault, topology, spec)]


# --- from the scenario step's keys -------------------------------------------------------------


def _nodes(value: object, topology: Topology, rng: random.Random, *, excluded: set[int] = frozenset()) -> tuple[int, ...]:
    """A scenario selector ("validators", "members", ["node-1", 3], ...) -> sorted 1-based indexes."""
    items = value if isinstance(value, list) else [value]
    items = ["non_validators" if item == "members" else item for item in items]

    def no_leader() -> int | None:
        raise ConfigError("'leader' and 'followers' depend on the running network",
                          hint="name the nodes (node-1, 2, validators, members) or resolve the leader first")

    try:
        selector = parse_selector(items if isinstance(value, list) else items[0], nodes=topology.nodes)
        if {"live", "down", "paused"} & set(selector.groups):
            raise ConfigError("'live', 'down' and 'paused' depend on the running network", hint="name the nodes instead")
        views = [NodeView(index=index, node_id="", host="", validator=index <= topology.validators) for index in range(1, topology.nodes + 1)]
        return tuple(resolve(selector, views, leader=no_leader, rng=rng, excluded=excluded))
    except SynapseError as error:
        raise ConfigError(f"selector {value!r:.60}: {error.message}", hint=error.hint) from None


_KEYS = {"partition": {"groups"}, "delay": {"from", "to", "ms", "jitter_ms"}, "loss": {"from", "to", "percent"},
         "bandwidth": {"nodes", "kbit"}, "kill": {"nodes"}, "pause": {"nodes"}}


def fault_from_params(kind: str, params: Mapping[str, object], topology: Topology, *, rng: random.Random | None = None,
                      duration_s: int | None = None) -> Fault:
    """A Fault from a scenario step's keys, e.g. ("delay", {"from": "validators", "to": "validators", "ms": 200})."""
    if kind in UNAVAILABLE or kind not in _KEYS:
        return Fault(kind=kind)     # raises with the reason
    unknown = sorted(set(params) - _KEYS[kind])
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} for a {kind} fault", hint=f"its keys are {', '.join(sorted(_KEYS[kind]))}")
    rng = rng or random.Random(0)
    numbers = {key: params[key] for key in ("ms", "jitter_ms", "percent", "kbit") if key in params}
    if kind == "partition":
        groups = params.get("groups")
        if not isinstance(groups, list) or len(groups) < 2:
            raise ConfigError("a partition needs 'groups': a list of at least two selectors", hint='e.g. groups = ["validators", "members"]')
        named = [None if group == "rest" else _nodes(group, topology, rng) for group in groups]
        taken = {index for group in named if group for index in group}
        resolved = tuple(group if group is not None else _nodes("rest", topology, rng, excluded=taken) for group in named)
        return Fault(kind=kind, groups=resolved, duration_s=duration_s)
    if kind in ("delay", "loss"):
        for key in ("from", "to"):
            if key not in params:
                raise ConfigError(f"a {kind} fault needs '{key}'", hint="a selector: validators, members, node-2, [1, 3], all")
        return Fault(kind=kind, sources=_nodes(params["from"], topology, rng), targets=_nodes(params["to"], topology, rng),
                     duration_s=duration_s, **numbers)
    if "nodes" not in params:
        raise ConfigError(f"a {kind} fault needs 'nodes'", hint="a selector: validators, members, node-2, [1, 3], all")
    return Fault(kind=kind, sources=_nodes(params["nodes"], topology, rng), duration_s=duration_s, **numbers)


def example_faults(topology: Topology) -> dict[str, Fault]:
    """The faults of issue 12 on this network, written next to the manifests as ready-to-apply examples."""
    last = f"node-{topology.nodes}"
    steps = {
        "delay-validators-200ms": ("delay", {"from": "validators", "to": "validators", "ms": 200}),
        f"loss-{last}-20pct": ("loss", {"from": last, "to": "all", "percent": 20}),
        f"kill-{last}": ("kill", {"nodes": last}),
        "pause-node-1": ("pause", {"nodes": "node-1"}),
    }
    if topology.validators < topology.nodes:    # a network of validators only has no members to cut off
        steps["partition-validators-members"] = ("partition", {"groups": ["validators", "members"]})
        steps["bandwidth-members-1000kbit"] = ("bandwidth", {"nodes": "members", "kbit": 1000})
    return {name: fault_from_params(kind, params, topology, duration_s=60 if kind == "pause" else None)
            for name, (kind, params) in steps.items()}
