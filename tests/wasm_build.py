"""Build test packages from their sources at test time: WAT, C (clang) and the spec's Rust crate (cargo).

Why at test time: a committed .wasm is a blob nobody reviews; building from the sources in examples/ and
tests/packages/ proves that the recipes in the READMEs work, with the toolchain CI installs
(scripts/install-toolchain.sh). A missing tool skips the test with the command that installs it; a
build that fails is a test failure, never a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
import wasmtime

REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLES = REPOSITORY / "examples"
TEST_PACKAGES = Path(__file__).resolve().parent / "packages"
RUST_EXAMPLE = EXAMPLES / "rust" / "upgrade_v1_2_0"
RUST_WASM_NAME = "synapse_upgrade_v1_2_0.wasm"
DEBIAN_CARGO = Path("/usr/bin/cargo")
DEBIAN_RUSTC = Path("/usr/bin/rustc")
DEBIAN_REGISTRY = Path("/usr/share/cargo/registry")
DEBIAN_WASM32_STD = Path("/usr/lib/rustlib/wasm32-unknown-unknown/lib")
RUST_CRATES_NEEDED = ("wasm-bindgen-0.2", "serde-1.", "serde_derive-1.", "serde_json-1.")
INSTALL_HINT = "run: sudo sh scripts/install-toolchain.sh"
BUILD_TIMEOUT_S = 600
CLANG_FLAGS = ("--target=wasm32", "-nostdlib", "-O2", "-mbulk-memory", "-Wl,--no-entry", "-Wl,--stack-first",
               "-Wl,-z,stack-size=1048576")
CARGO_CONFIG = """[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "/usr/share/cargo/registry"
"""


def wat_to_wasm(path_or_text: str | Path) -> bytes:
    """A .wat file (Path, or str naming an existing .wat file) or WAT source text -> wasm bytes."""
    if isinstance(path_or_text, Path) or (str(path_or_text).endswith(".wat") and Path(path_or_text).is_file()):
        text = Path(path_or_text).read_text()
    else:
        text = str(path_or_text)
    return bytes(wasmtime.wat2wasm(text))


def _run_build(command: list[str], cwd: Path, environment: dict | None, what: str) -> None:
    completed = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if completed.returncode != 0:
        raise AssertionError(f"building {what} failed ({' '.join(command)}):\n{completed.stderr[-4000:]}")


def build_c(source: str | Path, tmp: Path) -> bytes:
    """Compile one C file for ABI 2 with clang --target=wasm32 -nostdlib (skips when clang/lld is missing)."""
    clang = shutil.which("clang")
    if clang is None or shutil.which("wasm-ld") is None:
        pytest.skip(f"clang and lld (wasm-ld) are needed to build C packages; {INSTALL_HINT}")
    source = Path(source)
    output = Path(tmp) / (source.stem + ".wasm")
    _run_build([clang, *CLANG_FLAGS, "-o", str(output), str(source)], Path(tmp), None, str(source))
    return output.read_bytes()


def rust_toolchain_missing() -> str | None:
    """What is missing to build the Rust example offline with Debian's toolchain, or None."""
    for path in (DEBIAN_CARGO, DEBIAN_RUSTC, DEBIAN_WASM32_STD, DEBIAN_REGISTRY):
        if not path.exists():
            return str(path)
    present = [entry.name for entry in DEBIAN_REGISTRY.iterdir()]
    for prefix in RUST_CRATES_NEEDED:
        if not any(name.startswith(prefix) for name in present):
            return f"{DEBIAN_REGISTRY}/{prefix}*"
    return None


def cargo_environment(cargo_home: Path, target_dir: Path | None = None) -> dict:
    """cargo's environment for an offline build: Debian's rustc, a private CARGO_HOME with source
    replacement to Debian's registry, and nothing inherited that could change the build."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("CARGO_", "RUSTUP_")) and key not in ("RUSTFLAGS", "RUSTC", "RUSTC_WRAPPER")}
    cargo_home.mkdir(parents=True, exist_ok=True)
    (cargo_home / "config.toml").write_text(CARGO_CONFIG)
    environment.update(CARGO_HOME=str(cargo_home), RUSTC=str(DEBIAN_RUSTC), CARGO_TERM_COLOR="never")
    if target_dir is not None:
        environment["CARGO_TARGET_DIR"] = str(target_dir)
    return environment


def build_rust_example(tmp: Path, target_dir: Path | None = None, release_profile: Mapping[str, str] | None = None) -> bytes:
    """Copy examples/rust/upgrade_v1_2_0 to tmp and build it for real, offline, with /usr/bin/cargo.

    `target_dir` may be shared between builds (e.g. `shared_build_dir(tmp_path_factory)`): cargo locks
    it, so parallel test workers wait for one build instead of compiling the dependencies each.
    `release_profile` sets cargo's release profile from outside the crate (CARGO_PROFILE_RELEASE_<KEY>,
    e.g. {"LTO": "fat"}): the crate's source and Cargo.toml stay as the spec gives them."""
    missing = rust_toolchain_missing()
    if missing is not None:
        pytest.skip(f"Debian's Rust toolchain for wasm32 is missing ({missing}); {INSTALL_HINT}")
    crate = Path(tmp) / "upgrade_v1_2_0"
    shutil.copytree(RUST_EXAMPLE, crate, ignore=shutil.ignore_patterns("target", "Cargo.lock"))
    environment = cargo_environment(Path(tmp) / "cargo-home", target_dir)
    environment.update({f"CARGO_PROFILE_RELEASE_{key}": value for key, value in (release_profile or {}).items()})
    command = [str(DEBIAN_CARGO), "build", "--target", "wasm32-unknown-unknown", "--release", "--offline"]
    built_in = Path(target_dir) if target_dir is not None else crate / "target"
    with _exclusive(built_in):  # another worker's build must not rewrite the artifact while we read it
        _run_build(command, crate, environment, "the Rust example")
        return (built_in / "wasm32-unknown-unknown" / "release" / RUST_WASM_NAME).read_bytes()


@contextlib.contextmanager
def _exclusive(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".synapse-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def shared_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by all xdist workers of this test session (the session's temp root)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    directory = root / "shared-builds"
    directory.mkdir(exist_ok=True)
    return directory
