"""`synapse doctor`: what this machine can and cannot do for the testbed, said up front.

Why: a scenario that needs partitions must not discover after starting five nodes that iptables is
missing, and a test run must not fail mysteriously because a killed run left a DROP chain or node
processes behind. Each check says ok / warn / fail, what it found, and what to do. `fail` means a
feature will not work here (partitions, the C toolchain, ...); `warn` means it works but something
needs attention (stale runs). Checks only look; `fix=True` removes what is provably stale (an
iptables chain whose address block nobody holds) and nothing else.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.addresses import LOCK_DIR, acquire_block, lock_running_block, parse_block
from cluster.faults import block_listeners, block_of_chain, network_capability, remove_stale_chain, synapse_chains
from node.errors import SynapseError

INSTALL_HINT = "run: sudo sh scripts/install-toolchain.sh"
PROCESS_SCAN_MAX = 100_000
DEBIAN_WASM32_STD = Path("/usr/lib/rustlib/wasm32-unknown-unknown/lib")


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: str
    status: str   # ok | warn | fail
    detail: str
    hint: str = ""


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 11):
        return Check(name="python", status="fail", detail=f"Python {version}", hint="install Python 3.11 or later")
    return Check(name="python", status="ok", detail=f"Python {version} ({sys.executable})")


def check_loopback() -> Check:
    """Every 127/8 address must answer on lo: clusters live on 127.A.B.i."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.77.0.1", 0))
        except OSError as error:
            return Check(name="loopback addresses", status="fail", detail=f"cannot bind 127.77.0.1: {error.strerror}",
                         hint="local clusters need Linux, where all of 127/8 is routed to lo")
    return Check(name="loopback addresses", status="ok", detail="127/8 addresses can be bound (one /24 per cluster)")


def check_free_block() -> Check:
    try:
        with acquire_block(hosts=5, ports=(7000, 7100)) as lease:
            prefix = lease.block.prefix
    except SynapseError as error:
        return Check(name="free address blocks", status="fail", detail=error.message, hint=error.hint)
    held = _held_blocks()
    return Check(name="free address blocks", status="ok", detail=f"a free block was found ({prefix}); {len(held)} block(s) in use now")


def _held_blocks() -> list[str]:
    """Blocks whose lock file is locked by a live process now."""
    held = []
    if not LOCK_DIR.is_dir():
        return held
    for lock_path in sorted(LOCK_DIR.glob("127.*.lock")):
        if not _lock_is_free(lock_path):
            held.append(lock_path.name[: -len(".lock")])
    return held


def _lock_is_free(lock_path: Path) -> bool:
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(descriptor)  # closing drops the probe's own lock
    return True


def check_firewall() -> Check:
    capability = network_capability()
    if not capability.available:
        return Check(name="network partitions (iptables)", status="fail", detail=capability.detail, hint=capability.hint)
    return Check(name="network partitions (iptables)", status="ok", detail=f"{capability.detail}; tc netem is not needed")


