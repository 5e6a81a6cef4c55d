"""Shared test fixtures. Real processes started by tests are tracked so that none outlives the session.

How: the session marks its environment with SYNAPSE_TEST_SESSION=<random id> before any test runs
(xdist workers inherit it, and so does every node process they start). When the whole session ends
(in the controller, after every worker has finished), /proc is scanned for `python -m node` processes
whose environment carries that id. Any survivor is a leak: it is killed (so it harms nobody else) and
the run fails, naming it. This needs no cooperation from the code that started the process, so it also
catches nodes started by a test that forgot LocalCluster.

The cluster fixtures (synapse_cluster, package_server, wait_until) are the ones users get: the package's
pytest plugin (cluster/pytest_plugin.py). An install of synapse-ng loads it through its entry point; a
checkout run with an older install does not, so it is registered here then, under the same name (pytest
refuses one module registered twice, and `-p no:synapse` still turns it off).
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import pytest

import cluster.pytest_plugin

SESSION_ENV = "SYNAPSE_TEST_SESSION"
_PROC = Path("/proc")


def _read_proc(pid: str, name: str) -> bytes:
    try:
        return (_PROC / pid / name).read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def find_session_node_processes(session_id: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live `python -m node` (or `-m node.forkserver`, the template nodes are
    forked from) process whose environment has our session id."""
    marker = f"{SESSION_ENV}={session_id}".encode()
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        arguments = _read_proc(entry.name, "cmdline").split(b"\0")
        runs_node = any(first == b"-m" and second in (b"node", b"node.forkserver")     # a node, or the template of nodes
                        for first, second in zip(arguments, arguments[1:]))
        if not runs_node or marker not in _read_proc(entry.name, "environ").split(b"\0"):
            continue
        status = _read_proc(entry.name, "stat")
        if status and status.rsplit(b")", 1)[-1].split()[:1] == [b"Z"]:
            continue  # a zombie has exited; its parent just has not reaped it yet
        found.append((int(entry.name), b" ".join(arguments).decode(errors="replace").strip()))
    return found


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(SESSION_ENV, secrets.token_hex(8))
    plugins = config.pluginmanager
    if not plugins.has_plugin(cluster.pytest_plugin.PLUGIN_NAME) and not plugins.is_registered(cluster.pytest_plugin):
        plugins.register(cluster.pytest_plugin, cluster.pytest_plugin.PLUGIN_NAME)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller checks once every worker is done
    leaked = find_session_node_processes(os.environ[SESSION_ENV])
    if not leaked:
        return
    for pid, _ in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"LEAK: {len(leaked)} node process(es) started by this test session were still running (now killed):"]
    lines += [f"  pid {pid}: {command}" for pid, command in leaked]
    if reporter is not None:
        reporter.write_sep("=", "leaked node processes", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
