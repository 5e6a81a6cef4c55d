"""Golden vectors of the gossip wire format: the exact bytes each message type encodes to today.

Why: nodes of different versions gossip with each other during an upgrade, so the bytes on the wire
may change only on purpose. These hex literals were produced by node/gossip.py before the sans-IO
split (commit 4c43d64) and must stay identical after it; decoding them must give the message back.
"""

from __future__ import annotations

import pytest

from node.gossip import Offer, Push, Pushed, Sync, Synced, Want, decode_message, digest_hash_of

AUTHOR = "0123456789abcdef"
ID_A, ID_B = "ab" * 32, "cd" * 32
DIGEST = {AUTHOR: [[3, b"\x01" * 16], [3, b"\x03" * 16]], "fedcba9876543210": 2}
DIGEST_HASH = bytes.fromhex("c5f88f4dcac97306")

GOLDEN = [
    ("offer", Offer(sender=AUTHOR, ids=(ID_A, ID_B)),
     "93a56f66666572c4080123456789abcdef92c420" + "ab" * 32 + "c420" + "cd" * 32),
    ("offer_anonymous_empty", Offer(sender="", ids=()), "93a56f66666572c40090"),
    ("want", Want(ids=(ID_A,)), "92a477616e7491c420" + "ab" * 32),
    ("push", Push(sender=AUTHOR, raws=(b"\x01\x02\x03", b"")), "93a470757368c4080123456789abcdef92c403010203c400"),
    ("pushed", Pushed(added=1, duplicate=200, refused=10000), "94a670757368656401ccc8cd2710"),
    ("sync_hash_only", Sync(sender=AUTHOR, digest_hash=DIGEST_HASH, digest=None, want=(ID_B,)),
     "95a473796e63c4080123456789abcdefc408c5f88f4dcac97306c091c420" + "cd" * 32),
    ("sync_full", Sync(sender=AUTHOR, digest_hash=DIGEST_HASH, digest=DIGEST, want=()),
     "95a473796e63c4080123456789abcdefc408c5f88f4dcac9730682b030313233343536373839616263646566929203c410"
     "010101010101010101010101010101019203c41003030303030303030303030303030303b0666564636261393837363534333231300290"),
    ("synced_in_sync", Synced(digest=None, raws=(), more=False), "94a673796e636564c090c2"),
    ("synced_full", Synced(digest=DIGEST, raws=(b"xxx",), more=True),
     "94a673796e63656482b030313233343536373839616263646566929203c410010101010101010101010101010101019203c410"
     "03030303030303030303030303030303b0666564636261393837363534333231300291c403787878c3"),
]


@pytest.mark.parametrize("name, message, wire_hex", GOLDEN, ids=[name for name, _, _ in GOLDEN])
def test_each_message_encodes_to_its_golden_bytes_and_back(name: str, message: object, wire_hex: str) -> None:
    assert message.encode().hex() == wire_hex
    decoded = decode_message(bytes.fromhex(wire_hex), type(message), array_length_max=256)
    assert decoded == message and decoded.encode().hex() == wire_hex


def test_digest_hashes_are_golden() -> None:
    assert digest_hash_of(DIGEST) == DIGEST_HASH
    assert digest_hash_of({}).hex() == "9e076ceaf246b600"
    reordered = {"fedcba9876543210": 2, AUTHOR: [[3, b"\x01" * 16], [3, b"\x03" * 16]]}
    assert digest_hash_of(reordered) == DIGEST_HASH  # the hash does not depend on map order
