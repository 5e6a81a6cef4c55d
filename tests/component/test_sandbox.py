"""The sandbox with real wasmtime on tiny WAT modules: every ABI path, every limit, every hostile case,
and the compiled-module cache. Each test states what a package author or a node operator would check."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time

import pytest
import wasmtime

from node import errors
from node.core.canonical import canonical_json
from node.core.pipeline import check_migration_output
from node.sandbox import ABI_PLAIN, ABI_WASM_BINDGEN, Sandbox, SandboxLimits
from tests.polling import poll_until
from tests.wasm_build import EXAMPLES, TEST_PACKAGES, wat_to_wasm

STATE = json.loads((EXAMPLES / "state.json").read_text())
STATE_JSON = canonical_json(STATE)
FEATURE_FLAG = wat_to_wasm(EXAMPLES / "wat" / "feature_flag.wat")
SPEC_UPGRADE_INFO = {"version": "1.2.0", "description": "Add new_feature_enabled flag", "breaking": False}
FAST = SandboxLimits(fuel=50_000_000, wall_timeout_ms=20_000)


def package(name: str) -> bytes:
    return wat_to_wasm(TEST_PACKAGES / name)


def expected_feature_flag_state(state: dict) -> dict:
    """The spec's migration, in Python: the reference the packages are checked against."""
    upgraded = json.loads(json.dumps(state))
    for node in upgraded["global"]["nodes"].values():
        if isinstance(node, dict):
            node["new_feature_enabled"] = True
    upgraded["global"]["version"] = "1.2.0"
    return upgraded


def plain_module(upgrade_body: str, *, data: str = "", extra: str = "", memory: str = "1") -> bytes:
    """An ABI 2 module whose alloc() grows memory for each input and whose upgrade() is given."""
    return wat_to_wasm(f"""(module
      {extra}
      (memory (export "memory") {memory})
      {data}
      (func (export "alloc") (param $len i32) (result i32)
        (local $pages_before i32)
        (local.set $pages_before (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))))
        (if (i32.eq (local.get $pages_before) (i32.const -1)) (then unreachable))
        (i32.shl (local.get $pages_before) (i32.const 16)))
      (func (export "upgrade") (param $pointer i32) (param $len i32) (result i64) {upgrade_body}))""")


