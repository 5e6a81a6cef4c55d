"""`synapse package inspect|test`: look inside an upgrade package and dry-run it on a state, offline.

Why a CLI of its own: a proposer should find out that a package is refused, panics, runs out of fuel or
breaks an invariant on their own machine, before the network votes on it. Both commands use the very
sandbox and checks a node uses (node/sandbox.py, node/core/pipeline.py), with the same default limits.

Output contract: results go to stdout (JSON, or the diff with --diff); failures print `error: ...` and
`hint: ...` on stderr. With --json, stdout holds exactly one JSON document, failures included (as
{"ok": false, "error", "hint"}), so a script never parses human lines. Exit status: 0 success, 1 the package was refused or failed, 2 bad usage or an
input file that cannot be read.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import NoReturn

import click
import wasmtime

from node import errors
from node.core.canonical import JSON_DEPTH_MAX, canonical_json, json_depth_within, json_nesting_depth, state_hash
from node.core.pipeline import check_migration_output, check_version_allowed
from node.core.semver import is_valid_version
from node.sandbox import WASM_MAGIC, Sandbox, SandboxLimits

EXIT_PACKAGE_FAILED = 1
EXIT_BAD_INPUT = 2
WAT_TEXT_SIZE_FACTOR = 4  # WAT text is several times larger than the binary it becomes
DIFF_VALUE_SHOWN_MAX_CHARS = 80
_BARE_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_DEFAULTS = SandboxLimits()


class _InputError(errors.SynapseError):
    """A file given on the command line cannot be used (exit status 2)."""


def _fail(error: errors.SynapseError, status: int, *, as_json: bool = False) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": error.message, "hint": error.hint or ""}, indent=2, ensure_ascii=False))
    click.echo(f"error: {error.message}", err=True)
    if error.hint:
        click.echo(f"hint: {error.hint}", err=True)
    sys.exit(status)


def _read_limited(path: Path, size_max_bytes: int, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(size_max_bytes + 1)
    except OSError as error:
        raise _InputError(f"cannot read {what} {path}: {error.strerror or error}", hint="check the path") from None
    if len(data) > size_max_bytes:
        raise _InputError(f"{what} {path} is larger than {size_max_bytes:,} bytes",
                          hint="raise the matching limit, or use a smaller file")
    return data


def load_package(path: Path, limits: SandboxLimits) -> tuple[bytes, str]:
    """The package's wasm bytes and its source format: a binary module, or WAT text converted here."""
    data = _read_limited(path, limits.module_size_max_bytes * WAT_TEXT_SIZE_FACTOR, "package file")
    if data.startswith(WASM_MAGIC):
        return data, "wasm"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _InputError(f"{path} is neither a WebAssembly binary nor WAT text",
                          hint="give a .wasm module or a .wat text file") from None
    try:
        return bytes(wasmtime.wat2wasm(text)), "wat"
    except wasmtime.WasmtimeError as error:
        lines = str(error).splitlines()
        where = re.search(r"-->\s*<anon>:(\d+):(\d+)", str(error))
        at = f" at line {where.group(1)}, column {where.group(2)}" if where else ""
        raise _InputError(f"{path} is neither a WebAssembly binary nor valid WAT text: {lines[0] if lines else error}{at}",
                          hint="fix the WAT text, or give a compiled .wasm module") from None


def load_state(path: Path, size_max_bytes: int) -> dict:
    data = _read_limited(path, size_max_bytes, "state file")
    if not json_depth_within(data):
        raise _InputError(f"state file {path} nests JSON {json_nesting_depth(data):,} levels deep, over the limit of {JSON_DEPTH_MAX}",
                          hint="give the network state as a JSON object of reasonable depth")
    try:
        state = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as error:
        raise _InputError(f"state file {path} is not UTF-8 JSON: {error}", hint="give the network state as a JSON object") from None
    if not isinstance(state, dict):
        raise _InputError(f"state file {path} holds a JSON {type(state).__name__}, not an object",
                          hint='give the network state as a JSON object such as {"global": {"version": "1.1.0", "nodes": {}}}')
    return state


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _limits(fuel: int | None, memory_mb: int | None, timeout_ms: int | None) -> SandboxLimits:
    return SandboxLimits(
        fuel=_DEFAULTS.fuel if fuel is None else fuel,
        memory_size_max_bytes=_DEFAULTS.memory_size_max_bytes if memory_mb is None else memory_mb * 1024 * 1024,
        wall_timeout_ms=_DEFAULTS.wall_timeout_ms if timeout_ms is None else timeout_ms,
    )