def check_namespaces() -> Check:
    """Informational: network namespaces would allow isolating nodes further; partitions do not need them."""
    if not Path("/proc/self/ns/net").exists():
        return Check(name="namespaces", status="warn", detail="no /proc/self/ns/net: this kernel has no network namespaces",
                     hint="not needed by the testbed today")
    unshare = shutil.which("unshare")
    if unshare is None:
        return Check(name="namespaces", status="ok", detail="network namespaces exist (unshare(1) not installed)")
    try:
        completed = subprocess.run([unshare, "--net", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Check(name="namespaces", status="ok", detail=f"network namespaces exist; unshare --net did not run: {error}")
    usable = "usable" if completed.returncode == 0 else f"not usable here ({completed.stderr.strip()[:120]})"
    return Check(name="namespaces", status="ok", detail=f"network namespaces {usable}")


def check_stale_chains(*, fix: bool = False) -> Check:
    """A chain is stale when nobody holds its block's lock AND nothing listens on the block: a chain of a
    running cluster's hand-made partition (`synapse cluster fault ... partition`) is neither, and stays
    until `synapse cluster heal` or `down` removes it."""
    capability = network_capability()
    if not capability.available:
        return Check(name="stale partitions", status="ok", detail="not checked: iptables is not usable here")
    chains = [chain for chain in synapse_chains() if _lock_is_free(LOCK_DIR / f"{block_of_chain(chain)}.lock")]
    running = [chain for chain in chains if block_listeners(block_of_chain(chain))]
    stale = [chain for chain in chains if chain not in running]
    kept = f"; {len(running)} hand-made partition(s) of running clusters kept ({', '.join(running)}: 'synapse cluster heal' " \
           "removes them)" if running else ""
    if not stale:
        return Check(name="stale partitions", status="ok", detail="no iptables chain left by a dead run" + kept)
    if fix:
        removed = [chain for chain in stale if _remove_if_still_stale(block_of_chain(chain))]
        return Check(name="stale partitions", status="ok", detail=f"removed {len(removed)} stale chain(s): {', '.join(removed)}" + kept)
    return Check(name="stale partitions", status="warn", detail=f"{len(stale)} chain(s) of dead runs still drop traffic: {', '.join(stale)}" + kept,
                 hint="run 'synapse doctor --fix' to remove them (their address blocks are not held by anyone)")


def _remove_if_still_stale(block_prefix: str) -> bool:
    """Under the block's lock (a launcher or `cluster fault` may take it meanwhile), check again and remove."""
    lease = lock_running_block(parse_block(block_prefix))
    if lease is None:
        return False
    with lease:
        return not block_listeners(block_prefix) and remove_stale_chain(block_prefix)


def node_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every `python -m node` process on this machine."""
    found = []
    for entry in list(os.scandir("/proc"))[:PROCESS_SCAN_MAX]:
        if not entry.name.isdigit():
            continue
        try:
            arguments = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [argument.decode(errors="replace") for argument in arguments if argument]
        if any(words[i:i + 2] == ["-m", "node"] for i in range(len(words))) and "--config" in words:
            found.append((int(entry.name), " ".join(words)))
    return found


def check_stale_processes() -> Check:
    processes = node_processes()
    orphans = [(pid, command) for pid, command in processes if _parent_of(pid) == 1 and not _config_dir_exists(command)]
    if orphans:
        shown = "; ".join(f"pid {pid}: {command[:120]}" for pid, command in orphans[:5])
        return Check(name="stale runs", status="warn", detail=f"{len(orphans)} node process(es) whose data dir is gone: {shown}",
                     hint="stop them with 'kill <pid>' (they belong to no cluster any more)")
    return Check(name="stale runs", status="ok", detail=f"{len(processes)} node process(es) running, none orphaned")


def _parent_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _config_dir_exists(command: str) -> bool:
    words = command.split()
    try:
        return Path(words[words.index("--config") + 1]).exists()
    except (ValueError, IndexError):
        return False


def check_wasmtime() -> Check:
    try:
        version = importlib.metadata.version("wasmtime")
        import wasmtime

        wasmtime.wat2wasm("(module)")
    except Exception as error:  # any failure means the sandbox cannot work here
        return Check(name="wasmtime", status="fail", detail=f"wasmtime is not usable: {error}", hint="pip install -e . in the venv")
    return Check(name="wasmtime", status="ok", detail=f"wasmtime {version}")


def check_python_packages() -> Check:
    versions = []
    for package in ("pysyncobj", "aiohttp", "cryptography", "msgpack", "click"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            return Check(name="python packages", status="fail", detail=f"{package} is not installed", hint="pip install -e . in the venv")
    return Check(name="python packages", status="ok", detail=", ".join(versions))


def check_c_toolchain() -> Check:
    missing = [tool for tool in ("clang", "wasm-ld") if shutil.which(tool) is None]
    if missing:
        return Check(name="C toolchain (packages from .c)", status="fail", detail=f"missing: {', '.join(missing)}", hint=INSTALL_HINT)
    return Check(name="C toolchain (packages from .c)", status="ok", detail=f"clang at {shutil.which('clang')}, wasm-ld")


def check_rust_toolchain() -> Check:
    missing = [str(path) for path in (Path("/usr/bin/cargo"), Path("/usr/bin/rustc"), DEBIAN_WASM32_STD) if not path.exists()]
    if missing:
        return Check(name="Rust toolchain (wasm32)", status="fail", detail=f"missing: {', '.join(missing)}", hint=INSTALL_HINT)
    return Check(name="Rust toolchain (wasm32)", status="ok", detail="Debian cargo/rustc with the wasm32 standard library")


def run_checks(*, fix: bool = False) -> list[Check]:
    checks: list[Callable[[], Check]] = [check_python, check_python_packages, check_wasmtime, check_loopback, check_free_block,
                                         check_firewall, check_namespaces, lambda: check_stale_chains(fix=fix), check_stale_processes,
                                         check_c_toolchain, check_rust_toolchain]
    results = []
    for check in checks:
        try:
            results.append(check())
        except Exception as error:  # a doctor that crashes on a strange machine helps nobody
            results.append(Check(name=getattr(check, "__name__", "check"), status="fail", detail=f"the check itself failed: {error!r}"))
    return results