def returning(output: bytes) -> bytes:
    """An ABI 2 module whose upgrade() returns `output`, whatever its input."""
    escaped = "".join(f"\\{byte:02x}" for byte in output)
    return plain_module(f"(i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {len(output)}))",
                        data=f'(data (i32.const 16) "{escaped}")', memory=str((16 + len(output)) // 65536 + 1))


def wasm_bindgen_module(*, malloc_takes_align: bool, multi_value: bool, upgrade_extra: str = "") -> bytes:
    """A module shaped like plain `cargo build` output of a #[wasm_bindgen] crate (ABI 1). Its upgrade()
    copies the input into a fresh __wbindgen_malloc buffer and returns that (ptr, len)."""
    align_param = "(param $align i32)" if malloc_takes_align else ""
    align_check = ("(if (i32.or (i32.eqz (local.get $align)) (i32.and (local.get $align) (i32.sub (local.get $align) (i32.const 1))))"
                   " (then unreachable))") if malloc_takes_align else ""
    malloc_call = "(call $malloc (local.get $len) (i32.const 1))" if malloc_takes_align else "(call $malloc (local.get $len))"
    if multi_value:
        upgrade = f"""(func (export "upgrade") (param $ptr i32) (param $len i32) (result i32 i32)
            (local $copy i32) {upgrade_extra}
            (local.set $copy {malloc_call})
            (memory.copy (local.get $copy) (local.get $ptr) (local.get $len))
            (local.get $copy) (local.get $len))
          (func (export "get_upgrade_info") (result i32 i32) (i32.const 16) (i32.const 19))"""
    else:
        upgrade = f"""(func (export "upgrade") (param $retptr i32) (param $ptr i32) (param $len i32)
            (local $copy i32) {upgrade_extra}
            (local.set $copy {malloc_call})
            (memory.copy (local.get $copy) (local.get $ptr) (local.get $len))
            (i32.store (local.get $retptr) (local.get $copy))
            (i32.store offset=4 (local.get $retptr) (local.get $len)))
          (func (export "get_upgrade_info") (param $retptr i32)
            (i32.store (local.get $retptr) (i32.const 16))
            (i32.store offset=4 (local.get $retptr) (i32.const 19)))"""
    return wat_to_wasm(f"""(module
      (import "__wbindgen_placeholder__" "__wbindgen_describe" (func $describe (param i32)))
      (import "__wbindgen_externref_xform__" "__wbindgen_externref_table_grow" (func $table_grow (param i32) (result i32)))
      (memory (export "memory") 1)
      (global $heap (mut i32) (i32.const 1024))
      (data (i32.const 16) "{{\\"version\\":\\"9.9.9\\"}}")
      (func $malloc (export "__wbindgen_malloc") (param $size i32) {align_param} (result i32)
        (local $pointer i32) (local $missing i32)
        {align_check}
        (local.set $pointer (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
        (global.set $heap (i32.add (local.get $pointer) (local.get $size)))
        (local.set $missing (i32.sub (global.get $heap) (i32.shl (memory.size) (i32.const 16))))
        (if (i32.gt_s (local.get $missing) (i32.const 0))
          (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $missing) (i32.const 16)) (i32.const 1))) (i32.const -1))
                  (then unreachable))))
        (local.get $pointer))
      (func (export "__wbindgen_free") (param i32 i32 {"i32" if malloc_takes_align else ""}))
      {upgrade})""")


# --- limits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("fuel", 0), ("fuel", -5), ("fuel", True), ("fuel", 1.5), ("memory_size_max_bytes", 1024),
    ("memory_size_max_bytes", 5 * 2**30), ("module_size_max_bytes", 0), ("output_size_max_bytes", 1),
    ("wall_timeout_ms", 0), ("wall_timeout_ms", "60000"),
])
def test_limits_refuse_nonsense_with_a_config_error_naming_the_field(field, value):
    with pytest.raises(errors.ConfigError, match=field):
        SandboxLimits(**{field: value})


def test_default_limits_are_the_documented_ones():
    limits = SandboxLimits()
    assert (limits.fuel, limits.memory_size_max_bytes, limits.wall_timeout_ms) == (5_000_000_000, 256 * 2**20, 60_000)


# --- ABI 2 (plain) -------------------------------------------------------------------------------------


def test_the_wat_example_performs_the_spec_migration():
    result = Sandbox().run_upgrade(FEATURE_FLAG, STATE_JSON)
    assert result.state == expected_feature_flag_state(STATE)
    check_migration_output(STATE, result.state, "1.2.0")
    # The module writes compact JSON in its input's key order; the size reported is what it returned.
    assert result.output_size_bytes == len(json.dumps(result.state, separators=(",", ":"), ensure_ascii=False).encode())
    assert result.fuel_consumed > 0


def test_the_wat_example_does_not_depend_on_how_much_spare_memory_it_has():
    # Regression: its growth arithmetic once went wrong when memory had over 16 spare pages.
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, FEATURE_FLAG), []).exports(store)
    exports["memory"].grow(store, 100)
    pointer = exports["alloc"](store, len(STATE_JSON))
    exports["memory"].write(store, STATE_JSON, pointer)
    packed = exports["upgrade"](store, pointer, len(STATE_JSON)) & 0xFFFFFFFFFFFFFFFF
    output = exports["memory"].read(store, packed >> 32, (packed >> 32) + (packed & 0xFFFFFFFF))
    assert json.loads(bytes(output)) == expected_feature_flag_state(STATE)
    assert exports["memory"].size(store) == 101


def test_fuel_consumed_is_deterministic_across_sandboxes_and_runs():
    fuels = {Sandbox().run_upgrade(FEATURE_FLAG, STATE_JSON).fuel_consumed for _ in range(3)}
    fuels.add(Sandbox(SandboxLimits(fuel=10**9)).run_upgrade(FEATURE_FLAG, STATE_JSON).fuel_consumed)
    assert len(fuels) == 1


