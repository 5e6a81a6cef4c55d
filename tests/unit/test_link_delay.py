"""The netns provider's packet holder (cluster/providers/link_delay.py) with stand-in packets: held for the
delay, FIFO per link under jitter, the asked share lost, a bounded queue, everything released on stop."""

from __future__ import annotations

import ipaddress
import json
import random
import time

from cluster.providers import link_delay
from cluster.providers.link_delay import Holder, Table


class Packet:
    def __init__(self, destination: str, number: int) -> None:
        self.payload = bytes(16) + ipaddress.IPv4Address(destination).packed + number.to_bytes(4, "big")
        self.number = number
        self.verdict: str | None = None

    def get_payload(self) -> bytes:
        return self.payload

    def accept(self) -> None:
        assert self.verdict is None, "one verdict per packet"
        self.verdict = "accept"
        RELEASED.append(self)

    def drop(self) -> None:
        assert self.verdict is None, "one verdict per packet"
        self.verdict = "drop"


RELEASED: list[Packet] = []


def holder(tmp_path, links: dict, seed: int = 1) -> Holder:
    path = tmp_path / "links.json"
    path.write_text(json.dumps({"links": links}))
    RELEASED.clear()
    return Holder(Table(path), random.Random(seed))


def test_packets_to_a_slowed_destination_wait_and_others_pass_at_once(tmp_path):
    slow = holder(tmp_path, {"198.18.4.2": {"delay_ms": 200, "jitter_ms": 0, "loss_percent": 0}})
    held, passed = Packet("198.18.4.2", 1), Packet("198.18.4.3", 2)
    began = time.monotonic()
    slow.on_packet(held)
    slow.on_packet(passed)
    assert passed.verdict == "accept" and held.verdict is None
    slow.release_due(began + 0.19)
    assert held.verdict is None, "not before 200 ms"
    slow.release_due(began + 0.21 + 0.05)
    assert held.verdict == "accept"


def test_jitter_never_reorders_a_link(tmp_path):
    jittery = holder(tmp_path, {"198.18.4.2": {"delay_ms": 50, "jitter_ms": 45, "loss_percent": 0}})
    packets = [Packet("198.18.4.2", number) for number in range(200)]
    for packet in packets:
        jittery.on_packet(packet)
    jittery.release_all()
    assert [packet.number for packet in RELEASED] == list(range(200))


def test_the_asked_share_is_lost_and_the_rest_delivered(tmp_path):
    lossy = holder(tmp_path, {"198.18.4.2": {"delay_ms": 0, "jitter_ms": 0, "loss_percent": 20}})
    packets = [Packet("198.18.4.2", number) for number in range(5000)]
    for packet in packets:
        lossy.on_packet(packet)
    dropped = sum(packet.verdict == "drop" for packet in packets)
    assert 850 <= dropped <= 1150, dropped   # 20% of 5000, sd ~28
    assert all(packet.verdict for packet in packets), "every packet gets a verdict"


def test_the_queue_is_bounded_and_stop_releases_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(link_delay, "HELD_MAX", 10)
    bounded = holder(tmp_path, {"198.18.4.2": {"delay_ms": 10_000, "jitter_ms": 0, "loss_percent": 0}})
    packets = [Packet("198.18.4.2", number) for number in range(15)]
    for packet in packets:
        bounded.on_packet(packet)
    assert [packet.verdict for packet in packets[10:]] == ["drop"] * 5, "past the limit: dropped, as netem's queue limit does"
    bounded.release_all()
    assert [packet.verdict for packet in packets[:10]] == ["accept"] * 10
