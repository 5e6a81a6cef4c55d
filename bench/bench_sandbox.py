"""Sandbox benchmark: what running a migration in WASM costs, and what the compiled-module cache saves.

Why these two figures: (1) every node runs every upgrade on the whole network state, so the sandbox's
price is measured on the spec's own package (the Rust crate) against the same transformation in plain
Python, on a 100,000-node state; (2) a node that restarts, or dry-runs then executes, loads the same
module again, so cold compile is compared with a load of this node's cached artifact.

It also splits the WASM time into its parts (metering, the host's parse of the output: msgspec's fast
path and the stdlib path it replaced, side by side, and the whole run with each), so that a ratio above
the aim says where the time goes; and it measures the fuel a migration burns per node of state
(1k, 10k, 100k nodes), which is how `sandbox_fuel` is sized. It asserts nothing: it prints a table and writes JSON to
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

import node.sandbox as sandbox_module  # noqa: E402
from node.sandbox import Sandbox, SandboxLimits, parse_state_object  # noqa: E402
from node.sandbox_output import ParsedState, parse_state, parse_state_object_stdlib  # noqa: E402
from tests.wasm_build import EXAMPLES, build_c, build_rust_example, rust_toolchain_missing, wat_to_wasm  # noqa: E402

RESULTS = REPOSITORY / "bench" / "results"
AIM_WASM_OVER_PYTHON = 1.3
AIM_CACHED_SPEEDUP = 10.0
FUEL_SIZES_NODES = (1_000, 10_000, 100_000)
RUST_LTO_PROFILE = {"LTO": "fat", "CODEGEN_UNITS": "1"}


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
        # The same source and Cargo.toml, built with link-time optimisation (cargo's release profile set
        # from outside the crate): what a package author can do for speed, measured beside the default.
        lto = build_rust_example(work / "rust-lto", target_dir=RESULTS / ".cargo-target-lto", release_profile=RUST_LTO_PROFILE)
        packages = {"rust (spec crate)": build_rust_example(work / "rust", target_dir=target), "rust, lto": lto, **packages}
    else:
        print(f"note: Debian's Rust toolchain is missing ({missing}); run: sudo sh scripts/install-toolchain.sh", file=sys.stderr)
    try:
        packages["c (streaming)"] = build_c(EXAMPLES / "c" / "feature_flag.c", work)
    except BaseException as error:  # pytest.skip raises a BaseException subclass when clang is missing
        print(f"note: C example not built: {error}", file=sys.stderr)
    return packages


def sandbox_seconds_with_stdlib_parse(sandbox: Sandbox, wasm: bytes, state_json: bytes, runs: int) -> float:
    """The whole run as it was before msgspec: the sandbox reading its output with the stdlib path."""
    sandbox_module.parse_state = lambda output, producer: ParsedState(parse_state_object_stdlib(output, producer), float_free=False)
    try:
        return median_seconds(lambda: sandbox.run_upgrade(wasm, state_json), runs)
    finally:
        sandbox_module.parse_state = parse_state


def bench_migration(node_count: int, runs: int, packages: dict[str, bytes]) -> dict:
    state_json = network_state_json(node_count)
    python_s = median_seconds(lambda: python_migration(state_json), runs)
    sandbox = Sandbox(SandboxLimits(fuel=10**12))
    rows = {}
    for name, wasm in packages.items():
        result = sandbox.run_upgrade(wasm, state_json)  # compiles once; the runs below are warm
        output = json.dumps(result.state, separators=(",", ":"), ensure_ascii=False).encode()
        assert json.loads(python_migration(state_json)) == result.state, f"{name} disagrees with the Python migration"
        assert parse_state_object(output, "upgrade()") == parse_state_object_stdlib(output, "upgrade()")
        sandbox_s = median_seconds(lambda: sandbox.run_upgrade(wasm, state_json), runs)
        sandbox_stdlib_s = sandbox_seconds_with_stdlib_parse(sandbox, wasm, state_json, runs)
        rows[name] = {
            "sandbox_ms": sandbox_s * 1000,
            "ratio_to_python": sandbox_s / python_s,
            "sandbox_stdlib_parse_ms": sandbox_stdlib_s * 1000,
            "ratio_to_python_stdlib_parse": sandbox_stdlib_s / python_s,
            "fuel_consumed": result.fuel_consumed,
            "output_size_bytes": result.output_size_bytes,
            "upgrade_unmetered_ms": raw_upgrade_seconds(wasm, state_json, fuel=False, epoch=False, runs=runs) * 1000,
            "upgrade_fuel_only_ms": raw_upgrade_seconds(wasm, state_json, fuel=True, epoch=False, runs=runs) * 1000,
            "upgrade_epoch_only_ms": raw_upgrade_seconds(wasm, state_json, fuel=False, epoch=True, runs=runs) * 1000,
            "upgrade_metered_ms": raw_upgrade_seconds(wasm, state_json, fuel=True, epoch=True, runs=runs) * 1000,
            "host_parse_output_ms": median_seconds(lambda: parse_state_object(output, "upgrade()"), runs) * 1000,
            "host_parse_output_stdlib_ms": median_seconds(lambda: parse_state_object_stdlib(output, "upgrade()"), runs) * 1000,
            "module_size_bytes": len(wasm),
        }
        row = rows[name]
        row["sandbox_other_ms"] = row["sandbox_ms"] - row["upgrade_metered_ms"] - row["host_parse_output_ms"]
    return {"nodes": node_count, "state_size_bytes": len(state_json), "runs": runs, "python_ms": python_s * 1000, "packages": rows}


def bench_parse_floats(node_count: int, runs: int) -> dict:
    """The parse alone on a state whose every node also holds a float: msgspec then calls the same
    float_hook per number that json.loads calls, so its lead shrinks there."""
    state = json.loads(network_state_json(node_count))
    for index, node in enumerate(state["global"]["nodes"].values()):
        node["weight"] = index / 7
    output = json.dumps(state, separators=(",", ":")).encode()
    return {"nodes": node_count, "output_size_bytes": len(output),
            "parse_ms": median_seconds(lambda: parse_state_object(output, "upgrade()"), runs) * 1000,
            "parse_stdlib_ms": median_seconds(lambda: parse_state_object_stdlib(output, "upgrade()"), runs) * 1000}


def bench_fuel(sizes_nodes: tuple[int, ...], packages: dict[str, bytes]) -> dict:
    """Fuel burnt per node of state (deterministic: one run per size), and what the default covers."""
    sandbox = Sandbox(SandboxLimits(fuel=10**12))
    default_fuel = SandboxLimits().fuel
    rows = {}
    for name, wasm in packages.items():
        points = [(nodes, sandbox.run_upgrade(wasm, network_state_json(nodes)).fuel_consumed) for nodes in sizes_nodes]
        (small_nodes, small_fuel), (large_nodes, large_fuel) = points[0], points[-1]
        marginal = (large_fuel - small_fuel) / (large_nodes - small_nodes) if large_nodes > small_nodes else large_fuel / large_nodes
        fixed = small_fuel - marginal * small_nodes
        rows[name] = {"points": [{"nodes": nodes, "fuel": fuel, "fuel_per_node": fuel / nodes} for nodes, fuel in points],
                      "marginal_fuel_per_node": marginal, "fixed_fuel": fixed,
                      "default_fuel_covers_nodes": int((default_fuel - fixed) / marginal)}
    return {"default_fuel": default_fuel, "packages": rows}


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
    print(f"{'package':<20}{'sandbox':>10}{'x python':>10}{'(stdlib parse)':>20}{'unmetered':>11}{'+fuel':>8}{'+epoch':>8}"
          f"{'metered':>9}{'parse out':>11}{'(stdlib)':>10}{'other':>8}{'fuel':>15}")
    for name, row in migration["packages"].items():
        print(f"{name:<20}{row['sandbox_ms']:>8.0f}ms{row['ratio_to_python']:>9.2f}x"
              f"{row['sandbox_stdlib_parse_ms']:>11.0f}ms {row['ratio_to_python_stdlib_parse']:>5.2f}x"
              f"{row['upgrade_unmetered_ms']:>9.0f}ms"
              f"{row['upgrade_fuel_only_ms']:>6.0f}ms{row['upgrade_epoch_only_ms']:>6.0f}ms{row['upgrade_metered_ms']:>7.0f}ms"
              f"{row['host_parse_output_ms']:>9.0f}ms{row['host_parse_output_stdlib_ms']:>8.0f}ms{row['sandbox_other_ms']:>6.0f}ms"
              f"{row['fuel_consumed']:>15,}")
    floats = results["parse_floats"]
    print(f"the parse alone, every node also holding a float ({floats['output_size_bytes'] / 1e6:.1f} MB): "
          f"{floats['parse_ms']:.0f} ms (stdlib path {floats['parse_stdlib_ms']:.0f} ms)")
    fuel = results["fuel"]
    print(f"\n(3) fuel per node of state (default sandbox_fuel {fuel['default_fuel']:,})")
    for name, row in fuel["packages"].items():
        points = ", ".join(f"{point['nodes']:,}: {point['fuel']:,} ({point['fuel_per_node']:,.0f}/node)" for point in row["points"])
        print(f"{name:<20}{points}; marginal {row['marginal_fuel_per_node']:,.0f}/node, fixed {row['fixed_fuel']:,.0f}; "
              f"the default covers ~{row['default_fuel_covers_nodes']:,} nodes")
    cache = results.get("cache")
    if cache is None:
        return
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
    parser.add_argument("--no-cache", action="store_true", help="skip (2), the compiled-module cache")
    options = parser.parse_args(argv)
    if options.quick:
        options.nodes, options.runs, options.functions = 10_000, 3, 1_200
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as work:
        packages = migration_packages(Path(work))
        results = {"migration": bench_migration(options.nodes, options.runs, packages),
                   "parse_floats": bench_parse_floats(options.nodes, options.runs),
                   "fuel": bench_fuel(tuple(nodes for nodes in FUEL_SIZES_NODES if nodes <= options.nodes) or (options.nodes,), packages)}
        if not options.no_cache:
            results["cache"] = bench_cache(options.functions, max(3, options.runs // 2), Path(work))
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