def test_inspect_reports_abi_exports_imports_and_upgrade_info():
    info = Sandbox().inspect(FEATURE_FLAG)
    assert info.abi == ABI_PLAIN
    assert info.refusals == ()
    assert [entry["name"] for entry in info.exports] == ["memory", "alloc", "upgrade", "get_upgrade_info"]
    assert {"name": "upgrade", "type": "func(i32, i32) -> i64"} in info.exports
    assert info.imports == ()
    assert info.upgrade_info == SPEC_UPGRADE_INFO
    assert len(info.sha256) == 64 and info.size_bytes == len(FEATURE_FLAG)
    assert info.to_dict()["runnable"] is True


def test_upgrade_info_is_none_when_not_exported():
    assert Sandbox().upgrade_info(package("identity.wat")) is None
    assert Sandbox().upgrade_info(FEATURE_FLAG) == SPEC_UPGRADE_INFO


def test_no_state_survives_from_one_call_to_the_next():
    counting = plain_module("""
        (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
        (i32.store8 (i32.const 25) (i32.add (i32.const 48) (global.get $calls)))
        (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 11))""",
        extra="(global $calls (mut i32) (i32.const 0))", data='(data (i32.const 16) "{\\"calls\\":0}")')
    sandbox = Sandbox(FAST)
    with pytest.raises(errors.WasmTrap):
        sandbox.run_upgrade(package("panic.wat"), STATE_JSON)
    assert [sandbox.run_upgrade(counting, b"{}").state for _ in range(3)] == [{"calls": 1}] * 3


# --- ABI 1 (wasm-bindgen shaped) --------------------------------------------------------------------------


@pytest.mark.parametrize("malloc_takes_align", [False, True], ids=["malloc(size)", "malloc(size,align)"])
@pytest.mark.parametrize("multi_value", [False, True], ids=["retptr", "multi-value"])
def test_wasm_bindgen_modules_run_in_every_calling_convention(malloc_takes_align, multi_value):
    module = wasm_bindgen_module(malloc_takes_align=malloc_takes_align, multi_value=multi_value)
    sandbox = Sandbox(FAST)
    info = sandbox.inspect(module)
    assert info.abi == ABI_WASM_BINDGEN and info.refusals == ()
    assert {entry["module"] for entry in info.imports} == {"__wbindgen_placeholder__", "__wbindgen_externref_xform__"}
    assert info.upgrade_info == {"version": "9.9.9"}
    result = sandbox.run_upgrade(module, STATE_JSON)
    assert result.state == STATE
    assert result.output_size_bytes == len(STATE_JSON)


def test_a_call_to_a_wasm_bindgen_placeholder_traps_and_names_it():
    module = wasm_bindgen_module(malloc_takes_align=False, multi_value=False,
                                 upgrade_extra="(call $describe (i32.const 0))")
    with pytest.raises(errors.WasmTrap) as caught:
        Sandbox(FAST).run_upgrade(module, STATE_JSON)
    assert str(caught.value) == ("upgrade() called the import __wbindgen_placeholder__.__wbindgen_describe, "
                                 "which the sandbox provides only as a trap")


# --- refused before running ------------------------------------------------------------------------------


def test_a_wasi_import_is_refused_before_anything_runs_and_named():
    # Its start function would loop forever: a refusal that came after running would be FuelExhausted.
    module = wat_to_wasm((TEST_PACKAGES / "wasi_import.wat").read_text().replace(
        '(memory (export "memory") 1)', '(memory (export "memory") 1) (func $spin (loop $l (br $l))) (start $spin)'))
    with pytest.raises(errors.ModuleRefused) as caught:
        Sandbox(FAST).run_upgrade(module, STATE_JSON)
    assert str(caught.value) == ("package refused: it imports wasi_snapshot_preview1.fd_write (func(i32, i32, i32, i32) -> i32), "
                                 "which the sandbox does not provide")
    assert "wasi_snapshot_preview1.fd_write" in Sandbox().inspect(module).refusals[0]


