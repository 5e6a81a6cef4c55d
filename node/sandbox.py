"""The WASM sandbox: runs an upgrade package's `upgrade(state_json) -> state_json` under hard limits.

Why it works as it does:
- wasmtime with no WASI and no host functions. The only imports a package may have are the
  wasm-bindgen placeholders that plain `cargo build` leaves in a `#[wasm_bindgen]` crate; they are
  defined as traps (they are only ever called by the wasm-bindgen CLI's describe step, never by a
  working `upgrade()`). Anything else is refused before the module runs, by name.
- Every honest node must reach the same verdict on the same package and state, so the limits that
  decide a result are deterministic: fuel (instructions), linear memory, output size. The wall clock
  (epoch interruption) only protects this node; hitting it raises `Interrupted`, a local, indefinite
  failure that other nodes must never reproduce. A fresh Store per call: a trap leaves nothing behind.
- Two ABIs, told apart by the exports (DESIGN.md "Packages and the sandbox"): ABI 1 is what the spec's
  Rust crate gives with `#[wasm_bindgen]` and plain `cargo build` (retptr or multi-value results, old
  `__wbindgen_malloc(size)` or new `(size, align)`); ABI 2 is a plain `alloc`/`upgrade` pair for C,
  Zig, AssemblyScript and WAT, returning `ptr << 32 | len` as an i64.
- wasmtime does not say when `memory.grow` was refused: it returns -1 and the guest's allocator then
  traps with `unreachable` (wasmtime-py exposes no limiter callback, and re-running with more memory
  would hand a hostile package more than the limit). So a trap counts as memory exhaustion when the
  trapping stack is in a known allocation-failure handler (Rust's `__rust_alloc_error_handler` & co.,
  present unless the module was stripped), or when it is `unreachable`/out-of-bounds and not a Rust
  panic while the memory in use is within max(1 MiB, limit/8) of the limit. Every input to this rule
  is deterministic (trap code, function names, memory size), so every node classifies alike; a
  refused request far below the limit in a stripped module stays a plain WasmTrap.
- Compiling is the slow part (~1 s for a 5 MB Rust module), so compiled modules are cached by digest:
  in memory (bounded LRU) and on disk. `Module.deserialize` runs native code, so a disk artifact is
  trusted only if it carries this node's HMAC (key made on first use, mode 0600), under a name bound to
  sha256(wasm) + wasmtime version + engine config; anything else is recompiled and overwritten
  (node/sandbox_disk_cache.py). The nodes of one local cluster may share that disk cache (a key made
  by the launcher): one compiles under a file lock, the others wait and load its artifact.
- Calls are blocking (wasmtime releases the GIL while wasm runs); `run_upgrade_async` runs them in the
  loop's executor so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import platform
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from node import errors
from node.sandbox_disk_cache import DiskCache
from node.sandbox_output import one_line as _one_line, parse_state, parse_state_object, pin_integer_digits
from node.core.canonical import sha256_hex
from node.limits import (
    SANDBOX_COMPILE_ALLOWANCE_MS, SANDBOX_EPOCH_TICK_MS, SANDBOX_MEMORY_CACHE_ENTRIES_MAX, SANDBOX_MEMORY_NEAR_LIMIT_MIN_BYTES, SANDBOX_REFUSALS_SHOWN_MAX, SANDBOX_RUNS_CONCURRENT_MAX, SANDBOX_TABLE_ELEMENTS_MAX, SANDBOX_WASM_STACK_MAX_BYTES,
)

ABI_WASM_BINDGEN = 1
ABI_PLAIN = 2
PLACEHOLDER_IMPORT_MODULES = ("__wbindgen_placeholder__", "__wbindgen_externref_xform__")
WASM_MAGIC = b"\0asm"
PAGE_SIZE_BYTES = 65536
ADDRESS_SPACE_BYTES = 4 * 1024 * 1024 * 1024  # wasm32
ALLOCATION_FAILURE_FUNCTIONS = ("__rust_alloc_error_handler", "__rg_oom", "__rdl_oom", "rust_oom", "handle_alloc_error")
RUST_PANIC_FUNCTIONS = ("rust_panic", "__rust_start_panic", "rust_begin_unwind")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise errors.ConfigError(f"sandbox limit {name} must be an integer from {low:,} to {high:,}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxLimits:
    fuel: int = 5_000_000_000  # deterministic instruction budget per call
    memory_size_max_bytes: int = 256 * 1024 * 1024
    module_size_max_bytes: int = 64 * 1024 * 1024
    output_size_max_bytes: int = 64 * 1024 * 1024
    wall_timeout_ms: int = 60_000  # epoch-based, a LOCAL failure (errors.Interrupted), never a result

    def __post_init__(self) -> None:
        _check_int("fuel", self.fuel, 1, 10**15)
        _check_int("memory_size_max_bytes", self.memory_size_max_bytes, PAGE_SIZE_BYTES, ADDRESS_SPACE_BYTES)
        _check_int("module_size_max_bytes", self.module_size_max_bytes, len(WASM_MAGIC) + 4, 1024 * 1024 * 1024)
        _check_int("output_size_max_bytes", self.output_size_max_bytes, 2, ADDRESS_SPACE_BYTES)
        _check_int("wall_timeout_ms", self.wall_timeout_ms, 1, 3_600_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleInfo:
    sha256: str
    size_bytes: int
    abi: int | None  # 1 = wasm-bindgen, 2 = plain alloc/upgrade
    exports: tuple[dict, ...]  # {"name", "type"}
    imports: tuple[dict, ...]  # {"module", "name", "type"}
    refusals: tuple[str, ...]  # why the sandbox would refuse it (empty = runnable)
    upgrade_info: dict | None  # get_upgrade_info() result when exported and runnable
    upgrade_info_error: str | None = None  # why get_upgrade_info() failed, when it did

    def to_dict(self) -> dict:
        return {
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "abi": self.abi,
            "abi_name": {ABI_WASM_BINDGEN: "wasm-bindgen", ABI_PLAIN: "plain"}.get(self.abi),
            "runnable": not self.refusals,
            "refusals": list(self.refusals),
            "exports": [dict(entry) for entry in self.exports],
            "imports": [dict(entry) for entry in self.imports],
            "upgrade_info": self.upgrade_info,
            "upgrade_info_error": self.upgrade_info_error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeOutput:
    state: dict  # parsed JSON object returned by upgrade()
    output_size_bytes: int
    fuel_consumed: int
    float_free: bool = False  # the output held no float literal (sandbox_output.parse_state)


# --- engine, types, ABI detection ----------------------------------------------------------------


def _engine_config() -> tuple[wasmtime.Config, str]:
    """The engine settings, and a text naming them that goes into the compiled-cache key."""
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.cranelift_nan_canonicalization = True
    config.cranelift_opt_level = "speed"
    config.wasm_threads = False  # shared memory would make results depend on scheduling
    config.wasm_multi_memory = False  # one linear memory: the one the ABI reads and the limit measures
    config.wasm_memory64 = False
    config.wasm_relaxed_simd_deterministic = True
    config.max_wasm_stack = SANDBOX_WASM_STACK_MAX_BYTES
    described = (f"fuel=1;epoch=1;nan_canon=1;opt=speed;threads=0;multi_memory=0;memory64=0;relaxed_det=1;"
                 f"stack={SANDBOX_WASM_STACK_MAX_BYTES}")
    return config, described


def _val_types(types: list) -> tuple[str, ...]:
    return tuple(str(value_type) for value_type in types)


def _describe_type(extern_type: object) -> str:
    if isinstance(extern_type, wasmtime.FuncType):
        results = _val_types(extern_type.results)
        shown = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
        return f"func({', '.join(_val_types(extern_type.params))}) -> {shown}"
    if isinstance(extern_type, wasmtime.MemoryType):
        limits = extern_type.limits
        maximum = "none" if limits.max is None else f"{limits.max} pages"
        flags = (", 64-bit" if extern_type.is_64 else "") + (", shared" if extern_type.is_shared else "")
        return f"memory(min {limits.min} pages, max {maximum}{flags})"
    if isinstance(extern_type, wasmtime.GlobalType):
        return f"global({extern_type.content}, {'mut' if extern_type.mutable else 'const'})"
    if isinstance(extern_type, wasmtime.TableType):
        return f"table({extern_type.element}, min {extern_type.limits.min})"
    return type(extern_type).__name__.replace("Type", "").lower()


def _signature(extern_type: object) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if not isinstance(extern_type, wasmtime.FuncType):
        return None
    return _val_types(extern_type.params), _val_types(extern_type.results)


I32, I64 = "i32", "i64"
_SIGNATURES = {
    # (ABI, export) -> {signature: calling convention}
    (ABI_WASM_BINDGEN, "upgrade"): {((I32, I32, I32), ()): "retptr", ((I32, I32), (I32, I32)): "multi"},
    (ABI_WASM_BINDGEN, "get_upgrade_info"): {((I32,), ()): "retptr", ((), (I32, I32)): "multi"},
    (ABI_WASM_BINDGEN, "__wbindgen_malloc"): {((I32,), (I32,)): "size", ((I32, I32), (I32,)): "size_align"},
    (ABI_PLAIN, "upgrade"): {((I32, I32), (I64,)): "packed"},
    (ABI_PLAIN, "get_upgrade_info"): {((), (I64,)): "packed"},
    (ABI_PLAIN, "alloc"): {((I32,), (I32,)): "size"},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class _EntryPoints:
    """How to call one module: which allocator, and how each entry point returns (ptr, len)."""

    abi: int
    allocator: str  # "__wbindgen_malloc" or "alloc"
    allocator_convention: str  # "size" or "size_align"
    upgrade_convention: str  # "retptr", "multi" or "packed"
    info_convention: str | None  # same values, None when get_upgrade_info is not exported


def _convention(abi: int, name: str, exports: dict, refusals: list[str], required: bool) -> str | None:
    if name not in exports:
        if required:
            refusals.append(f"exports no function named '{name}' (needed by ABI {abi})")
        return None
    accepted = _SIGNATURES[(abi, name)]
    convention = accepted.get(_signature(exports[name]))
    if convention is None:
        expected = " or ".join(f"func({', '.join(p)}) -> ({', '.join(r)})" for p, r in accepted)
        refusals.append(f"exports '{name}' as {_describe_type(exports[name])}, but ABI {abi} needs {expected}")
    return convention


def _detect_entry_points(exports: dict) -> tuple[_EntryPoints | None, int | None, list[str]]:
    """ABI 1 if `__wbindgen_malloc` is exported, ABI 2 if `alloc` is; the signatures must match exactly."""
    refusals: list[str] = []
    memory = exports.get("memory")
    if not isinstance(memory, wasmtime.MemoryType):
        refusals.append("exports no linear memory named 'memory'")
    if "__wbindgen_malloc" in exports:
        abi, allocator = ABI_WASM_BINDGEN, "__wbindgen_malloc"
    elif "alloc" in exports:
        abi, allocator = ABI_PLAIN, "alloc"
    else:
        refusals.append("exports neither '__wbindgen_malloc' (ABI 1, wasm-bindgen) nor 'alloc' (ABI 2, plain)")
        return None, None, refusals
    allocator_convention = _convention(abi, allocator, exports, refusals, required=True)
    upgrade_convention = _convention(abi, "upgrade", exports, refusals, required=True)
    info_convention = _convention(abi, "get_upgrade_info", exports, refusals, required=False)
    if refusals:
        return None, abi, refusals
    entry_points = _EntryPoints(abi=abi, allocator=allocator, allocator_convention=allocator_convention,
                                upgrade_convention=upgrade_convention, info_convention=info_convention)
    return entry_points, abi, refusals


def _import_refusals(imports: list) -> list[str]:
    refusals = []
    for item in imports:
        where = f"{item.module}.{item.name}"
        if item.module not in PLACEHOLDER_IMPORT_MODULES:
            refusals.append(f"imports {where} ({_describe_type(item.type)}), which the sandbox does not provide")
        elif not isinstance(item.type, wasmtime.FuncType):
            refusals.append(f"imports {where} as a {_describe_type(item.type)}; only functions may come from wasm-bindgen placeholders")
    return refusals


def _memory_refusals(exports: dict, memory_limit_bytes: int) -> list[str]:
    memory = exports.get("memory")
    if not isinstance(memory, wasmtime.MemoryType):
        return []
    if memory.is_64 or memory.is_shared:
        return [f"exports a {_describe_type(memory)}; the sandbox runs only 32-bit, unshared memory"]
    minimum_bytes = memory.limits.min * PAGE_SIZE_BYTES
    if minimum_bytes > memory_limit_bytes:
        return [f"declares a minimum linear memory of {minimum_bytes:,} bytes, over the limit of {memory_limit_bytes:,} bytes"]
    return []


# --- compiled modules and their cache ------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _Compiled:
    sha256: str
    size_bytes: int
    instance_pre: wasmtime.InstancePre | None
    entry_points: _EntryPoints | None
    abi: int | None
    exports: tuple[dict, ...]
    imports: tuple[dict, ...]
    refusals: tuple[str, ...]
    upgrade_info: dict | None = None
    upgrade_info_error: str | None = None
    upgrade_info_known: bool = False


class _EpochTicker:
    """Advances the engine's epoch every tick while at least one call runs; idle, no thread exists."""

    def __init__(self, engine: wasmtime.Engine, tick_ms: int) -> None:
        self._engine = engine
        self._tick_s = tick_ms / 1000
        self._lock = threading.Lock()
        self._active = 0
        self._stop: threading.Event | None = None

    @contextlib.contextmanager
    def running(self):
        with self._lock:
            self._active += 1
            if self._active == 1:
                self._stop = threading.Event()
                threading.Thread(target=self._tick, args=(self._stop,), name="sandbox-epoch", daemon=True).start()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._stop is not None:
                    self._stop.set()
                    self._stop = None

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(self._tick_s):
            self._engine.increment_epoch()


