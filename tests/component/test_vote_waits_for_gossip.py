"""A vote for a proposal this node has not received yet waits a bounded time for gossip to bring it
(issue 13: a user proposing on node-1 and voting at once on node-2 got a 404), through the real node
application. The proposal comes in as a peer would send it: a signed PROPOSAL entry pushed to
/gossip/push by the member whose key the test holds, while the vote request is waiting."""

import asyncio
import time

import pytest

from node.core import proposals
from node.core.entries import make_entry
from node.core.hlc import Hlc
from node.runtime import wall_ms
from tests.component.test_api_governance import (  # noqa: F401 (fixtures)
    auth, client, error_of, json_of, member_identity, network, push, vote)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO name='[^']*raft.journal.meta':pytest.PytestUnraisableExceptionWarning")

PUSH_DELAY_S = 0.5


def proposal_by_member(client, network):
    member = member_identity(network, 1)
    now_ms = wall_ms()
    body = proposals.new_proposal_body(
        action="upgrade", title="From a peer", description="arrives by gossip", version="1.2.0",
        package_url="https://example.org/u.wasm", package_hash="sha256:" + "cd" * 32, package_size=2048,
        target_proposal_id=None, author=member.node_id, sequence=1, now_ms=now_ms,
        rules=client.node.governance.governance.rules)
    return make_entry(network_id=network.genesis.network_id, kind="PROPOSAL", author=member.node_id, sequence=1,
                      parents=(), hlc=Hlc(now_ms, 0), body=body, sign=member.sign)


async def test_a_vote_waits_for_the_proposal_gossip_brings_a_moment_later(client, network):
    entry = proposal_by_member(client, network)
    proposal_id = entry.body["proposal_id"]
    began = time.monotonic()
    voting = asyncio.create_task(vote(client, proposal_id))
    await asyncio.sleep(PUSH_DELAY_S)
    assert not voting.done(), "the vote waits instead of answering 404 at once"
    assert (await push(client, entry)).added == 1
    voted = await json_of(await asyncio.wait_for(voting, 5), 201)
    assert voted["proposal_id"] == proposal_id and voted["vote"] == "approval"
    assert PUSH_DELAY_S <= time.monotonic() - began < 2.0 + 1.0


async def test_a_vote_for_a_proposal_nobody_made_is_a_404_after_the_bounded_wait(client):
    made_up = proposals.make_proposal_id("upgrade", wall_ms(), "ee" * 8, 1)      # could be in transit: waits
    began = time.monotonic()
    refusal = await error_of(await vote(client, made_up), 404)
    waited_s = time.monotonic() - began
    assert 2.0 <= waited_s < 4.0, waited_s
    assert "waited 2000 ms for gossip" in refusal["message"] and "GET /proposals" in refusal["hint"]


@pytest.mark.parametrize("proposal_id", ["upgrade_20991231_235959_00000000", "upgrade_20200101_000000_00000000"])
async def test_an_id_that_cannot_be_in_transit_and_open_is_a_404_at_once(client, proposal_id):
    """From beyond the clock skew bound, or from before the voting period: no open proposal has it."""
    began = time.monotonic()
    refusal = await error_of(await vote(client, proposal_id), 404)
    assert time.monotonic() - began < 1.0 and "waited" not in refusal["message"]


async def test_a_dry_run_waits_for_the_proposal_too(client, network):
    entry = proposal_by_member(client, network)
    testing = asyncio.create_task(client.post(f"/upgrades/{entry.body['proposal_id']}/test", headers=auth(client)))
    await asyncio.sleep(PUSH_DELAY_S)
    assert not testing.done()
    assert (await push(client, entry)).added == 1
    tested = await json_of(await asyncio.wait_for(testing, 30), 200)
    assert tested["success"] is False and tested["failed_step"] == "download", "it ran (example.org is refused or absent)"