# --- diff ------------------------------------------------------------------------------------------


def _path_step(key: object) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    return f".{key}" if _BARE_KEY.match(key) else f"[{json.dumps(key, ensure_ascii=False)}]"


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= DIFF_VALUE_SHOWN_MAX_CHARS else text[:DIFF_VALUE_SHOWN_MAX_CHARS - 3] + "..."


def state_changes(old: object, new: object, path: str = "") -> list[tuple[str, str, object, object]]:
    """(kind, path, old, new) for each difference, kind '+' added, '-' removed, '~' changed.
    A change of JSON type counts as a change even where Python says equal (1 == 1.0 == True)."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in old:
            if key not in new:
                changes.append(("-", path + _path_step(key), old[key], None))
            else:
                changes.extend(state_changes(old[key], new[key], path + _path_step(key)))
        changes.extend(("+", path + _path_step(key), None, new[key]) for key in new if key not in old)
        return changes
    if isinstance(old, list) and isinstance(new, list):
        changes = []
        for index in range(max(len(old), len(new))):
            if index >= len(new):
                changes.append(("-", path + f"[{index}]", old[index], None))
            elif index >= len(old):
                changes.append(("+", path + f"[{index}]", None, new[index]))
            else:
                changes.extend(state_changes(old[index], new[index], path + f"[{index}]"))
        return changes
    if type(old) is not type(new) or old != new:
        return [("~", path or "(the whole state)", old, new)]
    return []


def format_changes(changes: list, lines_max: int) -> list[str]:
    lines = []
    for kind, path, old, new in changes[:lines_max]:
        path = path.lstrip(".")
        if kind == "+":
            lines.append(f"+ {path}: {_shown(new)}")
        elif kind == "-":
            lines.append(f"- {path}: {_shown(old)}")
        else:
            lines.append(f"~ {path}: {_shown(old)} -> {_shown(new)}")
    if len(changes) > lines_max:
        lines.append(f"... and {len(changes) - lines_max:,} more changes not shown (raise --diff-lines-max)")
    counts = {kind: sum(1 for change in changes if change[0] == kind) for kind in "+-~"}
    lines.append(f"{len(changes):,} change(s): {counts['+']:,} added, {counts['-']:,} removed, {counts['~']:,} changed")
    return lines


# --- commands ----------------------------------------------------------------------------------------

_FILE = click.Path(exists=False, dir_okay=False, path_type=Path)


@click.group()
def package() -> None:
    """Inspect and dry-run WASM upgrade packages (.wasm binaries or .wat text) in the node's sandbox."""


@package.command("inspect")
@click.argument("file", type=_FILE)
@click.option("--fuel", type=int, default=None, help=f"fuel for get_upgrade_info() (default {_DEFAULTS.fuel:,})")
@click.option("--memory-mb", type=int, default=None, help=f"linear memory limit in MiB (default {_DEFAULTS.memory_size_max_bytes // 2**20})")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout, errors included (the report is JSON either way)")
def inspect_command(file: Path, fuel: int | None, memory_mb: int | None, as_json: bool) -> None:
    """Print what FILE is as JSON: sha256, size, detected ABI, exports, imports, get_upgrade_info()'s
    result, and 'refusals': why the sandbox would refuse to run it (empty when runnable).

    Exits 0 whenever FILE could be read, runnable or not: read 'runnable' and 'refusals'."""
    try:
        limits = _limits(fuel, memory_mb, None)
        wasm, source_format = load_package(file, limits)
        info = Sandbox(limits).inspect(wasm)
    except (_InputError, errors.ConfigError) as error:
        _fail(error, EXIT_BAD_INPUT, as_json=as_json)
    report = {"file": str(file), "format": source_format, **info.to_dict()}
    click.echo(json.dumps(report, indent=2, ensure_ascii=False))


