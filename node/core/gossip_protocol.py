"""The gossip protocol of the signed log, as a pure state machine: messages and time in, effects out.

Why it works as it does:

- Two mechanisms, as in Demers et al. (1987). *Eager push* makes a new entry visible everywhere in a
  few network round trips; *anti-entropy* (one random peer per `interval_ms`) repairs whatever push
  missed: a lost message, a node that was down, a partition that healed.

- Eager push, bounded. The author pushes a new entry in full to `fanout` random peers (ceil(ln N) + 1
  by default: with fan-out f the chance that a node is missed by every forwarder is about e^-f, and
  anti-entropy catches those). Every node forwards an entry exactly once: when it first becomes
  visible there (never a pending or refused entry, never on a duplicate), and never to the peer it
  came from or to peers known to hold it.

- Forwarding goes in *waves* (gossip_waves.py: Nagle-like batches, one message per chosen peer). A
  wave of at most `push_inline_bytes_max` bytes is pushed inline (a duplicate of a few small entries
  costs less than a round trip); a heavier one goes *offer/want* (ids first, bytes only to a peer that
  lacks them). A peer that answered "want" for an id answers "have" to offers of it for `call_timeout_ms`.

- Lazy kinds (`lazy_kinds`: EXECUTION_REPORT, which every node writes at once; the validators' CLOSE
  and RATIFY entries, which the certificate makes redundant for spreading) are pushed by their author
  only; anti-entropy carries them on (eagerly: N x N x fanout messages). A push carries the lazy parents
  of its entries that the peer is not known to hold, so an eager entry never waits for one.
  With `report_hold_ms`, nobody sends an EXECUTION_REPORT until that long after its author wrote it
  (many nodes on one machine: the reports then do not compete with the executions for the cores);
  a `want` of one is answered at once.

- Anti-entropy in at most three small exchanges. (1) I send my digest's hash and the ids of parents I
  miss; a peer with the same digest answers "in sync" in a few bytes. (2) Otherwise it answers its
  full digest and I push what it lacks (one bounded batch). (3) If its digest shows something I lack,
  I send my digest and pull in bounded batches until it says there is no more. A node that wanted an
  offered entry within the last period skips its next round (once): that round would meet the entry
  in flight and pay for full digests and a second copy.

- Persist before anything else. An entry is verified at the door (`CrdtLog.check`), then a `Persist`
  effect is emitted, and only once the transport confirms it (`persisted`) is the entry added to the
  log, reported `Visible` and forwarded. A refused entry is never persisted or forwarded.

- Sans-IO: no clock, no randomness, no sockets here. `now_ms` and a seeded `random.Random` are
  parameters; every multi-step exchange (offer -> want -> push, a sync round) is a continuation kept
  in `_calls` under the call id of its `Send`, resumed by `receive_reply` or `call_failed`. Limits on
  everything: background flows (`outbound_tasks_max`), rounds at once, entries being processed
  (`inbox_max`), remembered ids (LRU maps). Messages come from gossip_messages.py, effects from
  gossip_effects.py; the transports only execute effects.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from node.core.crdt_log import AddStatus, CrdtLog, order_key, parse_digest
from node.core.entries import ENTRY_SIZE_MAX_BYTES, Entry, decode_entry
from node.core.gossip_backoff import AntiEntropyPace, PaceEvent
from node.core.gossip_effects import Effect, Persist, Refuse, Reply, Send, Visible, Wake, count, event, Gauge
from node.core.gossip_records import Ingested, PeerState, Random, Then, Call, Ingestion
from node.core.gossip_messages import IDS_PER_MESSAGE_MAX, Offer, Push, Pushed, Sync, Synced, Want, digest_hash_of, pack
from node.core.gossip_round import PULL_BATCHES_PER_ROUND_MAX, Round, RoundPhase, enter
from node.core.gossip_rules import BoundedMap, batches_by_size, held_report, not_held, remote_may_have_more
from node.core.gossip_settings import GossipSettings, fanout_for
from node.core.gossip_waves import ForwardWaves, peers_holding_all
from node.core.hlc import WALL_MS_MAX
from node.errors import BadRequest, Conflict, EntryRefused, SynapseError, Unavailable

HOLDERS_MEMORY_MAX = 4_096           # entries for which we remember which peers hold them
HELD_PUSHES_MAX = 64                 # own entries whose push waits for report_hold_ms (more are pushed at once)
ROUNDS_RUNNING_MAX = 4               # anti-entropy rounds at once (a slow peer never blocks the others)
MESSAGE_ENVELOPE_BYTES = 1_024       # room left in a request for everything but entry bytes


class GossipCore:
    """The gossip protocol of one node. Every public method returns the effects to execute, in order."""

    def __init__(self, *, log: CrdtLog, self_id: str, peer_ids: Iterable[str], settings: GossipSettings) -> None:
        self.log = log
        self.self_id = self_id
        self.settings = settings
        self.peers = {node_id: PeerState(node_id) for node_id in sorted(peer_ids)}
        self.fanout = fanout_for(len(self.peers), settings.fanout)
        self._out: list[Effect] = []
        self._next_id = 0
        self._calls: dict[int, Call] = {}
        self._ingestions: dict[int, Ingestion] = {}
        self._rounds: dict[str, Round] = {}
        self._flows = 0                      # background exchanges running (bounded by outbound_tasks_max)
        self._inbox_entries = 0
        self._persisting: set[str] = set()
        self.local_writes_broken: str | None = None
        self.write_gate_deadline_ms: int | None = None
        self.heard_digest = not self.peers
        self.own_sequence_claimed = 0
        self._last_wanted_ms = -1 << 62      # when this node last asked for an offered entry (one is on its way)
        self._skipped_round = False
        self._expected = BoundedMap(settings.inbox_max)          # id -> deadline_ms (answered "want")
        self._holders = BoundedMap(HOLDERS_MEMORY_MAX)           # id -> set of peer ids known to hold it
        self._held_pushes: list[Entry] = []                       # own reports to push once report_hold_ms passed
        self.waves = ForwardWaves(queue_max=settings.batch_entries_max, patience_ms=settings.interval_ms)
        self.pace = AntiEntropyPace(base_ms=settings.interval_ms, max_ms=settings.quiet_period_max_ms)

    # --- plumbing ----------------------------------------------------------------------------------

    def _take(self) -> list[Effect]:
        out, self._out = self._out, []
        return out

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, peer_id: str, message: Any, on_reply: Callable[[Any, int, Random], None],
              on_failure: Then) -> None:
        call_id = self._new_id()
        self._calls[call_id] = Call(peer_id, on_reply, on_failure)
        self._out.append(Send(call_id=call_id, peer_id=peer_id, message=message))

    def _begin_flow(self) -> bool:
        """A background exchange may start unless outbound_tasks_max run already (anti-entropy repairs)."""
        if self._flows >= self.settings.outbound_tasks_max:
            self._out.append(count("gossip_sends_dropped_total"))
            return False
        self._flows += 1
        return True

    def _end_flow(self) -> None:
        self._flows -= 1

    def array_length_max(self) -> int:
        return max(self.settings.batch_entries_max, self.settings.want_ids_max, IDS_PER_MESSAGE_MAX)

    def peers_up(self) -> int:
        return sum(1 for peer in self.peers.values() if peer.up)

    def next_tick_delay_ms(self, rng: Random) -> float:
        """When to call tick() next: about the current period (interval_ms, longer while the network is
        quiet), jittered so nodes' rounds do not synchronize. A `Wake` effect cuts a long wait short."""
        return self.pace.period_ms * (0.75 + rng.random() / 2)

    def _pace(self, pace_event: PaceEvent) -> None:
        if self.pace.on(pace_event):
            self._out.append(Wake())

    # --- start-up, stored entries, the write gate --------------------------------------------------

    def start(self, now_ms: int, rng: Random) -> list[Effect]:
        """Open the write gate's wait and start a first anti-entropy round with a random peer."""
        self.write_gate_deadline_ms = now_ms + self.settings.first_write_wait_ms
        if self.peers:
            self._request_sync(rng.choice(list(self.peers)), now_ms, rng)
        return self._take()

    def load(self, raws: Sequence[bytes]) -> tuple[int, list[Effect]]:
        """Re-verify stored entries through CrdtLog.add (nothing on disk is trusted), without the clock
        rule: that is a rule about the present at the door, which these entries passed; applying it
        again after this host's clock stepped back would drop this node's own entries and let it
        reuse their sequence numbers. Returns how many were accepted."""
        accepted = 0
        for raw in raws:
            try:
                outcome = self.log.add(decode_entry(raw, entry_size_max_bytes=ENTRY_SIZE_MAX_BYTES), now_ms=WALL_MS_MAX)
            except EntryRefused as refusal:
                self._out.append(count("log_load_refused_total", reason=refusal.reason))
                self._out.append(event("warning", "gossip_load_refused", reason=refusal.reason, message=refusal.message))
                continue
            if outcome.status is not AddStatus.DUPLICATE:
                accepted += 1
            for _, reason in outcome.refused:
                self._out.append(count("log_load_refused_total", reason=reason))
        self._out.append(event("info", "gossip_loaded", stored=len(raws), accepted=accepted))
        return accepted, self._take()

    def behind_own_entries(self) -> bool:
        return not self.heard_digest or self.log.next_sequence(self.self_id) <= self.own_sequence_claimed

    def close_write_gate(self) -> list[Effect]:
        """The first local write after start goes ahead (in sync, or after first_write_wait_ms): say so
        if this node may still be behind its own entries (digests are unauthenticated, and a node must
        be able to write with every peer down, so the wait is bounded)."""
        if self.write_gate_deadline_ms is None:
            return []
        self.write_gate_deadline_ms = None
        if not self.heard_digest:
            self._out.append(event(
                "warning", "gossip_first_write_unsynced", waited_ms=self.settings.first_write_wait_ms,
                hint="no peer answered an anti-entropy round since start: if this node's data dir was wiped or "
                     "restored, its next entries may reuse sequence numbers of entries its peers hold"))
        elif self.behind_own_entries():
            self._out.append(event(
                "warning", "gossip_own_entries_missing", holds=self.log.next_sequence(self.self_id) - 1,
                peers_claim=self.own_sequence_claimed,
                hint="a peer claims more entries of this node than it could pull in time; its next entries may "
                     "reuse their sequence numbers (equivocation)"))
        return self._take()

    def _note_digest(self, digest: Mapping[str, tuple] | None) -> None:
        """Remember the highest sequence of this node's own entries that a peer's digest names."""
        if digest is not None:
            own = max((sequence for sequence, _ in digest.get(self.self_id, ())), default=0)
            self.own_sequence_claimed = max(self.own_sequence_claimed, own)

    # --- local entries -----------------------------------------------------------------------------

    def publish(self, entry: Entry, now_ms: int, rng: Random, *, request_id: int) -> list[Effect]:
        """A LOCAL entry: check it, persist it, then add it and push it to `fanout` peers. Answers
        `request_id` with Reply (done, visible here) or Refuse (Conflict when it is not this node's next
        entry, BadRequest for another author, EntryRefused, Unavailable once local writes stopped)."""
        refusal = self._local_refusal(entry)
        if refusal is not None:
            self._out.append(Refuse(request_id=request_id, error=refusal, reason=""))
            return self._take()
        if entry.id in self.log:
            self._out.append(Reply(request_id=request_id, message=None))
            return self._take()
        try:
            self.log.check(entry, now_ms=now_ms)
        except EntryRefused as refused:
            self._out.append(count("entries_refused_total", reason=refused.reason))
            self._out.append(Refuse(request_id=request_id, error=refused, reason=""))
            return self._take()
        batch_id = self._new_id()
        self._ingestions[batch_id] = Ingestion(
            None, 0, [entry], Ingested(), done=lambda _, now, rng_: self._published(entry, request_id, now, rng_),
            failed=lambda error: self._out.append(Refuse(request_id=request_id, error=error, reason="")), local=True)
        self._out.append(Persist(batch_id=batch_id, raws=(entry.raw,)))
        return self._take()

    def _local_refusal(self, entry: Entry) -> SynapseError | None:
        if self.local_writes_broken is not None:
            return Unavailable(f"this node stopped writing local entries: {self.local_writes_broken}",
                               hint="restart the node: it re-reads its log file and continues after its last entry")
        if entry.author != self.self_id:
            return BadRequest(f"publish() takes entries of this node ({self.self_id}), not of {entry.author}",
                              hint="entries of other nodes arrive through gossip")
        expected_sequence = self.log.next_sequence(self.self_id)
        if entry.id not in self.log and entry.sequence != expected_sequence:
            return Conflict(f"local entry has sequence {entry.sequence}, but this node's next sequence is {expected_sequence}",
                            hint="build the entry with CrdtLog.new_entry right before publishing, or use Gossip.publish_new")
        return None

    def _published(self, entry: Entry, request_id: int, now_ms: int, rng: Random) -> None:
        try:
            outcome = self.log.add(entry, now_ms=now_ms)
        except EntryRefused as refusal:  # e.g. log_full reached while persisting: the entry is on disk
            # Its sequence number is taken (on disk); writing another entry now would reuse it.
            self.local_writes_broken = f"entry #{entry.sequence} is on disk but the log refused it ({refusal.reason})"
            self._out.append(count("entries_refused_total", reason=refusal.reason))
            self._out.append(Refuse(request_id=request_id, error=refusal, reason=""))
            return
        self._out.append(count("gossip_entries_published_total"))
        self._pace(PaceEvent.CHANGE)
        if outcome.newly_visible:
            self._out.append(Visible(entries=tuple(outcome.newly_visible)))
        self._out.append(Reply(request_id=request_id, message=None))
        if held_report(entry, now_ms, self.settings.report_hold_ms) and len(self._held_pushes) < HELD_PUSHES_MAX:
            self._held_pushes.append(entry)       # tick() pushes it once the hold has passed
            return
        self._push_own(entry, now_ms, rng)

    def _push_own(self, entry: Entry, now_ms: int, rng: Random) -> None:
        for peer_id in self._choose_peers(self.fanout, exclude=set(), now_ms=now_ms, rng=rng):
            if self._begin_flow():
                self._push(peer_id, self._with_lazy_parents([entry], peer_id), self._end_flow)

    # --- persistence results -----------------------------------------------------------------------

    def persisted(self, batch_id: int, now_ms: int, rng: Random) -> list[Effect]:
        """The transport wrote the batch `batch_id` (and fsynced it if it was durable): add its entries, then go on."""
        ingestion = self._ingestions.pop(batch_id)
        self._out.append(count("gossip_entries_persisted_total", len(ingestion.fresh)))
        if ingestion.local:
            ingestion.done(ingestion.result, now_ms, rng)
        else:
            self._finish_ingestion(ingestion, now_ms, rng)
        return self._take()

    def persist_failed(self, batch_id: int, error: SynapseError) -> list[Effect]:
        """The disk failed or was too slow: nothing of the batch is added or forwarded."""
        ingestion = self._ingestions.pop(batch_id)
        self._persisting.difference_update(entry.id for entry in ingestion.fresh)
        self._inbox_entries -= ingestion.raws_count
        ingestion.failed(error)
        return self._take()

    # --- receiving entries -------------------------------------------------------------------------

    def _ingest(self, raws: Sequence[bytes], sender_id: str | None, now_ms: int, rng: Random,
                done: Callable[[Ingested, int, Random], None], failed: Callable[[SynapseError], None]) -> None:
        """Verify, persist (a Persist effect), add; then forward what became visible and call `done`."""
        if self._inbox_entries + len(raws) > self.settings.inbox_max:
            self._out.append(count("gossip_requests_refused_total", reason="inbox_full"))
            failed(Unavailable(f"this node is processing {self._inbox_entries} entries already (inbox_max "
                               f"{self.settings.inbox_max})", hint="retry later"))
            return
        self._inbox_entries += len(raws)
        ingestion = Ingestion(sender_id, len(raws), [], Ingested(), done, failed)
        ingestion.fresh = self._admit(raws, sender_id, ingestion.result, now_ms)
        if not ingestion.fresh:
            self._finish_ingestion(ingestion, now_ms, rng)
            return
        batch_id = self._new_id()
        self._ingestions[batch_id] = ingestion
        self._out.append(Persist(batch_id=batch_id, raws=tuple(entry.raw for entry in ingestion.fresh), durable=False))

    def _admit(self, raws: Sequence[bytes], sender_id: str | None, result: Ingested, now_ms: int) -> list[Entry]:
        fresh: list[Entry] = []
        for raw in raws:
            try:
                entry = decode_entry(raw, entry_size_max_bytes=ENTRY_SIZE_MAX_BYTES)
                if sender_id is not None:
                    self._note_holder(entry.id, sender_id)
                if entry.id in self._persisting or self.log.check(entry, now_ms=now_ms) is AddStatus.DUPLICATE:
                    result.duplicate += 1
                    continue
            except EntryRefused as refusal:
                result.refused += 1
                self._out.append(count("entries_refused_total", reason=refusal.reason))
                continue
            self._persisting.add(entry.id)
            fresh.append(entry)
        return fresh

    def _finish_ingestion(self, ingestion: Ingestion, now_ms: int, rng: Random) -> None:
        result = ingestion.result
        for entry in ingestion.fresh:
            self._persisting.discard(entry.id)
            self._expected.pop(entry.id, None)
            try:
                outcome = self.log.add(entry, now_ms=now_ms)
            except EntryRefused as refusal:  # state changed while persisting (e.g. pending_full): on disk, not kept
                result.refused += 1
                self._out.append(count("entries_refused_total", reason=refusal.reason))
                continue
            status = outcome.status
            result.added += status is AddStatus.ADDED
            result.pending += status is AddStatus.PENDING
            result.duplicate += status is AddStatus.DUPLICATE
            result.newly_visible.extend(outcome.newly_visible)
            for _, reason in outcome.refused:
                self._out.append(count("entries_refused_total", reason=reason))
        for status in ("added", "pending", "duplicate"):
            self._out.append(count("gossip_entries_received_total", getattr(result, status), status=status))
        if result.added or result.pending:
            self._pace(PaceEvent.CHANGE)
        if result.newly_visible:
            self._out.append(Visible(entries=tuple(result.newly_visible)))
            self._forward(result.newly_visible, ingestion.sender_id, now_ms, rng)
        self._inbox_entries -= ingestion.raws_count
        ingestion.done(result, now_ms, rng)

    def _note_holder(self, entry_id: str, peer_id: str) -> None:
        holders = self._holders.get(entry_id)
        if holders is None:
            self._holders.put(entry_id, {peer_id})
        else:
            holders.add(peer_id)

    # --- eager push --------------------------------------------------------------------------------

    def _forward(self, entries: list[Entry], sender_id: str | None, now_ms: int, rng: Random) -> None:
        """Queue newly visible entries for the next forward wave (first receipt only). A large burst (a
        node catching up) is not forwarded: the others most likely have it, and anti-entropy covers
        them; nor are bulk kinds (`lazy_kinds`), nor anything past a full queue (counted)."""
        if len(entries) > self.settings.batch_entries_max:
            return
        lazy_kinds = self.settings.lazy_kinds
        dropped = self.waves.add((entry for entry in entries if entry.kind not in lazy_kinds), sender_id)
        if dropped:
            self._out.append(count("gossip_forwards_dropped_total", dropped))
        self._flush_forwards(now_ms, rng)

    def _flush_forwards(self, now_ms: int, rng: Random) -> None:
        """Send the next wave if it may leave: one message per chosen peer, never an entry back to its
        sender or to a peer known to hold it."""
        if not self.waves.may_leave(now_ms):
            return
        waiting = self.waves.leave(now_ms)
        self._out.append(count("gossip_forward_waves_total"))
        self._out.append(count("gossip_forward_wave_entries_total", len(waiting)))
        exclude = peers_holding_all(waiting, lambda entry_id: self._holders.get(entry_id, ()))
        for peer_id in self._choose_peers(self.fanout, exclude=exclude, now_ms=now_ms, rng=rng):
            entries = [entry for entry, sender_id in waiting
                       if peer_id != sender_id and peer_id not in self._holders.get(entry.id, ())]
            if not entries or not self._begin_flow():
                continue
            entries = self._with_lazy_parents(entries, peer_id)
            answered = self.waves.call_sent()
            if sum(len(entry.raw) for entry in entries) <= self.settings.push_inline_bytes_max:
                self._push(peer_id, entries, lambda answered=answered: (answered(), self._end_flow()))
            else:
                self._offer(peer_id, entries, answered)

    def _with_lazy_parents(self, entries: list[Entry], peer_id: str) -> list[Entry]:
        """The wave's entries plus their direct parents of a lazy kind that `peer_id` is not known to
        hold, in causal order. Nobody forwards a lazy entry, so a peer often lacks one when an eager
        child arrives (a validator's EXECUTE_UPGRADE names its own CLOSE): without it the child would
        wait, pending, for a sync with the sender, one more round trip at every hop."""
        lazy_kinds, ids = self.settings.lazy_kinds, {entry.id for entry in entries}
        parents = []
        for entry in entries:
            for parent_id in entry.parents:
                parent = self.log.get(parent_id) if parent_id not in ids else None
                if parent is not None and parent.kind in lazy_kinds and peer_id not in self._holders.get(parent_id, ()):
                    ids.add(parent_id)
                    parents.append(parent)
        return entries if not parents else sorted(entries + parents, key=order_key)

    def _choose_peers(self, count_max: int, *, exclude: set[str], now_ms: int, rng: Random) -> list[str]:
        eligible = [peer.node_id for peer in self.peers.values() if peer.node_id not in exclude and peer.retry_at_ms <= now_ms]
        return rng.sample(eligible, min(count_max, len(eligible)))

    def _offer(self, peer_id: str, entries: list[Entry], answered: Then) -> None:
        """Offer/want/push; `answered` once the peer answered the offer (or the call failed)."""
        def wanted(reply: Want, now_ms: int, rng: Random) -> None:
            answered()
            wanted_ids = set(reply.ids)
            for entry in entries:
                if entry.id not in wanted_ids:
                    self._note_holder(entry.id, peer_id)
            self._push(peer_id, [entry for entry in entries if entry.id in wanted_ids], self._end_flow)

        def failed() -> None:
            answered()
            self._end_flow()
        self._send(peer_id, Offer(sender=self.self_id, ids=tuple(entry.id for entry in entries)), wanted, failed)

    def _push(self, peer_id: str, entries: list[Entry], then: Then) -> None:
        """Push entries in batches, one call after the other; `then` once done or a call failed."""
        size_max_bytes = self.settings.request_body_max_bytes - MESSAGE_ENVELOPE_BYTES
        batches = batches_by_size(entries, count_max=self.settings.batch_entries_max, size_max_bytes=size_max_bytes)
        self._push_batches(peer_id, batches, then)

    def _push_batches(self, peer_id: str, batches: list[list[Entry]], then: Then) -> None:
        if not batches:
            then()
            return
        batch, rest = batches[0], batches[1:]

        def pushed(_: Pushed, now_ms: int, rng: Random) -> None:
            self._out.append(count("gossip_entries_sent_total", len(batch)))
            for entry in batch:
                self._note_holder(entry.id, peer_id)
            self._push_batches(peer_id, rest, then)
        self._send(peer_id, Push(sender=self.self_id, raws=tuple(entry.raw for entry in batch)), pushed, then)

    # --- outbound call results ---------------------------------------------------------------------

    def receive_reply(self, call_id: int, message: Any, now_ms: int, rng: Random) -> list[Effect]:
        """The reply to the Send `call_id` (already decoded as the type its request expects). A reply
        to a call this core no longer waits for (a duplicate, or its round timed out) is ignored."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return []
        self._peer_ok(call.peer_id)
        call.on_reply(message, now_ms, rng)
        self._flush_forwards(now_ms, rng)
        return self._take()

    def call_failed(self, call_id: int, now_ms: int, rng: Random, *, busy: bool = False, dropped: bool = False,
                    error_type: str = "", detail: str = "", path: str = "") -> list[Effect]:
        """The Send `call_id` failed. `busy`: the peer answered 429/503 (alive but loaded: no backoff);
        `dropped`: the transport never sent it (stopped). `error_type`, `detail` and `path` only
        describe the failure in the log."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return []
        if dropped:
            self._out.append(count("gossip_sends_dropped_total"))
        elif busy:
            self._out.append(count("gossip_calls_busy_total"))
        else:
            self._peer_failed(call.peer_id, now_ms, rng, error_type=error_type, detail=detail, path=path)
        call.on_failure()
        self._flush_forwards(now_ms, rng)
        return self._take()

    def _peer_ok(self, peer_id: str) -> None:
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        if not peer.up:
            self._out.append(event("info", "gossip_peer_up", peer=peer_id))
        peer.up, peer.failures, peer.retry_at_ms = True, 0, 0
        self._out.append(Gauge(name="gossip_peers_up", value=self.peers_up()))

    def _peer_failed(self, peer_id: str, now_ms: int, rng: Random, *, error_type: str, detail: str, path: str) -> None:
        """Exponential backoff with jitter; the peer no longer counts in peers_up()."""
        peer = self.peers[peer_id]
        peer.failures += 1
        delay_ms = min(self.settings.backoff_max_ms, self.settings.backoff_base_ms * 2 ** min(peer.failures - 1, 30))
        peer.retry_at_ms = now_ms + int(delay_ms * (0.5 + rng.random() / 2))
        if peer.up or peer.failures == 1:
            self._out.append(event("warning", "gossip_peer_down", peer=peer_id, path=path, error=error_type,
                                   detail=detail[:200], retry_in_ms=delay_ms))
        peer.up = False
        self._out.append(count("gossip_call_failures_total"))
        self._out.append(Gauge(name="gossip_peers_up", value=self.peers_up()))

    # --- anti-entropy ------------------------------------------------------------------------------

    def tick(self, now_ms: int, rng: Random) -> list[Effect]:
        """One anti-entropy period passed: end rounds past their deadline, then start a round with a
        random peer that is not in backoff, unless the skip-a-round rule applies."""
        for round_ in [round_ for round_ in self._rounds.values() if round_.deadline_ms <= now_ms]:
            self._end_round(round_, "timeout")
        released = not_held(self._held_pushes, now_ms, self.settings.report_hold_ms)
        if released:
            self._held_pushes = [entry for entry in self._held_pushes if held_report(entry, now_ms, self.settings.report_hold_ms)]
            for entry in released:
                self._push_own(entry, now_ms, rng)
        self._flush_forwards(now_ms, rng)     # a wave stuck on a silent peer holds the next no longer
        # An entry is on its way to this node (it wanted one within the last period): a round now
        # would only meet it in flight and pay for full digests and a second copy. Skip ONE round;
        # the next runs whatever happens, so steady traffic never starves repair.
        if not self._skipped_round and now_ms - self._last_wanted_ms < self.settings.interval_ms:
            self._skipped_round = True
            self._out.append(count("gossip_rounds_total", result="skipped_in_flight"))
            return self._take()
        self._skipped_round = False
        candidates = [peer for peer in self.peers.values() if peer.retry_at_ms <= now_ms and not peer.syncing]
        # A peer not known to be up (never reached, or failed and now out of backoff) is asked first:
        # left to the random choice, a peer that failed once at start-up stayed "down" for as long as
        # the choice missed it (rounds back off to seconds while quiet: 60 s and more, once in ~30 runs).
        # Backoff still spaces the retries of a peer that stays down.
        unknown = [peer for peer in candidates if not peer.up]
        if candidates:
            self._request_sync(rng.choice(unknown or candidates).node_id, now_ms, rng)
        return self._take()

    def request_sync(self, peer_id: str, now_ms: int, rng: Random) -> list[Effect]:
        """Start an anti-entropy round with one peer now (e.g. after it sent entries with missing
        parents): at most ROUNDS_RUNNING_MAX at once, one per peer, none with a peer in backoff."""
        self._request_sync(peer_id, now_ms, rng)
        return self._take()

    def _request_sync(self, peer_id: str, now_ms: int, rng: Random) -> None:
        peer = self.peers.get(peer_id)
        if (peer is None or peer.syncing or peer.retry_at_ms > now_ms or len(self._rounds) >= ROUNDS_RUNNING_MAX
                or not self._begin_flow()):
            return
        peer.syncing = True
        round_ = Round(peer_id, now_ms + self.settings.call_timeout_ms * (PULL_BATCHES_PER_ROUND_MAX + 3))
        self._rounds[peer_id] = round_
        missing = sorted(self.log.missing_parents())
        want = tuple(rng.sample(missing, min(len(missing), self.settings.want_ids_max)))
        message = Sync(sender=self.self_id, digest_hash=digest_hash_of(self.log.digest()), digest=None, want=want)
        answered = lambda reply, now, rng_: self._round_answered(round_, reply, now, rng_)  # noqa: E731
        self._send(peer_id, message, self._live(round_, answered),
                   self._live(round_, lambda: self._end_round(round_, "failed")))

    @staticmethod
    def _live(round_: Round, step: Callable[..., None]) -> Callable[..., None]:
        """A continuation of `round_` that does nothing once the round is over (timed out)."""
        def guarded(*arguments: Any) -> None:
            if round_.phase is not RoundPhase.OVER:
                step(*arguments)
        return guarded

    _enter = staticmethod(enter)

    def _end_round(self, round_: Round, result: str) -> None:
        if round_.phase is RoundPhase.OVER:
            return
        self._enter(round_, RoundPhase.OVER)
        del self._rounds[round_.peer_id]
        self.peers[round_.peer_id].syncing = False
        self._flows -= 1
        if result in ("in_sync", "pulled", "pushed"):
            self.heard_digest = True  # a peer's digest was compared with ours (its claims on our entries noted)
        self._pace(PaceEvent.QUIET_ROUND if result == "in_sync" else PaceEvent.CHANGE if result in ("pulled", "pushed")
                   else PaceEvent.NO_NEWS)
        self._out.append(count("gossip_rounds_total", result=result))

    def _round_failed(self, round_: Round, error: SynapseError) -> None:
        """Our side failed (the disk, a full inbox): the round ends; the next one retries."""
        if round_.phase is not RoundPhase.OVER:
            self._out.append(event("warning", "gossip_round_failed", peer=round_.peer_id, error=error.one_line()))
            self._end_round(round_, "error")

    def _round_answered(self, round_: Round, reply: Synced, now_ms: int, rng: Random) -> None:
        """Exchange (1) answered: take the entries it carried, then compare digests."""
        if not reply.raws:
            self._round_compare(round_, reply, now_ms, rng)
            return
        self._enter(round_, RoundPhase.TAKING)
        self._ingest(reply.raws, round_.peer_id, now_ms, rng,
                     done=self._live(round_, lambda _, now, rng_: self._round_compare(round_, reply, now, rng_)),
                     failed=lambda error: self._round_failed(round_, error))

    def _round_compare(self, round_: Round, reply: Synced, now_ms: int, rng: Random) -> None:
        if reply.digest is None:  # our digests were equal: nothing of ours is missing
            self._end_round(round_, "in_sync" if not reply.raws else "pulled")
            return
        self._enter(round_, RoundPhase.PUSHING)
        self._pace(PaceEvent.CHANGE)  # the peer's digest differs from ours
        round_.theirs = parse_digest(reply.digest)
        self._note_digest(round_.theirs)
        lacking = not_held(self.log.entries_missing_from(reply.digest, limit=self.settings.batch_entries_max), now_ms,
                           self.settings.report_hold_ms)
        round_.lacking = bool(lacking)
        self._push(round_.peer_id, lacking, self._live(round_, lambda: self._round_pushed(round_)))

    def _round_pushed(self, round_: Round) -> None:
        """Exchange (2) done: pull if the peer's digest shows entries this node lacks."""
        if remote_may_have_more(self.log.digest(), round_.theirs):
            self._round_pull(round_)
        else:
            self._end_round(round_, "pushed" if round_.lacking else "in_sync")

    def _round_pull(self, round_: Round) -> None:
        """Exchange (3): send my digest and pull a bounded batch; repeat while there is more."""
        self._enter(round_, RoundPhase.PULLING)
        round_.pulls_left -= 1
        digest = self.log.digest()
        message = Sync(sender=self.self_id, digest_hash=digest_hash_of(digest), digest=digest, want=())

        def pulled(reply: Synced, now_ms: int, rng: Random) -> None:
            if not reply.raws:
                self._end_round(round_, "pulled")
                return

            def ingested(result: Ingested, now: int, rng_: Random) -> None:
                if not reply.more or result.added + result.pending == 0 or round_.pulls_left <= 0:
                    self._end_round(round_, "pulled")
                else:
                    self._round_pull(round_)
            self._ingest(reply.raws, round_.peer_id, now_ms, rng, done=self._live(round_, ingested),
                         failed=lambda error: self._round_failed(round_, error))
        self._send(round_.peer_id, message, self._live(round_, pulled),
                   self._live(round_, lambda: self._end_round(round_, "pulled")))

    # --- inbound requests --------------------------------------------------------------------------

    def receive(self, source: str, message: Any, now_ms: int, rng: Random, *, request_id: int) -> list[Effect]:
        """An inbound request (Offer, Push or Sync) from `source` (the sender's node id, or "" if
        unknown), answered later or at once by Reply / Refuse with `request_id`."""
        try:
            if type(message) is Offer:
                self._out.append(Reply(request_id=request_id, message=self._answer_offer(source, message, now_ms)))
            elif type(message) is Push:
                self._answer_push(source, message, now_ms, rng, request_id)
            elif type(message) is Sync:
                self._out.append(Reply(request_id=request_id, message=self._answer_sync(message, now_ms)))
            else:
                raise BadRequest(f"a {type(message).__name__} is a reply, not a request",
                                 hint="send offer, push or sync messages to a node's /gossip routes")
        except BadRequest as error:
            self._out.append(Refuse(request_id=request_id, error=error, reason="malformed"))
        return self._take()

    def _answer_offer(self, source: str, offer: Offer, now_ms: int) -> Want:
        if len(offer.ids) > self.settings.batch_entries_max:
            raise BadRequest(f"an offer names at most {self.settings.batch_entries_max} entries, got {len(offer.ids)}",
                             hint="split offers into batches of batch_entries_max")
        known_sender = source in self.peers
        wanted = []
        for entry_id in dict.fromkeys(offer.ids):
            if known_sender:
                self._note_holder(entry_id, source)
            if entry_id in self.log or entry_id in self._persisting or self._expected.get(entry_id, 0) > now_ms:
                continue
            wanted.append(entry_id)
            self._expected.put(entry_id, now_ms + self.settings.call_timeout_ms)
            self._last_wanted_ms = now_ms
        return Want(ids=tuple(wanted))

    def _answer_push(self, source: str, push: Push, now_ms: int, rng: Random, request_id: int) -> None:
        if len(push.raws) > self.settings.batch_entries_max:
            raise BadRequest(f"a push carries at most {self.settings.batch_entries_max} entries, got {len(push.raws)}",
                             hint="split pushes into batches of batch_entries_max")
        sender_id = source if source in self.peers else None

        def done(result: Ingested, now: int, rng_: Random) -> None:
            if result.pending and sender_id is not None:
                self._request_sync(sender_id, now, rng_)  # pull the missing parents from the one who has the children
            pushed = Pushed(added=result.added + result.pending, duplicate=result.duplicate, refused=result.refused)
            self._out.append(Reply(request_id=request_id, message=pushed))
        self._ingest(push.raws, sender_id, now_ms, rng, done,
                     failed=lambda error: self._out.append(Refuse(request_id=request_id, error=error, reason="unavailable")))

    def _answer_sync(self, sync: Sync, now_ms: int) -> Synced:
        settings = self.settings
        if len(sync.want) > max(settings.want_ids_max, settings.batch_entries_max):
            raise BadRequest(f"a sync asks for at most {settings.want_ids_max} ids, got {len(sync.want)}",
                             hint="ask for missing parents in batches of want_ids_max")
        digest = self.log.digest()
        entries = [entry for entry in map(self.log.get, dict.fromkeys(sync.want)) if entry is not None]
        more = False
        if sync.digest is not None:
            self._note_digest(parse_digest(sync.digest))
            missing = self.log.entries_missing_from(sync.digest, limit=settings.batch_entries_max + 1)
            more = len(missing) > settings.batch_entries_max
            entries.extend(not_held(missing[: settings.batch_entries_max], now_ms, settings.report_hold_ms))
        size_max_bytes = settings.request_body_max_bytes - MESSAGE_ENVELOPE_BYTES - len(pack(digest))
        batches = batches_by_size(entries, count_max=settings.batch_entries_max, size_max_bytes=size_max_bytes)
        chosen = batches[0] if batches else []
        more = more or len(batches) > 1
        self._out.append(count("gossip_entries_sent_total", len(chosen)))
        differs = sync.digest is not None or sync.digest_hash != digest_hash_of(digest)
        if differs:
            self._pace(PaceEvent.CHANGE)  # a peer's digest differs from ours: one of us lacks something
        send_digest = sync.digest is None and differs
        return Synced(digest=digest if send_digest else None, raws=tuple(entry.raw for entry in chosen), more=more)
