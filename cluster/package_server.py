"""Serve upgrade packages to a local cluster: a plain HTTP server and an IPFS gateway stand-in.

Why it works as it does:
- Scenarios build their packages from sources in the repository at run time (`build_package`: WAT
  with wasmtime's wat2wasm, C with clang --target=wasm32, or a .wasm as is), so a scenario never
  depends on a committed binary nobody reviews.
- One server answers both ways a node fetches a package: `GET /packages/<name>.wasm` (an http:// URL
  in the proposal) and `GET /ipfs/<CID>` (an ipfs:// URL, fetched through the gateway named in every
  node's config). The CID is a real CIDv1 (raw codec, sha2-256, base32 "bafkrei..."), computed from
  the bytes, so the node's CID parser sees what `ipfs add --cid-version 1 --raw-leaves` would print.
- It binds 127.0.0.1 (port 0 picked by the kernel and kept bound, so no race), not the cluster's
  block: partitions never cut the nodes from their package source unless a step says so (`serve`
  with available = false makes it answer 503, as a broken mirror would).
- `corrupt` packages are served with one byte flipped: the proposal carries the real hash, so every
  node must refuse them (the spec's "compromised package URL" attack).
- The standard library's threading server runs in one background thread; `close` stops and joins it.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import wasmtime

from node.errors import ClusterError

PACKAGE_SIZE_MAX_BYTES = 64 * 1024 * 1024
SOURCE_SIZE_MAX_BYTES = 16 * 1024 * 1024
LISTEN_BACKLOG = 1_024                  # connections waiting to be accepted (the kernel caps it at somaxconn)
BUILD_TIMEOUT_S = 300
CLOSE_TIMEOUT_S = 10
CLANG_FLAGS = ("--target=wasm32", "-nostdlib", "-O2", "-mbulk-memory", "-Wl,--no-entry", "-Wl,--stack-first",
               "-Wl,-z,stack-size=1048576")
_CID_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])  # CIDv1, raw codec, sha2-256 multihash of 32 bytes


def cid_for(data: bytes) -> str:
    """The CIDv1 (raw, sha2-256, base32) of `data`, as `ipfs add --cid-version 1 --raw-leaves` gives it."""
    encoded = base64.b32encode(_CID_PREFIX + hashlib.sha256(data).digest()).decode().lower().rstrip("=")
    return "b" + encoded


def build_package(source: Path, work_dir: Path) -> bytes:
    """Build one package from its source: .wat, .c (clang) or .wasm. Raises ClusterError saying why not."""
    source = Path(source)
    if not source.is_file():
        raise ClusterError(f"package source {source} does not exist", hint="check the [[packages]] source path in the scenario")
    if source.stat().st_size > SOURCE_SIZE_MAX_BYTES:
        raise ClusterError(f"package source {source} is larger than {SOURCE_SIZE_MAX_BYTES:,} bytes")
    if source.suffix == ".wasm":
        return source.read_bytes()
    if source.suffix == ".wat":
        try:
            return bytes(wasmtime.wat2wasm(source.read_text()))
        except wasmtime.WasmtimeError as error:
            raise ClusterError(f"package source {source} is not valid WAT: {str(error).splitlines()[0]}") from None
    if source.suffix == ".c":
        return _build_c(source, Path(work_dir))
    raise ClusterError(f"package source {source} is not .wat, .c or .wasm")


def _build_c(source: Path, work_dir: Path) -> bytes:
    clang = shutil.which("clang")
    if clang is None or shutil.which("wasm-ld") is None:
        raise ClusterError(f"building {source} needs clang and lld (wasm-ld)", hint="run: sudo sh scripts/install-toolchain.sh")
    work_dir.mkdir(parents=True, exist_ok=True)
    output = work_dir / (source.stem + ".wasm")
    try:
        completed = subprocess.run([clang, *CLANG_FLAGS, "-o", str(output), str(source)], capture_output=True, text=True,
                                   timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"building {source} took more than {BUILD_TIMEOUT_S} s") from None
    if completed.returncode != 0:
        raise ClusterError(f"building {source} failed: {completed.stderr.strip()[-1500:]}")
    return output.read_bytes()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedPackage:
    name: str
    sha256: str        # of the true bytes: what a proposal names
    size: int
    cid: str
    http_url: str
    ipfs_url: str
    corrupt: bool

    def proposal_fields(self, *, via: str = "http") -> dict:
        """What POST /upgrades/propose needs besides title and version: URL (http or ipfs), hash, size."""
        if via not in ("http", "ipfs"):
            raise ClusterError(f"a package is served via http or ipfs, not {via!r}")
        return {"package_url": self.ipfs_url if via == "ipfs" else self.http_url, "package_hash": f"sha256:{self.sha256}",
                "package_size": self.size}


class PackageRequestHandler(BaseHTTPRequestHandler):
    """GET and HEAD of packages: a subclass answers `lookup(path) -> (status, body, content type)`.
    Shared by this in-process server and the detached one of `synapse upgrade` (cluster/package_host.py)."""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self._answer(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(with_body=False)

    def lookup(self, path: str) -> tuple[int, bytes, str]:
        raise NotImplementedError

    def _answer(self, *, with_body: bool) -> None:
        status, body, content_type = self.lookup(self.path)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)


class _Handler(PackageRequestHandler):
    server: "_Server"

    def lookup(self, path: str) -> tuple[int, bytes, str]:
        status, body = self.server.owner._lookup(path)
        return status, body, "application/wasm" if status == HTTPStatus.OK else "text/plain; charset=utf-8"

    def log_message(self, format: str, *args: object) -> None:  # the server's owner counts requests instead
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Every node of a cluster fetches the package the moment the upgrade is ratified: N connections at
    # once. socketserver's default listen backlog (5) drops the SYNs past it, and each dropped one costs
    # the node a 1 s, then 3 s, retransmission (measured: a 4.5 s mean fetch at N=100, 5 timeouts).
    request_queue_size = LISTEN_BACKLOG
    owner: "PackageServer"


class PackageServer:
    """Serves packages over http://127.0.0.1:<port>/packages/<name>.wasm and /ipfs/<cid>. A context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.owner = self
        self._lock = threading.Lock()
        self._by_path: dict[str, str] = {}   # URL path -> package name
        self._served: dict[str, bytes] = {}   # package name -> the bytes served (corrupted if asked)
        self._packages: dict[str, ServedPackage] = {}
        self._unavailable: set[str] = set()
        self._requests: dict[str, int] = {}
        self._thread = threading.Thread(target=self._server.serve_forever, name="package-server", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def gateway_url(self) -> str:
        """What nodes list in `packages.ipfs_gateways`."""
        return self.base_url

    def add(self, name: str, data: bytes, *, corrupt: bool = False) -> ServedPackage:
        if len(data) > PACKAGE_SIZE_MAX_BYTES:
            raise ClusterError(f"package {name} is larger than {PACKAGE_SIZE_MAX_BYTES:,} bytes")
        served = bytes(data)
        if corrupt:
            served = served[:-1] + bytes([served[-1] ^ 0xFF]) if served else b"\x00"
        package = ServedPackage(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data), cid=cid_for(data),
                                http_url=f"{self.base_url}/packages/{name}.wasm", ipfs_url=f"ipfs://{cid_for(data)}", corrupt=corrupt)
        with self._lock:
            owner = self._by_path.get(f"/ipfs/{package.cid}")
            if owner is not None and owner != name and self._packages[owner].corrupt != corrupt:
                raise ClusterError(f"packages {owner} and {name} have the same content, one of them corrupt: one CID serves one thing",
                                   hint="give the corrupt package a source of its own")
            self._packages[name] = package
            self._served[name] = served
            self._by_path[f"/packages/{name}.wasm"] = name
            self._by_path[f"/ipfs/{package.cid}"] = owner or name
            self._requests.setdefault(name, 0)
        return package

    def add_file(self, source: Path, *, name: str | None = None, corrupt: bool = False) -> ServedPackage:
        """Build `source` (.wat, .c or .wasm, see build_package) and serve it, named after the file by default."""
        with tempfile.TemporaryDirectory(prefix="synapse-package-build-") as work_dir:
            data = build_package(Path(source), Path(work_dir))
        return self.add(name or Path(source).stem, data, corrupt=corrupt)

    def package(self, name: str) -> ServedPackage:
        return self._packages[name]

    def set_available(self, name: str, available: bool) -> None:
        with self._lock:
            if name not in self._packages:
                raise ClusterError(f"no package {name!r} is served")
            (self._unavailable.discard if available else self._unavailable.add)(name)

    def requests(self, name: str) -> int:
        """How many GET/HEAD requests asked for this package (either path)."""
        with self._lock:
            return self._requests.get(name, 0)

    def _lookup(self, path: str) -> tuple[int, bytes]:
        path = path.split("?", 1)[0]
        with self._lock:
            name = self._by_path.get(path)
            if name is None:
                return HTTPStatus.NOT_FOUND, b"no such package\n"
            self._requests[name] += 1
            if name in self._unavailable:
                return HTTPStatus.SERVICE_UNAVAILABLE, b"package temporarily unavailable\n"
            return HTTPStatus.OK, self._served[name]

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(CLOSE_TIMEOUT_S)
        self._server.server_close()

    def __enter__(self) -> "PackageServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
