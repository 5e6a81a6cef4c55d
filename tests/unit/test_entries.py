"""Entries: canonical encoding, ids, signing bytes, body schemas, and every decode refusal.

The attacker here holds a member key: they can sign anything, so what protects the network is that
only one encoding of each entry exists and every field is checked before anything else sees it.
"""

import hashlib
import struct

import msgpack
import pytest

from node.core.entries import (
    KINDS, SIGNING_DOMAIN, Entry, decode_entry, make_entry, safe_text, signing_bytes_of, signing_prefix, unsafe_character,
)
from node.core.hlc import LOGICAL_MAX, WALL_MS_MAX, Hlc, hlc_tick
from node.errors import ConfigError, EntryRefused
from node.identity import verify_signature
from tests.logtools import (
    NETWORK_ID, forge_raw,
    NOW_MS, close_body, execute_body, forge, identity, note_body, proposal_body, ratify_body, report_body, rollback_proposal_body,
    sample_bodies, vote_body,
)

LIMIT = 64 * 1024
PARENT_1, PARENT_2 = "1" * 64, "2" * 64
ALICE = identity(0)


def decode(raw: bytes) -> Entry:
    return decode_entry(raw, entry_size_max_bytes=LIMIT)


def refusal(raw: bytes) -> str:
    with pytest.raises(EntryRefused) as caught:
        decode(raw)
    assert caught.value.message  # every refusal says what went wrong
    return caught.value.reason


def packed(*items: object) -> list[bytes]:
    return [msgpack.packb(item, use_bin_type=True) for item in items]


def assemble(pieces: list[bytes], *, sign_with=ALICE, signature: bytes | None = None) -> bytes:
    """An 8-element entry array from 7 already-encoded pieces, signed over exactly those bytes, as an
    attacker with a member key would do for a non-canonical spelling."""
    unsigned = bytes((0x97,)) + b"".join(pieces)
    signature = signature if signature is not None else sign_with.sign(signing_prefix(NETWORK_ID) + unsigned)
    return bytes((0x98,)) + b"".join(pieces) + msgpack.packb(signature, use_bin_type=True)


def canonical_pieces(*, sequence: int = 2, parents=(PARENT_1, PARENT_2), body=None) -> list[bytes]:
    return packed(1, "NOTE", ALICE.node_id, sequence, [bytes.fromhex(p) for p in parents], [NOW_MS, 0],
                  body if body is not None else note_body())


# --- round trip and identity ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_byte_for_byte_and_verifies(kind):
    entry = make_entry(network_id=NETWORK_ID, kind=kind, author=ALICE.node_id, sequence=3, parents=(PARENT_2, PARENT_1),
                       hlc=Hlc(NOW_MS, 7), body=sample_bodies()[kind], sign=ALICE.sign)
    decoded = decode(entry.raw)
    assert decoded == entry and decoded.raw == entry.raw and decoded.id == entry.id
    assert (decoded.kind, decoded.author, decoded.sequence, decoded.hlc) == (kind, ALICE.node_id, 3, Hlc(NOW_MS, 7))
    assert decoded.parents == (PARENT_1, PARENT_2)  # sorted
    assert decoded.body == entry.body == sample_bodies()[kind]
    assert entry.id == hashlib.sha256(entry.raw).hexdigest()
    assert verify_signature(ALICE.public_key, decoded.signing_bytes(NETWORK_ID), decoded.signature)


def test_signing_bytes_are_domain_separated_bound_to_the_network_and_exclude_the_signature():
    entry = forge(ALICE, sequence=1)
    message = entry.signing_bytes(NETWORK_ID)
    prefix = SIGNING_DOMAIN + bytes((len(NETWORK_ID),)) + NETWORK_ID.encode()
    assert message.startswith(prefix) and signing_prefix(NETWORK_ID) == prefix
    assert entry.signature not in message
    assert msgpack.unpackb(message[len(prefix):]) == msgpack.unpackb(entry.raw)[:7]
    assert signing_bytes_of(entry.raw, NETWORK_ID) == message
    # Neither the bare array nor the array with only the domain is what was signed.
    assert not verify_signature(ALICE.public_key, message[len(prefix):], entry.signature)
    assert not verify_signature(ALICE.public_key, SIGNING_DOMAIN + message[len(prefix):], entry.signature)


