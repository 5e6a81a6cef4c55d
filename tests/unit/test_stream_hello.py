"""The signed hello of a gossip stream (node/core/stream_hello.py): what lets a node send its calls
back over a stream another node opened. Each way a stranger could claim to be a member is refused."""

from __future__ import annotations

import pytest

from node.core.stream_hello import HelloReplays, check_hello, make_hello, parse_hello
from node.errors import BadRequest
from node.identity import Identity, verify_signature

A, B, C = Identity.generate(), Identity.generate(), Identity.generate()
KEYS = {identity.node_id: identity.public_key for identity in (A, B)}
NOW_MS = 1_760_000_000_000
NONCE = "0f" * 16


def hello(sender: Identity = A, to_id: str = B.node_id, at_ms: int = NOW_MS, nonce: str = NONCE, *, claim: str | None = None) -> str:
    return make_hello(from_id=claim or sender.node_id, to_id=to_id, at_ms=at_ms, nonce=nonce, sign=sender.sign)


def check(text: str, *, self_id: str = B.node_id, now_ms: int = NOW_MS) -> None:
    check_hello(parse_hello(text), self_id=self_id, public_keys=KEYS, verify=verify_signature, now_ms=now_ms, skew_ms=60_000)


def test_a_member_s_hello_to_this_node_within_the_window_is_accepted() -> None:
    check(hello())
    check(hello(at_ms=NOW_MS - 60_000))
    check(hello(at_ms=NOW_MS + 60_000))


@pytest.mark.parametrize("text, reason", [
    (hello(to_id=A.node_id), "not_for_this_node"),                 # sent to another node: not replayable here
    (hello(C), "unknown_member"),                                  # a stranger's own key
    (hello(B, to_id=B.node_id), "unknown_member"),                 # this node's own id
    (hello(C, claim=A.node_id), "bad_signature"),                  # a stranger claiming to be A
    (hello(at_ms=NOW_MS - 60_001), "stale"),
    (hello(at_ms=NOW_MS + 60_001), "stale"),
    (hello()[:-2] + ("00" if not hello().endswith("00") else "11"), "bad_signature"),
    (hello().replace(NONCE, "1f" + NONCE[2:]), "bad_signature"),   # the nonce is signed
    ("", "malformed"),
    (hello() + ".x", "malformed"),
    (hello().upper(), "malformed"),
    ("a" * 10_000, "malformed"),
])
def test_every_false_claim_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check(text)
    assert refused.value.message == reason


def test_a_replayed_hello_is_refused_within_the_window_and_the_bound_holds() -> None:
    replays = HelloReplays(window_ms=60_000, entries_max=3)
    assert replays.remember("n1", NOW_MS) is True
    assert replays.remember("n1", NOW_MS + 1) is False, "the same hello again"
    assert replays.remember("n1", NOW_MS + 119_999) is False, "a hello may lead this clock by a window"
    assert replays.remember("n2", NOW_MS + 1) and replays.remember("n3", NOW_MS + 2)
    assert replays.remember("n4", NOW_MS + 3) is False, "full: refused, not forgetting a live nonce"
    assert replays.remember("n4", NOW_MS + 120_000) is True and len(replays) == 3, "n1 expired and was forgotten"


def test_each_end_of_a_stream_tells_replies_to_its_calls_from_calls_of_the_other_end() -> None:
    from node.core.gossip_frames import CALL_NUMBER_MAX, call_id_for, encode_reply, encode_request, is_reply
    from node.core.gossip_messages import Push
    for number in (0, 1, CALL_NUMBER_MAX):
        opener_call, acceptor_call = call_id_for(number, opened_here=True), call_id_for(number, opened_here=False)
        assert opener_call != acceptor_call
        assert not is_reply(encode_request(opener_call, Push, b"x"), opened_here=False), "the opener's call, at the acceptor"
        assert is_reply(encode_reply(opener_call, 200, b""), opened_here=True), "its reply, back at the opener"
        assert not is_reply(encode_request(acceptor_call, Push, b"x"), opened_here=True), "the acceptor's call, at the opener"
        assert is_reply(encode_reply(acceptor_call, 200, b""), opened_here=False), "its reply, back at the acceptor"
    assert not is_reply(b"\x80\x00", opened_here=False), "too short to say: a request, which decoding refuses"
