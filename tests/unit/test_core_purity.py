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


def _project_imports(path: Path, root: Path) -> set[Path]:
    """The project modules (files under `root`'s parent package) that the module at `path` imports."""
    found = set()
    for statement in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(statement, ast.Import):
            names = [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            names = [statement.module] + [f"{statement.module}.{alias.name}" for alias in statement.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != root.name:
                continue
            module = root.parent.joinpath(*parts)
            for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                if candidate.is_file():
                    found.add(candidate)
    return found


def test_what_the_core_imports_is_pure_too():
    """Imports of imports: a core module may reach only modules that import no I/O themselves."""
    node_root = CORE_DIR.parent
    seen, todo = set(), sorted(CORE_DIR.glob("*.py"))
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        bad = _imported_roots(path.read_text()) & FORBIDDEN
        assert not bad, f"{path.relative_to(node_root.parent)} (reached from node/core) imports {sorted(bad)}"
        todo.extend(_project_imports(path, node_root) - seen)
    assert any(path.name == "errors.py" for path in seen), "the walk follows imports out of node/core"