def test_an_entry_signed_for_one_network_verifies_there_and_nowhere_else():
    # The same key, the same entry bytes (ids do not change with the network), two networks.
    for_a = forge(ALICE, sequence=1, network_id="net-a")
    for_b = forge(ALICE, sequence=1, network_id="net-b")
    assert for_a.id != for_b.id and for_a.raw[:-64] == for_b.raw[:-64]   # only the signature differs
    assert verify_signature(ALICE.public_key, for_a.signing_bytes("net-a"), for_a.signature)
    assert not verify_signature(ALICE.public_key, for_a.signing_bytes("net-b"), for_a.signature)
    # The length byte keeps ("net-a", entry) apart from ("net-", "a" + entry) and the like.
    assert signing_prefix("net-a") + b"x" != signing_prefix("net-") + b"ax"


@pytest.mark.parametrize("bad", ["", "net a", "n\u00e9t", "x" * 65, None, "-net", "net\n"])
def test_a_network_id_genesis_would_refuse_signs_nothing(bad):
    with pytest.raises(ConfigError, match="network id"):
        forge(ALICE, sequence=1, network_id=bad)


def test_one_entry_has_one_encoding_whatever_the_input_order_or_container():
    first = make_entry(network_id=NETWORK_ID, kind="PROPOSAL", author=ALICE.node_id, sequence=1, parents=[PARENT_2, PARENT_1, PARENT_2],
                       hlc=Hlc(NOW_MS, 0), body=dict(reversed(list(proposal_body().items()))), sign=ALICE.sign)
    second = make_entry(network_id=NETWORK_ID, kind="PROPOSAL", author=ALICE.node_id, sequence=1, parents=(PARENT_1, PARENT_2),
                        hlc=Hlc(NOW_MS, 0), body=proposal_body(), sign=ALICE.sign)
    assert first.raw == second.raw and first.parents == (PARENT_1, PARENT_2)
    certificate_as_tuple = execute_body(certificate=(dict(reversed(list(execute_body()["certificate"][0].items()))),))
    third = forge(ALICE, sequence=1, kind="EXECUTE_UPGRADE", body=certificate_as_tuple)
    assert third.raw == forge(ALICE, sequence=1, kind="EXECUTE_UPGRADE", body=execute_body()).raw


def test_the_entry_does_not_keep_the_callers_body():
    body = note_body("before")
    entry = forge(ALICE, sequence=1, body=body)
    body["text"] = "after"
    assert entry.body == {"text": "before"}
    assert decode(entry.raw).body == {"text": "before"}


def test_entries_compare_and_hash_by_content():
    entry = forge(ALICE, sequence=1)
    again = decode(entry.raw)
    other = forge(ALICE, sequence=1, body=note_body("other"))
    assert entry == again and hash(entry) == hash(again) and len({entry, again, other}) == 2
    assert entry != other and entry.id != other.id


def test_an_entry_built_with_bytes_that_do_not_match_its_fields_is_refused():
    entry = forge(ALICE, sequence=1)
    other = forge(ALICE, sequence=1, body=note_body("other"))
    with pytest.raises(EntryRefused) as caught:
        Entry(kind=entry.kind, author=entry.author, sequence=entry.sequence, parents=entry.parents, hlc=entry.hlc,
              body=entry.body, signature=entry.signature, raw=other.raw)
    assert caught.value.reason == "non_canonical"


# --- non-canonical encodings are refused (even when validly signed) ---------------------------------


def test_the_hand_assembled_canonical_form_is_accepted():
    """Guards the tests below: the assembly itself is right, so only the one change makes them fail."""
    raw = assemble(canonical_pieces())
    entry = decode(raw)
    assert verify_signature(ALICE.public_key, entry.signing_bytes(NETWORK_ID), entry.signature)


def test_body_keys_out_of_order_are_non_canonical():
    body = proposal_body()
    unsorted = dict(reversed(sorted(body.items())))
    pieces = canonical_pieces()
    pieces[1] = msgpack.packb("PROPOSAL")
    pieces[6] = msgpack.packb(unsorted, use_bin_type=True)
    assert refusal(assemble(pieces)) == "non_canonical"
    pieces[6] = msgpack.packb(dict(sorted(body.items())), use_bin_type=True)
    assert decode(assemble(pieces)).kind == "PROPOSAL"


