"""One Raft validator in its own process, for tests/integration/test_raft_kill.py (a real kill -9).

    python -m tests.integration.raft_child --index I --addresses A1,A2,A3 --data-dir D

Reads one JSON command per line on stdin ({"op": "status"}, {"op": "close", "proposal_id": ...},
{"op": "ratify", "proposal_id": ...}) and answers each with one JSON line on stdout; stops at the end
of stdin. The parent passes a preexec hook that kills it with the parent.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from pathlib import Path

from node.core.closing import EMPTY_VOTES_DIGEST
from node.identity import Identity, verify_signature
from node.raft import ValidatorRaft, ValidatorRaftConfig

NETWORK = "net-raft-kill-test"
PASSWORD = "raft kill test password 0123456789"
CALL_TIMEOUT_S = 10.0


def identity(index: int) -> Identity:
    return Identity.from_private_bytes(hashlib.sha256(f"raft-kill-validator-{index}".encode()).digest())


def config(index: int, addresses: list[str], data_dir: Path) -> ValidatorRaftConfig:
    identities = [identity(i) for i in range(len(addresses))]
    return ValidatorRaftConfig(
        self_address=addresses[index], partner_addresses=tuple(a for i, a in enumerate(addresses) if i != index),
        data_dir=data_dir / f"validator-{index}", password=PASSWORD, network_id=NETWORK,
        validator_id=identities[index].node_id, validators={v.node_id: v.public_key for v in identities},
        validator_addresses={v.node_id: a for v, a in zip(identities, addresses)}, bind_outgoing=True)


async def answer(raft: ValidatorRaft, command: dict) -> dict:
    if command["op"] == "status":
        return raft.status()
    if command["op"] == "close":
        outcome = await raft.close(proposal_id=command["proposal_id"], vote_ids=(), timeout_s=CALL_TIMEOUT_S)
        return {"status": outcome.status}
    if command["op"] == "ratify":
        outcome = await raft.ratify(proposal_id=command["proposal_id"], action="upgrade", package_hash="ab" * 32,
                                    version="1.2.0", votes_digest=EMPTY_VOTES_DIGEST, timeout_s=CALL_TIMEOUT_S)
        return {"status": outcome.status}
    raise ValueError(f"unknown op {command['op']!r}")


async def serve(index: int, addresses: list[str], data_dir: Path) -> None:
    raft = ValidatorRaft(config(index, addresses, data_dir), sign=identity(index).sign, verify=verify_signature)
    await raft.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            try:
                reply = {"ok": True, "result": await answer(raft, json.loads(line))}
            except Exception as error:  # noqa: BLE001 - reported to the test, which fails with it
                reply = {"ok": False, "error": repr(error)}
            print(json.dumps(reply), flush=True)
    finally:
        await raft.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    options = parser.parse_args()
    asyncio.run(serve(options.index, options.addresses.split(","), options.data_dir))


if __name__ == "__main__":
    main()
