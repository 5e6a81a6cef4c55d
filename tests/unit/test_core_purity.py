"""STYLE rule 1: node/core/ imports no I/O, clock or randomness. Checked on the source, not by convention."""

import ast
from pathlib import Path

import node.core

FORBIDDEN = {"asyncio", "aiohttp", "pysyncobj", "wasmtime", "os", "time", "random", "socket", "subprocess", "threading", "pathlib", "shutil", "datetime"}
CORE_DIR = Path(node.core.__file__).parent


def _imported_roots(source: str) -> set[str]:
    roots = set()
    for statement in ast.walk(ast.parse(source)):
        if isinstance(statement, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            roots.add(statement.module.split(".")[0])
    return roots


def test_core_modules_import_no_io_clock_or_randomness():
    files = sorted(CORE_DIR.glob("*.py"))
    assert len(files) >= 3, "node/core should hold the pure modules"
    offenders = {f.name: sorted(_imported_roots(f.read_text()) & FORBIDDEN) for f in files}
    offenders = {name: bad for name, bad in offenders.items() if bad}
    assert offenders == {}, f"pure modules import I/O: {offenders}"


def test_the_checker_catches_a_forbidden_import():
    assert _imported_roots("import os\nfrom time import monotonic\nfrom . import x\n") == {"os", "time"}
