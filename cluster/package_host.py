"""A cluster's own package server: serves the local packages `synapse upgrade propose --package FILE`
proposed, for as long as the cluster runs.

Why it works as it does:
- A proposal names a URL that every node fetches when the upgrade executes, which may be minutes after
  the `propose` command returned (voting, ratification, a node that restarts and catches up later). So
  the server cannot live inside the command: it is a detached process (a session of its own, like the
  nodes of `synapse cluster up`), tied to the cluster's data dir, and `synapse cluster down` stops it.
- Content-addressed: a package is stored as DIR/packages/<sha256>.wasm and served at
  /packages/<sha256>.wasm. The server only reads that folder, so packages proposed later are served
  without restarting it, and a URL can never serve other bytes than the ones proposed.
- It binds 127.0.0.1 with a port the kernel picks, and writes {pid, url} to DIR/package_server.json once
  it listens; a later `propose` reuses it when that PID is still this cluster's server (its command line
  names the data dir) and it answers. Proposals carry its URL, so when it starts again (`cluster up` on
  a stopped cluster that has packages) it binds the port it had before; `stop` keeps the URL for that. Nodes of a local cluster may fetch from private addresses
  (`allow_private_addresses = true` in the configs `cluster up` writes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path

from cluster.package_server import LISTEN_BACKLOG, PackageRequestHandler
from cluster.template import python_child_environment
from node.errors import ClusterError

STATE_FILE_NAME = "package_server.json"
PACKAGES_DIR_NAME = "packages"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0
_PACKAGE_PATH = re.compile(r"^/packages/([0-9a-f]{64})\.wasm$")


def store_package(data_dir: Path, data: bytes) -> str:
    """Copy `data` into the cluster's package folder; return its sha256 (hex)."""
    sha256 = hashlib.sha256(data).hexdigest()
    folder = Path(data_dir) / PACKAGES_DIR_NAME
    folder.mkdir(exist_ok=True)
    target = folder / f"{sha256}.wasm"
    if not target.exists():
        temporary = folder / f".{sha256}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, target)
    return sha256


def ensure_running(data_dir: Path) -> str:
    """The base URL of this cluster's package server, started (detached) if it does not run, on the
    port it had before if it ran before (the URLs of earlier proposals name it)."""
    data_dir = Path(data_dir).absolute()
    running = _running_url(data_dir)
    if running is not None:
        return running
    previous_port = _previous_port(data_dir)
    (data_dir / STATE_FILE_NAME).unlink(missing_ok=True)
    with open(data_dir / "package_server.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "cluster.package_host", str(data_dir), str(previous_port)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=data_dir, start_new_session=True,
                                   close_fds=True, env=python_child_environment(os.environ))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"the package server exited with code {process.returncode} while starting",
                               hint=f"see {data_dir / 'package_server.log'}")
        url = _running_url(data_dir)
        if url is not None:
            return url
        time.sleep(0.05)
    _stop_pid(process.pid)
    raise ClusterError(f"the package server did not start within {START_TIMEOUT_S:.0f} s",
                       hint=f"see {data_dir / 'package_server.log'}")


def has_packages(data_dir: Path) -> bool:
    return any((Path(data_dir) / PACKAGES_DIR_NAME).glob("*.wasm"))


def stop(data_dir: Path) -> bool:
    """Stop the cluster's package server if it runs (True if it did); its URL is kept for a restart."""
    data_dir = Path(data_dir).absolute()
    state = _read_state(data_dir)
    if state is None:
        return False
    _write_state(data_dir, {"pid": None, "url": state.get("url")})
    if not _is_ours(state.get("pid"), data_dir):
        return False
    _stop_pid(state["pid"])
    return True


def _previous_port(data_dir: Path) -> int:
    state = _read_state(data_dir) or {}
    try:
        return int(str(state.get("url", "")).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0


def _write_state(data_dir: Path, state: dict) -> None:
    temporary = Path(data_dir) / f".{STATE_FILE_NAME}.tmp"
    temporary.write_text(json.dumps(state) + "\n")
    os.replace(temporary, Path(data_dir) / STATE_FILE_NAME)


def _stop_pid(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:    # our own child (a propose that started it in this process)
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_state(data_dir: Path) -> dict | None:
    try:
        state = json.loads((data_dir / STATE_FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _is_ours(pid: object, data_dir: Path) -> bool:
    """True if `pid` runs this module for `data_dir` (a recycled PID is not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        process_state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return process_state != "Z" and b"cluster.package_host" in words and str(data_dir).encode() in words


def _running_url(data_dir: Path) -> str | None:
    state = _read_state(data_dir)
    if state is None or not _is_ours(state.get("pid"), data_dir):
        return None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))    # 127.0.0.1 never goes through a proxy
    try:
        with opener.open(f"{state['url']}/health", timeout=PROBE_TIMEOUT_S) as response:
            return state["url"] if response.status == HTTPStatus.OK else None
    except OSError:
        return None


class _Handler(PackageRequestHandler):
    server: "_Server"

    def lookup(self, path: str) -> tuple[int, bytes, str]:
        path = path.split("?", 1)[0]
        status, body = HTTPStatus.NOT_FOUND, b"no such package\n"
        if path == "/health":
            status, body = HTTPStatus.OK, b"ok\n"
        elif (match := _PACKAGE_PATH.match(path)) is not None:
            try:
                status, body = HTTPStatus.OK, (self.server.folder / f"{match.group(1)}.wasm").read_bytes()
            except OSError:
                pass
        return status, body, "application/wasm" if path.startswith("/packages/") and status == 200 else "text/plain"

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {self.address_string()} {format % args}\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Every node of a cluster fetches the package the moment the upgrade is ratified: N connections at
    # once. socketserver's default listen backlog (5) drops the SYNs past it, and each dropped one costs
    # the node a 1 s, then 3 s, retransmission (measured: a 4.5 s mean fetch at N=100, 5 timeouts).
    request_queue_size = LISTEN_BACKLOG
    folder: Path


def serve(data_dir: Path, port: int = 0) -> None:
    """Run the server until SIGTERM (the detached process's body), on `port` if it is free."""
    try:
        server = _Server(("127.0.0.1", port), _Handler)
    except OSError as error:
        sys.stderr.write(f"port {port} is taken ({error.strerror}): earlier proposals' package URLs will not answer\n")
        server = _Server(("127.0.0.1", 0), _Handler)
    server.folder = Path(data_dir) / PACKAGES_DIR_NAME
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, bound_port = server.server_address[:2]
    _write_state(Path(data_dir), {"pid": os.getpid(), "url": f"http://{host}:{bound_port}"})
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
