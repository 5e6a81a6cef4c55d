"""The netns provider's link-fault helper: holds or drops a namespace's outgoing packets per destination.

    ip netns exec synns-5-1 python -m cluster.providers.link_delay --config F --queue 7 --seed 42

Why it works as it does:
- This kernel has no sch_netem, so delay, jitter and loss are done in user space with NFQUEUE: the
  namespace's filter table sends packets for slowed destinations to queue 7 (`--queue-bypass`: while
  no helper listens they pass untouched, so a dead helper never blackholes a link). Measured here:
  holding packets 20 ms on one link gave 40.7 ms RTT on it and none elsewhere; the packet is never
  rewritten, so source addresses (PySyncObj's peer identity) stay intact.
- One helper per source namespace, one queue, one thread: the callback looks the destination up in
  the table from --config (reloaded on SIGHUP), drops `loss_percent` of packets at random (seeded),
  and keeps the rest with a release time (delay +- uniform jitter, never before the previous packet
  of the same link, so a link stays FIFO as TCP expects); a select() loop on the queue's socket
  releases them when due. Verdicts are given after the callback returns (NetfilterQueue >= 1.0).
- Bounded: at most HELD_MAX packets held (more are dropped, as netem's queue limit does), the kernel
  queue at QUEUE_LENGTH_MAX. On SIGTERM every held packet is released at once, then the queue unbound.
- It prints `ready` once bound, so the provider installs the rules only when packets will be held.
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import json
import os
import random
import select
import signal
import socket
import sys
import time
from pathlib import Path

HELD_MAX = 20_000
QUEUE_LENGTH_MAX = 4096
CONFIG_SIZE_MAX_BYTES = 1024 * 1024
POLL_MAX_S = 0.5


class Table:
    """destination (4 bytes) -> (delay_ms, jitter_ms, loss_percent), from the config file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.links: dict[bytes, tuple[int, int, float]] = {}
        self.load()

    def load(self) -> None:
        document = json.loads(self.path.read_bytes()[:CONFIG_SIZE_MAX_BYTES])
        links = {}
        for host, fault in document.get("links", {}).items():
            links[ipaddress.IPv4Address(host).packed] = (int(fault["delay_ms"]), int(fault["jitter_ms"]), float(fault["loss_percent"]))
        self.links = links


class Holder:
    def __init__(self, table: Table, rng: random.Random) -> None:
        self.table, self.rng = table, rng
        self.held: list[tuple[float, int, object]] = []
        self.last_release: dict[bytes, float] = {}
        self.sequence = 0
        self.dropped = 0

    def on_packet(self, packet) -> None:
        payload = packet.get_payload()
        fault = self.table.links.get(payload[16:20]) if len(payload) >= 20 else None
        if fault is None:
            packet.accept()
            return
        delay_ms, jitter_ms, loss_percent = fault
        if loss_percent and self.rng.random() * 100 < loss_percent:
            self.dropped += 1
            packet.drop()
            return
        if delay_ms == 0 and jitter_ms == 0:
            packet.accept()
            return
        if len(self.held) >= HELD_MAX:
            self.dropped += 1
            packet.drop()
            return
        wanted_ms = max(0.0, delay_ms + (self.rng.uniform(-jitter_ms, jitter_ms) if jitter_ms else 0.0))
        release = max(time.monotonic() + wanted_ms / 1000, self.last_release.get(payload[16:20], 0.0))
        self.last_release[payload[16:20]] = release
        self.sequence += 1
        heapq.heappush(self.held, (release, self.sequence, packet))

    def release_due(self, now: float) -> None:
        while self.held and self.held[0][0] <= now:
            heapq.heappop(self.held)[2].accept()

    def release_all(self) -> None:
        self.release_due(float("inf"))

    def wait_s(self, now: float) -> float:
        return min(POLL_MAX_S, max(0.0, self.held[0][0] - now)) if self.held else POLL_MAX_S


def serve(config: Path, queue: int, seed: int) -> int:
    from netfilterqueue import NetfilterQueue

    table = Table(config)
    holder = Holder(table, random.Random(seed))
    flags = {"stop": False, "reload": False}
    signal.signal(signal.SIGTERM, lambda *_: flags.update(stop=True))
    signal.signal(signal.SIGINT, lambda *_: flags.update(stop=True))
    signal.signal(signal.SIGHUP, lambda *_: flags.update(reload=True))
    nfqueue = NetfilterQueue()
    nfqueue.bind(queue, holder.on_packet, max_len=QUEUE_LENGTH_MAX)
    listener = socket.fromfd(nfqueue.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)
    wakeup_read, wakeup_write = socket.socketpair()   # a signal wakes select() at once (no 0.5 s wait on heal)
    wakeup_write.setblocking(False)
    signal.set_wakeup_fd(wakeup_write.fileno(), warn_on_full_buffer=False)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # The launcher stops reading here (a detached helper's launcher even exits): nothing more goes to
    # that pipe, so a write at exit cannot die of EPIPE.
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
    try:
        while not flags["stop"]:
            if flags["reload"]:
                flags["reload"] = False
                table.load()
            readable, _, _ = select.select([listener, wakeup_read], [], [], holder.wait_s(time.monotonic()))
            if wakeup_read in readable:
                wakeup_read.recv(4096)
            if listener in readable:
                nfqueue.run(block=False)
            holder.release_due(time.monotonic())
    finally:
        holder.release_all()
        nfqueue.unbind()
        listener.close()
    print(f"stopped; held {holder.sequence} packets, dropped {holder.dropped}", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    return serve(arguments.config, arguments.queue, arguments.seed)


if __name__ == "__main__":
    sys.exit(main())
