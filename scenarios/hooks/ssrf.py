"""Scenario hooks for the IPFS-gateway SSRF story: an internal service on the gateway's host, proposals
whose package URLs point at it (or at the gateway outside its /ipfs/ prefix), and the proof that no
node fetched anything there.

Why it works as it does:
- The cluster's IPFS gateway stand-in is the package server on 127.0.0.1 (cluster/package_server.py).
  A node that fetches from public addresses only exempts that gateway, and must exempt only the URLs it
  builds itself for ipfs:// (`{gateway}/ipfs/<cid>`), never the gateway's host. So the attack targets
  are that host's other port (`internal_service` starts a small service there holding a secret) and
  that port's other paths (`/packages/<name>.wasm`, or `/ipfs/<cid>` typed as an http:// URL by the
  proposer instead of being built by the node).
- A proposal reaches every node, and its dry run (POST /upgrades/{id}/test) answers with the fetch's
  error: before the fix, a hash mismatch there named the SHA256 of the internal content.
  `dry_run_refused` checks the refusal (PackageHostRefused), that no answer names the secret's digest,
  and that the service and the package server saw no request at all: nothing internal was fetched.
- The service is a standard-library threading HTTP server in one background thread; the run stops it
  at its end (Driver.defer), whatever the outcome.

Use from a scenario:  do = "hook", hook = "hooks.ssrf:internal_service"
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

SECRET = b"internal service: the database password is hunter2\n"
SECRET_SHA256 = hashlib.sha256(SECRET).hexdigest()
CLOSE_TIMEOUT_S = 5.0
_SAVED_NAME = "ssrf_internal_service"
# Any well-formed digest: the attacker does not know the secret's, and hopes the mismatch error tells it.
_GUESSED_HASH = "sha256:" + "0" * 64


class _Service(ThreadingHTTPServer):
    daemon_threads = True
    requests_seen = 0
    lock: threading.Lock


class _Handler(BaseHTTPRequestHandler):
    server: _Service

    def do_GET(self) -> None:  # noqa: N802 -- the standard library's name
        with self.server.lock:
            self.server.requests_seen += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(SECRET)))
        self.end_headers()
        self.wfile.write(SECRET)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the standard library's signature
        pass  # the scenario's own progress lines say what happened


def _gateway_url(driver: Any) -> str:
    if driver.packages is None:
        raise AssertionError("the scenario serves no packages, so its nodes have no IPFS gateway")
    return driver.packages.gateway_url


def _service(driver: Any) -> _Service:
    service = driver.saved.get(_SAVED_NAME)
    if service is None:
        raise AssertionError("run hooks.ssrf:internal_service first")
    return service


def internal_service(driver: Any) -> str:
    """Start a service on the gateway's host, on another port, serving SECRET at any path."""
    host = urlsplit(_gateway_url(driver)).hostname
    service = _Service((host, 0), _Handler)
    service.lock = threading.Lock()
    thread = threading.Thread(target=service.serve_forever, name="ssrf-internal-service", daemon=True)
    thread.start()

    def stop() -> None:
        service.shutdown()
        thread.join(CLOSE_TIMEOUT_S)
        service.server_close()

    driver.defer(stop)
    driver.saved[_SAVED_NAME] = service
    return f"internal service at http://{host}:{service.server_address[1]}/secret (gateway {_gateway_url(driver)})"


def _target_url(driver: Any, target: str, package: str) -> str:
    gateway = _gateway_url(driver)
    if target == "other_port":
        host, port = _service(driver).server_address[:2]
        return f"http://{host}:{port}/secret"
    if target == "gateway_other_path":
        return driver.served[package].http_url          # the gateway's port, outside /ipfs/
    if target == "gateway_prefix_typed":
        return f"{gateway}/ipfs/{driver.served[package].cid}"   # what the node builds, but typed by the proposer
    raise AssertionError(f"target must be other_port, gateway_other_path or gateway_prefix_typed, not {target!r}")


def propose_url(driver: Any, target: str, save_as: str, package: str = "internal", on: Any = "node-1",
                version: str = "1.5.0") -> str:
    """A proposer (a member, through its own node's API) proposes a package URL aimed at the gateway's host."""
    (index,) = driver.resolve(on)
    url = _target_url(driver, target, package)
    body = {"title": f"SSRF probe: {target}", "description": "a package URL aimed at the IPFS gateway's host",
            "version": version, "package_url": url, "package_hash": _GUESSED_HASH}
    response = driver.api(index).post("/upgrades/propose", body)
    if response.status != 201:
        raise AssertionError(f"{driver.label(index)}: POST /upgrades/propose answered {response.status}: {response.text[:200]}")
    driver.saved[save_as] = response.data["proposal_id"]
    return f"proposal {response.data['proposal_id']} with package_url {url}"


def dry_run_refused(driver: Any, proposal: str, on: Any = "live", package: str = "internal") -> str:
    """Every selected node's dry run of `proposal` is refused as a non-public address, no answer names the
    secret's digest, and neither the internal service nor the package server saw a request."""
    proposal_id = driver.saved[proposal]
    for index in driver.resolve(on):
        response = driver.api(index).post(f"/upgrades/{quote(proposal_id, safe='')}/test", {})
        if response.status != 200 or not isinstance(response.data, dict):
            raise AssertionError(f"{driver.label(index)}: dry run answered {response.status}: {response.text[:200]}")
        error = response.data.get("error") or {}
        if response.data.get("success") is not False or error.get("error") != "PackageHostRefused":
            raise AssertionError(f"{driver.label(index)}: dry run was not refused as a non-public address: {response.text[:300]}")
        if SECRET_SHA256 in response.text or "hunter2" in response.text:
            raise AssertionError(f"{driver.label(index)}: the dry run's answer reveals the internal content: {response.text[:300]}")
    service = driver.saved.get(_SAVED_NAME)
    fetched = {"internal service": service.requests_seen if service is not None else 0,
               f"package server ({package})": driver.packages.requests(package)}
    if any(fetched.values()):
        raise AssertionError(f"internal content was fetched: {fetched}")
    return f"refused on {len(driver.resolve(on))} node(s) as a non-public address; nothing internal fetched ({fetched})"
