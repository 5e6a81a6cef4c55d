"""Gossip frames: a gossip call as one binary websocket message each way (node/gossip_stream.py).

Why it works as it does: over HTTP a gossip call is one POST (its body a message of
node/core/gossip_messages.py), and aiohttp's request and response machinery costs about 150 us of CPU
per call on both sides together, against about 65 us for one binary message each way on an open
websocket (bench/bench_gossip_transport.py). The stream carries the same bodies, unchanged, behind a fixed header, so everything the
HTTP path checks is checked the same way, and an HTTP answer's status travels with the reply:

    request  = call id (u32, big-endian) | message code (u8: 1 offer, 2 push, 3 sync) | message body
    reply    = call id (u32, big-endian) | HTTP status (u16) | body (the reply's msgpack on 200,
               the JSON error {"error", "message", "hint"} otherwise)

A call id is the caller's own: replies may come in any order (a push waits for the disk while an
offer is answered at once), and a reply to a call the caller gave up on is dropped there.

One stream carries the calls of both its ends (after a signed hello, node/core/stream_hello.py): the
node that accepted a stream sets the top bit of its call ids, the node that opened it never does, so
each end tells a reply to its own call (its bit) from a call of the other end (the other bit).
"""

from __future__ import annotations

import struct
from typing import Mapping

from node.core.gossip_messages import Offer, Push, Sync
from node.errors import BadRequest

REQUEST_HEADER = struct.Struct(">IB")
REPLY_HEADER = struct.Struct(">IH")
CALL_ID_MAX = 2**32 - 1
ACCEPTOR_CALL_BIT = 2**31         # set in the call ids of the node that accepted the stream
CALL_NUMBER_MAX = ACCEPTOR_CALL_BIT - 1
CALL_ID = struct.Struct(">I")
MESSAGE_CODES: Mapping[type, int] = {Offer: 1, Push: 2, Sync: 3}
MESSAGE_TYPES_BY_CODE: Mapping[int, type] = {code: message_type for message_type, code in MESSAGE_CODES.items()}
FRAME_HEADER_BYTES_MAX = max(REQUEST_HEADER.size, REPLY_HEADER.size)
STATUS_MIN, STATUS_MAX = 100, 599


def _bad(message: str) -> BadRequest:
    return BadRequest(f"malformed gossip frame: {message}",
                      hint="a gossip stream carries binary frames as documented in node/core/gossip_frames.py")


def encode_request(call_id: int, message_type: type, body: bytes) -> bytes:
    assert 0 <= call_id <= CALL_ID_MAX, "call ids wrap before 2**32"
    return REQUEST_HEADER.pack(call_id, MESSAGE_CODES[message_type]) + body


def decode_request(frame: bytes) -> tuple[int, type, bytes]:
    """(call id, message type, body) of an untrusted request frame, or BadRequest."""
    if len(frame) < REQUEST_HEADER.size:
        raise _bad(f"a request frame has a {REQUEST_HEADER.size}-byte header, got {len(frame)} bytes")
    call_id, code = REQUEST_HEADER.unpack_from(frame)
    message_type = MESSAGE_TYPES_BY_CODE.get(code)
    if message_type is None:
        raise _bad(f"unknown message code {code} (1 offer, 2 push, 3 sync)")
    return call_id, message_type, frame[REQUEST_HEADER.size:]


def encode_reply(call_id: int, status: int, body: bytes) -> bytes:
    assert 0 <= call_id <= CALL_ID_MAX and STATUS_MIN <= status <= STATUS_MAX, "a reply answers a decoded request"
    return REPLY_HEADER.pack(call_id, status) + body


def decode_reply(frame: bytes) -> tuple[int, int, bytes]:
    """(call id, HTTP status, body) of an untrusted reply frame, or BadRequest."""
    if len(frame) < REPLY_HEADER.size:
        raise _bad(f"a reply frame has a {REPLY_HEADER.size}-byte header, got {len(frame)} bytes")
    call_id, status = REPLY_HEADER.unpack_from(frame)
    if not STATUS_MIN <= status <= STATUS_MAX:
        raise _bad(f"status {status} is not an HTTP status")
    return call_id, status, frame[REPLY_HEADER.size:]


def call_id_for(number: int, *, opened_here: bool) -> int:
    """The call id of this node's call number `number` on a stream it opened or accepted."""
    assert 0 <= number <= CALL_NUMBER_MAX, "call numbers wrap before 2**31"
    return number if opened_here else number | ACCEPTOR_CALL_BIT


def is_reply(frame: bytes, *, opened_here: bool) -> bool:
    """True: the frame answers a call of this end (its call id carries this end's bit); False: a call
    from the other end, or a frame too short to say (decode_request refuses it)."""
    if len(frame) < CALL_ID.size:
        return False
    accepted_side = bool(CALL_ID.unpack_from(frame)[0] & ACCEPTOR_CALL_BIT)
    return accepted_side != opened_here