# --- the sandbox ---------------------------------------------------------------------------------


class Sandbox:
    """Runs packages. Thread-safe: one engine and one compiled-module cache, a fresh Store per call."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), compiled_cache_dir: Path | None = None, *,
                 shared_cache_dir: Path | None = None) -> None:
        """`compiled_cache_dir`: this node's own disk cache; `shared_cache_dir` (which wins): a cache
        shared by the nodes of a local cluster, made by the launcher (sandbox_disk_cache.create_shared_cache)."""
        if not isinstance(limits, SandboxLimits):
            raise errors.ConfigError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
        self._limits = limits
        pin_integer_digits()  # outputs are judged alike on every node (node/sandbox_output.py)
        config, described = _engine_config()
        self._engine = wasmtime.Engine(config)
        wasmtime_version = importlib.metadata.version("wasmtime")
        self._fingerprint = sha256_hex(f"wasmtime={wasmtime_version};{described};{platform.machine()}".encode())[:20]
        self._disk = (DiskCache(Path(shared_cache_dir), self._fingerprint, shared=True) if shared_cache_dir is not None
                      else None if compiled_cache_dir is None else DiskCache(Path(compiled_cache_dir), self._fingerprint))
        self._memory_cache: OrderedDict[str, _Compiled] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._run_slots = threading.BoundedSemaphore(SANDBOX_RUNS_CONCURRENT_MAX)
        self._ticker = _EpochTicker(self._engine, SANDBOX_EPOCH_TICK_MS)
        self._stats = {"compiled": 0, "loaded_from_disk": 0, "memory_hits": 0, "artifacts_refused": 0, "artifacts_written": 0,
                       "compile_lock_timeouts": 0}

    @property
    def limits(self) -> SandboxLimits:
        return self._limits

    def cache_stats(self) -> dict[str, int]:
        """Counters of the compiled-module cache: what was compiled, loaded from disk, refused."""
        with self._cache_lock:
            return dict(self._stats)

    # -- public calls --

    def inspect(self, wasm: bytes) -> ModuleInfo:
        """What the module is and whether the sandbox would run it. Never raises for a bad module."""
        compiled = self._compiled(wasm)
        if not compiled.refusals and compiled.entry_points.info_convention is not None:
            self._remember_upgrade_info(compiled)
        return ModuleInfo(sha256=compiled.sha256, size_bytes=compiled.size_bytes, abi=compiled.abi,
                          exports=compiled.exports, imports=compiled.imports, refusals=compiled.refusals,
                          upgrade_info=compiled.upgrade_info, upgrade_info_error=compiled.upgrade_info_error)

    def forget(self, sha256: str) -> bool:
        """Drop a module from the in-memory cache (its code and metadata: ~0.5 MB for the spec's crate);
        a later call loads it from the disk cache again, or compiles it. True if it was there."""
        with self._cache_lock:
            return self._memory_cache.pop(sha256, None) is not None

    def compile(self, wasm: bytes) -> tuple[str, ...]:
        """Compile the module (or load it from the caches) into this sandbox's memory cache, running
        nothing; its refusals, if any. What an approved upgrade is warmed with before its certificate."""
        return self._compiled(wasm).refusals

    def upgrade_info(self, wasm: bytes) -> dict | None:
        """get_upgrade_info()'s JSON object, or None when the package does not export it."""
        compiled = self._runnable(wasm)
        if compiled.entry_points.info_convention is None:
            return None
        output, _fuel = self._run(compiled, "get_upgrade_info", None)
        return parse_state_object(output, "get_upgrade_info()")

    def run_upgrade(self, wasm: bytes, state_json: bytes) -> UpgradeOutput:
        """Blocking: upgrade(state_json) under the limits; the new state, parsed and checked."""
        if not isinstance(state_json, (bytes, bytearray)):
            raise TypeError("state_json must be bytes")
        compiled = self._runnable(wasm)
        if len(state_json) > self._limits.memory_size_max_bytes:
            raise errors.MemoryExhausted(f"the input state of {len(state_json):,} bytes cannot fit in the package's "
                                         f"memory limit of {self._limits.memory_size_max_bytes:,} bytes")
        output, fuel_consumed = self._run(compiled, "upgrade", bytes(state_json))
        parsed = parse_state(output, "upgrade()")
        return UpgradeOutput(state=parsed.value, output_size_bytes=len(output), fuel_consumed=fuel_consumed,
                             float_free=parsed.float_free)

    async def run_upgrade_async(self, wasm: bytes, state_json: bytes) -> UpgradeOutput:
        """The same, off the event loop (wasmtime releases the GIL while wasm runs)."""
        loop = asyncio.get_running_loop()
        timeout_s = (self._limits.wall_timeout_ms + SANDBOX_COMPILE_ALLOWANCE_MS) / 1000
        call = loop.run_in_executor(None, self.run_upgrade, wasm, state_json)
        try:
            return await asyncio.wait_for(call, timeout_s)
        except TimeoutError:
            raise errors.Interrupted(f"the sandbox call did not finish within {timeout_s:.0f} s") from None

    # -- loading --

    def _runnable(self, wasm: bytes) -> _Compiled:
        compiled = self._compiled(wasm)
        if compiled.refusals:
            shown = "; it ".join(compiled.refusals[:SANDBOX_REFUSALS_SHOWN_MAX])
            more = len(compiled.refusals) - SANDBOX_REFUSALS_SHOWN_MAX
            raise errors.ModuleRefused("package refused: it " + shown + (f"; and {more} more" if more > 0 else ""))
        return compiled

    def _compiled(self, wasm: bytes) -> _Compiled:
        if not isinstance(wasm, (bytes, bytearray, memoryview)):
            raise TypeError("wasm must be bytes")
        wasm = bytes(wasm)
        digest = sha256_hex(wasm)
        refusal = self._precheck(wasm)
        if refusal is not None:
            return _Compiled(sha256=digest, size_bytes=len(wasm), instance_pre=None, entry_points=None, abi=None,
                             exports=(), imports=(), refusals=(refusal,))
        with self._cache_lock:
            cached = self._memory_cache.get(digest)
            if cached is not None:
                self._memory_cache.move_to_end(digest)
                self._stats["memory_hits"] += 1
                return cached
        compiled = self._build(wasm, digest)
        with self._cache_lock:
            self._memory_cache[digest] = compiled
            while len(self._memory_cache) > SANDBOX_MEMORY_CACHE_ENTRIES_MAX:
                self._memory_cache.popitem(last=False)
        return compiled

    def _precheck(self, wasm: bytes) -> str | None:
        if len(wasm) > self._limits.module_size_max_bytes:
            return f"is {len(wasm):,} bytes, over the module size limit of {self._limits.module_size_max_bytes:,} bytes"
        if not wasm.startswith(WASM_MAGIC):
            return "is not a WebAssembly binary (no \\0asm header); convert WAT text with wasmtime.wat2wasm first"
        return None

    def _module(self, wasm: bytes, digest: str) -> wasmtime.Module:
        """Deserialize an authentic artifact if there is one; otherwise compile (under the artifact's
        lock, so nodes sharing the cache compile it once) and store."""
        if self._disk is None:
            self._count("compiled")
            return wasmtime.Module(self._engine, wasm)
        module, refused = self._from_disk(digest)
        if module is not None:
            return module
        with self._disk.compiling(digest) as locked:
            if locked is False:
                self._count("compile_lock_timeouts")
            module, refused_again = self._from_disk(digest)  # another node may have written it while we waited
            if refused or refused_again:
                self._count("artifacts_refused")
            if module is not None:
                return module
            module = wasmtime.Module(self._engine, wasm)
            self._count("compiled")
            if self._disk.store(digest, bytes(module.serialize())):
                self._count("artifacts_written")
        return module

    def _from_disk(self, digest: str) -> tuple[wasmtime.Module | None, bool]:
        payload, refused = self._disk.load(digest)
        if payload is None:
            return None, refused
        try:
            module = wasmtime.Module.deserialize(self._engine, payload)
        except wasmtime.WasmtimeError:
            return None, True  # e.g. written by another wasmtime build: recompile
        self._count("loaded_from_disk")
        return module, False

    def _count(self, name: str) -> None:
        with self._cache_lock:
            self._stats[name] += 1

    def _build(self, wasm: bytes, digest: str) -> _Compiled:
        try:
            module = self._module(wasm, digest)
        except wasmtime.WasmtimeError as error:
            return _Compiled(sha256=digest, size_bytes=len(wasm), instance_pre=None, entry_points=None, abi=None,
                             exports=(), imports=(),
                             refusals=(f"is not a valid WebAssembly module: {_one_line(str(error))}",))
        module_imports = module.imports
        export_types = {item.name: item.type for item in module.exports}
        entry_points, abi, refusals = _detect_entry_points(export_types)
        refusals = _import_refusals(module_imports) + refusals + _memory_refusals(export_types, self._limits.memory_size_max_bytes)
        instance_pre = None
        if not refusals:
            linker = wasmtime.Linker(self._engine)
            linker.define_unknown_imports_as_traps(module)
            instance_pre = linker.instantiate_pre(module)
        return _Compiled(
            sha256=digest, size_bytes=len(wasm), instance_pre=instance_pre, entry_points=entry_points, abi=abi,
            exports=tuple({"name": item.name, "type": _describe_type(item.type)} for item in module.exports),
            imports=tuple({"module": item.module, "name": item.name, "type": _describe_type(item.type)} for item in module_imports),
            refusals=tuple(refusals))

    def _remember_upgrade_info(self, compiled: _Compiled) -> None:
        if compiled.upgrade_info_known:
            return
        try:
            output, _fuel = self._run(compiled, "get_upgrade_info", None)
            compiled.upgrade_info = parse_state_object(output, "get_upgrade_info()")
        except errors.Interrupted as error:
            compiled.upgrade_info_error = error.message
            return  # a local failure: try again next time
        except errors.SandboxError as error:
            compiled.upgrade_info_error = error.message
        compiled.upgrade_info_known = True

    # -- running --

    def _run(self, compiled: _Compiled, entry: str, input_bytes: bytes | None) -> tuple[bytes, int]:
        wall_timeout_s = self._limits.wall_timeout_ms / 1000
        if not self._run_slots.acquire(timeout=wall_timeout_s):
            raise errors.Interrupted(f"all {SANDBOX_RUNS_CONCURRENT_MAX} sandbox slots stayed busy for {self._limits.wall_timeout_ms} ms")
        try:
            with self._ticker.running():
                return _Call(self._limits, compiled.entry_points, self._engine).run(compiled.instance_pre, entry, input_bytes)
        finally:
            self._run_slots.release()


class _Call:
    """One call in one fresh Store: instantiate, pass the input, call, read (ptr, len), classify failures."""

    def __init__(self, limits: SandboxLimits, entry_points: _EntryPoints, engine: wasmtime.Engine) -> None:
        self._limits = limits
        self._entry_points = entry_points
        self._store = wasmtime.Store(engine)
        self._store.set_fuel(limits.fuel)
        self._store.set_limits(memory_size=limits.memory_size_max_bytes, table_elements=SANDBOX_TABLE_ELEMENTS_MAX,
                               instances=1, tables=8, memories=1)
        self._store.set_epoch_deadline(-(-limits.wall_timeout_ms // SANDBOX_EPOCH_TICK_MS) + 1)
        self._memory: wasmtime.Memory | None = None
        self._exports = None

    def run(self, instance_pre: wasmtime.InstancePre, entry: str, input_bytes: bytes | None) -> tuple[bytes, int]:
        instance = self._guarded("instantiation", instance_pre.instantiate, self._store)
        self._exports = instance.exports(self._store)
        self._memory = self._exports["memory"]
        if entry == "upgrade":
            pointer, length = self._call_upgrade(input_bytes)
        else:
            pointer, length = self._call_entry("get_upgrade_info", self._entry_points.info_convention)
        output = self._read_output(f"{entry}()", pointer, length)
        return output, self._limits.fuel - self._store.get_fuel()

    def _guarded(self, phase: str, function, *arguments):
        try:
            return function(*arguments)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as error:
            raise self._failure(phase, error) from None

    def _allocate(self, size: int, align: int) -> int:
        entry_points = self._entry_points
        allocator = self._exports[entry_points.allocator]
        arguments = (size, align) if entry_points.allocator_convention == "size_align" else (size,)
        pointer = self._guarded(f"{entry_points.allocator}()", allocator, self._store, *arguments) & 0xFFFFFFFF
        memory_bytes = self._memory.data_len(self._store)
        if pointer + size > memory_bytes:
            raise errors.WasmTrap(f"{entry_points.allocator}({size}) returned address {pointer}, but {size:,} bytes there "
                                  f"do not fit in the {memory_bytes:,}-byte linear memory",
                                  hint="the allocator must grow memory and return a buffer inside it")
        return pointer

    def _call_upgrade(self, input_bytes: bytes) -> tuple[int, int]:
        pointer = self._allocate(len(input_bytes), 1)
        if input_bytes:
            # One copy, straight into linear memory (Memory.write would copy into a bytearray first).
            ctypes.memmove(self._base_address() + pointer, input_bytes, len(input_bytes))
        return self._call_entry("upgrade", self._entry_points.upgrade_convention, pointer, len(input_bytes))

    def _call_entry(self, name: str, convention: str, *arguments: int) -> tuple[int, int]:
        function = self._exports[name]
        phase = f"{name}()"
        if convention == "retptr":
            return_pointer = self._allocate(8, 4)
            self._guarded(phase, function, self._store, return_pointer, *arguments)
            raw = ctypes.string_at(self._base_address() + return_pointer, 8)
            return struct.unpack("<II", raw)
        if convention == "multi":
            pointer, length = self._guarded(phase, function, self._store, *arguments)
            return pointer & 0xFFFFFFFF, length & 0xFFFFFFFF
        packed = self._guarded(phase, function, self._store, *arguments) & 0xFFFFFFFFFFFFFFFF
        return packed >> 32, packed & 0xFFFFFFFF

    def _base_address(self) -> int:
        return ctypes.addressof(self._memory.data_ptr(self._store).contents)

    def _read_output(self, phase: str, pointer: int, length: int) -> bytes:
        if length > self._limits.output_size_max_bytes:
            raise errors.BadOutput(f"{phase} returned {length:,} bytes, over the output limit of {self._limits.output_size_max_bytes:,} bytes",
                                   hint="make the migration's output smaller, or raise the sandbox's output size limit")
        memory_bytes = self._memory.data_len(self._store)
        if pointer + length > memory_bytes:
            raise errors.BadOutput(f"{phase} returned bytes [{pointer}, {pointer + length}) outside its {memory_bytes:,}-byte linear memory")
        return ctypes.string_at(self._base_address() + pointer, length)

    def _failure(self, phase: str, error: Exception) -> errors.SandboxError:
        code = getattr(error, "trap_code", None) if isinstance(error, wasmtime.Trap) else None
        names = [frame.func_name or "" for frame in error.frames] if isinstance(error, wasmtime.Trap) else []
        memory_bytes = self._memory.data_len(self._store) if self._memory is not None else 0
        limit_bytes = self._limits.memory_size_max_bytes
        cause = _one_line(str(error))
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return errors.FuelExhausted(f"{phase} ran out of fuel: it used all {self._limits.fuel:,} units allowed")
        if code == wasmtime.TrapCode.INTERRUPT:
            return errors.Interrupted(f"{phase} ran past the wall-clock deadline of {self._limits.wall_timeout_ms:,} ms")
        if _ran_out_of_memory(code, names, memory_bytes, limit_bytes) or "exceeds memory limits" in cause:
            return errors.MemoryExhausted(f"{phase} ran out of linear memory: {memory_bytes / 2**20:.1f} MiB in use "
                                          f"when it trapped, limit {limit_bytes / 2**20:.1f} MiB")
        placeholder = re.search(r"unknown import: `([^`]+)::([^`]+)` has not been defined", cause)
        if placeholder:
            return errors.WasmTrap(f"{phase} called the import {placeholder.group(1)}.{placeholder.group(2)}, "
                                   f"which the sandbox provides only as a trap")
        cause = cause.removeprefix("wasm trap: ")
        if any(name in RUST_PANIC_FUNCTIONS for name in names):
            return errors.WasmTrap(f"{phase} trapped: {cause} (a Rust panic)")
        where = next((name for name in names if name), "")
        return errors.WasmTrap(f"{phase} trapped: {cause}" + (f" in function {where}" if where else ""))


def _ran_out_of_memory(code: object, frame_names: list[str], memory_bytes: int, limit_bytes: int) -> bool:
    """Deterministic guess that a trap follows a refused memory.grow (wasmtime does not report it)."""
    if code is None or code in (wasmtime.TrapCode.OUT_OF_FUEL, wasmtime.TrapCode.INTERRUPT, wasmtime.TrapCode.STACK_OVERFLOW):
        return False
    if any(marker in name for name in frame_names for marker in ALLOCATION_FAILURE_FUNCTIONS):
        return True
    if any(name in RUST_PANIC_FUNCTIONS for name in frame_names):
        return False
    near_limit = limit_bytes - memory_bytes < max(SANDBOX_MEMORY_NEAR_LIMIT_MIN_BYTES, limit_bytes // 8)
    return near_limit and code in (wasmtime.TrapCode.UNREACHABLE, wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS)


__all__ = ["ABI_PLAIN", "ABI_WASM_BINDGEN", "ModuleInfo", "Sandbox", "SandboxLimits", "UpgradeOutput", "parse_state_object"]
