"""STYLE rule 1: node/core/ imports no I/O, clock or randomness. Checked on the source, not by convention,
for each core module and for every module of this project it imports, directly or through others
(node.errors, and each other), so a pure module cannot reach I/O through a helper."""

import ast
from pathlib import Path

import node.core

FORBIDDEN = {"asyncio", "aiohttp", "pysyncobj", "wasmtime", "os", "time", "random", "socket", "subprocess", "threading", "pathlib", "shutil", "datetime"}
CORE_DIR = Path(node.core.__file__).parent
PROJECT_DIR = CORE_DIR.parent.parent
GOSSIP_CORE = {"gossip_messages.py", "gossip_protocol.py", "gossip_effects.py", "gossip_rules.py", "gossip_settings.py"}


def _imports(source: str) -> list[str]:
    names = []
    for statement in ast.walk(ast.parse(source)):
        if isinstance(statement, ast.Import):
            names.extend(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            names.append(statement.module)
    return names


def _imported_roots(source: str) -> set[str]:
    return {name.split(".")[0] for name in _imports(source)}


def _module_file(name: str) -> Path | None:
    base = PROJECT_DIR.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _reachable_project_files(start: Path) -> set[Path]:
    """`start` and every project module it imports, transitively."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path.read_text()):
            if name.split(".")[0] == "node" and (found := _module_file(name)) is not None:
                todo.append(found)
    return seen


def test_core_modules_import_no_io_clock_or_randomness():
    files = sorted(CORE_DIR.glob("*.py"))
    assert len(files) >= 3, "node/core should hold the pure modules"
    assert GOSSIP_CORE <= {f.name for f in files}, "the sans-IO gossip core lives in node/core"
    offenders = {}
    for core_file in files:
        for path in _reachable_project_files(core_file):
            bad = sorted(_imported_roots(path.read_text()) & FORBIDDEN)
            if bad:
                offenders[f"{core_file.name} -> {path.relative_to(PROJECT_DIR)}"] = bad
    assert offenders == {}, f"pure modules import I/O (directly or through what they import): {offenders}"


def test_the_checker_catches_a_forbidden_import():
    assert _imported_roots("import os\nfrom time import monotonic\nfrom . import x\n") == {"os", "time"}


def test_the_checker_follows_imports_of_imports():
    reached = {path.name for path in _reachable_project_files(CORE_DIR / "gossip_protocol.py")}
    assert {"gossip_messages.py", "crdt_log.py", "entries.py", "errors.py"} <= reached
