"""Sandbox benchmark: what running a migration in WASM costs, and what the compiled-module cache saves.

Why these two figures: (1) every node runs every upgrade on the whole network state, so the sandbox's
price is measured on the spec's own package (the Rust crate) against the same transformation in plain
Python, on a 100,000-node state; (2) a node that restarts, or dry-runs then executes, loads the same
module again, so cold compile is compared with a load of this node's cached artifact.

It also splits the WASM time into its parts (metering, the host's parse of the output), so that a ratio
above the aim says where the time goes. It asserts nothing: it prints a table and writes JSON to
bench/results/ (gitignored). Run from the repository root:

    .venv/bin/python bench/bench_sandbox.py            # full run (needs the Debian Rust toolchain)
    .venv/bin/python bench/bench_sandbox.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from node.sandbox import Sandbox, SandboxLimits, parse_state_object  # noqa: E402
from tests.wasm_build import EXAMPLES, build_c, build_rust_example, rust_toolchain_missing, wat_to_wasm  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
AIM_WASM_OVER_PYTHON = 1.3
AIM_CACHED_SPEEDUP = 10.0


def median_seconds(function, runs: int) -> float:
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def network_state_json(node_count: int) -> bytes:
    """~84 bytes per node: 100,000 nodes make ~8.4 MB of JSON, as the node passes it (canonical)."""
    nodes = {f"{index:016x}": {"address": f"10.{index // 65536}.{index // 256 % 256}.{index % 256}:8000",
                               "reputation": index % 100, "validator": index % 7 == 0} for index in range(node_count)}
    state = {"global": {"version": "1.1.0", "nodes": nodes}}
    return json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def python_migration(state_json: bytes) -> bytes:
    """The spec's migration in plain Python: the reference the WASM run is compared with."""
    state = json.loads(state_json)
    for node in state["global"]["nodes"].values():
        if isinstance(node, dict):
            node["new_feature_enabled"] = True
    state["global"]["version"] = "1.2.0"
    return json.dumps(state).encode()


def raw_upgrade_seconds(wasm: bytes, state_json: bytes, *, fuel: bool, epoch: bool, runs: int) -> float:
    """upgrade() alone, called with raw wasmtime, with or without metering: what metering costs."""
    config = wasmtime.Config()
    config.consume_fuel = fuel
    config.epoch_interruption = epoch
    config.cranelift_nan_canonicalization = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module(engine, wasm)
    linker = wasmtime.Linker(engine)
    linker.define_unknown_imports_as_traps(module)
    instance_pre = linker.instantiate_pre(module)
    durations = []
    for _ in range(runs):
        store = wasmtime.Store(engine)
        if fuel:
            store.set_fuel(10**13)
        if epoch:
            store.set_epoch_deadline(10**9)
        exports = instance_pre.instantiate(store).exports(store)
        memory = exports["memory"]
        wasm_bindgen = "__wbindgen_malloc" in [export.name for export in module.exports]
        allocate = exports["__wbindgen_malloc" if wasm_bindgen else "alloc"]
        pointer = allocate(store, len(state_json))
        ctypes.memmove(ctypes.addressof(memory.data_ptr(store).contents) + pointer, state_json, len(state_json))
        upgrade = exports["upgrade"]
        if wasm_bindgen:
            return_pointer = allocate(store, 8)
            started = time.perf_counter()
            upgrade(store, return_pointer, pointer, len(state_json))
            durations.append(time.perf_counter() - started)
            struct.unpack("<II", ctypes.string_at(ctypes.addressof(memory.data_ptr(store).contents) + return_pointer, 8))
        else:
            started = time.perf_counter()
            upgrade(store, pointer, len(state_json))
            durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def migration_packages(work: Path) -> dict[str, bytes]:
    packages = {"wat (streaming)": wat_to_wasm(EXAMPLES / "wat" / "feature_flag.wat")}
    missing = rust_toolchain_missing()
    if missing is None:
        target = RESULTS / ".cargo-target"  # kept between runs: only the crate itself is rebuilt
        packages = {"rust (spec crate)": build_rust_example(work / "rust", target_dir=target), **packages}
    else:
        print(f"note: Debian's Rust toolchain is missing ({missing}); run: sudo sh scripts/install-toolchain.sh", file=sys.stderr)
    try:
        packages["c (streaming)"] = build_c(EXAMPLES / "c" / "feature_flag.c", work)
    except BaseException as error:  # pytest.skip raises a BaseException subclass when clang is missing
        print(f"note: C example not built: {error}", file=sys.stderr)
    return packages


