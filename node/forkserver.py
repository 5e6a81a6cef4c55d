"""The node template: a process that has imported everything a node needs, and forks nodes on request.

    python -m node.forkserver --fd N      (started by cluster/template.py, never by hand)

Why it exists: a node spends most of its start-up importing aiohttp, wasmtime, cryptography, pysyncobj
and our modules (~0.5-1 s of CPU each, 200 times for 200 nodes on 2 cores). Forked from one process
that imported them once, a node starts with all of it in place, and its memory pages are shared
copy-on-write with the template and its siblings (gc.freeze() keeps the collector from touching,
and so copying, the imported objects).

Why it is safe to fork here:
- The template only imports. It starts no event loop and no thread, and checks that the kernel agrees
  (one task in /proc/self/task) before it accepts any request: fork copies only the calling thread, so
  a lock held by another thread would stay locked forever in the child. It installs no signal handler.
- A child is a real node process: its own pid, session and process group (setsid, so the launcher's
  killpg reaches only it), stdio on its own files, cwd in its data dir, the launcher's environment, its
  command line rewritten to `python -m node --config FILE` (ps, `cluster down`'s pid check and the
  benchmarks recognise it), every other descriptor closed, the global `random` reseeded. Unless
  detached, it gets PR_SET_PDEATHSIG=SIGKILL: it dies with the template, which dies with the launcher,
  so nothing outlives a killed test. Then it runs node.runtime.run_node and leaves with os._exit: it
  never returns into the template's loop.

The protocol: one JSON object per line on a Unix socket pair inherited from the launcher (no path
anyone else could connect to). {"op": "spawn", "config", "cwd", "stdout", "stderr", "env", "detached"}
-> {"pid", "start_ticks"}; {"op": "reap", "pid"} -> {"exit_code"} (null while it runs; the template is
the parent, so only it can collect the code); errors -> {"error"}. EOF (the launcher is gone): the
template exits; detached children live on.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import signal
import socket
import sys
from pathlib import Path

# Imported for the children, with what they would import lazily after the fork (each a private copy
# then: a validator's first X25519 key loads cryptography's OpenSSL backend, ~1 MB; asyncio's default
# executor; aiohttp's IDNA codec): tests/component/test_template_preload.py.
import concurrent.futures.thread  # noqa: F401
import encodings.idna  # noqa: F401
import aiohttp  # noqa: F401
import cryptography.hazmat.backends.openssl.backend  # noqa: F401
import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
import pysyncobj  # noqa: F401
import wasmtime  # noqa: F401

from node import runtime
from node.limits import FORKSERVER_REQUEST_SIZE_MAX_BYTES

_PR_SET_PDEATHSIG = 1
_STAT_ARG_START_INDEX = 45     # /proc/self/stat field 48 (arg_start), counted after the ")" of the name
_EXIT_CHILD_CRASHED = 70


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with the pid, names one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _threads_running() -> int:
    return len(os.listdir("/proc/self/task"))


def _set_command_line(words: list[str]) -> None:
    """Rewrite this process's /proc/<pid>/cmdline in place (the template reserved the room)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start, end = int(fields[_STAT_ARG_START_INDEX]), int(fields[_STAT_ARG_START_INDEX + 1])
    text = b"\0".join(word.encode() for word in words) + b"\0"
    if len(text) > end - start:
        return  # no room: ps shows the template's line; nothing else depends on it
    ctypes.memmove(start, text + b"\0" * (end - start - len(text)), end - start)


def _become_node(request: dict, template_pid: int) -> None:
    """In the child: detach from the template, then run the node. Never returns."""
    code = _EXIT_CHILD_CRASHED
    try:
        os.setsid()
        if not request["detached"]:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != template_pid:
                os._exit(1)
        # What a fresh `python -m node` starts with: the interpreter ignores SIGPIPE (a write to a socket
        # whose peer is gone fails with EPIPE) and turns SIGINT into KeyboardInterrupt. At its default
        # action SIGPIPE killed a forked node whenever a Raft partner or a stranger dropped a connection
        # under its feet (exit -13).
        for signal_number in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signal_number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for source, target in ((null, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [sys.executable, "-m", "node", "--config", request["config"]]
        _set_command_line(sys.argv)
        random.seed()     # the imported objects stay frozen: collecting them would copy their pages
        code = runtime.main(["--config", request["config"]])
    except BaseException:     # anything: report on stderr, never fall back into the template's loop
        import traceback
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code if isinstance(code, int) else _EXIT_CHILD_CRASHED)


class Template:
    """The loop: read a request, answer it; collect exited children as it goes."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._reader = connection.makefile("rb")
        self._exit_codes: dict[int, int] = {}
        self._children: set[int] = set()

    def serve(self) -> None:
        while True:
            line = self._reader.readline(FORKSERVER_REQUEST_SIZE_MAX_BYTES + 1)
            if not line:
                return
            self._collect()
            try:
                if len(line) > FORKSERVER_REQUEST_SIZE_MAX_BYTES:
                    raise ValueError(f"a request over {FORKSERVER_REQUEST_SIZE_MAX_BYTES} bytes")
                reply = self._answer(json.loads(line))
            except (ValueError, KeyError, TypeError, OSError) as error:
                reply = {"error": f"{type(error).__name__}: {error}"}
            self._connection.sendall(json.dumps(reply).encode() + b"\n")

    def _answer(self, request: dict) -> dict:
        if request["op"] == "spawn":
            for key in ("config", "cwd", "stdout", "stderr"):
                if not isinstance(request[key], str):
                    raise TypeError(f"{key} must be a path string")
            if not isinstance(request["env"], dict) or not isinstance(request["detached"], bool):
                raise TypeError("env must be an object and detached a boolean")
            pid = os.fork()
            if pid == 0:
                _become_node(request, os.getppid())
            self._children.add(pid)
            return {"pid": pid, "start_ticks": process_start_ticks(pid)}
        if request["op"] == "reap":
            return {"exit_code": self._reap(int(request["pid"]))}
        raise ValueError(f"unknown op {request['op']!r}")

    def _reap(self, pid: int) -> int | None:
        if pid in self._exit_codes:
            return self._exit_codes.pop(pid)
        if pid not in self._children:
            raise ValueError(f"pid {pid} is not a node this template started")
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            return None
        self._record(pid, status)
        return self._exit_codes.pop(pid)

    def _collect(self) -> None:
        while self._children:
            try:
                done, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if done == 0:
                return
            self._record(done, status)

    def _record(self, pid: int, status: int) -> None:
        self._children.discard(pid)
        self._exit_codes[pid] = os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.forkserver")
    parser.add_argument("--fd", type=int, required=True, help="this end of the launcher's socket pair")
    parser.add_argument("--room", default="", help="padding: room for the children's command lines")
    arguments = parser.parse_args(argv)
    connection = socket.socket(fileno=arguments.fd)
    if _threads_running() != 1:
        connection.sendall(json.dumps({"error": f"the template runs {_threads_running()} threads after its imports; "
                                                "forking it would be unsafe"}).encode() + b"\n")
        return 1
    gc.freeze()
    connection.sendall(json.dumps({"ready": os.getpid()}).encode() + b"\n")
    Template(connection).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