@pytest.mark.parametrize("wasm, refusal", [
    (b"(module)", "is not a WebAssembly binary (no \\0asm header); convert WAT text with wasmtime.wat2wasm first"),
    (b"\0asm\x01\0\0\0\xff\xff", "is not a valid WebAssembly module: "),
    (wat_to_wasm('(module (import "env" "now_ms" (func (result i64))) (memory (export "memory") 1))'), "imports env.now_ms (func() -> i64)"),
    (wat_to_wasm('(module (import "__wbindgen_placeholder__" "mem" (memory 1)))'),
     "imports __wbindgen_placeholder__.mem as a memory(min 1 pages, max none); only functions may come from wasm-bindgen placeholders"),
    (wat_to_wasm('(module (func (export "alloc") (param i32) (result i32) (i32.const 0)))'), "exports no linear memory named 'memory'"),
    (wat_to_wasm('(module (memory (export "memory") 1))'),
     "exports neither '__wbindgen_malloc' (ABI 1, wasm-bindgen) nor 'alloc' (ABI 2, plain)"),
    (wat_to_wasm('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i32.const 0)))'),
     "exports no function named 'upgrade' (needed by ABI 2)"),
    (wat_to_wasm('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i32.const 0))'
                 ' (func (export "upgrade") (param i32 i32) (result i32) (i32.const 0)))'),
     "exports 'upgrade' as func(i32, i32) -> i32, but ABI 2 needs func(i32, i32) -> (i64)"),
    (wat_to_wasm('(module (memory (export "memory") 8192) (func (export "alloc") (param i32) (result i32) (i32.const 0))'
                 ' (func (export "upgrade") (param i32 i32) (result i64) (i64.const 0)))'),
     "declares a minimum linear memory of 536,870,912 bytes, over the limit of 268,435,456 bytes"),
])
def test_modules_the_sandbox_cannot_run_are_refused_with_the_reason(wasm, refusal):
    sandbox = Sandbox(FAST)
    info = sandbox.inspect(wasm)  # inspect never raises: it says why
    assert any(reason.startswith(refusal) for reason in info.refusals), info.refusals
    assert info.upgrade_info is None
    with pytest.raises(errors.ModuleRefused, match="^package refused: "):
        sandbox.run_upgrade(wasm, STATE_JSON)


def test_a_module_over_the_size_limit_is_refused_before_compiling():
    sandbox = Sandbox(SandboxLimits(module_size_max_bytes=1000))
    big = plain_module("(i64.const 0)", data=f'(data (i32.const 16) "{"x" * 2000}")')
    assert sandbox.inspect(big).refusals == (f"is {len(big):,} bytes, over the module size limit of 1,000 bytes",)
    with pytest.raises(errors.ModuleRefused):
        sandbox.run_upgrade(big, STATE_JSON)
    assert sandbox.cache_stats()["compiled"] == 0


# --- hostile packages: each failure is one clear line of the right class --------------------------------


def test_an_endless_loop_runs_out_of_fuel():
    with pytest.raises(errors.FuelExhausted) as caught:
        Sandbox(FAST).run_upgrade(package("endless_loop.wat"), STATE_JSON)
    assert str(caught.value) == "upgrade() ran out of fuel: it used all 50,000,000 units allowed"
    assert caught.value.definite


def test_the_wall_clock_interrupts_a_long_run_as_a_local_indefinite_failure():
    sandbox = Sandbox(SandboxLimits(fuel=10**15, wall_timeout_ms=200))
    started = time.monotonic()
    with pytest.raises(errors.Interrupted) as caught:
        sandbox.run_upgrade(package("endless_loop.wat"), STATE_JSON)
    assert str(caught.value) == "upgrade() ran past the wall-clock deadline of 200 ms"
    assert caught.value.definite is False
    assert time.monotonic() - started < 10


def test_a_memory_bomb_is_reported_as_memory_exhaustion():
    limits = SandboxLimits(fuel=10**9, memory_size_max_bytes=16 * 2**20)
    with pytest.raises(errors.MemoryExhausted) as caught:
        Sandbox(limits).run_upgrade(package("memory_bomb.wat"), STATE_JSON)
    assert str(caught.value).startswith("upgrade() ran out of linear memory: ")
    assert str(caught.value).endswith("MiB in use when it trapped, limit 16.0 MiB")


