"""Start nodes from a preloaded template (node/forkserver.py) instead of a fresh interpreter each.

    template = NodeTemplate.start(env=..., detached=False, log_path=DIR / "template.log")
    process = template.spawn(config_path=..., cwd=..., stdout_path=..., stderr_path=...)
    process.poll(); process.wait(timeout=5); os.killpg(process.pid, signal.SIGTERM)
    template.close()

Why it works as it does:
- One template per LocalCluster, started by the launcher like a node used to be (its own process
  group; unless detached, PR_SET_PDEATHSIG so it dies with the launcher, and its nodes with it). It
  imports everything once and forks each node: a node starts without re-importing aiohttp, wasmtime,
  cryptography and pysyncobj, and shares those pages copy-on-write (see PSS, not only RSS).
- The launcher talks to it over a Unix socket pair made before the template starts: no path in the
  file system, so no other process can ask it to start anything, and no mode to get wrong. When the
  launcher goes away the template sees end-of-file and exits; detached nodes (`cluster up`) live on.
- A node is not the launcher's child, so `TemplateProcess` gives LocalCluster what subprocess.Popen
  gave it: `pid`, `poll()`, `wait(timeout)` and `returncode`. Liveness comes from a pidfd (the kernel
  says when that very process exits, even if its pid is reused later); the exit code from the template,
  which is the parent and reaps it. Signals go to the node's own process group as before, so kill -9,
  SIGSTOP, restart and crash points are unchanged. The pid's start time (/proc/<pid>/stat) is kept to
  name the process for good.
- Plain spawning stays: SYNAPSE_SPAWN=exec (LocalCluster reads it from its environment or extra_env)
  starts every node with `python -m node --config FILE` as before; so does a template that fails to
  start (a warning says why).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from node.errors import ClusterError

SPAWN_ENVIRONMENT_VARIABLE = "SYNAPSE_SPAWN"
SPAWN_MODES = ("template", "exec")
TEMPLATE_READY_TIMEOUT_S = 60.0     # the template's imports, on a loaded 2-core machine
TEMPLATE_REPLY_TIMEOUT_S = 30.0
TEMPLATE_EXIT_TIMEOUT_S = 5.0
REAP_RETRY_S = 0.01
REAP_RETRIES_MAX = 200
COMMAND_LINE_ROOM_BYTES = 4096      # room the children rewrite into `python -m node --config FILE`
EXIT_CODE_UNKNOWN = -255            # the template died before it could report the node's exit code
_PR_SET_PDEATHSIG = 1
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def spawn_mode(environment: Mapping[str, str]) -> str:
    mode = environment.get(SPAWN_ENVIRONMENT_VARIABLE, "template") or "template"
    if mode not in SPAWN_MODES:
        raise ClusterError(f"{SPAWN_ENVIRONMENT_VARIABLE}={mode!r} is not a spawn mode",
                           hint=f"use one of {', '.join(SPAWN_MODES)} (template: fork from a preloaded process; exec: plain)")
    return mode


def python_child_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of every Python process the testbed starts (the template, plain nodes, link-delay
    helpers, scenario runs): this repository first on PYTHONPATH, and PYTHONSAFEPATH=1 so that
    `python -m ...` / `python -c ...` do not put the working directory ahead of it. Without it a launcher
    started in a directory holding a `node/` or `cluster/` folder (another checkout, a user's project)
    runs that code instead of ours."""
    environment = dict(base)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), environment.get("PYTHONPATH", "")]))
    environment["PYTHONSAFEPATH"] = "1"
    return environment


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when its parent dies; exit at once if it already has.
    (libc is loaded in the parent: between fork and exec the child should only make system calls.)
    The one such hook of the testbed: nodes, the template, scenario children (cluster/local.py re-exports it)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)
    return preexec