def test_a_long_form_integer_is_non_canonical():
    pieces = canonical_pieces(sequence=2)
    pieces[3] = b"\xcf" + struct.pack(">Q", 2)  # uint64 spelling of 2
    assert refusal(assemble(pieces)) == "non_canonical"


def test_a_long_form_string_header_is_non_canonical():
    pieces = canonical_pieces()
    pieces[1] = b"\xd9\x04NOTE"  # str8 spelling of a 4-character string
    assert refusal(assemble(pieces)) == "non_canonical"


def test_unsorted_or_repeated_parents_are_non_canonical():
    pieces = canonical_pieces()
    pieces[4] = msgpack.packb([bytes.fromhex(PARENT_2), bytes.fromhex(PARENT_1)], use_bin_type=True)
    assert refusal(assemble(pieces)) == "non_canonical"
    pieces[4] = msgpack.packb([bytes.fromhex(PARENT_1), bytes.fromhex(PARENT_1)], use_bin_type=True)
    assert refusal(assemble(pieces)) == "non_canonical"


def test_a_repeated_body_key_is_non_canonical():
    pieces = canonical_pieces()
    pieces[6] = b"\x82" + msgpack.packb("text") + msgpack.packb("a") + msgpack.packb("text") + msgpack.packb("b")
    assert refusal(assemble(pieces)) == "non_canonical"


def test_a_long_form_signature_header_is_non_canonical():
    raw = assemble(canonical_pieces())
    long_form = raw[:-66] + b"\xc5\x00\x40" + raw[-64:]  # bin16 spelling of 64 bytes
    assert refusal(long_form) == "non_canonical"


def test_a_string_where_bytes_belong_is_malformed_not_silently_converted():
    pieces = canonical_pieces()
    pieces[4] = msgpack.packb([bytes.fromhex(PARENT_1)], use_bin_type=False)  # raw str, not bin
    assert refusal(assemble(pieces)) == "malformed"


# --- malformed, oversized, unknown kind -----------------------------------------------------------


def test_oversized_is_refused_before_parsing():
    entry = forge(ALICE, sequence=1, body=note_body("x" * 2000))
    with pytest.raises(EntryRefused) as caught:
        decode_entry(entry.raw, entry_size_max_bytes=len(entry.raw) - 1)
    assert caught.value.reason == "oversized"
    assert decode_entry(entry.raw, entry_size_max_bytes=len(entry.raw)) == entry


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", b"\x98", b"not msgpack at all \xff", msgpack.packb({"a": 1}), msgpack.packb([1, 2, 3]),
    msgpack.packb([1] * 9), msgpack.packb(1.5),
])
def test_garbage_is_malformed(raw):
    assert refusal(raw) == "malformed"


