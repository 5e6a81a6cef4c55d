"""Gossip component tests: several Gossip instances in one process, each behind its own aiohttp server
on 127.0.0.1 (a port reserved by binding port 0), with real CrdtLogs and real LogFiles in tmp_path.

What a user checks: entries written on different nodes end up on every node in the same order, on disk
before anyone sees them; a node that was down or restarted catches up with nothing lost; hostile
bodies (forged, unknown author, oversized, malformed, garbage digest, floods, replays) are refused and
counted while the honest nodes stay healthy and converge. Randomness is seeded; the seed is printed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import aiohttp
import msgpack
import pytest
from aiohttp import web

from node.core.entries import Entry
from node.core.hlc import Hlc
from node.errors import BadRequest, ConfigError, Conflict, EntryRefused, Unavailable
from node.gossip import (
    Gossip, GossipSettings, Offer, Push, Pushed, Sync, Synced, Want, _GroupWriter, decode_message, digest_hash_of,
    fanout_for,
)
from node.identity import Identity
from node.logfile import LogFile
from node.metrics import Metrics
from tests.logtools import forge, identities, new_log, report_body
from tests.polling import poll_until_async

pytestmark = pytest.mark.timeout(90)

FAST = dict(interval_ms=50, call_timeout_ms=1_000, backoff_base_ms=50, backoff_max_ms=200)
QUIET = dict(FAST, interval_ms=600_000)  # anti-entropy effectively off: only eager push moves entries
WAIT_S = 15.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000




class RecordingLogFile:
    """The real LogFile, plus a record of what was appended (and a switch to make the disk fail)."""

    def __init__(self, inner: LogFile) -> None:
        self.inner = inner
        self.appended: list[bytes] = []
        self.synced: list[bool] = []              # per append: whether it was fsynced
        self.failing = False
        self._resumed = threading.Event()         # cleared by stall(): appends wait (a very slow disk) until resume()
        self._resumed.set()

    def stall(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def append(self, raws: Sequence[bytes], *, sync: bool = True) -> None:
        if self.failing:
            raise OSError(28, "No space left on device")
        if not self._resumed.wait(timeout=30):    # bounded: a test that forgets resume() fails, never hangs
            raise OSError(5, "the test's stalled disk was never resumed")
        self.inner.append(raws, sync=sync)
        self.appended.extend(raws)
        self.synced.append(sync)


@dataclass
class GossipNode:
    index: int
    identity: Identity
    log_path: Path
    port: int
    socket: socket.socket | None
    peers: dict[str, str] = field(default_factory=dict)
    log: Any = None
    gossip: Gossip | None = None
    metrics: Metrics | None = None
    logfile: RecordingLogFile | None = None
    runner: web.AppRunner | None = None
    loaded: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on_visible(self, entries: Sequence[Entry]) -> None:
        on_disk = set(self.logfile.appended) if self.logfile else set()
        for entry in entries:
            if entry.raw not in on_disk:
                self.violations.append(f"node {self.index}: {entry!r} visible before it was on disk")

    def visible_ids(self) -> list[str]:
        return [entry.id for entry in self.log.visible()]

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.get(name, **labels)


def _reserve_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # bound, not listening: until its node starts, calls are refused (a down node)
    return sock


class Net:
    """N gossiping nodes in this process. `topology[i]` lists the peers node i knows (default: all)."""

    def __init__(self, tmp_path: Path, count: int, *, extra_members: int = 0, settings: dict | None = None,
                 limits: dict | None = None, topology: dict[int, list[int]] | None = None, seed: int | None = None,
                 hellos: bool = False) -> None:
        self.seed = random.randrange(2**32) if seed is None else seed
        print(f"gossip test seed: {self.seed}")
        self.rng = random.Random(self.seed)
        self.people = identities(count + extra_members)
        self.settings = GossipSettings(**(settings or FAST))
        self.limits = limits or {}
        self.hellos = hellos        # signed stream hellos (the node's wiring): one stream per pair carries both ways
        self.nodes: list[GossipNode] = []
        tmp_path.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            sock = _reserve_socket()
            self.nodes.append(GossipNode(index, self.people[index], tmp_path / f"node{index}.log", sock.getsockname()[1], sock))
        for node in self.nodes:
            known = topology.get(node.index, []) if topology is not None else [n.index for n in self.nodes if n is not node]
            node.peers = {self.nodes[i].identity.node_id: self.nodes[i].url for i in known}

    async def start(self, *indexes: int) -> None:
        for index in indexes or range(len(self.nodes)):
            await self._start_node(self.nodes[index])

    async def _start_node(self, node: GossipNode) -> None:
        inner, stored = LogFile.open(node.log_path)
        node.logfile = RecordingLogFile(inner)
        node.logfile.appended.extend(stored)
        node.log = new_log(self.people, **self.limits)
        node.metrics = Metrics()
        node.gossip = Gossip(log=node.log, logfile=node.logfile, self_id=node.identity.node_id, peers=node.peers,
                             settings=self.settings, rng=random.Random(self.seed + node.index), now_ms=wall_ms,
                             on_visible=node.on_visible, metrics=node.metrics, logger=logging.getLogger(f"test.gossip.{node.index}"),
                             **({"sign": node.identity.sign, "public_keys": {person.node_id: person.public_key for person in self.people}}
                                if self.hellos else {}))
        node.loaded = node.gossip.load(stored)
        app = web.Application()
        node.gossip.add_routes(app)
        node.runner = web.AppRunner(app, access_log=None)
        await node.runner.setup()
        if node.socket is None:
            node.socket = _reserve_socket(node.port)
        await web.SockSite(node.runner, node.socket).start()
        node.socket = None  # owned by the site now
        await node.gossip.start()

    async def stop(self, index: int) -> None:
        node = self.nodes[index]
        if node.gossip is None:
            return
        await node.gossip.stop()
        await node.runner.cleanup()
        node.logfile.inner.close()
        node.gossip = None

    async def close(self) -> None:
        # Every node stops calling before any server shuts down: a call that reached a server while it
        # closed left an accepted socket that was never closed (a ResourceWarning, once in CI).
        for node in self.running():
            await node.gossip.stop()
        for node in self.nodes:
            await self.stop(node.index)
            if node.socket is not None:
                node.socket.close()
        violations = [v for node in self.nodes for v in node.violations]
        assert not violations, violations

    async def publish(self, index: int, text: str = "hello") -> Entry:
        node = self.nodes[index]
        return await node.gossip.publish_new(kind="NOTE", body={"text": text}, sign=node.identity.sign)

    def running(self) -> list[GossipNode]:
        return [node for node in self.nodes if node.gossip is not None]

    async def converged(self, count: int, *, what: str = "", timeout_s: float = 15.0) -> None:
        def check() -> bool:
            orders = {tuple(node.visible_ids()) for node in self.running()}
            return len(orders) == 1 and len(next(iter(orders))) == count
        await poll_until_async(check, what=what or f"every running node to show the same {count} visible entries", timeout_s=timeout_s)


@pytest.fixture
async def make_net(tmp_path: Path):
    nets: list[Net] = []

    def make(count: int, **options: Any) -> Net:
        net = Net(tmp_path / f"net{len(nets)}", count, **options)
        nets.append(net)
        return net

    yield make
    for net in nets:
        await net.close()


async def post(url: str, body: bytes | Any, *, headers: dict | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status, await response.read()


# --- messages and settings (no network) ----------------------------------------------------------


def test_messages_round_trip_through_their_wire_form() -> None:
    entry_id = "ab" * 32
    digest = {"0123456789abcdef": [[3, b"\x01" * 16]]}
    messages = [
        (Offer(sender="0123456789abcdef", ids=(entry_id,)), Offer),
        (Want(ids=(entry_id, "cd" * 32)), Want),
        (Push(sender="", raws=(b"\x01\x02",)), Push),
        (Pushed(added=1, duplicate=2, refused=3), Pushed),
        (Sync(sender="0123456789abcdef", digest_hash=digest_hash_of(digest), digest=digest, want=(entry_id,)), Sync),
        (Synced(digest=None, raws=(b"x",), more=True), Synced),
    ]
    for message, message_type in messages:
        assert decode_message(message.encode(), message_type, array_length_max=256) == message


@pytest.mark.parametrize("body, reason", [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb({"type": "offer"}), "first element is the message type"),
    (msgpack.packb([]), "first element is the message type"),
    (msgpack.packb(["push", b"", []]), "expected a 'offer' message"),
    (msgpack.packb(["offer", ""]), "has 3 elements"),
    (msgpack.packb(["offer", "not-a-node-id", []]), "sender must be a node id as 8 bytes"),
    (msgpack.packb(["offer", b"\x01" * 16, []]), "sender must be a node id as 8 bytes"),
    (msgpack.packb(["offer", b"", [b"short"]]), "ids must be a list of 32-byte"),
    (msgpack.packb(["offer", b"", "not a list"]), "ids must be a list"),
    (msgpack.packb(["offer", b"", [1.5]]), "ids must be a list"),
    (msgpack.packb(["offer", b"", [b"\x00" * 32]]) + b"trailing", "not valid msgpack"),
])
def test_malformed_messages_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(BadRequest) as refused:
        decode_message(body, Offer, array_length_max=256)
    assert reason in refused.value.message


@pytest.mark.parametrize("digest", [{"zz": 1}, {"0123456789abcdef": [[0, b"x" * 16]]}, {"0123456789abcdef": [[1, b"x"]]},
                                    [1, 2], {"0123456789abcdef": -1}])
def test_garbage_digests_are_refused(digest: Any) -> None:
    body = msgpack.packb(["sync", b"", b"\x00" * 8, digest, []], use_bin_type=True)
    with pytest.raises(BadRequest) as refused:
        decode_message(body, Sync, array_length_max=256)
    assert "digest" in refused.value.message


def test_fanout_is_ln_n_plus_one_capped_by_the_peers() -> None:
    assert [fanout_for(peers, None) for peers in (0, 1, 2, 4, 8, 16, 32)] == [0, 1, 2, 3, 4, 4, 5]
    assert fanout_for(4, 10) == 4 and fanout_for(32, 2) == 2


@pytest.mark.parametrize("changes", [{"interval_ms": 0}, {"fanout": 0}, {"batch_entries_max": 0},
                                     {"backoff_base_ms": 1000, "backoff_max_ms": 10}, {"inbox_max": 10, "batch_entries_max": 20},
                                     {"call_timeout_ms": "1000"}])
def test_settings_refuse_values_out_of_range(changes: dict) -> None:
    with pytest.raises(ConfigError):
        GossipSettings(**changes)


# --- convergence ---------------------------------------------------------------------------------


async def test_entries_written_on_different_nodes_converge_to_one_order(make_net) -> None:
    net = make_net(5)
    await net.start()
    writers = [net.rng.randrange(5) for _ in range(40)]
    written = await asyncio.gather(*(net.publish(writer, f"note {number}") for number, writer in enumerate(writers)))
    await net.converged(40)
    assert set(net.nodes[0].visible_ids()) == {entry.id for entry in written}
    for node in net.nodes:
        assert {entry.raw for entry in written} <= set(node.logfile.appended), f"node {node.index} lost entries on disk"
        assert node.log.pending_count() == 0 and node.log.equivocations() == []
    await poll_until_async(lambda: all(node.gossip.peers_up() == 4 for node in net.nodes), what="every peer counted as up", timeout_s=WAIT_S)


@pytest.mark.parametrize("inline_bytes_max", [16 * 1024, 0], ids=["small entries inline", "offer first"])
async def test_eager_push_forwards_across_nodes_the_author_cannot_reach(make_net, inline_bytes_max: int) -> None:
    # A chain 0 -> 1 -> 2 -> 3 -> 4 with anti-entropy off: node 4 can only get the entry by forwarding.
    net = make_net(5, settings=dict(QUIET, fanout=1, push_inline_bytes_max=inline_bytes_max),
                   topology={i: [i + 1] for i in range(4)})
    await net.start()
    entry = await net.publish(0)
    await poll_until_async(lambda: all(node.log.is_visible(entry.id) for node in net.nodes), what="the entry on every node", timeout_s=WAIT_S)
    for node in net.nodes[1:]:
        assert node.metric("gossip_entries_received_total", status="added") == 1
    for node in net.nodes[2:]:  # the full entry crossed each link once: inline, or by offer/want
        assert node.metric("gossip_messages_received_total", type="offer") == (0 if inline_bytes_max else 1)
        assert node.metric("gossip_messages_received_total", type="push") == 1
    assert net.nodes[1].metric("gossip_messages_received_total", type="push") == 1  # the author pushes in full


async def test_a_bulk_kind_reaches_nodes_its_author_cannot_by_anti_entropy(make_net) -> None:
    # A chain 0 -> 1 -> 2: node 1 does not forward node 0's EXECUTION_REPORT (a lazy kind: the core's
    # unit tests show it), so node 2 gets it from node 1 by anti-entropy.
    net = make_net(3, settings=dict(FAST, fanout=1), topology={0: [1], 1: [2]})
    await net.start()
    node = net.nodes[0]
    report = await node.gossip.publish_new(kind="EXECUTION_REPORT", body=report_body(), sign=node.identity.sign)
    await poll_until_async(lambda: net.nodes[2].log.is_visible(report.id), what="the report on node 2", timeout_s=WAIT_S)
    assert net.nodes[2].metric("gossip_rounds_total", result="pulled") + net.nodes[1].metric("gossip_rounds_total", result="pushed") >= 1


async def test_an_offer_is_wanted_once_while_the_first_copy_is_on_its_way(make_net) -> None:
    net = make_net(2, settings=QUIET)
    await net.start()
    entry_id = "ef" * 32
    senders = [node.identity.node_id for node in net.nodes]
    replies = [await post(net.nodes[0].url + "/gossip/offer", Offer(sender=sender, ids=(entry_id,)).encode()) for sender in senders]
    wants = [decode_message(body, Want, array_length_max=16).ids for _, body in replies]
    assert wants == [(entry_id,), ()]


async def test_anti_entropy_catches_up_a_node_that_was_down(make_net) -> None:
    net = make_net(5)
    await net.start(0, 1, 2, 3)
    written = [await net.publish(index % 4, f"while node 4 is down {index}") for index in range(30)]
    await net.converged(30, what="the four running nodes")
    await poll_until_async(lambda: net.nodes[0].metric("gossip_call_failures_total") >= 1, what="a call to node 4 to fail", timeout_s=WAIT_S)
    await poll_until_async(lambda: net.nodes[0].gossip.peers_up() == 3, what="node 4 counted as down, the others as up", timeout_s=WAIT_S)
    await net.start(4)
    await net.converged(30, what="node 4 to catch up")
    assert set(net.nodes[4].visible_ids()) == {entry.id for entry in written}
    await poll_until_async(lambda: net.nodes[0].gossip.peers_up() == 4, what="node 4 counted as up again", timeout_s=WAIT_S)


async def test_a_restarted_node_keeps_what_it_acknowledged_and_catches_up(make_net) -> None:
    net = make_net(3)
    await net.start()
    acknowledged = [await net.publish(2, f"mine {number}") for number in range(5)]
    await net.converged(5)
    await net.stop(2)
    with open(net.nodes[2].log_path, "ab") as torn:  # a crash in the middle of an append
        torn.write(b"\x00\x00\x01\x00garbage")
    while_down = [await net.publish(number % 2, f"while down {number}") for number in range(10)]
    await net.start(2)
    assert net.nodes[2].loaded == 5  # its own five, re-verified from disk; the torn tail was dropped
    assert {entry.id for entry in acknowledged} <= set(net.nodes[2].visible_ids())
    await net.converged(15, what="the restarted node to catch up")
    assert {entry.id for entry in while_down} <= set(net.nodes[2].visible_ids())
    after = await net.publish(2, "after the restart")
    assert after.sequence == 6  # no sequence number of this node is ever reused
    await net.converged(16)


async def test_a_node_whose_log_was_wiped_continues_after_its_own_entries(make_net) -> None:
    net = make_net(3)
    await net.start()
    before = [await net.publish(2, f"mine {number}") for number in range(5)]
    await net.converged(5)
    await net.stop(2)
    net.nodes[2].log_path.unlink()  # the operator wiped the data dir but kept the key
    await net.start(2)
    assert net.nodes[2].loaded == 0
    after = await net.publish(2, "after the wipe")  # waits until its own five are back from a peer
    assert after.sequence == 6 and {entry.id for entry in before} <= set(net.nodes[2].visible_ids())
    await net.converged(6)
    assert all(node.log.equivocations() == [] for node in net.nodes)


async def test_with_every_peer_down_the_first_write_waits_a_bounded_time_then_goes_ahead(make_net, caplog) -> None:
    net = make_net(2, settings=dict(FAST, first_write_wait_ms=300))
    await net.start(0)
    with caplog.at_level(logging.WARNING, logger="test.gossip.0"):
        entry = await net.publish(0, "alone")
    assert entry.sequence == 1 and entry.id in net.nodes[0].visible_ids()
    assert [record.getMessage() for record in caplog.records].count("gossip_first_write_unsynced") == 1
    assert (await net.publish(0, "again")).sequence == 2   # only the first write after start waits


async def test_a_peer_that_lies_about_our_entries_delays_the_first_write_only_boundedly(make_net, caplog) -> None:
    net = make_net(1, extra_members=1, settings=dict(FAST, first_write_wait_ms=300))
    node = net.nodes[0]

    async def lying_sync(request: web.Request) -> web.Response:
        claim = Synced(digest={node.identity.node_id: 1_000}, raws=(), more=False)
        return web.Response(body=claim.encode(), content_type="application/msgpack")

    app = web.Application()
    app.router.add_post("/gossip/sync", lying_sync)
    liar = web.AppRunner(app, access_log=None)
    await liar.setup()
    site = web.TCPSite(liar, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]
        node.peers = {net.people[1].node_id: f"http://127.0.0.1:{port}"}
        await net.start(0)
        with caplog.at_level(logging.WARNING, logger="test.gossip.0"):
            entry = await net.publish(0, "despite the liar")
        assert entry.sequence == 1
        assert "gossip_own_entries_missing" in [record.getMessage() for record in caplog.records]
    finally:
        await net.stop(0)
        await liar.cleanup()


async def test_publish_refuses_a_stale_local_entry_and_never_reuses_a_sequence(make_net) -> None:
    net = make_net(2)
    await net.start()
    node = net.nodes[0]
    stale = node.log.new_entry(kind="NOTE", author=node.identity.node_id, body={"text": "stale"}, sign=node.identity.sign,
                               now_ms=wall_ms())
    await net.publish(0, "first")
    stored = len(node.logfile.appended)
    with pytest.raises(Conflict):
        await node.gossip.publish(stale)
    assert len(node.logfile.appended) == stored and stale.id not in node.log
    with pytest.raises(BadRequest):
        await node.gossip.publish(forge(net.people[1], sequence=1))
    entries = await asyncio.gather(*(net.publish(0, f"concurrent {number}") for number in range(20)))
    assert sorted(entry.sequence for entry in entries) == list(range(2, 22))
    await net.converged(21)
    assert node.log.equivocations() == []


async def test_stored_entries_load_even_if_the_clock_stepped_back(make_net) -> None:
    net = make_net(1)
    ahead = forge(net.people[0], sequence=1, hlc=Hlc(wall_ms() + 3_600_000, 0))  # written when the clock was 1 h ahead
    stored, _ = LogFile.open(net.nodes[0].log_path)
    stored.append([ahead.raw])
    stored.close()
    await net.start()
    node = net.nodes[0]
    assert node.loaded == 1 and node.log.is_visible(ahead.id)
    assert node.log.next_sequence(node.identity.node_id) == 2  # sequence 1 is never reused
    with pytest.raises(EntryRefused) as refused:  # its next entry must follow the one from the future: peers would refuse it
        await net.publish(0, "next")
    assert refused.value.reason == "clock_future" and len(node.logfile.appended) == 1


async def test_a_local_entry_on_disk_but_refused_by_the_log_stops_local_writes(make_net, monkeypatch) -> None:
    net = make_net(1)
    await net.start()
    node = net.nodes[0]

    def refuse(entry, *, now_ms):
        raise EntryRefused("log_full", "the log holds its maximum of entries")
    monkeypatch.setattr(node.log, "add", refuse)
    with pytest.raises(EntryRefused):
        await net.publish(0, "on disk, not in the log")
    monkeypatch.undo()
    assert len(node.logfile.appended) == 1
    with pytest.raises(Unavailable) as stopped:  # another entry now would reuse sequence 1
        await net.publish(0, "would reuse the sequence")
    assert "restart" in stopped.value.hint and len(node.logfile.appended) == 1


async def test_the_log_writer_queue_is_bounded_in_bytes_and_refuses_at_once_when_full() -> None:
    class StalledDisk:
        def __init__(self) -> None:
            self.appended: list[bytes] = []
            self.resumed = threading.Event()

        def append(self, raws: Sequence[bytes], *, sync: bool = True) -> None:
            assert self.resumed.wait(timeout=30), "the test never resumed the disk"
            self.appended.extend(raws)

    disk = StalledDisk()
    writer = _GroupWriter(disk, timeout_ms=30_000, queue_max_bytes=1_000)
    try:
        first = asyncio.create_task(writer.append([b"a" * 600]))
        await poll_until_async(lambda: writer.queued_bytes == 600, what="the first write to be queued", timeout_s=WAIT_S)
        with pytest.raises(Unavailable, match="write queue is full: 600 bytes wait for the disk, and 500 more") as full:
            await writer.append([b"b" * 500])
        assert full.value.definite, "nothing was written: the refusal is definite"
        second = asyncio.create_task(writer.append([b"c" * 400]))   # 600 + 400: exactly the limit, admitted
        await poll_until_async(lambda: writer.queued_bytes == 1_000, what="the second write to be queued", timeout_s=WAIT_S)
        disk.resumed.set()
        await asyncio.wait_for(asyncio.gather(first, second), timeout=WAIT_S)
        assert disk.appended == [b"a" * 600, b"c" * 400] and writer.queued_bytes == 0
        await asyncio.wait_for(writer.append([b"b" * 500]), timeout=WAIT_S)  # room again once the disk caught up
    finally:
        disk.resumed.set()
        await writer.close()


def test_the_persist_queue_limit_holds_at_least_one_full_push() -> None:
    assert GossipSettings().persist_queue_limit_bytes == 16 * GossipSettings().request_body_max_bytes
    assert GossipSettings(request_body_max_bytes=4096, persist_queue_max_bytes=4096).persist_queue_limit_bytes == 4096
    with pytest.raises(ConfigError, match="persist_queue_max_bytes"):
        GossipSettings(request_body_max_bytes=8192, persist_queue_max_bytes=4096)


async def test_a_push_beyond_the_disk_queue_is_refused_with_503_and_accepted_once_the_disk_catches_up(make_net) -> None:
    net = make_net(2, extra_members=2, settings=dict(QUIET, request_body_max_bytes=2048, persist_queue_max_bytes=2048))
    await net.start()
    target = net.nodes[1]

    def chain_of(who: Identity, count: int) -> list[bytes]:
        raws: list[bytes] = []
        parents: tuple[str, ...] = ()
        for sequence in range(1, count + 1):
            entry = forge(who, sequence=sequence, parents=parents, hlc=Hlc(wall_ms() - 1_000 + sequence, 0),
                          body={"text": f"{who.node_id[:8]} {sequence} " + "x" * 200})
            raws.append(entry.raw)
            parents = (entry.id,)
        return raws

    first, second = chain_of(net.people[2], 4), chain_of(net.people[3], 4)
    assert sum(map(len, first)) <= 2048 < sum(map(len, first)) + sum(map(len, second)), "sizes chosen for the limit"
    target.logfile.stall()
    try:
        held = asyncio.create_task(post(target.url + "/gossip/push", Push(sender="", raws=tuple(first)).encode()))
        await poll_until_async(lambda: target.gossip._writer.queued_bytes == sum(map(len, first)),
                               what="the first push to wait for the stalled disk", timeout_s=WAIT_S)
        status, body = await post(target.url + "/gossip/push", Push(sender="", raws=tuple(second)).encode())
        assert status == 503 and b"write queue is full" in body, (status, body)
    finally:
        target.logfile.resume()
    assert (await held)[0] == 200
    status, _ = await post(target.url + "/gossip/push", Push(sender="", raws=tuple(second)).encode())
    assert status == 200 and len(target.log) == 8 and target.gossip._writer.queued_bytes == 0


async def test_a_request_that_arrives_while_the_node_stops_is_refused_at_once(make_net) -> None:
    # The HTTP server outlives Gossip.stop() for a moment; a push then used to wait 2 x persist_timeout_ms
    # for a write that would never run, and held the server's shutdown as long.
    net = make_net(2, settings=QUIET)
    await net.start()
    node = net.nodes[1]
    entry = forge(net.people[0], sequence=1, hlc=Hlc(wall_ms(), 0))
    await node.gossip.stop()
    status, body = await post(node.url + "/gossip/push", Push(sender="", raws=(entry.raw,)).encode())
    assert status == 503 and b"this node is stopping" in body
    assert node.metric("gossip_requests_refused_total", reason="stopping") >= 1


async def test_a_failing_disk_refuses_entries_instead_of_showing_them(make_net) -> None:
    net = make_net(2, settings=QUIET)
    await net.start()
    net.nodes[1].logfile.failing = True
    entry = await net.publish(0)  # node 0 pushes it to node 1, whose disk fails
    await poll_until_async(lambda: net.nodes[1].metric("gossip_requests_refused_total", reason="unavailable") == 1,
                     what="node 1 to refuse node 0's push", timeout_s=WAIT_S)
    with pytest.raises(Unavailable):
        await net.publish(1)
    status, body = await post(net.nodes[1].url + "/gossip/push", Push(sender="", raws=(entry.raw,)).encode())
    assert status == 503 and b"disk" in body
    assert len(net.nodes[1].log) == 0
    net.nodes[1].logfile.failing = False
    status, _ = await post(net.nodes[1].url + "/gossip/push", Push(sender="", raws=(entry.raw,)).encode())
    assert status == 200 and net.nodes[1].log.is_visible(entry.id)


async def test_in_sync_anti_entropy_rounds_are_a_few_bytes(make_net) -> None:
    net = make_net(3)
    await net.start()
    for number in range(5):
        await net.publish(number % 3)
    await net.converged(5)
    node = net.nodes[0]

    def in_sync_rounds() -> float:
        return node.metric("gossip_rounds_total", result="in_sync")

    # A node runs at most one round per peer: two in-sync rounds per peer after convergence, and the
    # rounds that were in flight when the logs converged are over.
    at_convergence = in_sync_rounds()
    await poll_until_async(lambda: in_sync_rounds() >= at_convergence + 4, what="node 0's rounds in flight at "
                           "convergence to end (four in-sync rounds)", timeout_s=WAIT_S)
    before = (node.metric("gossip_messages_sent_total", type="sync"), node.metric("gossip_bytes_sent_total", type="sync"),
              in_sync_rounds())
    await poll_until_async(lambda: in_sync_rounds() - before[2] >= 5, what="five more in-sync rounds from node 0",
                           timeout_s=WAIT_S)
    sent = node.metric("gossip_messages_sent_total", type="sync") - before[0]
    assert sent >= 5
    assert (node.metric("gossip_bytes_sent_total", type="sync") - before[1]) / sent < 64


async def test_visibility_times_are_reported_for_known_entries(make_net) -> None:
    net = make_net(2)
    await net.start()
    before_ns = time.time_ns()
    entry = await net.publish(0)
    await net.converged(1)
    unknown = "00" * 32
    async with aiohttp.ClientSession() as session:
        async with session.get(net.nodes[1].url + f"/gossip/visibility?ids={entry.id},{unknown}") as response:
            document = await response.json()
        async with session.get(net.nodes[1].url + "/gossip/visibility?ids=nothex") as response:
            assert response.status == 400
    assert document["node_id"] == net.nodes[1].identity.node_id
    assert before_ns <= document["visible_at_ns"][entry.id] <= time.time_ns()
    assert document["visible_at_ns"][unknown] is None


# --- hostile peers ------------------------------------------------------------------------------


async def _hostile_net(make_net, **options: Any) -> Net:
    """Three honest running nodes; member 3 exists in genesis but is run by the attacker (this test)."""
    net = make_net(3, extra_members=1, **options)
    await net.start()
    await net.publish(0, "before the attack")
    await net.converged(1)
    return net


async def _still_healthy(net: Net, count_before: int, *, only_honest_authors: bool = True) -> None:
    """Honest nodes keep converging after an attack, and nothing hostile reached them."""
    await net.publish(1, "after the attack")
    await net.converged(count_before + 1, what="honest nodes to converge after the attack")
    honest = {node.identity.node_id for node in net.nodes}
    for node in net.nodes:
        assert not only_honest_authors or all(entry.author in honest for entry in node.log.all_entries())


@pytest.mark.parametrize("attack, reason", [("forged_signature", "bad_signature"), ("unknown_author", "unknown_author"),
                                            ("garbage_entry", "malformed"), ("unknown_kind", "unknown_kind"),
                                            ("future_clock", "clock_future")])
async def test_refused_entries_are_counted_never_stored_nor_forwarded(make_net, attack: str, reason: str) -> None:
    net = await _hostile_net(make_net)
    honest, stranger = net.people[0], Identity.generate()
    raw = {
        "forged_signature": lambda: forge(stranger, sequence=1, author=honest.node_id).raw,
        "unknown_author": lambda: forge(stranger, sequence=1).raw,
        "garbage_entry": lambda: b"\x98" + b"\xff" * 100,
        "unknown_kind": lambda: forge(net.people[3], sequence=1).raw.replace(b"\xa4NOTE", b"\xa4NOPE"),
        "future_clock": lambda: forge(net.people[3], sequence=1, hlc=Hlc(wall_ms() + 3_600_000, 0)).raw,
    }[attack]()
    target = net.nodes[0]
    stored = len(target.logfile.appended)
    status, body = await post(target.url + "/gossip/push", Push(sender=net.people[3].node_id, raws=(raw,)).encode())
    assert status == 200 and decode_message(body, Pushed, array_length_max=16) == Pushed(added=0, duplicate=0, refused=1)
    assert target.metric("entries_refused_total", reason=reason) == 1
    assert len(target.logfile.appended) == stored and len(target.log) == 1
    await _still_healthy(net, 1)
    assert all(node.metrics.total("entries_refused_total") == 0 for node in net.nodes[1:]), "a refused entry was forwarded"


async def test_replayed_entries_are_duplicates_and_change_nothing(make_net) -> None:
    net = await _hostile_net(make_net)
    target = net.nodes[0]
    known = target.log.visible()[0]
    stored, size = len(target.logfile.appended), len(target.log)
    for _ in range(20):
        status, body = await post(target.url + "/gossip/push", Push(sender="", raws=(known.raw,) * 5).encode())
        assert status == 200 and decode_message(body, Pushed, array_length_max=16) == Pushed(added=0, duplicate=5, refused=0)
    assert target.metric("gossip_entries_received_total", status="duplicate") >= 100
    assert len(target.logfile.appended) == stored and len(target.log) == size
    await _still_healthy(net, 1)


@pytest.mark.parametrize("body, status", [
    (b"\xc1\xc1\xc1", 400),                                                   # not msgpack
    (msgpack.packb(["push", b"", [b"x"] * 300]), 400),                          # more than batch_entries_max
    (msgpack.packb(["sync", b"", b"\x00" * 8, {"not-a-node": 1}, []], use_bin_type=True), 400),  # garbage digest
    (msgpack.packb(["sync", b"", b"\x00" * 8, {"0123456789abcdef": [[1, 7]] * 9}, []], use_bin_type=True), 400),
    (msgpack.packb(["offer", b"", [b"\x00" * 32] * 300], use_bin_type=True), 400),
    (msgpack.packb([{"nested": [[[[]]]]}]), 400),
    (b"", 400),
])
@pytest.mark.parametrize("path", ["/gossip/push", "/gossip/sync", "/gossip/offer"])
async def test_malformed_bodies_get_400_and_change_nothing(make_net, body: bytes, status: int, path: str) -> None:
    net = await _hostile_net(make_net)
    target = net.nodes[0]
    stored = len(target.logfile.appended)
    got, reply = await post(target.url + path, body)
    assert got == status and b"hint" in reply
    assert target.metric("gossip_requests_refused_total", reason="malformed") == 1
    assert len(target.logfile.appended) == stored
    await _still_healthy(net, 1)


async def test_an_oversized_body_is_refused_before_it_is_read(make_net) -> None:
    net = await _hostile_net(make_net, settings=dict(FAST, request_body_max_bytes=64 * 1024))
    target = net.nodes[0]
    status, reply = await post(target.url + "/gossip/push", Push(sender="", raws=(b"x" * 200_000,)).encode())
    assert status == 413 and b"exceeds" in reply
    async def chunked():  # no Content-Length: the cap applies while reading
        for _ in range(100):
            yield b"\x00" * 4096
    status, _ = await post(target.url + "/gossip/push", chunked())
    assert status == 413
    assert target.metric("gossip_requests_refused_total", reason="too_large") == 2
    await _still_healthy(net, 1)


async def test_a_flood_of_orphans_keeps_pending_bounded(make_net) -> None:
    # pending_max 40 over 4 members: at most 10 pending entries per author.
    net = await _hostile_net(make_net, limits={"pending_max": 40})
    attacker, target = net.people[3], net.nodes[0]
    orphans = [forge(attacker, sequence=1, parents=[os.urandom(32).hex()], body={"text": f"orphan {n}"}).raw for n in range(200)]
    for start in range(0, 200, 50):
        status, _ = await post(target.url + "/gossip/push", Push(sender=attacker.node_id, raws=tuple(orphans[start:start + 50])).encode())
        assert status == 200
    assert target.log.pending_count() == 10
    assert target.metric("entries_refused_total", reason="pending_full") == 190
    assert target.metric("gossip_entries_received_total", status="pending") == 10
    await _still_healthy(net, 1, only_honest_authors=False)  # the pending orphans are held, by design

    def rounds_answered(node: GossipNode) -> float:
        return sum(node.metric("gossip_rounds_total", result=result) for result in ("in_sync", "pulled", "pushed"))

    # Anti-entropy rounds ask peers for the missing parents (nobody has them) and peers pull from the
    # target: two answered rounds per node (one per peer at a time) give each a chance to forward.
    before = [rounds_answered(node) for node in net.nodes]
    await poll_until_async(lambda: all(rounds_answered(node) >= count + 2 for node, count in zip(net.nodes, before)),
                           what="two more answered anti-entropy rounds on every honest node", timeout_s=WAIT_S)
    assert all(node.log.pending_count() == 0 for node in net.nodes[1:]), "pending entries were forwarded"
    assert target.log.pending_count() == 10


async def test_a_slow_sender_cannot_hold_a_node(make_net) -> None:
    # QUIET: no anti-entropy, so the honest peers (also on 127.0.0.1) send nothing while the slow bodies are held.
    net = await _hostile_net(make_net, settings=dict(QUIET, inbound_per_source_max=2, call_timeout_ms=600))
    target = net.nodes[0]
    release = asyncio.Event()

    async def trickle():
        yield b"\x93"
        await release.wait()
        yield b"\xa4push"

    async def slow_post():
        return await post(target.url + "/gossip/push", trickle())

    slow = [asyncio.create_task(slow_post()) for _ in range(2)]
    # The transport's per-source count (private: no API exposes it, and none should just for a test).
    await poll_until_async(lambda: target.gossip._inbound_by_source.get("127.0.0.1", 0) == 2,
                           what="both slow pushes to be held by the target", timeout_s=WAIT_S)
    status, reply = await post(target.url + "/gossip/offer", Offer(sender="", ids=()).encode())
    assert status == 429 and b"too many concurrent" in reply
    results = await asyncio.gather(*slow)
    release.set()
    assert [status for status, _ in results] == [408, 408]
    assert target.metric("gossip_requests_refused_total", reason="slow_body") == 2
    status, _ = await post(target.url + "/gossip/offer", Offer(sender="", ids=()).encode())
    assert status == 200
    await _still_healthy(net, 1)


async def test_a_flood_of_concurrent_pushes_is_bounded_and_survived(make_net) -> None:
    net = await _hostile_net(make_net, settings=dict(FAST, inbound_requests_max=8, inbound_per_source_max=8))
    attacker, target = net.people[3], net.nodes[0]
    chain = []
    for sequence in range(1, 61):
        chain.append(forge(attacker, sequence=sequence, parents=[chain[-1].id] if chain else [],
                           hlc=Hlc(wall_ms() - 1000 + sequence, 0), body={"text": f"flood {sequence}"}))
    body = Push(sender=attacker.node_id, raws=tuple(entry.raw for entry in chain)).encode()
    statuses = [status for status, _ in await asyncio.gather(*(post(target.url + "/gossip/push", body) for _ in range(40)))]
    assert set(statuses) <= {200, 429, 503} and 200 in statuses
    assert len(target.log) == 61  # the valid chain of a member is accepted exactly once
    assert target.metric("gossip_entries_received_total", status="added") == 60
    await net.converged(61, what="the member's entries to reach every honest node")
    await _still_healthy(net, 61, only_honest_authors=False)


async def test_own_entries_are_fsynced_before_anyone_sees_them_and_a_peer_s_are_only_written(make_net) -> None:
    net = make_net(2, settings=QUIET)
    await net.start()
    entry = await net.publish(0)
    await poll_until_async(lambda: net.nodes[1].log.is_visible(entry.id), what="node 1 to get node 0's entry", timeout_s=WAIT_S)
    assert net.nodes[0].logfile.synced == [True], "the author's own entry is on disk before it is published"
    assert net.nodes[1].logfile.synced == [False], "a copy received from a peer costs no fsync of its own"
    assert net.nodes[1].logfile.appended == [entry.raw]