def bench_migration(node_count: int, runs: int, work: Path) -> dict:
    state_json = network_state_json(node_count)
    python_s = median_seconds(lambda: python_migration(state_json), runs)
    sandbox = Sandbox(SandboxLimits(fuel=10**12))
    rows = {}
    for name, wasm in migration_packages(work).items():
        result = sandbox.run_upgrade(wasm, state_json)  # compiles once; the runs below are warm
        output = json.dumps(result.state, separators=(",", ":"), ensure_ascii=False).encode()
        assert json.loads(python_migration(state_json)) == result.state, f"{name} disagrees with the Python migration"
        sandbox_s = median_seconds(lambda: sandbox.run_upgrade(wasm, state_json), runs)
        rows[name] = {
            "sandbox_ms": sandbox_s * 1000,
            "ratio_to_python": sandbox_s / python_s,
            "fuel_consumed": result.fuel_consumed,
            "upgrade_unmetered_ms": raw_upgrade_seconds(wasm, state_json, fuel=False, epoch=False, runs=runs) * 1000,
            "upgrade_fuel_only_ms": raw_upgrade_seconds(wasm, state_json, fuel=True, epoch=False, runs=runs) * 1000,
            "upgrade_epoch_only_ms": raw_upgrade_seconds(wasm, state_json, fuel=False, epoch=True, runs=runs) * 1000,
            "upgrade_metered_ms": raw_upgrade_seconds(wasm, state_json, fuel=True, epoch=True, runs=runs) * 1000,
            "host_parse_output_ms": median_seconds(lambda: parse_state_object(output, "upgrade()"), runs) * 1000,
            "module_size_bytes": len(wasm),
        }
    return {"nodes": node_count, "state_size_bytes": len(state_json), "runs": runs, "python_ms": python_s * 1000, "packages": rows}


def big_module(functions: int) -> bytes:
    """An ABI 2 module padded with `functions` functions of real code (~850 bytes each)."""
    parts = ['(module (memory (export "memory") 1)',
             '(func (export "alloc") (param i32) (result i32) (i32.const 1024))',
             '(func (export "upgrade") (param i32 i32) (result i64) (i64.const 0))']
    for index in range(functions):
        body = " ".join(f"(i32.const {(index * 7919 + step * 104729) % 1000003}) i32.xor (i32.const {step + 3}) i32.rotl"
                        for step in range(100))
        parts.append(f"(func $f{index} (param i32) (result i32) local.get 0 {body})")
    return wat_to_wasm("\n".join(parts) + ")")


def bench_cache(functions: int, runs: int, work: Path) -> dict:
    wasm = big_module(functions)
    cold, from_disk, from_memory = [], [], []
    for run in range(runs):
        directory = work / f"cache-{run}"
        first = Sandbox(compiled_cache_dir=directory)
        started = time.perf_counter()
        first.inspect(wasm)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        first.inspect(wasm)
        from_memory.append(time.perf_counter() - started)
        restarted = Sandbox(compiled_cache_dir=directory)
        started = time.perf_counter()
        restarted.inspect(wasm)
        from_disk.append(time.perf_counter() - started)
        assert restarted.cache_stats()["loaded_from_disk"] == 1 and restarted.cache_stats()["compiled"] == 0
    cold_s, disk_s, memory_s = (statistics.median(values) for values in (cold, from_disk, from_memory))
    return {"module_size_bytes": len(wasm), "functions": functions, "runs": runs, "cold_compile_ms": cold_s * 1000,
            "cached_load_from_disk_ms": disk_s * 1000, "cached_load_from_memory_ms": memory_s * 1000,
            "speedup_disk": cold_s / disk_s, "speedup_memory": cold_s / memory_s}


def print_table(results: dict) -> None:
    migration = results["migration"]
    print(f"\n(1) the spec's migration on {migration['nodes']:,} nodes ({migration['state_size_bytes'] / 1e6:.1f} MB), "
          f"median of {migration['runs']} runs; plain Python (loads, loop, dumps): {migration['python_ms']:.0f} ms "
          f"(aim: sandbox <= {AIM_WASM_OVER_PYTHON}x)")
    print(f"{'package':<20}{'sandbox':>10}{'x python':>10}{'unmetered':>11}{'+fuel':>8}{'+epoch':>8}{'metered':>9}{'parse out':>11}{'fuel':>15}")
    for name, row in migration["packages"].items():
        print(f"{name:<20}{row['sandbox_ms']:>8.0f}ms{row['ratio_to_python']:>9.2f}x{row['upgrade_unmetered_ms']:>9.0f}ms"
              f"{row['upgrade_fuel_only_ms']:>6.0f}ms{row['upgrade_epoch_only_ms']:>6.0f}ms{row['upgrade_metered_ms']:>7.0f}ms"
              f"{row['host_parse_output_ms']:>9.0f}ms{row['fuel_consumed']:>15,}")
    cache = results["cache"]
    print(f"\n(2) compiled-module cache, {cache['module_size_bytes'] / 1e6:.1f} MB module, median of {cache['runs']} runs "
          f"(aim: cached >= {AIM_CACHED_SPEEDUP:.0f}x faster)")
    print(f"cold compile {cache['cold_compile_ms']:.0f} ms | from disk {cache['cached_load_from_disk_ms']:.1f} ms "
          f"({cache['speedup_disk']:.0f}x) | from memory {cache['cached_load_from_memory_ms']:.2f} ms ({cache['speedup_memory']:.0f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 nodes, a 1 MB module, 3 runs")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--functions", type=int, default=6_000, help="functions in the big module (6,000 ~ 5 MB)")
    options = parser.parse_args(argv)
    if options.quick:
        options.nodes, options.runs, options.functions = 10_000, 3, 1_200
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as work:
        results = {"migration": bench_migration(options.nodes, options.runs, Path(work)),
                   "cache": bench_cache(options.functions, max(3, options.runs // 2), Path(work))}
    results["environment"] = {"python": platform.python_version(), "machine": platform.machine(),
                              "wasmtime": importlib.metadata.version("wasmtime"), "cpu_count": os.cpu_count(),
                              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print_table(results)
    path = RESULTS / f"bench_sandbox-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