def _refused_big_allocation(handler_name: str) -> bytes:
    """Asks for 1 GiB at once (far over the limit) and traps in a function called `handler_name`."""
    return plain_module(f"(call ${handler_name}) (i64.const 0)", extra=f"""
        (func ${handler_name} (if (i32.eq (memory.grow (i32.const 16384)) (i32.const -1)) (then unreachable)))""")


def test_a_refused_allocation_in_a_rust_alloc_error_handler_is_memory_exhaustion_even_far_below_the_limit():
    with pytest.raises(errors.MemoryExhausted):
        Sandbox(FAST).run_upgrade(_refused_big_allocation("__rust_alloc_error_handler"), STATE_JSON)
    # The same trap elsewhere, with memory far below the limit, cannot be told from a bug: a plain trap.
    with pytest.raises(errors.WasmTrap, match=r"^upgrade\(\) trapped: wasm `unreachable` instruction executed in function oops$"):
        Sandbox(FAST).run_upgrade(_refused_big_allocation("oops"), STATE_JSON)


def test_a_rust_panic_near_the_memory_limit_stays_a_panic():
    module = plain_module("(drop (memory.grow (i32.const 250))) (call $rust_panic) (i64.const 0)",
                          extra="(func $rust_panic unreachable)")
    with pytest.raises(errors.WasmTrap, match=r"\(a Rust panic\)$"):
        Sandbox(SandboxLimits(memory_size_max_bytes=16 * 2**20)).run_upgrade(module, STATE_JSON)


def test_a_trap_near_the_memory_limit_counts_as_memory_exhaustion():
    module = plain_module("(drop (memory.grow (i32.const 250))) unreachable")
    with pytest.raises(errors.MemoryExhausted):
        Sandbox(SandboxLimits(memory_size_max_bytes=16 * 2**20)).run_upgrade(module, STATE_JSON)


def test_unbounded_recursion_is_a_stack_overflow_trap():
    module = plain_module("(call $deeper (i32.const 0)) (i64.const 0)",
                          extra="(func $deeper (param i32) (call $deeper (i32.add (local.get 0) (i32.const 1))))")
    with pytest.raises(errors.WasmTrap, match=r"^upgrade\(\) trapped: call stack exhausted in function deeper$"):
        Sandbox(FAST).run_upgrade(module, STATE_JSON)


def test_a_module_with_many_bad_imports_gets_a_short_error_and_a_full_inspection():
    imports = " ".join(f'(import "env" "f{index}" (func))' for index in range(10))
    module = wat_to_wasm(f'(module {imports} (memory (export "memory") 1))')
    with pytest.raises(errors.ModuleRefused) as caught:
        Sandbox(FAST).run_upgrade(module, STATE_JSON)
    assert str(caught.value).endswith("; and 8 more")  # 10 imports + 1 ABI refusal, 3 shown
    assert len(Sandbox(FAST).inspect(module).refusals) == 11


def test_an_input_larger_than_the_memory_limit_is_refused_before_running():
    with pytest.raises(errors.MemoryExhausted, match="input state of 70,001 bytes cannot fit"):
        Sandbox(SandboxLimits(memory_size_max_bytes=65536)).run_upgrade(FEATURE_FLAG, b"x" * 70_001)


def test_a_panic_is_a_trap_and_the_message_is_one_line():
    with pytest.raises(errors.WasmTrap) as caught:
        Sandbox(FAST).run_upgrade(package("panic.wat"), STATE_JSON)
    assert str(caught.value) == "upgrade() trapped: wasm `unreachable` instruction executed"
    assert "\n" not in caught.value.one_line()


def test_a_trap_in_the_start_function_is_reported_at_instantiation():
    module = plain_module("(i64.const 0)", extra="(func $boom unreachable) (start $boom)")
    with pytest.raises(errors.WasmTrap, match=r"^instantiation trapped: "):
        Sandbox(FAST).run_upgrade(module, STATE_JSON)


def test_an_allocator_returning_memory_it_does_not_have_is_a_trap_not_a_host_write():
    module = wat_to_wasm('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i32.const 65500))'
                         ' (func (export "upgrade") (param i32 i32) (result i64) (i64.const 0)))')
    with pytest.raises(errors.WasmTrap, match=r"^alloc\(\d+\) returned address 65500, but .* do not fit in the 65,536-byte linear memory"):
        Sandbox(FAST).run_upgrade(module, STATE_JSON)


