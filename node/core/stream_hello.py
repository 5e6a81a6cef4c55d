"""The hello a node sends when it opens a gossip stream: who it is, signed, so that the node it called
may send its own calls back over the same stream (node/gossip_stream.py).

Why it exists: every node calls every peer sooner or later (peers are chosen at random), so without it
a pair of nodes holds two streams, one each way, and a stream costs ~13-14 KB in each process (the
websocket, its connection and request objects): at N=200, 199 streams each way per node, ~5 MB. With
the hello, the first stream between two nodes carries the calls of both, and a node holds half as many.

Why it is signed: the node that accepts a stream would send its calls meant for node A over it. Taken
on trust, a stranger on the port claiming to be A would receive them (and could drop them), so the
claim is checked against the genesis key of A:

    hello          = "<from id>.<to id>.<at ms>.<nonce: 32 hex>.<ed25519 signature: 128 hex>"
    signed message = b"synapse-ng/gossip-stream-hello/1\\n<from id>\\n<to id>\\n<at ms>\\n<nonce>"

- the from id is a genesis member other than this node, and the signature is by its genesis key;
- the to id is this node's: a hello sent to another node is worth nothing here;
- at ms is within `skew_ms` of this node's clock, and the nonce was not seen within that window
  (`HelloReplays`): whoever saw a hello on the wire cannot open a stream with it again.

A hello that fails any check does not refuse the stream: its calls are answered as any stranger's are
(with every bound), and this node sends its own calls to that peer over streams of its own.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping

from node.errors import BadRequest

HELLO_HEADER = "Synapse-Stream-Hello"
HELLO_CONTEXT = b"synapse-ng/gossip-stream-hello/1"
HELLO_BYTES_MAX = 256
NONCE_HEX_LENGTH = 32
_HELLO = re.compile(r"([0-9a-f]{16})\.([0-9a-f]{16})\.([0-9]{1,15})\.([0-9a-f]{32})\.([0-9a-f]{128})")

Verify = Callable[[bytes, bytes, bytes], bool]      # (public key, message, signature) -> valid


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    from_id: str
    to_id: str
    at_ms: int
    nonce: str
    signature: bytes


def signed_message(*, from_id: str, to_id: str, at_ms: int, nonce: str) -> bytes:
    return b"\n".join((HELLO_CONTEXT, from_id.encode(), to_id.encode(), str(at_ms).encode(), nonce.encode()))


def make_hello(*, from_id: str, to_id: str, at_ms: int, nonce: str, sign: Callable[[bytes], bytes]) -> str:
    assert len(nonce) == NONCE_HEX_LENGTH, "a nonce is 16 random bytes in hex"
    signature = sign(signed_message(from_id=from_id, to_id=to_id, at_ms=at_ms, nonce=nonce))
    return f"{from_id}.{to_id}.{at_ms}.{nonce}.{signature.hex()}"


def parse_hello(text: str) -> Hello:
    """The fields of an untrusted hello, or BadRequest("malformed")."""
    match = _HELLO.fullmatch(text) if len(text) <= HELLO_BYTES_MAX else None
    if match is None:
        raise BadRequest("malformed", hint=f"{HELLO_HEADER}: <from>.<to>.<at ms>.<nonce>.<signature> (node/core/stream_hello.py)")
    from_id, to_id, at_ms, nonce, signature = match.groups()
    return Hello(from_id=from_id, to_id=to_id, at_ms=int(at_ms), nonce=nonce, signature=bytes.fromhex(signature))


def check_hello(hello: Hello, *, self_id: str, public_keys: Mapping[str, bytes], verify: Verify,
                now_ms: int, skew_ms: int) -> None:
    """Raises BadRequest whose message is the reason (for the refusal counter), or returns: the hello
    proves that its from id opened the stream, for this node, within skew_ms of now."""
    if hello.to_id != self_id:
        raise BadRequest("not_for_this_node")
    key = public_keys.get(hello.from_id)
    if key is None or hello.from_id == self_id:
        raise BadRequest("unknown_member")
    if abs(now_ms - hello.at_ms) > skew_ms:
        raise BadRequest("stale")
    message = signed_message(from_id=hello.from_id, to_id=hello.to_id, at_ms=hello.at_ms, nonce=hello.nonce)
    if not verify(key, message, hello.signature):
        raise BadRequest("bad_signature")


class HelloReplays:
    """Nonces of the hellos accepted within the last window, at most `entries_max` of them.

    Only hellos that passed `check_hello` are remembered (a stranger cannot fill this without a
    member's key); a hello older than the window is refused by its time, so a nonce is forgotten then.
    Full (a member opening streams faster than entries_max per window): new hellos are refused until
    old ones expire; their streams still carry their opener's calls."""

    def __init__(self, *, window_ms: int, entries_max: int) -> None:
        assert window_ms > 0 and entries_max > 0, "a replay window and a bound"
        self._window_ms = window_ms
        self._entries_max = entries_max
        self._seen: OrderedDict[str, int] = OrderedDict()     # nonce -> when it expires (ms), oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, nonce: str, now_ms: int) -> bool:
        """True the first time a nonce is seen within the window; False for a replay, or when full."""
        while self._seen:
            oldest, expires_ms = next(iter(self._seen.items()))
            if expires_ms > now_ms:
                break
            del self._seen[oldest]
        if nonce in self._seen or len(self._seen) >= self._entries_max:
            return False
        self._seen[nonce] = now_ms + 2 * self._window_ms      # the hello's time may lead this clock by a window
        return True
