"""The validators' Raft cluster (PySyncObj) around the pure ratification machine.

Why it works as it does (see NOTES-dependencies.md for the measurements behind each choice):
  * Real Raft, own TCP port per validator (raft_address from genesis), bound to the node's OWN address,
    never 0.0.0.0. PySyncObj's own transport unpickles what peers send; ours (node/raft_transport.py)
    carries msgpack only, authenticates each peer with its own ed25519 node key (the network's shared
    Raft password stays as an outer layer of the session keys), caps every frame before buffering,
    bounds connections in handshake, and rebinds a listener that failed. PySyncObj's remaining pickles
    (commands in the log, journal meta) are read by an unpickler that refuses every global, and the
    full dump is our own plain format: nothing that comes from Raft can deserialize into code.
  * The replicated state lives in a SyncObjConsumer whose @replicated methods only call the pure
    RatificationMachine (node/core/ratification.py) under a lock: deterministic, plain-data arguments,
    never raising. Bump `ver=` on a replicated method when its meaning changes.
  * Persistence: journalFile + fullDumpFile in the node's data dir. The dump holds the machine's plain
    data (to_plain/from_plain), not pickled objects of ours. On restart PySyncObj re-applies the
    journal, so events fire again for old sequences: consumers of `on_change` must be idempotent
    (publishing an EXECUTE_UPGRADE twice is harmless: executors dedupe by sequence).
  * Threads: PySyncObj runs its own tick thread. Nothing here blocks the event loop: replicated calls
    are made with a callback (never sync=True), and results come back ONLY through
    loop.call_soon_threadsafe. Every await has a timeout. A call that failed because there was no
    leader, the leader changed or the entry was discarded is retried with backoff until its deadline:
    every command is idempotent, so a retry after an ambiguous failure is always safe.
  * Nothing is decided from "am I leader" (a cut-off leader may think it still leads for
    leaderFallbackTimeout): decisions happen inside committed replicated calls. has_leader() and
    leader() are for health reports only.
  * Failover (issue 11): the tick wakes when the election deadline is due (not at the next 50 ms poll),
    and a follower whose AUTHENTICATED session with its leader ends (a killed process closes its
    sockets) stands for election within 0.15-0.3 s instead of 0.3-0.6 s after the last heartbeat; a
    call failed by a leader change is resubmitted at once. Why, and the limits: node/core/raft_timing.py.
  * The SyncObj must be created on a long-lived thread (its tick thread stops when the creating thread
    dies): start() creates it on the event loop's thread.

How a validator node drives ratification (runtime wiring; every step is idempotent, so run it on
each on_change event, on each newly visible log entry, and on a slow timer as a safety net):

    closable = governance.closing_candidates(state=state, now_ms=now_ms)     # {proposal_id: vote ids}
    approved = {v.proposal_id: (v.action, v.package_hash, v.version, v.votes_digest)
                for v in governance.needing_ratification(state=state, now_ms=now_ms)}
    todo = validator_todo(raft.snapshot(), validator_id=me, closable=closable, attested=...,
                          approved=approved, published_sequences=governance.certified_sequences())
    for proposal_id in todo.to_close:    await raft.close(proposal_id=..., vote_ids=closable[proposal_id])
    for record in todo.to_attest:        append a CLOSE entry with close_body(record)
    for proposal_id in todo.to_ratify:   await raft.ratify(proposal_id=..., action=..., package_hash=..., version=...,
                                                           votes_digest=...)
    for record in todo.to_certify:       await raft.certify(proposal_id=record.proposal_id, sequence=record.sequence, ...)
    for record in todo.to_publish:       append an EXECUTE_UPGRADE entry with
                                         execute_upgrade_body(record, package_url=..., package_size=...) from the proposal
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.syncobj import _RAFT_STATE, SyncObjException

from node.logging_setup import log_event
from node.core.certificates import Verify, certificate_statement, ratify_statement
from node.core.closing import close_statement, pack_vote_ids
from node.core.raft_timing import LeaderLostWindow, leader_lost_deadline_s, retry_wait_s, tick_wait_s
from node.core.ratification import Event, RatificationLimits, RatificationMachine, RatificationOutcome, RatificationView
from node.errors import ConfigError, Unavailable
from node.raft_plain_data import PlainDump, RaftDataRefused, install_plain_data_codecs
from node.raft_transport import RaftTransportLimits, SecureTransport, TransportIdentity

logger = logging.getLogger(__name__)

JOURNAL_FILE_NAME = "raft.journal"
DUMP_FILE_NAME = "raft.dump"
_RETRYABLE = {FAIL_REASON.QUEUE_FULL, FAIL_REASON.MISSING_LEADER, FAIL_REASON.DISCARDED, FAIL_REASON.NOT_LEADER,
              FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME}
_FAIL_NAMES = {value: name for name, value in vars(FAIL_REASON).items() if name.isupper()}


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftTiming:
    """PySyncObj timings that worked on a 2-core machine (NOTES-dependencies.md), and our own limits."""
    raft_min_timeout_s: float = 0.3
    raft_max_timeout_s: float = 0.6
    append_entries_period_s: float = 0.05
    connection_timeout_s: float = 1.5
    connection_retry_time_s: float = 0.5
    leader_fallback_timeout_s: float = 2.5
    # After the authenticated connection to the leader ends (its process died: kill -9 included), stand
    # for election within this window instead of the whole election timeout (node/core/raft_timing.py).
    leader_lost_timeout_min_s: float = 0.15
    leader_lost_timeout_max_s: float = 0.3
    commands_queue_max: int = 1_000
    bind_retries_max: int = 5
    bind_retry_time_s: float = 0.2
    log_compaction_min_entries: int = 5_000
    log_compaction_min_time_s: float = 300.0
    call_attempt_timeout_s: float = 2.0        # one replicated call; the caller's timeout bounds the retries
    retry_delay_first_s: float = 0.05
    retry_delay_max_s: float = 1.0
    stop_timeout_s: float = 10.0
    # PySyncObj caches a peer's resolved address for 600 s (30 s for a failure) by default: with DNS names
    # (the kubernetes provider) a validator restarted with a new pod IP stayed unreachable for 10 minutes.
    dns_cache_s: float = 5.0
    dns_fail_cache_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.raft_min_timeout_s < self.raft_max_timeout_s:
            raise ConfigError("raft timing: 0 < raft_min_timeout_s < raft_max_timeout_s is required")
        if not 0 < self.append_entries_period_s * 3 < self.raft_min_timeout_s:
            raise ConfigError("raft timing: append_entries_period_s must be below a third of raft_min_timeout_s")
        if self.leader_fallback_timeout_s <= self.raft_max_timeout_s:
            raise ConfigError("raft timing: leader_fallback_timeout_s must exceed raft_max_timeout_s")
        if self.connection_timeout_s < self.raft_max_timeout_s:
            raise ConfigError("raft timing: connection_timeout_s must be at least raft_max_timeout_s")
        if self.bind_retries_max < 1 or self.commands_queue_max < 1 or self.log_compaction_min_entries < 2:
            raise ConfigError("raft limits: bind_retries_max and commands_queue_max >= 1, log_compaction_min_entries >= 2")
        self.leader_lost_window()

    @classmethod
    def for_network(cls, *, heartbeat_ms: int, election_timeout_min_ms: int, election_timeout_max_ms: int) -> "RaftTiming":
        """The timing for a network whose validators are `heartbeat_ms` / `election_timeout_*_ms` apart in
        the node's limits (raft_heartbeat_ms, raft_election_timeout_min_ms / _max_ms); the defaults give
        RaftTiming(). What follows from them: a follower that lost its leader's connection stands between
        half the election timeout's minimum (at least 3 heartbeats) and that minimum, which leaves a live
        leader time to redial even across a slow link; a connection still in handshake, a leader that
        hears no majority, and one attempt of a replicated call wait at least the longest election
        timeout (on a WAN a commit takes several slowed round trips, and an attempt cut at 2 s there
        was resubmitted while the first one committed)."""
        heartbeat_s, minimum_s, maximum_s = heartbeat_ms / 1000, election_timeout_min_ms / 1000, election_timeout_max_ms / 1000
        lan = cls()
        return cls(raft_min_timeout_s=minimum_s, raft_max_timeout_s=maximum_s, append_entries_period_s=heartbeat_s,
                   leader_lost_timeout_min_s=max(3 * heartbeat_ms, election_timeout_min_ms // 2) / 1000,
                   leader_lost_timeout_max_s=minimum_s,
                   connection_timeout_s=max(lan.connection_timeout_s, maximum_s),
                   leader_fallback_timeout_s=max(lan.leader_fallback_timeout_s, 2 * maximum_s),
                   call_attempt_timeout_s=max(lan.call_attempt_timeout_s, maximum_s))

    def leader_lost_window(self) -> LeaderLostWindow:
        return LeaderLostWindow.checked(timeout_min_s=self.leader_lost_timeout_min_s,
                                        timeout_max_s=self.leader_lost_timeout_max_s,
                                        heartbeat_period_s=self.append_entries_period_s,
                                        election_timeout_min_s=self.raft_min_timeout_s)


def _check_address(name: str, address: object) -> str:
    if not isinstance(address, str) or address.count(":") != 1:
        raise ConfigError(f"{name} {address!r} must be 'host:port' (IPv4 or a host name)")
    host, port = address.split(":")
    if host in ("", "0.0.0.0", "*") or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{name} {address!r} must name this node's own host and a port 1..65535",
                          hint="never 0.0.0.0: the Raft port belongs to this node's own address")
    return address


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidatorRaftConfig:
    self_address: str                      # this validator's raft_address from genesis, e.g. "127.12.7.1:9000"
    partner_addresses: tuple[str, ...]     # the other validators' raft_address
    data_dir: Path
    password: str                          # the validators' shared Raft secret
    network_id: str
    validator_id: str                      # this node's id; must be in `validators`
    validators: Mapping[str, bytes]        # node_id -> raw ed25519 public key, the whole validator set
    validator_addresses: Mapping[str, str]  # node_id -> raft_address (genesis): whom each address must prove to be
    timing: RaftTiming = field(default_factory=RaftTiming)
    limits: RatificationLimits = field(default_factory=RatificationLimits)
    transport_limits: RaftTransportLimits = field(default_factory=RaftTransportLimits)
    dump_max_bytes: int = 512 << 20
    # Bind OUTGOING Raft connections to this node's own host, so every packet carries the node's address
    # and network faults (cluster/faults.py) can cut links by address. Done per connection by our
    # transport; in-process tests leave it off.
    bind_outgoing: bool = False

    def __post_init__(self) -> None:
        _check_address("raft self_address", self.self_address)
        for partner in self.partner_addresses:
            _check_address("raft partner address", partner)
        if self.self_address in self.partner_addresses or len(set(self.partner_addresses)) != len(self.partner_addresses):
            raise ConfigError("raft partner addresses must be distinct and must not include this node's own address")
        if len(self.partner_addresses) + 1 != len(self.validators):
            raise ConfigError(f"the Raft cluster has {len(self.partner_addresses) + 1} addresses but the validator set "
                              f"has {len(self.validators)} members", hint="every validator needs exactly one raft_address")
        if self.validator_id not in self.validators:
            raise ConfigError(f"node {self.validator_id} is not in the validator set", hint="only validators run Raft")
        if set(self.validator_addresses) != set(self.validators) or \
                self.validator_addresses[self.validator_id] != self.self_address or \
                set(self.validator_addresses.values()) != {self.self_address, *self.partner_addresses}:
            raise ConfigError("raft validator_addresses must map every validator's node id to its raft_address, "
                              "this node's to self_address", hint="build them from genesis (member.raft_address)")
        if not isinstance(self.password, str) or len(self.password) < 16:
            raise ConfigError("the Raft password must be a string of at least 16 characters",
                              hint="use the raft_secret file created with genesis")


class _ReplicatedRatification(SyncObjConsumer):
    """The replicated state machine. Replicated methods run on PySyncObj's tick thread, on every
    validator, in log order; they only call the pure machine."""

    def __init__(self, make_machine: Callable[[object], RatificationMachine],
                 on_events: Callable[[tuple[Event, ...]], None]) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._make_machine = make_machine
        self._machine = make_machine(None)
        self._on_events = on_events

    @replicated
    def close(self, proposal_id, vote_ids, validator_id, signature):
        with self._lock:
            outcome = self._machine.close(proposal_id=proposal_id, vote_ids=vote_ids, validator_id=validator_id,
                                          signature=signature)
        self._publish(outcome)
        return outcome

    @replicated
    def ratify(self, proposal_id, action, package_hash, version, votes_digest, validator_id, signature):
        with self._lock:
            outcome = self._machine.ratify(proposal_id=proposal_id, action=action, package_hash=package_hash,
                                           version=version, votes_digest=votes_digest, validator_id=validator_id,
                                           signature=signature)
        self._publish(outcome)
        return outcome

    @replicated
    def certify(self, proposal_id, sequence, validator_id, signature):
        with self._lock:
            outcome = self._machine.certify(proposal_id=proposal_id, sequence=sequence, validator_id=validator_id,
                                            signature=signature)
        self._publish(outcome)
        return outcome

    def _publish(self, outcome: RatificationOutcome) -> None:
        if outcome.events:
            self._on_events(outcome.events)

    def view(self) -> RatificationView:
        with self._lock:
            return self._machine.view()

    def _serialize(self) -> dict:
        with self._lock:
            return self._machine.to_plain()

    def _deserialize(self, data: object) -> None:
        machine = self._make_machine(data)
        with self._lock:
            self._machine = machine


class _PlainDataSyncObj(SyncObj):
    """SyncObj whose command apply turns a refused (non-plain-data) log entry into a no-op, logged with
    its index: every honest validator refuses the same bytes, so they stay identical, and the entry never
    runs. (PySyncObj would otherwise raise on every tick and stop applying the log.)

    Its tick also wakes when the election deadline (or, leading, the next heartbeat) is due instead of
    at the next 50 ms poll timeout, and a follower whose authenticated session with its leader ended
    stands for election sooner: node/core/raft_timing.py says why (failover after kill -9)."""

    def __init__(self, *args, leader_lost_window: LeaderLostWindow, rng: random.Random, **kwargs) -> None:
        # Set before SyncObj.__init__, which starts the tick thread.
        self._leader_lost_window = leader_lost_window
        self._random = rng
        self.leader_sessions_lost = 0          # elections brought forward: for status() and the tests
        super().__init__(*args, **kwargs)

    def _onTick(self, timeToWait=0.0):  # noqa: N802, N803 - PySyncObj's names
        if timeToWait > 0:
            leading = self._SyncObj__raftState == _RAFT_STATE.LEADER
            due_s = self._SyncObj__newAppendEntriesTime if leading else self._SyncObj__raftElectionDeadline
            timeToWait = tick_wait_s(period_s=timeToWait, now_s=monotonic_time(), due_s=due_s)
        SyncObj._onTick(self, timeToWait)

    def authenticated_peer_lost(self, node) -> None:
        """SecureTransport, on the tick thread: the authenticated session with partner `node` ended."""
        if self._SyncObj__raftState != _RAFT_STATE.FOLLOWER or self._SyncObj__raftLeader != node:
            return
        deadline_s = leader_lost_deadline_s(window=self._leader_lost_window, now_s=monotonic_time(),
                                            deadline_s=self._SyncObj__raftElectionDeadline,
                                            random_fraction=self._random.random())
        self._SyncObj__raftElectionDeadline = deadline_s
        self.leader_sessions_lost += 1
        logger.info("raft: the connection to the leader %s ended; standing for election in %.0f ms unless it "
                    "comes back", getattr(node, "address", node), (deadline_s - monotonic_time()) * 1000)

    def _SyncObj__doApplyCommand(self, command):  # noqa: N802 - overrides SyncObj's private apply
        try:
            return SyncObj._SyncObj__doApplyCommand(self, command)
        except RaftDataRefused as refused:
            logger.error("raft log entry refused and skipped (not plain data, nothing executed): %s; "
                         "the leader that appended it is %s", refused, self._getLeader())
            return None


class _CallFailed(Exception):
    def __init__(self, reason: int) -> None:
        super().__init__(_FAIL_NAMES.get(reason, str(reason)))
        self.reason = reason


class ValidatorRaft:
    """One validator's membership in the Raft cluster. Use from the event loop only:

        raft = ValidatorRaft(config, sign=identity.sign, verify=verify_signature, on_change=handle_events)
        await raft.start()
        outcome = await raft.ratify(proposal_id=..., action=..., package_hash=..., version=...)
        ...
        await raft.stop()

    `on_change(events)` is called on the event loop with SequenceAssigned / CertificateCompleted events
    (also for old events while the journal is re-applied after a restart: handle them idempotently).
    """

    def __init__(self, config: ValidatorRaftConfig, *, sign: Callable[[bytes], bytes], verify: Verify,
                 on_change: Callable[[tuple[Event, ...]], None] | None = None) -> None:
        self._config = config
        self._sign = sign
        self._verify = verify
        self._on_change = on_change
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: SyncObj | None = None
        self._replicated: _ReplicatedRatification | None = None
        self._pending: set[asyncio.Future] = set()
        self._transport: SecureTransport | None = None

    @property
    def config(self) -> ValidatorRaftConfig:
        return self._config

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, *, timeout_s: float = 10.0) -> None:
        """Open the journal and dump, bind the Raft port and join the cluster. Raises ConfigError when
        the address cannot be bound. Returns before a leader exists: calls wait for one (bounded)."""
        assert self._sync is None, "start() twice"
        self._loop = asyncio.get_running_loop()
        _check_bindable(self._config.self_address)
        self._config.data_dir.mkdir(parents=True, exist_ok=True)
        self._replicated = _ReplicatedRatification(self._make_machine, self._events_from_tick_thread)
        install_plain_data_codecs()
        # Created on the loop's thread: PySyncObj's tick thread stops when its creating thread ends.
        self._sync = _PlainDataSyncObj(self._config.self_address, list(self._config.partner_addresses),
                                       conf=self._conf(), consumers=[self._replicated],
                                       leader_lost_window=self._config.timing.leader_lost_window(),
                                       rng=random.Random(),
                                       transportClass=SecureTransport.factory(self._transport_identity(),
                                                                              self._config.transport_limits,
                                                                              self._set_transport))
        try:
            await asyncio.wait_for(self._loop.run_in_executor(None, self._sync.waitBinded), timeout_s)
        except (SyncObjException, asyncio.TimeoutError):
            await self.stop()
            raise ConfigError(f"cannot bind the Raft address {self._config.self_address}: it is in use or not an "
                              "address of this host", hint="check raft.address in the config and that no other "
                              "process uses that port") from None

    def _transport_identity(self) -> TransportIdentity:
        config = self._config
        return TransportIdentity(network_id=config.network_id, node_id=config.validator_id, address=config.self_address,
                                 sign=self._sign, verify=self._verify, validator_keys=dict(config.validators),
                                 validator_addresses=dict(config.validator_addresses), password=config.password,
                                 source_host=config.self_address.rsplit(":", 1)[0] if config.bind_outgoing else None)

    def _set_transport(self, transport: SecureTransport) -> None:
        self._transport = transport

    def _conf(self) -> SyncObjConf:
        timing, data_dir = self._config.timing, self._config.data_dir
        replicated_state = self._replicated
        dump = PlainDump(state_to_plain=replicated_state._serialize, state_from_plain=replicated_state._deserialize,
                         dump_max_bytes=self._config.dump_max_bytes)
        batch_bytes = self._config.transport_limits.pysyncobj_batch_max_bytes
        # No `password`: it would switch on PySyncObj's own pickled handshake; the password is used by
        # our transport instead (an outer layer of the session keys).
        return SyncObjConf(
            bindAddress=self._config.self_address, serializer=dump.serialize, deserializer=dump.deserialize,
            appendEntriesBatchSizeBytes=batch_bytes, logCompactionBatchSize=batch_bytes,
            journalFile=str(data_dir / JOURNAL_FILE_NAME), fullDumpFile=str(data_dir / DUMP_FILE_NAME),
            appendEntriesUseBatch=False, useFork=False, dynamicMembershipChange=False,
            raftMinTimeout=timing.raft_min_timeout_s, raftMaxTimeout=timing.raft_max_timeout_s,
            appendEntriesPeriod=timing.append_entries_period_s, connectionTimeout=timing.connection_timeout_s,
            connectionRetryTime=timing.connection_retry_time_s,
            dnsCacheTime=timing.dns_cache_s, dnsFailCacheTime=timing.dns_fail_cache_s,
            leaderFallbackTimeout=timing.leader_fallback_timeout_s, commandsQueueSize=timing.commands_queue_max,
            maxBindRetries=timing.bind_retries_max, bindRetryTime=timing.bind_retry_time_s,
            logCompactionMinEntries=timing.log_compaction_min_entries,
            logCompactionMinTime=timing.log_compaction_min_time_s)

    async def stop(self) -> None:
        """Leave the cluster: fail waiting calls (indefinite: they may still commit), stop the tick
        thread (which closes the journal), and wait for it, bounded."""
        sync, self._sync = self._sync, None
        for future in list(self._pending):
            if not future.done():
                future.set_exception(Unavailable("the validator's Raft member stopped before the call completed"))
        if sync is None:
            return
        sync.destroy()
        deadline = asyncio.get_running_loop().time() + self._config.timing.stop_timeout_s
        while sync.tick_thread_alive():
            if asyncio.get_running_loop().time() > deadline:
                logger.error("raft tick thread did not stop within %.1f s", self._config.timing.stop_timeout_s)
                return
            await asyncio.sleep(0.02)

    def _make_machine(self, data: object) -> RatificationMachine:
        arguments = dict(network_id=self._config.network_id, validators=self._config.validators, verify=self._verify,
                         limits=self._config.limits)
        if data is None:
            return RatificationMachine(**arguments)
        return RatificationMachine.from_plain(data, **arguments)

    # --- replicated calls ---------------------------------------------------------------------

    async def close(self, *, proposal_id: str, vote_ids: tuple[str, ...], timeout_s: float = 10.0) -> RatificationOutcome:
        """Submit this validator's signed close: the votes it received for the proposal (entry ids).
        Returns the committed outcome ("voting_closed" when this close fixed the counted votes)."""
        packed = pack_vote_ids(vote_ids)
        statement = close_statement(self._config.network_id, proposal_id, packed, self._config.validator_id)
        arguments = (proposal_id, packed, self._config.validator_id, self._sign(statement))
        return await self._call("close", arguments, timeout_s)

    async def ratify(self, *, proposal_id: str, action: str, package_hash: str | None, version: str,
                     votes_digest: str, timeout_s: float = 10.0) -> RatificationOutcome:
        """Submit this validator's signed ratification of the proposal as closed with the counted votes
        `votes_digest`; returns the committed outcome (which may be a refusal, e.g. "wrong_votes").
        Raises Unavailable (indefinite) on timeout."""
        statement = ratify_statement(self._config.network_id, proposal_id, action, package_hash, version,
                                     votes_digest, self._config.validator_id)
        arguments = (proposal_id, action, package_hash, version, votes_digest, self._config.validator_id,
                     self._sign(statement))
        return await self._call("ratify", arguments, timeout_s)

    async def certify(self, *, proposal_id: str, sequence: int, action: str, package_hash: str | None, version: str,
                      votes_digest: str, timeout_s: float = 10.0) -> RatificationOutcome:
        """Sign the certificate statement of an assigned sequence and submit it. The caller passes the
        tuple IT approves; the machine refuses the signature if the assigned tuple differs."""
        statement = certificate_statement(self._config.network_id, proposal_id, action, package_hash, version,
                                          votes_digest, sequence)
        arguments = (proposal_id, sequence, self._config.validator_id, self._sign(statement))
        return await self._call("certify", arguments, timeout_s)

    async def _call(self, method: str, arguments: tuple, timeout_s: float) -> RatificationOutcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay_s, last_failure = self._config.timing.retry_delay_first_s, "no attempt"
        while True:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise Unavailable(f"raft {method} of {arguments[0]!r} did not commit within {timeout_s:.1f} s "
                                  f"(last failure: {last_failure})",
                                  hint="a majority of validators must be up and connected; the call is safe to retry")
            attempt_started = loop.time()
            try:
                return await self._call_once(method, arguments,
                                             min(remaining_s, self._config.timing.call_attempt_timeout_s))
            except _CallFailed as failure:
                if failure.reason not in _RETRYABLE:
                    raise Unavailable(f"raft {method} of {arguments[0]!r} was refused: {failure}") from None
                last_failure, leader_changed = str(failure), failure.reason == FAIL_REASON.LEADER_CHANGED
            except asyncio.TimeoutError:
                last_failure, leader_changed = "attempt timed out", False
            wait_s = retry_wait_s(leader_changed=leader_changed, backoff_s=delay_s)
            # Why a ratification is slow: each retried attempt, its failure and how long it took.
            log_event(logger, logging.INFO, "raft_call_retry", method=method, proposal_id=arguments[0], failure=last_failure,
                      attempt_ms=round((loop.time() - attempt_started) * 1000), retry_in_ms=round(wait_s * 1000))
            await asyncio.sleep(max(0.0, min(wait_s, deadline - loop.time())))
            delay_s = min(delay_s * 2, self._config.timing.retry_delay_max_s)

    async def _call_once(self, method: str, arguments: tuple, timeout_s: float) -> RatificationOutcome:
        if self._sync is None or self._replicated is None or self._loop is None:
            raise Unavailable("the validator's Raft member is not running", hint="start it first")
        loop, future = self._loop, self._loop.create_future()
        self._pending.add(future)

        def on_result(result: object, error: int) -> None:       # on PySyncObj's tick thread
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:                                   # the loop is closed: nobody waits any more
                pass

        try:
            getattr(self._replicated, method)(*arguments, callback=on_result)
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.discard(future)

    # --- events and reads ---------------------------------------------------------------------

    def _events_from_tick_thread(self, events: tuple[Event, ...]) -> None:
        loop = self._loop
        if loop is None or self._on_change is None:
            return
        try:
            loop.call_soon_threadsafe(self._deliver, events)
        except RuntimeError:
            pass

    def _deliver(self, events: tuple[Event, ...]) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(events)
        except Exception:  # noqa: BLE001 - a faulty consumer must not stop later events
            logger.exception("raft on_change callback failed")

    def snapshot(self) -> RatificationView:
        """An immutable, consistent copy of the replicated ratification state (safe from any thread)."""
        if self._replicated is None:
            raise Unavailable("the validator's Raft member is not running", hint="start it first")
        return self._replicated.view()

    def compact(self) -> None:
        """Ask PySyncObj to write the full dump (and truncate the journal) on its next tick, e.g.
        before a backup. Without this it happens every log_compaction_min_* entries or seconds."""
        if self._sync is None:
            raise Unavailable("the validator's Raft member is not running", hint="start it first")
        self._sync.forceLogCompaction()

    def is_leader(self) -> bool:
        """Whether this member leads Raft now, as far as it knows (two may both think so for a moment)."""
        sync = self._sync
        return sync is not None and sync._isLeader()

    def has_leader(self) -> bool:
        return self.leader() is not None

    def leader(self) -> str | None:
        """The last known leader's address (health only: may be stale, two nodes may both lead)."""
        sync = self._sync
        node = sync._getLeader() if sync is not None else None
        return None if node is None else getattr(node, "address", str(node))

    def status(self) -> dict:
        """Figures for /health and /metrics (read without locks: each value may be a moment old)."""
        sync = self._sync
        if sync is None:
            return {"running": False}
        partners = [node for node in sync.otherNodes]
        return {"running": True, "self": self._config.self_address, "leader": self.leader(),
                "has_quorum": sync.hasQuorum, "term": sync.raftCurrentTerm, "commit_index": sync.raftCommitIndex,
                "last_applied": sync.raftLastApplied, "leader_sessions_lost": sync.leader_sessions_lost,
                "partners_connected": sum(1 for node in partners if sync.isNodeConnected(node)),
                "partners": len(partners),
                "transport": self._transport.status() if self._transport is not None else None}


def _check_bindable(address: str) -> None:
    """Bind-test the Raft address first: PySyncObj retries a failed bind quietly (and leaks a socket per
    try), so an address in use would otherwise surface late and vaguely."""
    host, port = address.split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as PySyncObj does
        try:
            probe.bind((host, int(port)))
        except OSError as error:
            raise ConfigError(f"cannot bind the Raft address {address}: {error.strerror}",
                              hint="check raft.address in the config: it must be this host's own address, "
                                   "and no other process may use that port") from None


def _settle(future: asyncio.Future, result: object, error: int) -> None:
    if future.done():
        return
    if error == FAIL_REASON.SUCCESS:
        future.set_result(result)
    else:
        future.set_exception(_CallFailed(error))