@pytest.mark.parametrize("name, message", [
    ("garbage_output.wat", "upgrade() returned 4 bytes that are not UTF-8 (bad byte at offset 0)"),
    ("not_an_object.wat", "upgrade() returned a JSON array, not an object"),
    ("output_outside.wat", "upgrade() returned bytes [4294901760, 4294901860) outside its 131,072-byte linear memory"),
])
def test_bad_output_packages(name, message):
    with pytest.raises(errors.BadOutput) as caught:
        Sandbox(FAST).run_upgrade(package(name), STATE_JSON)
    assert str(caught.value) == message


@pytest.mark.parametrize("output, message", [
    (b'{"a":NaN}', "upgrade() returned invalid JSON: NaN is not JSON"),
    (b'{"a":1e999}', "upgrade() returned invalid JSON: number 1e999 is out of range"),
    (b'{"a":"\\ud800"}', "upgrade() returned a string with a lone UTF-16 surrogate escape"),
    (b'{"a":1', "upgrade() returned invalid JSON: Expecting ',' delimiter: line 1 column 7 (char 6)"),
    (b'', "upgrade() returned invalid JSON: Expecting value: line 1 column 1 (char 0)"),
    (b'"text"', "upgrade() returned a JSON string, not an object"),
    (b'\xef\xbb\xbf{}', "upgrade() returned invalid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"),
    (b"[" * 100_000, "upgrade() returned JSON nested 100,000 levels deep, over the limit of 256"),
    (b'{"a":' * 257 + b"1" + b"}" * 257, "upgrade() returned JSON nested 257 levels deep, over the limit of 256"),
])
def test_output_that_is_not_a_strict_json_object_is_bad_output(output, message):
    with pytest.raises(errors.BadOutput) as caught:
        Sandbox(FAST).run_upgrade(returning(output), b"{}")
    assert str(caught.value) == message


def test_output_nested_exactly_to_the_limit_is_accepted():
    deep = b'{"a":' * 256 + b"1" + b"}" * 256
    result = Sandbox(FAST).run_upgrade(returning(deep), b"{}")
    assert json.dumps(result.state, separators=(",", ":")).encode() == deep


def test_output_over_the_size_limit_is_refused_before_it_is_read():
    with pytest.raises(errors.BadOutput, match=rf"^upgrade\(\) returned {len(STATE_JSON):,} bytes, over the output limit of 100 bytes$"):
        Sandbox(SandboxLimits(output_size_max_bytes=100)).run_upgrade(package("identity.wat"), STATE_JSON)


def test_the_migration_check_refuses_a_package_that_deletes_members():
    result = Sandbox(FAST).run_upgrade(package("delete_members.wat"), STATE_JSON)
    with pytest.raises(errors.UpgradeRefused, match=r"removed 3 member\(s\) of global.nodes"):
        check_migration_output(STATE, result.state, "1.2.0")


# --- the compiled-module cache ----------------------------------------------------------------------------


def test_a_second_load_uses_the_compiled_module_in_memory(tmp_path):
    sandbox = Sandbox(FAST, compiled_cache_dir=tmp_path)
    first = sandbox.run_upgrade(FEATURE_FLAG, STATE_JSON)
    second = sandbox.run_upgrade(FEATURE_FLAG, STATE_JSON)
    assert first == second
    assert sandbox.cache_stats() == {"compiled": 1, "loaded_from_disk": 0, "memory_hits": 1, "artifacts_refused": 0, "artifacts_written": 1,
                                     "compile_lock_timeouts": 0}


def test_a_forgotten_module_leaves_memory_and_is_loaded_from_disk_on_its_next_run(tmp_path):
    sandbox = Sandbox(FAST, compiled_cache_dir=tmp_path)
    first = sandbox.run_upgrade(FEATURE_FLAG, STATE_JSON)
    digest = sandbox.inspect(FEATURE_FLAG).sha256
    assert sandbox.forget(digest) and not sandbox.forget(digest), "forgotten once: nothing left to forget"
    assert sandbox.run_upgrade(FEATURE_FLAG, STATE_JSON) == first
    assert sandbox.cache_stats() | {"memory_hits": None} == {"compiled": 1, "loaded_from_disk": 1, "memory_hits": None,
                                                             "artifacts_refused": 0, "artifacts_written": 1, "compile_lock_timeouts": 0}


