"""The spec's Rust crate, built for real with Debian's toolchain (offline, /usr/bin/cargo), run in the sandbox.

This is the package a proposer would write by following the spec. The build itself is part of the test:
it proves the offline recipe in examples/rust/upgrade_v1_2_0/README.md works with what
scripts/install-toolchain.sh installs. The C and WAT examples must give exactly the same states.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from node import errors
from node.core.canonical import canonical_json
from node.core.pipeline import check_migration_output
from node.sandbox import ABI_WASM_BINDGEN, Sandbox, SandboxLimits
from tests.wasm_build import EXAMPLES, build_c, build_rust_example, shared_build_dir, wat_to_wasm

pytestmark = pytest.mark.rust

SPEC_UPGRADE_INFO = {"version": "1.2.0", "description": "Add new_feature_enabled flag", "breaking": False}
WASM_BINDGEN_IMPORTS = {
    ("__wbindgen_placeholder__", "__wbindgen_describe"),
    ("__wbindgen_externref_xform__", "__wbindgen_externref_table_grow"),
    ("__wbindgen_externref_xform__", "__wbindgen_externref_table_set_null"),
}


@pytest.fixture(scope="module")
def rust_wasm(tmp_path_factory) -> bytes:
    return build_rust_example(tmp_path_factory.mktemp("rust"), target_dir=shared_build_dir(tmp_path_factory) / "rust-target")


def network_state(node_count: int) -> dict:
    nodes = {f"{index:016x}": {"address": f"10.0.{index // 250}.{index % 250}:8000", "reputation": index % 100,
                               "validator": index % 7 == 0} for index in range(node_count)}
    return {"global": {"version": "1.1.0", "nodes": nodes}}


def test_the_built_crate_has_the_wasm_bindgen_abi_and_the_spec_upgrade_info(rust_wasm):
    info = Sandbox().inspect(rust_wasm)
    assert info.refusals == ()
    assert info.abi == ABI_WASM_BINDGEN
    assert {(entry["module"], entry["name"]) for entry in info.imports} == WASM_BINDGEN_IMPORTS
    exports = {entry["name"]: entry["type"] for entry in info.exports}
    assert exports["upgrade"] in ("func(i32, i32, i32) -> ()", "func(i32, i32) -> (i32, i32)")
    assert info.upgrade_info == SPEC_UPGRADE_INFO


def test_upgrade_enables_the_feature_on_every_node_and_sets_version_1_2_0(rust_wasm):
    state = network_state(1_000)
    result = Sandbox().run_upgrade(rust_wasm, canonical_json(state))
    new_global = result.state["global"]
    assert new_global["version"] == "1.2.0"
    assert new_global["nodes"].keys() == state["global"]["nodes"].keys()
    assert all(node["new_feature_enabled"] is True for node in new_global["nodes"].values())
    assert all({key: value for key, value in node.items() if key != "new_feature_enabled"} == state["global"]["nodes"][node_id]
               for node_id, node in new_global["nodes"].items())
    check_migration_output(state, result.state, "1.2.0")


def test_fuel_is_deterministic_for_the_rust_package(rust_wasm):
    state_json = canonical_json(network_state(300))
    fuels = {Sandbox().run_upgrade(rust_wasm, state_json).fuel_consumed for _ in range(2)}
    assert len(fuels) == 1 and fuels.pop() > 0


def test_invalid_json_makes_the_crate_panic_which_is_a_clear_trap(rust_wasm):
    with pytest.raises(errors.WasmTrap) as caught:
        Sandbox().run_upgrade(rust_wasm, b"this is not json")
    assert str(caught.value) == "upgrade() trapped: wasm `unreachable` instruction executed (a Rust panic)"


def test_a_state_too_big_for_the_memory_limit_is_memory_exhaustion(rust_wasm):
    limits = SandboxLimits(memory_size_max_bytes=8 * 2**20)
    with pytest.raises(errors.MemoryExhausted, match=r"^upgrade\(\) ran out of linear memory: "):
        Sandbox(limits).run_upgrade(rust_wasm, canonical_json(network_state(20_000)))


def test_too_little_fuel_stops_the_crate(rust_wasm):
    with pytest.raises(errors.FuelExhausted):
        Sandbox(SandboxLimits(fuel=100_000)).run_upgrade(rust_wasm, canonical_json(network_state(1_000)))


def _random_state(generator: random.Random) -> dict:
    keys = ["global", "nodes", "version", "new_feature_enabled", "x", "é", 'q"']

    def value(depth: int):
        kind = generator.randrange(8 if depth < 4 else 5)
        if kind == 0:
            return generator.randrange(-10**6, 10**6)
        if kind == 1:
            return round(generator.random() * 1000, 2)
        if kind == 2:
            return generator.choice([True, False, None])
        if kind in (3, 4):
            return "".join(generator.choice('ab"\\\n é€😀{}[],:') for _ in range(generator.randrange(6)))
        if kind in (5, 6):
            return {generator.choice(keys): value(depth + 1) for _ in range(generator.randrange(4))}
        return [value(depth + 1) for _ in range(generator.randrange(4))]

    state = {generator.choice(keys): value(1) for _ in range(generator.randrange(4))}
    if generator.random() < 0.7:
        state["global"] = {"version": "1.0.0", "nodes": {f"n{j}": value(2) for j in range(generator.randrange(5))},
                           generator.choice(keys): value(2)}
    return state


def test_the_wat_and_c_examples_give_exactly_the_rust_crates_states(rust_wasm, tmp_path):
    seed = random.randrange(2**32)
    print(f"seed={seed} (replay: set it in this test)")
    generator = random.Random(seed)
    packages = {"rust": rust_wasm, "wat": wat_to_wasm(EXAMPLES / "wat" / "feature_flag.wat"),
                "c": build_c(EXAMPLES / "c" / "feature_flag.c", tmp_path)}
    sandbox = Sandbox(SandboxLimits(fuel=10**9))
    for _ in range(150):
        state = _random_state(generator)
        for encoded in (canonical_json(state), json.dumps(state, indent=2).encode()):
            outcomes = {}
            for name, wasm in packages.items():
                try:
                    outcomes[name] = sandbox.run_upgrade(wasm, encoded).state
                except errors.WasmTrap:
                    outcomes[name] = "trap"  # e.g. a non-object global: the Rust crate panics, the others trap
            assert outcomes["wat"] == outcomes["rust"] and outcomes["c"] == outcomes["rust"], (seed, state, outcomes)


def test_synapse_package_test_accepts_the_built_crate(rust_wasm, tmp_path):
    package = tmp_path / "synapse_upgrade_v1_2_0.wasm"
    package.write_bytes(rust_wasm)
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("synapse")), "package", "test", str(package), "--state", str(EXAMPLES / "state.json"),
         "--version", "1.2.0"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert completed.returncode == 0, completed.stderr
    new_state = json.loads(completed.stdout)
    assert new_state["global"]["version"] == "1.2.0"
    assert all(node["new_feature_enabled"] is True for node in new_state["global"]["nodes"].values())
