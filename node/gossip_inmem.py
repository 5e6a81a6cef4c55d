"""The in-memory twin of the gossip transport (as hashicorp/raft's InmemTransport): many GossipCores in
one process, on a virtual clock, over a network that drops, duplicates and reorders messages.

Why it works as it does:

- It executes exactly the effects node/gossip.py executes (Send, Reply, Refuse, Persist, Visible,
  Count, Gauge, Event) with the same contracts: a Send is answered by receive_reply or call_failed
  (after call_timeout_ms when its request or reply was lost), a Persist by persisted, a 429/503
  refusal is "busy". Messages cross as their wire bytes (encode, then decode_message with the
  receiver's limits), so the twin exercises the real format too.
- Time is virtual: one heap of events ordered by (time_ms, sequence). Nothing sleeps; a run of 50
  nodes over many anti-entropy periods takes seconds. Every random choice (the faults, each core's
  rng) comes from one seed, so a run replays exactly from its seed.
- Faults are per message: `drop_probability` loses a request or a reply (the caller sees a timeout),
  `duplicate_probability` delivers a request twice (the second answer is ignored by the caller's
  core, as a late HTTP reply would be), `reorder_probability` holds a message back by up to
  `reorder_delay_ms_max`, so later messages overtake it. Plain latency is random in
  latency_ms_min..latency_ms_max, which reorders too.
- Bounded: every run stops at `virtual_ms_max`, and the event heap only grows with what the cores
  send (themselves bounded by outbound_tasks_max and the rounds limit).

This is the base of an in-process simulator of many nodes: add nodes, partitions or crash/restart
by replacing a core (its `disk` keeps what was persisted, for GossipCore.load).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from node.core.crdt_log import CrdtLog
from node.core.entries import Entry
from node.core.gossip_effects import Count, Effect, Event, Gauge, Persist, Refuse, Reply, Send, Visible, Wake
from node.core.gossip_messages import Offer, Push, Pushed, Sync, Synced, Want, decode_message
from node.core.gossip_protocol import GossipCore
from node.core.gossip_settings import GossipSettings
from node.errors import ConfigError

REPLY_TYPES: Mapping[type, type] = {Offer: Want, Push: Pushed, Sync: Synced}
BUSY_STATUSES = (429, 503)


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """What the in-memory network does to each message. Probabilities in 0..1, delays in virtual ms."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    reorder_probability: float = 0.0
    latency_ms_min: int = 1
    latency_ms_max: int = 5
    reorder_delay_ms_max: int = 100
    persist_ms: int = 0                 # how long a Persist takes (an fsync)

    def __post_init__(self) -> None:
        for name in ("drop_probability", "duplicate_probability", "reorder_probability"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"fault {name} must be a probability in 0..1, got {value!r}")
        if not 0 <= self.latency_ms_min <= self.latency_ms_max or self.reorder_delay_ms_max < 0 or self.persist_ms < 0:
            raise ConfigError("fault delays must be >= 0 ms, with latency_ms_min <= latency_ms_max")


@dataclass(slots=True)
class InmemNode:
    """One node of the twin: its core, its rng, what it persisted, what became visible, its metrics."""

    node_id: str
    core: GossipCore
    rng: random.Random
    disk: list[bytes] = field(default_factory=list)
    visible: list[Entry] = field(default_factory=list)
    metrics: Counter = field(default_factory=Counter)
    gauges: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    answers: dict[int, Any] = field(default_factory=dict)      # local request id -> Reply message or Refuse error
    writing: bool = False                                         # a local publish is in flight
    tick_generation: int = 0                                      # a Wake makes earlier scheduled ticks stale


@dataclass(slots=True)
class _Inbound:
    """A request being answered by `node`: where its answer goes."""

    caller: InmemNode
    call_id: int
    reply_type: type