def test_a_new_sandbox_loads_this_nodes_artifact_from_disk_instead_of_compiling(tmp_path):
    expected = Sandbox(FAST, compiled_cache_dir=tmp_path).run_upgrade(FEATURE_FLAG, STATE_JSON)
    restarted = Sandbox(FAST, compiled_cache_dir=tmp_path)
    assert restarted.run_upgrade(FEATURE_FLAG, STATE_JSON) == expected
    assert restarted.cache_stats()["compiled"] == 0 and restarted.cache_stats()["loaded_from_disk"] == 1
    artifacts = list(tmp_path.glob("*.cwasm"))
    assert len(artifacts) == 1 and artifacts[0].name.startswith(Sandbox().inspect(FEATURE_FLAG).sha256 + "-")
    assert stat.S_IMODE(os.stat(tmp_path / "cache.key").st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_a_tampered_artifact_is_not_trusted_and_is_recompiled(tmp_path):
    expected = Sandbox(FAST, compiled_cache_dir=tmp_path).run_upgrade(FEATURE_FLAG, STATE_JSON)
    (artifact,) = tmp_path.glob("*.cwasm")
    blob = bytearray(artifact.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    artifact.write_bytes(bytes(blob))
    after_tampering = Sandbox(FAST, compiled_cache_dir=tmp_path)
    assert after_tampering.run_upgrade(FEATURE_FLAG, STATE_JSON) == expected
    assert after_tampering.cache_stats()["artifacts_refused"] == 1 and after_tampering.cache_stats()["compiled"] == 1
    # The recompiled artifact replaced the tampered one and is trusted again.
    assert Sandbox(FAST, compiled_cache_dir=tmp_path).run_upgrade(FEATURE_FLAG, STATE_JSON) == expected


def test_an_artifact_compiled_by_another_node_is_not_trusted(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    Sandbox(FAST, compiled_cache_dir=ours).inspect(FEATURE_FLAG)
    Sandbox(FAST, compiled_cache_dir=theirs).inspect(package("identity.wat"))
    (artifact,) = ours.glob("*.cwasm")
    (theirs / artifact.name).write_bytes(artifact.read_bytes())  # valid, but signed with the other node's key
    sandbox = Sandbox(FAST, compiled_cache_dir=theirs)
    sandbox.inspect(FEATURE_FLAG)
    assert sandbox.cache_stats()["artifacts_refused"] == 1 and sandbox.cache_stats()["loaded_from_disk"] == 0


def test_an_unusable_cache_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(errors.ConfigError, match="compiled module cache directory"):
        Sandbox(compiled_cache_dir=blocker)


# --- threads and the event loop -------------------------------------------------------------------------


async def test_run_upgrade_async_leaves_the_event_loop_free():
    sandbox = Sandbox(SandboxLimits(fuel=10**15, wall_timeout_ms=400))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        with pytest.raises(errors.Interrupted):
            await sandbox.run_upgrade_async(package("endless_loop.wat"), STATE_JSON)
        result = await sandbox.run_upgrade_async(FEATURE_FLAG, STATE_JSON)
    finally:
        task.cancel()
    assert result.state == expected_feature_flag_state(STATE)
    assert ticks >= 10, "the loop kept running while the package spun"


def test_concurrent_calls_from_threads_give_the_same_result():
    sandbox = Sandbox(FAST)
    results = []
    threads = [threading.Thread(target=lambda: results.append(sandbox.run_upgrade(FEATURE_FLAG, STATE_JSON))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 4 and all(result == results[0] for result in results)


def test_the_epoch_thread_stops_when_no_call_runs():
    Sandbox(FAST).run_upgrade(FEATURE_FLAG, STATE_JSON)
    poll_until(lambda: not any(thread.name == "sandbox-epoch" for thread in threading.enumerate()),
               what="the sandbox's epoch thread to stop", timeout_s=5)
