"""kill -9 of the Raft leader, with one validator per process as in production (issue 11): the
survivors see the authenticated session with their leader end, stand for election within the
leader-lost window (node/core/raft_timing.py), agree on a new leader among themselves, and a ratify
through a survivor commits. Every wait is on what the validators report; nothing is timed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from cluster.addresses import acquire_block
from cluster.template import die_with_parent
from tests.polling import poll_until_async

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
RAFT_PORT = 9000
REPLY_TIMEOUT_S = 20.0
WAIT_S = 20.0


class Child:
    def __init__(self, index: int, addresses: list[str], data_dir: Path) -> None:
        self.index, self.addresses, self.data_dir = index, addresses, data_dir
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = data_dir / f"child-{index}.log"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.integration.raft_child", "--index", str(self.index),
                "--addresses", ",".join(self.addresses), "--data-dir", str(self.data_dir),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPOSITORY,
                preexec_fn=die_with_parent(os.getpid()))

    async def call(self, op: str, **arguments) -> dict:
        self.process.stdin.write((json.dumps({"op": op, **arguments}) + "\n").encode())
        await asyncio.wait_for(self.process.stdin.drain(), REPLY_TIMEOUT_S)
        line = await asyncio.wait_for(self.process.stdout.readline(), REPLY_TIMEOUT_S)
        assert line, f"validator {self.index} exited; see {self.log_path}: {self.log_path.read_text()[-2000:]}"
        reply = json.loads(line)
        assert reply["ok"], f"validator {self.index}: {reply['error']}"
        return reply["result"]

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), REPLY_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()


async def statuses(children: list[Child]) -> list[dict]:
    return [await child.call("status") for child in children]


async def wait_for_agreed_leader(children: list[Child], what: str, excluded: str | None = None) -> str:
    async def agreed_leader() -> str | None:
        leaders = {status["leader"] for status in await statuses(children)}
        return leaders.pop() if len(leaders) == 1 and None not in leaders and excluded not in leaders else None

    return await poll_until_async(agreed_leader, what=what, timeout_s=WAIT_S, interval_s=0.02,
                                  describe=lambda: statuses(children))


async def test_a_leader_killed_with_sigkill_is_replaced_through_the_leader_lost_window(tmp_path):
    with acquire_block(hosts=3, ports=[RAFT_PORT]) as lease:
        addresses = [f"{lease.block.host(i + 1)}:{RAFT_PORT}" for i in range(3)]
        children = [Child(i, addresses, tmp_path) for i in range(3)]
        try:
            await asyncio.gather(*(child.start() for child in children))
            leader_address = await wait_for_agreed_leader(children, "a leader agreed by all three")
            await asyncio.gather(*(child.call("close", proposal_id="before") for child in children[:2]))
            assert (await children[0].call("ratify", proposal_id="before"))["status"] == "ratification_recorded"
            leader = children[addresses.index(leader_address)]
            survivors = [child for child in children if child is not leader]
            await asyncio.gather(*(child.call("close", proposal_id="after") for child in survivors))
            os.kill(leader.process.pid, signal.SIGKILL)
            await leader.process.wait()
            new_leader = await wait_for_agreed_leader(survivors, "the survivors agree on a new leader",
                                                      excluded=leader_address)
            assert new_leader in addresses and new_leader != leader_address
            after = await statuses(survivors)
            # Both took the fast path: they saw the killed leader's session end (not only its silence).
            assert [status["leader_sessions_lost"] for status in after] == [1, 1], after
            assert (await survivors[0].call("ratify", proposal_id="after"))["status"] == "ratification_recorded"
        finally:
            await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
