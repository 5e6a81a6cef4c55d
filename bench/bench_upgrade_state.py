"""One node's whole upgrade on a large network state: what the node adds around the sandbox.

Why: bench_sandbox.py measures the sandbox call (the package's run and the parse of its output) on a
100,000-node state. A node does more with that output before the upgrade counts as executed: it
reads the old state to check that no member was removed, encodes the new state canonically to hash
it, writes it (with the backup and the manifest, fsynced) and records it. This measures all of it
through `UpgradeManager.execute`, the call the node makes, with the spec's Rust crate (as bench_scale
builds it), on a fresh store per run, beside the same work done in plain Python (json.loads, the
migration loop, canonical json.dumps, sha256, one fsynced file): the floor a node written in Python
could reach without a sandbox.

Reported per state size (median of --runs): a dry run first (`dry_run()`, what `POST /upgrades/{proposal_id}/test`
runs: the same steps on a copy, plus the list of changed paths), then the whole execute(), the pipeline steps the node logs
(`steps_ms` of `upgrade_executed`: download, verify, dry_run = sandbox + checks + hash, backup,
execute = the commit), and the plain-Python floor. It asserts nothing and writes JSON to
bench/results/. From the repository root:

    .venv/bin/python bench/bench_upgrade_state.py                   # 10,000 and 100,000 nodes
    .venv/bin/python bench/bench_upgrade_state.py --nodes 1000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "bench"))

from bench_sandbox import network_state_json  # noqa: E402
from bench_scale import build_crate  # noqa: E402
from node.packages import FetchLimits, PackageCache, PackageFetcher  # noqa: E402
from node.sandbox import Sandbox, SandboxLimits  # noqa: E402
from node.store import VersionStore  # noqa: E402
from node.upgrader import UpgradeManager  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
FROM_VERSION = "1.1.0"          # network_state_json's version; the spec's crate sets 1.2.0
TO_VERSION = "1.2.0"
FUEL = 10**11                   # past the default's ~160k nodes: the bench sizes are the user's to pick


class _Steps(logging.Handler):
    """Keeps the `steps_ms` of each `upgrade_executed` line the manager logs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", {})
        if record.getMessage() == "upgrade_executed" and "steps_ms" in fields:
            self.seen.append(dict(fields["steps_ms"]))


async def _dry_run_then_execute(work: Path, state: dict, wasm: bytes, sandbox: Sandbox) -> tuple[float, float]:
    store = VersionStore.open(work, genesis_state=state)
    cache = PackageCache(store.cache_dir)
    digest = hashlib.sha256(wasm).hexdigest()
    cache.put(digest, wasm)
    fetcher = PackageFetcher(cache, limits=FetchLimits(connect_timeout_ms=1_000, total_timeout_ms=3_000))
    manager = UpgradeManager(store, fetcher, sandbox, now_ms=lambda: time.time_ns() // 1_000_000)
    try:
        started = time.perf_counter()
        dry_run = await manager.dry_run(version=TO_VERSION, package_url="https://packages.invalid/p.wasm",
                                        package_hash="sha256:" + digest, package_size=None)
        dry_run_took = time.perf_counter() - started
        if not dry_run["success"]:
            raise SystemExit(f"the dry run failed: {dry_run}")
        started = time.perf_counter()
        result = await manager.execute(proposal_id="bench-1", version=TO_VERSION, package_url="https://packages.invalid/p.wasm",
                                       package_hash="sha256:" + digest, package_size=None, sequence=1)
        took = time.perf_counter() - started
    finally:
        await fetcher.close()
        store.close()
    if not result.success:
        raise SystemExit(f"the upgrade failed: {result.error}")
    return dry_run_took, took


def plain_python_seconds(state_json: bytes, work: Path) -> float:
    """The same work in plain Python: parse, migrate, canonical encoding, hash, one fsynced file."""
    started = time.perf_counter()
    state = json.loads(state_json)
    for node in state["global"]["nodes"].values():
        if isinstance(node, dict):
            node["new_feature_enabled"] = True
    state["global"]["version"] = TO_VERSION
    data = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    hashlib.sha256(data).hexdigest()
    path = work / "state.json"
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    took = time.perf_counter() - started
    path.unlink()
    return took


def bench_size(nodes: int, runs: int, wasm: bytes, work: Path) -> dict:
    state_json = network_state_json(nodes)
    state = json.loads(state_json)
    sandbox = Sandbox(SandboxLimits(fuel=FUEL), compiled_cache_dir=work / "compiled")   # as a node has one
    sandbox.compile(wasm)        # compiled once, as a warmed-up node has it (an executed package leaves memory: reloaded from disk)
    steps = _Steps()
    logger = logging.getLogger("synapse.upgrader")
    logger.addHandler(steps)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    dry_runs, durations = [], []
    try:
        for run in range(runs):
            dry_run_s, execute_s = asyncio.run(_dry_run_then_execute(work / f"n{nodes}-{run}", state, wasm, sandbox))
            dry_runs.append(dry_run_s)
            durations.append(execute_s)
    finally:
        logger.removeHandler(steps)
    plain = [plain_python_seconds(state_json, work) for _ in range(runs)]
    step_names = sorted({name for seen in steps.seen for name in seen})
    execute_ms = statistics.median(durations) * 1000
    plain_ms = statistics.median(plain) * 1000
    return {"nodes": nodes, "state_size_bytes": len(state_json), "runs": runs, "execute_ms": round(execute_ms, 1),
            "dry_run_ms": round(statistics.median(dry_runs) * 1000, 1),
            "steps_ms_median": {name: statistics.median(seen.get(name, 0) for seen in steps.seen) for name in step_names},
            "plain_python_ms": round(plain_ms, 1), "ratio_to_plain_python": round(execute_ms / plain_ms, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    if min(options.nodes) < 1 or not 1 <= options.runs <= 50:
        parser.error("--nodes >= 1, --runs in 1..50")
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-state-") as work:
        wasm = build_crate(Path(work))
        rows = [bench_size(nodes, options.runs, wasm, Path(work)) for nodes in options.nodes]
    results = {"sizes": rows, "package_size_bytes": len(wasm),
               "environment": {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                               "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}}
    print(f"one node's execute() of the spec's crate ({len(wasm):,} bytes), median of {options.runs} runs, fresh store each")
    for row in rows:
        print(f"{row['nodes']:>8,} nodes ({row['state_size_bytes'] / 1e6:.1f} MB): dry run {row['dry_run_ms']:.0f} ms, "
              f"execute {row['execute_ms']:.0f} ms "
              f"(steps {row['steps_ms_median']}); plain Python {row['plain_python_ms']:.0f} ms; "
              f"{row['ratio_to_plain_python']:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_upgrade_state-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