def test_truncated_and_extended_entries_are_malformed():
    raw = forge(ALICE, sequence=1).raw
    for cut in (1, 10, len(raw) // 2, len(raw) - 1):
        assert refusal(raw[:cut]) == "malformed"
    assert refusal(raw + b"\x00") == "malformed"


def test_non_bytes_input_is_malformed():
    assert refusal("a string") == "malformed"


@pytest.mark.parametrize("index,value", [
    (0, 2), (0, True), (2, "ABCDEF0123456789"), (2, "short"), (2, 7), (3, 0), (3, -1), (3, True), (3, 2**60),
    (4, [b"\x01" * 31]), (4, "parents"), (4, [b"\x01" * 32] * 65), (5, [NOW_MS]), (5, [NOW_MS, -1]),
    (5, [WALL_MS_MAX + 1, 0]), (5, [NOW_MS, LOGICAL_MAX + 1]), (5, [1.5, 0]), (5, [NOW_MS, False]),
])
def test_bad_fields_are_malformed(index, value):
    pieces = canonical_pieces(sequence=1, parents=())
    pieces[index] = msgpack.packb(value, use_bin_type=True)
    assert refusal(assemble(pieces)) == "malformed"


def test_a_wrong_length_signature_is_malformed():
    raw = assemble(canonical_pieces())
    assert refusal(raw[:-66] + msgpack.packb(b"\x01" * 63, use_bin_type=True)) == "malformed"


def test_ext_types_timestamps_and_int_map_keys_are_malformed():
    for value in (msgpack.ExtType(5, b"xx"), {1: "int key"}):
        pieces = canonical_pieces(sequence=1, parents=())
        pieces[6] = msgpack.packb(value, use_bin_type=True)
        assert refusal(assemble(pieces)) == "malformed"
    pieces = canonical_pieces(sequence=1, parents=())
    pieces[6] = b"\xd6\xff" + struct.pack(">I", 1)  # msgpack timestamp32
    assert refusal(assemble(pieces)) == "malformed"


def test_invalid_utf8_is_malformed():
    pieces = canonical_pieces(sequence=1, parents=())
    pieces[6] = b"\x81\xa4text\xa2\xff\xfe"
    assert refusal(assemble(pieces)) == "malformed"


def test_deep_nesting_is_refused_without_crashing():
    pieces = canonical_pieces(sequence=1, parents=())
    pieces[6] = b"\x81\xa4text" + b"\x91" * 5000 + b"\x00"
    assert refusal(assemble(pieces)) in {"malformed", "bad_body"}


def test_huge_declared_lengths_are_refused_without_allocating():
    pieces = canonical_pieces(sequence=1, parents=())
    pieces[6] = b"\x81\xa4text\xdb\xff\xff\xff\xf0"  # a str32 claiming ~4 GiB
    assert refusal(assemble(pieces)) == "malformed"
    pieces[6] = b"\xdd\xff\xff\xff\xf0"  # an array32 claiming ~4 billion items
    assert refusal(assemble(pieces)) == "malformed"


def test_an_unknown_kind_is_refused_by_name():
    pieces = canonical_pieces(sequence=1, parents=())
    pieces[1] = msgpack.packb("TRANSFER_FUNDS")
    assert refusal(assemble(pieces)) == "unknown_kind"
    with pytest.raises(EntryRefused) as caught:
        make_entry(network_id=NETWORK_ID, kind="TRANSFER_FUNDS", author=ALICE.node_id, sequence=1, parents=(), hlc=Hlc(NOW_MS, 0),
                   body={}, sign=ALICE.sign)
    assert caught.value.reason == "unknown_kind" and "TRANSFER_FUNDS" in caught.value.message


# --- body schemas ---------------------------------------------------------------------------------


def body_refusal(kind: str, body: dict) -> EntryRefused:
    signed = []
    with pytest.raises(EntryRefused) as caught:
        make_entry(network_id=NETWORK_ID, kind=kind, author=ALICE.node_id, sequence=1, parents=(), hlc=Hlc(NOW_MS, 0),
                   body=body, sign=lambda message: signed.append(message) or ALICE.sign(message))
    assert signed == [], "nothing is signed when the body is refused"
    # The same body arriving from the wire is refused too.
    pieces = canonical_pieces(sequence=1, parents=())
    pieces[1] = msgpack.packb(kind)
    try:
        pieces[6] = msgpack.packb({key: body[key] for key in sorted(body)}, use_bin_type=True)
    except TypeError:
        return caught.value
    assert refusal(assemble(pieces)) == "bad_body"
    return caught.value


BAD_BODIES = [
    ("NOTE", {}), ("NOTE", {"text": "x", "extra": 1}), ("NOTE", {"text": "x" * 4097}), ("NOTE", {"text": 5}),
    ("NOTE", {"text": b"bytes"}), ("NOTE", {"text": None}),
    ("VOTE", vote_body(vote="maybe")), ("VOTE", vote_body(proposal_id="")), ("VOTE", vote_body(proposal_id="p" * 97)),
    ("VOTE", {"vote": "approval"}),
    ("PROPOSAL", proposal_body(version="1.2")), ("PROPOSAL", proposal_body(package_hash="A" * 64)),
    ("PROPOSAL", proposal_body(package_hash="sha256:" + "a" * 64)), ("PROPOSAL", proposal_body(package_size=0)),
    ("PROPOSAL", proposal_body(package_size=2**40 + 1)), ("PROPOSAL", proposal_body(package_size=True)),
    ("PROPOSAL", proposal_body(action="delete")), ("PROPOSAL", proposal_body(title="t" * 201)),
    ("PROPOSAL", proposal_body(description="d" * 4001)), ("PROPOSAL", proposal_body(voting_deadline_ms=-1)),
    ("PROPOSAL", proposal_body(package_url=None)), ("PROPOSAL", proposal_body(package_hash=None)),
    ("PROPOSAL", proposal_body(target_proposal_id="upgrade_x")),
    ("PROPOSAL", rollback_proposal_body(package_hash="a" * 64)), ("PROPOSAL", rollback_proposal_body(target_proposal_id=None)),
    ("RATIFY", ratify_body(signature=b"\x01" * 63)), ("RATIFY", ratify_body(statement=b"s" * 513)),
    ("RATIFY", ratify_body(sequence=0)),
    ("EXECUTE_UPGRADE", execute_body(package_hash=None)), ("EXECUTE_UPGRADE", execute_body(sequence=0)),
    ("EXECUTE_UPGRADE", execute_body(certificate=[{"validator_id": "zz", "signature": b"\x02" * 64}])),
    ("EXECUTE_UPGRADE", execute_body(certificate=[{"validator_id": "0123456789abcdef", "signature": b"\x02" * 64, "x": 1}])),
    ("EXECUTE_UPGRADE", execute_body(certificate=[{"validator_id": "0123456789abcdef", "signature": b"\x02" * 64}] * 65)),
    ("EXECUTE_UPGRADE", execute_body(certificate="none")),
    ("EXECUTION_REPORT", report_body(success=1)), ("EXECUTION_REPORT", report_body(error="e" * 1001)),
    ("EXECUTION_REPORT", report_body(state_hash="s" * 81)),
    ("ROLLBACK", {"proposal_id": "p"}),
    # Human-written texts: no control characters (a terminal escape, a carriage return), no bidi overrides.
    ("PROPOSAL", proposal_body(title="Upgrade\x1b[2J")), ("PROPOSAL", proposal_body(title="two\nlines")),
    ("PROPOSAL", proposal_body(title="safe \u202etxt.exe")), ("PROPOSAL", proposal_body(description="over\rwrite")),
    ("NOTE", {"text": "bell\x07"}), ("NOTE", {"text": "isolate \u2066x\u2069"}), ("NOTE", {"text": "\x9b31m"}),
    ("EXECUTION_REPORT", report_body(error="trap in \x1b]0;pwned\x07")),
    # The API never wrote these; since the schemas are one (node/core/schemas.py) the log refuses them too.
    ("PROPOSAL", proposal_body(title="")), ("PROPOSAL", proposal_body(package_hash="a" * 64 + "\n")),
    ("EXECUTE_UPGRADE", execute_body(votes_digest="b" * 64 + "\n")),
    ("EXECUTE_UPGRADE", execute_body(certificate=[{"validator_id": "0123456789abcdef\n", "signature": b"\x02" * 64}])),
    ("CLOSE", close_body(vote_ids=b"\x01" * 33)), ("CLOSE", close_body(vote_ids="ab" * 32)),
]


@pytest.mark.parametrize("kind,body", BAD_BODIES)
def test_bad_bodies_are_refused_when_built_and_when_decoded(kind, body):
    error = body_refusal(kind, body)
    assert error.reason == "bad_body" and kind in error.message


def test_the_refusal_names_missing_and_unknown_fields():
    error = body_refusal("VOTE", {"proposal_id": "p", "colour": "red"})
    assert "vote" in error.message and "colour" in error.message


def test_valid_edge_bodies_are_accepted():
    for kind, body in [("NOTE", {"text": ""}), ("NOTE", {"text": "é" * 4096}),
                       ("PROPOSAL", proposal_body(package_size=None, version="2.0.0-rc.1+build.5")),
                       ("PROPOSAL", rollback_proposal_body()), ("EXECUTE_UPGRADE", execute_body(certificate=[])),
                       ("EXECUTE_UPGRADE", execute_body(action="rollback", package_url=None, package_hash=None, package_size=None)),
                       ("EXECUTION_REPORT", report_body(success=False, error="fuel exhausted")),
                       ("NOTE", {"text": "two\nlines\tand a tab, émoji 🎉, 中文"}),
                       ("PROPOSAL", proposal_body(title="Upgrade to v1.2.0 — é 中文", description="line 1\n\tline 2"))]:
        entry = forge(ALICE, sequence=1, kind=kind, body=body)
        assert decode(entry.raw).body == body


def test_a_body_that_is_not_a_map_is_a_bad_body():
    for body in (None, ["text", "x"], "text"):
        with pytest.raises(EntryRefused) as caught:
            make_entry(network_id=NETWORK_ID, kind="NOTE", author=ALICE.node_id, sequence=1, parents=(), hlc=Hlc(NOW_MS, 0),
                       body=body, sign=ALICE.sign)
        assert caught.value.reason == "bad_body"


def test_floats_are_refused_with_a_hint():
    error = body_refusal("NOTE", {"text": 1.5})
    assert "float" in error.message and "integer" in error.hint


def test_make_entry_refuses_bad_fields_before_signing():
    for fields in [dict(author="not-a-node-id"), dict(sequence=0), dict(parents=("xyz",)), dict(hlc=(NOW_MS, 0)),
                   dict(parents=tuple(f"{i:064x}" for i in range(65)))]:
        arguments = dict(kind="NOTE", author=ALICE.node_id, sequence=1, parents=(), hlc=Hlc(NOW_MS, 0), body=note_body())
        arguments.update(fields)
        with pytest.raises(EntryRefused) as caught:
            make_entry(network_id=NETWORK_ID, **arguments, sign=lambda message: pytest.fail("signed a bad entry"))
        assert caught.value.reason == "malformed"


# --- hybrid logical clock -------------------------------------------------------------------------


def test_tick_follows_the_wall_clock_and_never_goes_back():
    assert hlc_tick(Hlc(100, 5), 200) == Hlc(200, 0)
    assert hlc_tick(Hlc(100, 5), 100) == Hlc(100, 6)
    assert hlc_tick(Hlc(100, 5), 50) == Hlc(100, 6)  # the wall clock went backwards: the hlc did not


def test_a_full_logical_counter_moves_to_the_next_millisecond():
    assert hlc_tick(Hlc(100, LOGICAL_MAX), 100) == Hlc(101, 0)


def test_hlc_orders_by_wall_then_logical_and_validates():
    assert Hlc(1, 9) < Hlc(2, 0) < Hlc(2, 1)
    for wall_ms, logical in [(-1, 0), (0, -1), (WALL_MS_MAX + 1, 0), (0, LOGICAL_MAX + 1), (1.0, 0), (True, 0)]:
        with pytest.raises(ValueError):
            Hlc(wall_ms, logical)
    with pytest.raises(ValueError):
        hlc_tick(Hlc(1, 0), -5)


def test_unsafe_characters_are_located_and_replaced():
    assert unsafe_character("ok\ttext\n", one_line=False) is None
    assert unsafe_character("ok\ttext", one_line=True) == "U+0009 at position 2"
    assert unsafe_character("abc\x1b[2J", one_line=False) == "U+001B at position 3"
    assert safe_text("trap in \x1b]0;x\x07 at \u202efn") == "trap in \ufffd]0;x\ufffd at \ufffdfn"
    assert safe_text("line\n\tindented") == "line\n\tindented"


# --- package URLs carry no credentials ------------------------------------------------------------------

USERINFO_URLS = ["https://user:secret@example.org/u.wasm", "https://token@example.org/u.wasm", "http://@example.org/u.wasm",
                 "https://a@b@example.org/u.wasm", "https://example.org@evil.example/u.wasm",
                 "https://user:pw@example.org?x=/@", "HTTPS://u:p@example.org"]


@pytest.mark.parametrize("url", USERINFO_URLS)
@pytest.mark.parametrize("kind, make_body", [("PROPOSAL", proposal_body), ("EXECUTE_UPGRADE", execute_body)])
def test_a_package_url_with_credentials_is_refused_in_every_entry_that_carries_one(url, kind, make_body):
    # A proposal is shown to anyone (GET /proposals, GET /log): a secret in its URL would be public.
    assert body_refusal(kind, make_body(package_url=url)).reason == "bad_body"
    assert refusal(forge_raw(ALICE, kind=kind, body=make_body(package_url=url))) == "bad_body"


@pytest.mark.parametrize("url", ["https://example.org/u.wasm", "https://example.org/a@b.wasm", "https://example.org/u?who=a@b",
                                 "https://example.org/u#a@b", "https://example.org:8443/u.wasm", "ipfs://" + "b" * 59])
def test_an_at_sign_outside_the_authority_is_no_credential(url):
    decode(forge_raw(ALICE, kind="PROPOSAL", body=proposal_body(package_url=url)))
