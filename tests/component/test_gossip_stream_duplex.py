"""One gossip stream carries the calls of both its ends (node/gossip_stream.py, node/core/stream_hello.py).

What a user checks: two nodes that call each other hold one stream, not two (a stream costs ~13-14 KB in
each process: at N=200 that is the difference between ~5 MB and ~2.6 MB per node); the node that
accepted a stream sends its calls over it only when the opener proved who it is; a stranger that claims
to be a member receives nothing; a stream that ends fails the calls waiting on it either way; and entries
converge as before. Real aiohttp servers on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Callable

import aiohttp
import pytest

from node.core.gossip_messages import Offer, Push, Sync
from node.core.gossip_settings import GossipSettings
from node.core.stream_hello import HELLO_HEADER, make_hello
from node.gossip_stream import PATH_STREAM, StreamClient, StreamClosed, StreamServer
from node.identity import Identity
from tests.component.test_gossip import FAST, make_net  # noqa: F401  (make_net: the fixture)
from tests.component.test_gossip_stream import SETTINGS, Peer, refuse
from tests.polling import poll_until_async

pytestmark = pytest.mark.timeout(60)


class Node(Peer):
    """A stream client and server as Gossip wires them: the server adopts, for the client, the streams
    whose hello (here: the opener's URL, or a refusal) names a peer."""

    def __init__(self, name: str, *, settings: GossipSettings = SETTINGS, accept_hellos: bool = True,
                 monotonic_s: Callable[[], float] = time.monotonic) -> None:
        super().__init__(settings, self.serve)
        self.name = name
        self.served: list[tuple[str, str, bytes]] = []     # (source, message type, body) of the calls answered here
        self.accept_hellos = accept_hellos
        self.client = StreamClient(settings=settings, metrics=self.metrics, logger=logging.getLogger(f"test.{name}"),
                                   serve_frame=self.serve, hello=lambda url: f"from:{self.url}", monotonic_s=monotonic_s)
        self.server = StreamServer(settings=settings, serve_frame=self.serve, refuse=refuse, metrics=self.metrics,
                                   check_hello=self.check_hello, client=self.client)

    async def serve(self, source: str, message_type: type, body: bytes) -> tuple[int, bytes]:
        self.served.append((source, message_type.__name__, body))
        if body.startswith(b"sleep:"):
            await asyncio.sleep(float(body[6:]))
        return 200, f"{self.name}:{message_type.__name__}:".encode() + body

    def check_hello(self, hello: str) -> tuple[str, bool] | None:
        """The opener's URL, and whether the pair keeps its stream (here: the smaller URL's)."""
        if not self.accept_hellos or not hello.startswith("from:"):
            return None
        opener = hello.removeprefix("from:")
        return opener, opener < self.url

    async def start(self) -> Node:
        await super().start()
        self.client.open()
        return self

    async def stop(self) -> None:
        await self.client.close()
        await super().stop()


@pytest.fixture
async def nodes():
    started: list[Node] = []

    async def make(name: str, **options: Any) -> Node:
        started.append(await Node(name, **options).start())
        return started[-1]
    yield make
    for node in started:
        await node.stop()


async def test_the_node_that_accepted_a_proven_stream_calls_back_over_it(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    assert await a.client.call(b.url, Push, b"1") == (200, b"b:Push:1")
    replies = await asyncio.gather(*(b.client.call(a.url, (Offer, Push, Sync)[index % 3], b"sleep:%.2f" % (0.03 * (6 - index)))
                                     for index in range(6)))
    assert replies == [(200, f"a:{(Offer, Push, Sync)[index % 3].__name__}:".encode() + b"sleep:%.2f" % (0.03 * (6 - index)))
                       for index in range(6)], "each reply to its own call, in any order"
    assert a.upgrades_asked == 0, "b opened no stream of its own"
    assert (a.server.open_count(), b.server.open_count(), a.client.open_count(), b.client.open_count()) == (0, 1, 1, 1)
    assert b.metrics.get("gossip_streams_opened_total", side="adopted") == 1
    assert [source for source, _, _ in a.served] == ["127.0.0.1"] * 6, "b's calls are admitted by b's address"
    assert await a.client.call(b.url, Offer, b"2") == (200, b"b:Offer:2"), "a's calls still work on the same stream"


async def test_without_a_proven_hello_the_accepting_node_opens_its_own_stream(nodes) -> None:
    a, b = await nodes("a", accept_hellos=False), await nodes("b", accept_hellos=False)
    assert await a.client.call(b.url, Push, b"1") == (200, b"b:Push:1")
    assert await b.client.call(a.url, Push, b"2") == (200, b"a:Push:2")
    assert a.upgrades_asked == 1 and b.metrics.get("gossip_streams_opened_total", side="adopted") == 0
    assert (a.server.open_count(), b.server.open_count()) == (1, 1)


async def test_two_nodes_that_open_streams_to_each_other_at_once_keep_one(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    first = await asyncio.gather(a.client.call(b.url, Push, b"1"), b.client.call(a.url, Push, b"2"))
    assert first == [(200, b"b:Push:1"), (200, b"a:Push:2")]
    assert a.upgrades_asked == 1 and b.upgrades_asked == 1, "both opened one"
    await poll_until_async(lambda: a.server.open_count() + b.server.open_count() == 1, what="one of the two to close",
                           timeout_s=10)
    keeper = min(a, b, key=lambda node: node.url)
    assert keeper.server.open_count() == 0, "the stream kept is the one the node with the smaller id opened"
    assert [await a.client.call(b.url, Offer, b"3"), await b.client.call(a.url, Offer, b"4")] == [
        (200, b"b:Offer:3"), (200, b"a:Offer:4")]
    assert a.upgrades_asked == 1 and b.upgrades_asked == 1 and a.client.open_count() == b.client.open_count() == 1


async def test_calls_on_an_adopted_stream_fail_at_once_when_its_opener_closes_it_and_the_next_opens_a_stream(nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    await a.client.call(b.url, Push, b"1")
    waiting = [asyncio.ensure_future(b.client.call(a.url, Push, b"sleep:30")) for _ in range(3)]
    await poll_until_async(lambda: len(a.served) == 3, what="b's calls to reach a", timeout_s=10)
    a.client._discard(a.client._streams[b.url])                             # a closes its stream (idle, evicted, ...)
    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(outcome, StreamClosed) for outcome in outcomes), outcomes
    await poll_until_async(lambda: b.client.open_count() == 0, what="b to forget the stream", timeout_s=10)
    assert await b.client.call(a.url, Offer, b"2") == (200, b"a:Offer:2")
    assert a.upgrades_asked == 1, "b opened a stream of its own"


async def test_the_opener_closes_a_stream_idle_both_ways_and_not_one_the_other_end_still_calls_over(nodes) -> None:
    clock = [100.0]
    settings = GossipSettings(call_timeout_ms=2_000, stream_idle_ms=400)
    a = await nodes("a", settings=settings, monotonic_s=lambda: clock[0])
    b = await nodes("b", settings=settings)
    await a.client.call(b.url, Push, b"1")
    stream = a.client._streams[b.url]
    clock[0] += 0.3
    await b.client.call(a.url, Push, b"2")                  # b calls over a's stream at 100.3
    clock[0] += 0.3
    a.client._sweep_idle()
    assert not stream.closed, "idle for a's calls (0.6 s), but b called over it 0.3 s ago"
    clock[0] += 0.5
    a.client._sweep_idle()
    assert stream.closed, "idle both ways for 0.8 s"
    await poll_until_async(lambda: b.client.open_count() == 0 and b.server.open_count() == 0,
                           what="b to see the stream end", timeout_s=10)


async def test_a_stranger_claiming_a_member_s_id_does_not_get_the_node_s_calls(make_net) -> None:
    net = make_net(2, settings=FAST, hellos=True)
    await net.start(0)
    node, member = net.nodes
    stranger = Identity.generate()

    def hello(sign) -> dict:
        return {HELLO_HEADER: make_hello(from_id=member.identity.node_id, to_id=node.identity.node_id,
                                         at_ms=time.time_ns() // 1_000_000, nonce=secrets.token_hex(16), sign=sign)}
    async with aiohttp.ClientSession() as session:
        forged = await session.ws_connect(node.url + PATH_STREAM, headers=hello(stranger.sign))
        await poll_until_async(lambda: node.gossip._stream_server.open_count() == 1, what="the stream to open", timeout_s=10)
        assert node.metric("gossip_stream_hellos_refused_total", reason="bad_signature") == 1
        assert node.gossip._streams.open_count() == 0, "not adopted: the node would send its calls to the member there"
        proven = await session.ws_connect(node.url + PATH_STREAM, headers=hello(member.identity.sign))
        await poll_until_async(lambda: node.gossip._streams.open_count() == 1, what="the member's stream to be adopted",
                               timeout_s=10)
        replayed = await session.ws_connect(node.url + PATH_STREAM, headers=hello(member.identity.sign) | {})
        await proven.close()
        await poll_until_async(lambda: node.gossip._streams.open_count() == 0, what="the adopted stream to end", timeout_s=10)
        for socket in (forged, replayed):
            await socket.close()


async def test_entries_converge_and_each_pair_of_nodes_holds_one_stream(make_net) -> None:
    net = make_net(4, settings=FAST, hellos=True)
    await net.start()
    written = [await net.publish(index % 4, f"note {index}") for index in range(20)]
    await net.converged(len(written))

    def one_stream_per_pair() -> bool:     # each stream listed by both its ends as the one they call over
        streams = sum(node.gossip._stream_server.open_count() for node in net.nodes)
        return streams > 0 and 2 * streams == sum(node.gossip._streams.open_count() for node in net.nodes)
    await poll_until_async(one_stream_per_pair, what="each pair of nodes to call over one stream", timeout_s=15)
    assert sum(node.metric("gossip_streams_opened_total", side="adopted") for node in net.nodes) > 0
    assert sum(node.metric("gossip_stream_hellos_refused_total", reason=reason) for node in net.nodes
               for reason in ("bad_signature", "stale", "replayed", "unknown_member", "not_for_this_node", "not_a_peer")) == 0
