"""A child process for the crash-safety tests: runs real upgrades on a real store, and dies by SIGKILL.

Why a separate process: only a real `kill -9` proves the store's commit protocol; an exception in the
same process would run `finally` blocks and flush buffers a real crash never gets to.

    python -m tests.integration.crash_child --data-dir D --scenario upgrade  --kill-at committed
    python -m tests.integration.crash_child --data-dir D --scenario loop --steps 40

Scenarios: `upgrade` (1.0.0 -> 1.1.0, sequence 1), `rollback` (upgrade, then a network rollback as
sequence 2), `failure` (a trapping package as sequence 1: a verdict, recorded), `loop` (upgrades,
rollbacks and failures one after another, for a kill at a random time by the parent). `--kill-at NAME`
arms node.store's fault point NAME after the store is open: the process SIGKILLs itself there.

Each finished operation prints one JSON line to stdout ({"done": sequence, ...}) AFTER it returned:
what was acknowledged must survive the crash. The packages are real WASM (ABI 2) built from WAT and
put in the package cache before each operation, so no network is involved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import wasmtime

GENESIS_VERSION = "1.0.0"
NODE_IDS = tuple(f"{index:016x}" for index in range(1, 6))


def set_version_wat(version: str) -> str:
    """ABI 2 migration: copy the input state, replacing the value of its LAST `"version":"` key with
    `version`. In canonical JSON (sorted keys) of {"global": {"nodes", ..., "version"}} that key is
    global.version, at the very end. Traps if the key is missing."""
    tail = version.replace("\\", "").replace('"', "") + '\\"}}'
    tail_length = len(version) + 3
    return f"""
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "\\"version\\":\\"")
  (data (i32.const 64) "{tail}")
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $end i32) (local $pages i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $pages (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16)) (memory.size)))
    (if (i32.gt_s (local.get $pages) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1)) (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))
  (func $matches (param $at i32) (result i32)
    (local $k i32)
    (block $differs
      (loop $each
        (br_if $differs (i32.ne (i32.load8_u (i32.add (local.get $at) (local.get $k)))
                                (i32.load8_u (i32.add (i32.const 16) (local.get $k)))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br_if $each (i32.lt_u (local.get $k) (i32.const 11))))
      (return (i32.const 1)))
    (i32.const 0))
  (func (export "upgrade") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $keep i32) (local $out i32)
    (local.set $i (i32.sub (local.get $len) (i32.const 11)))
    (block $found
      (loop $search
        (if (i32.lt_s (local.get $i) (i32.const 0)) (then unreachable))
        (br_if $found (call $matches (i32.add (local.get $ptr) (local.get $i))))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br $search)))
    (local.set $keep (i32.add (local.get $i) (i32.const 11)))
    (local.set $out (call $alloc (i32.add (local.get $keep) (i32.const {tail_length}))))
    (memory.copy (local.get $out) (local.get $ptr) (local.get $keep))
    (memory.copy (i32.add (local.get $out) (local.get $keep)) (i32.const 64) (i32.const {tail_length}))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $keep) (i32.const {tail_length}))))))
"""


TRAP_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32)
    (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get 0) (i32.const 16)) (i32.const 1))) (i32.const -1))
      (then unreachable))
    (i32.const 65536))
  (func (export "upgrade") (param i32 i32) (result i64) unreachable))
"""


def genesis_state(payload_bytes: int = 0) -> dict:
    """A small network state; `payload_bytes` of filler make writes slow enough to be interrupted."""
    nodes = {node_id: {"reputation": 10 + index, "validator": index < 3} for index, node_id in enumerate(NODE_IDS)}
    state = {"global": {"network_id": "crash-test", "nodes": nodes, "version": GENESIS_VERSION}}
    if payload_bytes:
        state["global"]["payload"] = "x" * payload_bytes
    return state


def wasm_of(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def _arm(point: str | None):
    armed = {"on": False}

    def fault_point(name: str) -> None:
        if armed["on"] and name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return armed, fault_point


def _say(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _run(args: argparse.Namespace) -> None:
    from node.packages import PackageCache, PackageFetcher
    from node.sandbox import Sandbox
    from node.store import VersionStore
    from node.upgrader import UpgradeManager
    from node.core.canonical import sha256_hex

    armed, fault_point = _arm(args.kill_at)
    store = VersionStore.open(Path(args.data_dir), genesis_state=genesis_state(args.payload_bytes), fault_point=fault_point)
    cache = PackageCache(store.cache_dir)
    fetcher = PackageFetcher(cache)

    def seed(name: str) -> str:
        """The package's digest, put in the cache first if needed (as if downloaded earlier)."""
        wasm = wasm_of(TRAP_WAT if name == "trap" else set_version_wat(name))
        digest = sha256_hex(wasm)
        if cache.get(digest) is None:
            cache.put(digest, wasm)
        return digest

    manager = UpgradeManager(store, fetcher, Sandbox(), now_ms=lambda: int(time.time() * 1000))
    _say(ready=True, version=store.current_version, sequence=store.applied_sequence)
    try:
        for action in _actions(args.scenario, args.steps, store.applied_sequence):
            if action["kind"] != "rollback":
                action["version"] = action["version"] or _next_version(manager)
                action["package_hash"] = seed("trap" if action["kind"] == "trap" else action["version"])
            if action["arm"]:
                armed["on"] = True
            await _apply(manager, action)
    finally:
        await fetcher.close()
        store.close()


def _actions(scenario: str, steps: int, applied: int) -> list[dict]:
    """The operations of a scenario, each with its sequence; `arm` marks the one the kill targets."""
    if scenario == "upgrade":
        return [{"kind": "upgrade", "version": "1.1.0", "sequence": 1, "arm": True}]
    if scenario == "rollback":
        return [{"kind": "upgrade", "version": "1.1.0", "sequence": 1, "arm": False},
                {"kind": "rollback", "sequence": 2, "arm": True}]
    if scenario == "failure":
        return [{"kind": "trap", "version": "1.1.0", "sequence": 1, "arm": True}]
    assert scenario == "loop", scenario
    actions = []
    for sequence in range(applied + 1, applied + steps + 1):
        if sequence % 5 == 0:
            actions.append({"kind": "trap", "version": "9.9.9", "sequence": sequence, "arm": True})
        elif sequence % 4 == 0:
            actions.append({"kind": "rollback", "sequence": sequence, "arm": True})
        else:
            actions.append({"kind": "upgrade", "version": None, "sequence": sequence, "arm": True})
    return actions


async def _apply(manager, action: dict) -> None:
    sequence = action["sequence"]
    if action["kind"] == "rollback":
        result = await manager.rollback(proposal_id=f"rollback-{sequence}", sequence=sequence)
        _say(done=sequence, kind="rollback", version=result["restored_version"], state_hash=result["state_hash"])
        return
    result = await manager.execute(proposal_id=f"upgrade-{sequence}", version=action["version"],
                                   package_url="https://packages.invalid/package.wasm", package_hash=action["package_hash"],
                                   package_size=None, sequence=sequence)
    _say(done=sequence, kind=action["kind"], success=result.success, version=result.version, state_hash=result.state_hash)


def _next_version(manager) -> str:
    """The next minor version above the current one."""
    major, minor, _patch = (int(part) for part in manager.status()["current_version"].split("."))
    return f"{major}.{minor + 1}.0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--scenario", choices=("upgrade", "rollback", "failure", "loop"), required=True)
    parser.add_argument("--kill-at", default=None, help="a node.store fault point name")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--payload-bytes", type=int, default=0)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