@package.command("test")
@click.argument("file", type=_FILE)
@click.option("--state", "state_path", type=_FILE, required=True, help="network state JSON file to upgrade (not modified)")
@click.option("--version", "target_version", default=None,
              help="the proposal's version: also check that the result has global.version == VERSION and keeps every member")
@click.option("--fuel", type=int, default=None, help=f"fuel (instructions) allowed (default {_DEFAULTS.fuel:,})")
@click.option("--memory-mb", type=int, default=None, help=f"linear memory limit in MiB (default {_DEFAULTS.memory_size_max_bytes // 2**20})")
@click.option("--timeout-ms", type=int, default=None, help=f"wall-clock limit in ms (default {_DEFAULTS.wall_timeout_ms:,})")
@click.option("--diff", "show_diff", is_flag=True,
              help="print what changed (+ added, - removed, ~ changed, one path per line) instead of the new state")
@click.option("--diff-lines-max", type=click.IntRange(1, 1_000_000), default=200, show_default=True,
              help="changes listed by --diff before it only counts them")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON document on stdout: ok, fuel used, output size, state hash, warnings, and the new state (or the changes)")
def test_command(file: Path, state_path: Path, target_version: str | None, fuel: int | None, memory_mb: int | None,
         timeout_ms: int | None, show_diff: bool, diff_lines_max: int, as_json: bool) -> None:
    """Dry-run FILE's upgrade() on the state in --state, in the node's sandbox, and print the new state as
    JSON on stdout (with --diff: the list of changes instead). A one-line summary (fuel used, output size,
    new state hash) goes to stderr. The state file is never modified.

    On failure prints 'error: ...' and 'hint: ...' on stderr and exits 1 (package refused, trapped, ran out
    of fuel or memory, returned a bad state, or failed the --version checks) or 2 (bad options or files)."""
    try:
        limits = _limits(fuel, memory_mb, timeout_ms)
        wasm, _format = load_package(file, limits)
        old_state = load_state(state_path, limits.memory_size_max_bytes)
    except (_InputError, errors.ConfigError) as error:
        _fail(error, EXIT_BAD_INPUT, as_json=as_json)
    try:
        result = Sandbox(limits).run_upgrade(wasm, canonical_json(old_state))
        if target_version is not None:
            check_migration_output(old_state, result.state, target_version)
    except (errors.SandboxError, errors.UpgradeRefused) as error:
        _fail(error, EXIT_PACKAGE_FAILED, as_json=as_json)
    warning = _version_warning(old_state, target_version)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"ok: upgrade() used {result.fuel_consumed:,} fuel and returned {result.output_size_bytes:,} bytes; "
               f"new state {state_hash(result.state)}", err=True)
    if as_json:
        document = {"ok": True, "fuel_consumed": result.fuel_consumed, "output_size_bytes": result.output_size_bytes,
                    "state_hash": state_hash(result.state), "warnings": [warning] if warning else []}
        if show_diff:
            changes = state_changes(old_state, result.state)
            document["changes"] = [{"kind": kind, "path": path.lstrip("."), "old": old, "new": new}
                                   for kind, path, old, new in changes[:diff_lines_max]]
            document["changes_total"] = len(changes)
        else:
            document["state"] = result.state
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True))
        return
    if show_diff:
        click.echo("\n".join(format_changes(state_changes(old_state, result.state), diff_lines_max)))
    else:
        click.echo(json.dumps(result.state, indent=2, ensure_ascii=False, sort_keys=True))


def _version_warning(old_state: dict, target_version: str | None) -> str:
    """A node would also refuse to move to a version that is not greater: say so, without failing the dry run."""
    global_state = old_state.get("global")
    current = global_state.get("version") if isinstance(global_state, dict) else None
    if target_version is None or not is_valid_version(current):
        return ""
    try:
        check_version_allowed(current, target_version)
    except errors.UpgradeRefused as error:
        return f"{error.message}; a node would refuse this upgrade on this state"
    return ""
