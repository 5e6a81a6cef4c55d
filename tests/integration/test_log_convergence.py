"""The log across real node processes (LocalCluster, via the pytest plugin): convergence, kill -9, a hostile peer.

What a user checks: notes posted on different nodes show up in GET /log of every node in the same
order; a node killed with SIGKILL comes back with every entry it acknowledged (201) and catches up
with what was written while it was down; a peer that posts forged, replayed, oversized or malformed
bodies to /gossip is refused (and counted in /metrics) while the other nodes stay healthy.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
import urllib.error
import urllib.request

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.local import LocalCluster, NodeApi
from node.core.hlc import Hlc
from node.gossip import Push, Pushed, Sync, Synced, decode_message
from node.identity import Identity
from tests.logtools import forge
from tests.polling import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def metrics_of(api: NodeApi) -> dict[tuple[str, str], float]:
    """GET /metrics parsed by prometheus_client: (name, 'label="value",...' sorted by label) -> value."""
    response = api.get("/metrics")
    assert response.status == 200, response.text
    return {(sample.name, ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def visible_ids(api: NodeApi) -> list[str]:
    """Every visible entry id of a node, in its order (GET /log, paged)."""
    ids, after = [], 0
    while True:
        page = api.get(f"/log?after={after}&limit=500")
        assert page.status == 200, page.text
        ids.extend(entry["id"] for entry in page.data["entries"])
        after = page.data["next"]
        if not page.data["more"]:
            return ids


def post_note(cluster: LocalCluster, index: int, text: str) -> str:
    response = cluster.api(index).post("/log/notes", {"text": text})
    assert response.status == 201, response.text
    return response.data["id"]


def wait_converged(cluster: LocalCluster, indexes: list[int], expected: set[str], timeout_s: float = 30.0) -> list[str]:
    """Wait until every node in `indexes` shows exactly `expected`, in one shared order; return it."""
    def same_order() -> list[str] | None:
        orders = [visible_ids(cluster.api(index)) for index in indexes]
        if set(orders[0]) == expected and all(order == orders[0] for order in orders):
            return orders[0]
        return None
    return cluster.wait_for(same_order, timeout_s, f"nodes {indexes} to show the same {len(expected)} entries")


def post_raw(api: NodeApi, path: str, body: bytes) -> tuple[int, bytes]:
    """What a hostile peer does: POST raw bytes to a gossip endpoint."""
    request = urllib.request.Request(api.base_url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/msgpack"})
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_notes_from_different_nodes_converge_in_one_order(synapse_cluster) -> None:
    cluster = synapse_cluster(nodes=5, validators=1).local
    created = {post_note(cluster, number % 5, f"note {number} from node {number % 5}") for number in range(15)}
    order = wait_converged(cluster, list(range(5)), created)
    assert len(order) == 15
    for index in range(5):
        health = cluster.api(index).get("/health").data
        assert health["entries"] == 15 and health["pending"] == 0
    # A node that found a peer not yet listening at start counts it up again only when a call to it
    # succeeds: on a network now quiet, an anti-entropy round (every 3.2 s at most once backed off) that
    # picks it among 4 peers, or a forward. Forward waves send fewer messages than one forward per entry
    # did, so this can take more than the 20 s once waited (seen once in CI: 19.5 s).
    cluster.wait_for(lambda: all(cluster.api(i).get("/health").data["peers_up"] == 4 for i in range(5)), 60,
                     "every node to count its 4 peers as up")


def test_a_killed_node_keeps_what_it_acknowledged_and_catches_up(synapse_cluster) -> None:
    cluster = synapse_cluster(nodes=4, validators=1).local
    acknowledged = [post_note(cluster, 3, f"acknowledged {number}") for number in range(5)]
    cluster.kill(3)  # at once: its notes may not have been gossiped yet, but they are on its disk
    entries_file = cluster.nodes[3].data_dir / "log" / "entries.bin"
    with open(entries_file, "ab") as torn:  # what a crash in the middle of a write leaves
        torn.write(b"\x00\x00\x02\x00\xde\xad\xbe\xef half a record")
    while_down = {post_note(cluster, number % 3, f"while node 3 is down {number}") for number in range(10)}
    cluster.restart(3)
    for entry_id in acknowledged:
        response = cluster.api(3).get(f"/log/{entry_id}")
        assert response.status == 200 and response.data["visible"], f"acknowledged entry {entry_id} was lost"
    assert metrics_of(cluster.api(3))[("synapse_log_torn_tail_bytes", "")] > 0
    wait_converged(cluster, list(range(4)), set(acknowledged) | while_down)
    after = cluster.api(3).post("/log/notes", {"text": "after the restart"})
    assert after.status == 201 and after.data["sequence"] == 6  # no sequence number reused after the crash
    wait_converged(cluster, list(range(4)), set(acknowledged) | while_down | {after.data["id"]})


def test_a_node_whose_log_was_wiped_never_reuses_its_sequence_numbers(synapse_cluster) -> None:
    cluster = synapse_cluster(nodes=3, validators=1).local
    before = {post_note(cluster, 2, f"before the wipe {number}") for number in range(4)}
    wait_converged(cluster, [0, 1, 2], before)
    cluster.kill(2)
    for path in (cluster.nodes[2].data_dir / "log").iterdir():  # the operator wiped the log, kept the key
        path.unlink()
    cluster.pause(0)
    cluster.pause(1)  # the peers that hold its four entries are slow to answer at first
    cluster.restart(2)
    with ThreadPoolExecutor(1) as pool:
        posted = pool.submit(cluster.api(2).post, "/log/notes", {"text": "after the wipe"})
        # The write waits for a peer (at most limits.gossip_first_write_wait_ms, 3 s) ...
        poll_until(lambda: metrics_of(cluster.api(2)).get(("synapse_gossip_writes_held_total", ""), 0) >= 1,
                   what="node 2 to hold the write until a peer tells it of its own entries", timeout_s=10)
        cluster.resume(0)
        cluster.resume(1)
        after = posted.result(timeout=30)
    # ... and continues after the entries the peers hold, instead of signing a second #1.
    assert after.status == 201 and after.data["sequence"] == 5, after.text
    wait_converged(cluster, [0, 1, 2], before | {after.data["id"]})
    entries = cluster.api(0).get("/log?limit=500").data["entries"]
    assert sorted(entry["sequence"] for entry in entries if entry["author"] == cluster.nodes[2].node_id) == [1, 2, 3, 4, 5]


def test_a_hostile_peer_is_refused_and_the_others_stay_healthy(synapse_cluster) -> None:
    cluster = synapse_cluster(nodes=3, validators=1).local
    target = cluster.api(0)
    honest_id = post_note(cluster, 1, "honest")
    wait_converged(cluster, [0, 1, 2], {honest_id})
    # Act as a peer: ask for the honest entry's raw bytes by id, as anti-entropy does.
    status, reply = post_raw(target, "/gossip/sync", Sync(sender="", digest_hash=b"\x00" * 8, digest=None,
                                                          want=(honest_id,)).encode())
    assert status == 200
    honest_raw = decode_message(reply, Synced, array_length_max=1_000).raws[0]

    stranger = Identity.generate()
    now = Hlc(int(time.time() * 1000), 0)
    forged = forge(stranger, sequence=1, hlc=now, author=cluster.nodes[2].node_id).raw
    unknown = forge(stranger, sequence=1, hlc=now).raw
    status, reply = post_raw(target, "/gossip/push", Push(sender="", raws=(forged, unknown) + (honest_raw,) * 10).encode())
    assert status == 200
    assert decode_message(reply, Pushed, array_length_max=16) == Pushed(added=0, duplicate=10, refused=2)
    assert post_raw(target, "/gossip/push", b"\xc1not msgpack")[0] == 400
    assert post_raw(target, "/gossip/sync", msgpack.packb(["sync", b"", b"\x00" * 8, {"zz": [1]}, []]))[0] == 400
    assert post_raw(target, "/gossip/push", Push(sender="", raws=(b"x" * (5 * 1024 * 1024),)).encode())[0] == 413

    samples = metrics_of(target)
    assert samples[("synapse_entries_refused_total", 'reason="bad_signature"')] == 1
    assert samples[("synapse_entries_refused_total", 'reason="unknown_author"')] == 1
    assert samples[("synapse_gossip_requests_refused_total", 'reason="malformed"')] == 2
    assert samples[("synapse_gossip_requests_refused_total", 'reason="too_large"')] == 1
    assert samples[("synapse_gossip_entries_received_total", 'status="duplicate"')] >= 10
    for index in (1, 2):  # nothing hostile was forwarded
        assert not any(name == "synapse_entries_refused_total" for name, _ in metrics_of(cluster.api(index)))

    after = {post_note(cluster, index, f"after the attack {index}") for index in range(3)}
    wait_converged(cluster, [0, 1, 2], {honest_id} | after)
    for index in range(3):
        assert cluster.api(index).get("/health").data["status"] == "ok"