class InmemNetwork:
    """Gossip cores wired together in memory. Build, add nodes, `start()`, then `run(...)`."""

    def __init__(self, *, seed: int, settings: GossipSettings, faults: Faults = Faults(), now_ms: int = 0) -> None:
        self.seed = seed
        self.settings = settings
        self.faults = faults
        self.now_ms = now_ms
        self.nodes: dict[str, InmemNode] = {}
        self._rng = random.Random(seed)       # the network's own choices: faults and latencies
        self._queue: list[tuple[int, int, Callable[..., None], tuple, dict]] = []
        self._sequence = 0
        self._ids = 0
        self._inbound: dict[tuple[str, int], _Inbound] = {}
        self.delivered = Counter()            # "request", "reply", "dropped", "duplicated", "reordered"

    # --- building and driving ----------------------------------------------------------------------

    def add_node(self, *, node_id: str, log: CrdtLog, peer_ids: list[str]) -> InmemNode:
        core = GossipCore(log=log, self_id=node_id, peer_ids=peer_ids, settings=self.settings)
        node = InmemNode(node_id, core, random.Random(self._rng.getrandbits(64)))
        self.nodes[node_id] = node
        return node

    def start(self) -> None:
        for node in self.nodes.values():
            self._execute(node, node.core.start(self.now_ms, node.rng))
            self._schedule_tick(node)

    def at(self, delay_ms: int, action: Callable[..., None], *arguments: Any, **keywords: Any) -> None:
        """Run `action(*arguments, **keywords)` `delay_ms` virtual ms from now (after everything already
        due then)."""
        self._sequence += 1
        heapq.heappush(self._queue, (self.now_ms + max(0, int(delay_ms)), self._sequence, action, arguments, keywords))

    def run(self, *, until: Callable[[], bool], check_every_ms: int, virtual_ms_max: int) -> bool:
        """Process events in time order; every `check_every_ms` of virtual time, stop if `until()`.
        False if `virtual_ms_max` passed first."""
        deadline_ms = self.now_ms + virtual_ms_max
        next_check_ms = self.now_ms
        while self._queue and self._queue[0][0] <= deadline_ms:
            if self._queue[0][0] >= next_check_ms:   # check before taking the event: a stop must not lose it
                self.now_ms = next_check_ms
                if until():
                    return True
                next_check_ms += check_every_ms
            time_ms, _, action, arguments, keywords = heapq.heappop(self._queue)
            self.now_ms = time_ms
            action(*arguments, **keywords)
        return until()

    def publish(self, node: InmemNode, *, kind: str, body: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> None:
        """Write the node's next entry now, or as soon as its previous local write is done (one at a
        time, as Gossip.publish_new's lock does)."""
        if node.writing:
            self.at(1, self.publish, node, kind=kind, body=body, sign=sign)
            return
        node.writing = True
        entry = node.core.log.new_entry(kind=kind, author=node.node_id, body=body, sign=sign, now_ms=self.now_ms)
        self._ids += 1  # local requests get negative ids: their answers stay on the node
        self._execute(node, node.core.publish(entry, self.now_ms, node.rng, request_id=-self._ids))

    # --- executing effects -------------------------------------------------------------------------

    def _schedule_tick(self, node: InmemNode) -> None:
        node.tick_generation += 1
        self.at(max(1, round(node.core.next_tick_delay_ms(node.rng))), self._tick, node, node.tick_generation)

    def _tick(self, node: InmemNode, generation: int) -> None:
        if generation != node.tick_generation:  # rescheduled by a Wake since
            return
        self._execute(node, node.core.tick(self.now_ms, node.rng))
        self._schedule_tick(node)

    def _execute(self, node: InmemNode, effects: list[Effect]) -> None:
        for effect in effects:
            kind = type(effect)
            if kind is Count:
                node.metrics[(effect.name, effect.labels)] += effect.amount
            elif kind is Send:
                self._send(node, effect)
            elif kind is Reply or kind is Refuse:
                self._answer(node, effect)
            elif kind is Persist:
                node.disk.extend(effect.raws)
                self.at(self.faults.persist_ms, self._persisted, node, effect.batch_id)
            elif kind is Visible:
                node.visible.extend(effect.entries)
            elif kind is Gauge:
                node.gauges[effect.name] = effect.value
            elif kind is Event:
                node.events.append(effect)
            elif kind is Wake:
                self._schedule_tick(node)
            else:
                raise AssertionError(f"unknown gossip effect {effect!r}")

    def _persisted(self, node: InmemNode, batch_id: int) -> None:
        self._execute(node, node.core.persisted(batch_id, self.now_ms, node.rng))

    def _delay_ms(self) -> int:
        faults, rng = self.faults, self._rng
        delay_ms = rng.randint(faults.latency_ms_min, faults.latency_ms_max)
        if rng.random() < faults.reorder_probability:
            self.delivered["reordered"] += 1
            delay_ms += rng.randint(0, faults.reorder_delay_ms_max)
        return delay_ms

    def _send(self, caller: InmemNode, send: Send) -> None:
        """A request leaves `caller`: its timeout starts now; it may be lost, late or delivered twice."""
        body = send.message.encode()
        name = type(send.message).__name__.lower()
        caller.metrics[("gossip_bytes_sent_total", (("type", name),))] += len(body)
        self.at(self.settings.call_timeout_ms, self._timed_out, caller, send.call_id)
        copies = 2 if self._rng.random() < self.faults.duplicate_probability else 1
        self.delivered["duplicated"] += copies - 1
        for _ in range(copies):
            if self._rng.random() < self.faults.drop_probability:
                self.delivered["dropped"] += 1
                continue
            self.at(self._delay_ms(), self._deliver_request, caller, send.peer_id, send.call_id, type(send.message), body)

    def _timed_out(self, caller: InmemNode, call_id: int) -> None:
        """Ignored by the core when the call was answered already."""
        self._execute(caller, caller.core.call_failed(call_id, self.now_ms, caller.rng, error_type="TimeoutError",
                                                      detail="no answer in call_timeout_ms (in-memory network)"))

    def _deliver_request(self, caller: InmemNode, peer_id: str, call_id: int, message_type: type, body: bytes) -> None:
        receiver = self.nodes[peer_id]
        self.delivered["request"] += 1
        message = decode_message(body, message_type, array_length_max=receiver.core.array_length_max())
        self._ids += 1
        self._inbound[(peer_id, self._ids)] = _Inbound(caller, call_id, REPLY_TYPES[message_type])
        self._execute(receiver, receiver.core.receive(caller.node_id, message, self.now_ms, receiver.rng, request_id=self._ids))

    def _answer(self, node: InmemNode, effect: Reply | Refuse) -> None:
        if effect.request_id < 0:  # a local publish is done
            node.answers[-effect.request_id] = effect.message if type(effect) is Reply else effect.error
            node.writing = False
            return
        inbound = self._inbound.pop((node.node_id, effect.request_id))
        if self._rng.random() < self.faults.drop_probability:
            self.delivered["dropped"] += 1
            return  # the caller's timeout reports it
        if type(effect) is Refuse:
            busy = effect.error.http_status in BUSY_STATUSES
            self.at(self._delay_ms(), self._refused, inbound, busy, type(effect.error).__name__)
            return
        self.at(self._delay_ms(), self._deliver_reply, inbound, effect.message.encode())

    def _refused(self, inbound: _Inbound, busy: bool, error_type: str) -> None:
        caller = inbound.caller
        self._execute(caller, caller.core.call_failed(inbound.call_id, self.now_ms, caller.rng, busy=busy, error_type=error_type))

    def _deliver_reply(self, inbound: _Inbound, body: bytes) -> None:
        caller = inbound.caller
        self.delivered["reply"] += 1
        reply = decode_message(body, inbound.reply_type, array_length_max=caller.core.array_length_max())
        self._execute(caller, caller.core.receive_reply(inbound.call_id, reply, self.now_ms, caller.rng))