class TemplateProcess:
    """A node forked by the template, with the part of subprocess.Popen's interface LocalCluster uses."""

    def __init__(self, template: "NodeTemplate", pid: int, start_ticks: int | None) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        self.returncode: int | None = None
        self.args = ["python", "-m", "node"]
        self._template = template
        self._pidfd: int | None = os.pidfd_open(pid)    # the child is not reaped before we ask: it is still there

    def poll(self) -> int | None:
        if self.returncode is None and self._exited(0.0):
            self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._exited(timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._collect()
        return self.returncode

    def send_signal(self, signal_number: int) -> None:
        """To the node process itself (as Popen does); LocalCluster signals its process group."""
        if self.poll() is None:
            os.kill(self.pid, signal_number)     # not reaped yet (the template waits for us): still this process

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _exited(self, timeout_s: float | None) -> bool:
        readable, _, _ = select.select([self._pidfd], [], [], timeout_s)
        return bool(readable)

    def _collect(self) -> None:
        for _ in range(REAP_RETRIES_MAX):
            code = self._template.reap(self.pid)
            if code is not None:
                break
            time.sleep(REAP_RETRY_S)    # exited (the pidfd says so) but not yet a zombie the template can reap
        self.returncode = code if code is not None else EXIT_CODE_UNKNOWN
        os.close(self._pidfd)
        self._pidfd = None

    def __del__(self) -> None:
        if getattr(self, "_pidfd", None) is not None:
            os.close(self._pidfd)


class NodeTemplate:
    """The template process and the launcher's end of its socket. One caller at a time (a lock)."""

    def __init__(self, process: subprocess.Popen, connection: socket.socket) -> None:
        self._process = process
        self._connection = connection
        self._reader = connection.makefile("rb")
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def start(cls, *, env: Mapping[str, str], detached: bool, log_path: Path) -> "NodeTemplate":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "node.forkserver", "--fd", str(theirs.fileno()),
                     "--room", "x" * COMMAND_LINE_ROOM_BYTES],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=dict(env), pass_fds=[theirs.fileno()],
                    **({"start_new_session": True} if detached else {"process_group": 0, "preexec_fn": die_with_parent(os.getpid())}))
        finally:
            theirs.close()
        template = cls(process, ours)
        try:
            ours.settimeout(TEMPLATE_READY_TIMEOUT_S)
            try:
                ready = template._read_reply()
            except OSError as error:
                raise ClusterError(f"the node template did not become ready within {TEMPLATE_READY_TIMEOUT_S:.0f} s: {error}") from None
            if "ready" not in ready:
                raise ClusterError(f"the node template did not start: {ready.get('error', ready)}")
            ours.settimeout(TEMPLATE_REPLY_TIMEOUT_S)
        except BaseException:
            template.close()
            raise
        return template

    @property
    def pid(self) -> int:
        return self._process.pid

    def spawn(self, *, config_path: Path, cwd: Path, stdout_path: Path, stderr_path: Path, env: Mapping[str, str],
              detached: bool) -> TemplateProcess:
        with self._lock:
            reply = self._request({"op": "spawn", "config": str(config_path), "cwd": str(cwd), "stdout": str(stdout_path),
                                   "stderr": str(stderr_path), "env": dict(env), "detached": detached})
            return TemplateProcess(self, int(reply["pid"]), reply.get("start_ticks"))

    def reap(self, pid: int) -> int | None:
        """The node's exit code once it has exited, None while it runs; None too if the template is gone."""
        with self._lock:
            try:
                return self._request({"op": "reap", "pid": pid})["exit_code"]
            except ClusterError:
                return None

    def close(self) -> None:
        """Close the socket (the template exits at end-of-file) and wait for it, SIGKILL past the bound."""
        if self._closed:
            return
        self._closed = True
        self._reader.close()
        self._connection.close()
        try:
            self._process.wait(timeout=TEMPLATE_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=TEMPLATE_EXIT_TIMEOUT_S)

    def _request(self, request: dict) -> dict:
        if self._closed:
            raise ClusterError("the node template was closed", hint="start the cluster again")
        try:
            self._connection.sendall(json.dumps(request).encode() + b"\n")
            reply = self._read_reply()
        except OSError as error:
            raise ClusterError(f"the node template (pid {self._process.pid}) did not answer: {error}",
                               hint="see template.log in the cluster's data dir; SYNAPSE_SPAWN=exec avoids the template") from None
        if "error" in reply:
            raise ClusterError(f"the node template refused {request['op']}: {reply['error']}")
        return reply

    def _read_reply(self) -> dict:
        line = self._reader.readline()
        if not line:
            raise ClusterError(f"the node template (pid {self._process.pid}) exited",
                               hint="see template.log in the cluster's data dir; SYNAPSE_SPAWN=exec avoids the template")
        return json.loads(line)


__all__ = ["EXIT_CODE_UNKNOWN", "NodeTemplate", "SPAWN_ENVIRONMENT_VARIABLE", "TemplateProcess", "spawn_mode"]
