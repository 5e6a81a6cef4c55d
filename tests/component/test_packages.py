"""PackageFetcher and PackageCache against real HTTP servers on loopback (aiohttp test servers and raw
sockets for servers that lie), with small limits so that every refusal is quick."""

from __future__ import annotations

import asyncio
import collections
import datetime
import gzip
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.core.pipeline import FailureKind, classify_failure
from node.errors import (
    ConfigError,
    HashFormatError,
    HashMismatchError,
    PackageFetchError,
    PackageHostRefused,
    PackageSizeError,
    PackageSourceRefused,
    StoreError,
)
from node.packages import FetchLimits, PackageCache, PackageFetcher

PACKAGE = b"\0asm\x01\0\0\0" + bytes(range(256)) * 64  # 16 KiB + 8 bytes, stands in for a .wasm file
DIGEST = hashlib.sha256(PACKAGE).hexdigest()
OTHER = b"\0asm\x01\0\0\0 not the proposed package"
OTHER_DIGEST = hashlib.sha256(OTHER).hexdigest()
CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
FAST = FetchLimits(connect_timeout_ms=1_000, total_timeout_ms=5_000, redirects_max=3, package_size_max_bytes=1024 * 1024)


# --- helpers -----------------------------------------------------------------------------------


class Site:
    """An aiohttp app whose handlers count their requests."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.headers: list[dict[str, str]] = []
        self.app = web.Application()

    def route(self, path: str, handler) -> None:
        async def counted(request: web.Request) -> web.StreamResponse:
            self.hits[path] += 1
            self.headers.append(dict(request.headers))
            return await handler(request)

        self.app.router.add_get(path, counted)

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())


def serve_bytes(data: bytes, *, chunked: bool = False):
    async def handler(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=data, content_type="application/wasm")
        response = web.StreamResponse()  # no Content-Length: the client must count
        await response.prepare(request)
        for start in range(0, len(data), 4096):
            await response.write(data[start:start + 4096])
        await response.write_eof()
        return response

    return handler


def serve_status(status: int):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text="nope")

    return handler


class Endless:
    """Streams zeros with no Content-Length until the client goes away (at most ~1.6 GB); `stopped` is set
    when it ends, and the tests check that it ended long before 1.6 GB."""

    def __init__(self) -> None:
        self.sent_bytes = 0
        self.stopped = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"\0" * 16384
        try:
            for _ in range(100_000):
                await response.write(chunk)
                self.sent_bytes += len(chunk)
        except ConnectionError:
            pass  # the client hung up
        finally:
            # Also when the server cancels the handler on disconnect (the test server does).
            self.stopped.set()
        return response


async def stalled(request: web.Request) -> web.StreamResponse:
    """Sends headers and 4 bytes, then nothing, until the client hangs up (at most 10 s)."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"\0asm")
    for _ in range(200):
        if request.transport is None or request.transport.is_closing():
            break
        await asyncio.sleep(0.05)
    return response


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(os.listdir(cache_dir)) if cache_dir.exists() else []


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "upgrades" / "cache"


@pytest.fixture
async def make_fetcher(cache_dir: Path):
    made: list[PackageFetcher] = []

    def make(*, limits: FetchLimits = FAST, ipfs_gateways=(), directory: Path | None = None,
             private_addresses_allowed: bool = True) -> PackageFetcher:
        fetcher = PackageFetcher(PackageCache(directory or cache_dir), ipfs_gateways=ipfs_gateways, limits=limits,
                                 private_addresses_allowed=private_addresses_allowed)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


@pytest.fixture
async def start_site(aiohttp_server):
    async def start(routes: dict) -> tuple[Site, str]:
        site = Site()
        for path, handler in routes.items():
            site.route(path, handler)
        server = await aiohttp_server(site.app)
        return site, str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def raw_server():
    """Starts a raw TCP server that answers any request with the given bytes (and, after a pause,
    `after_pause` bytes), then closes."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes, *, after_pause: bytes = b"") -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(5):
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(answer)
                    await writer.drain()
                    if after_pause:
                        await asyncio.sleep(0.3)
                        writer.write(after_pause)
                        await writer.drain()
            except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


# --- plain http ----------------------------------------------------------------------------------


async def test_http_download_is_verified_cached_and_returned(make_fetcher, start_site, cache_dir):
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    fetcher = make_fetcher()

    data = await fetcher.fetch(f"{base}/pkg.wasm", f"sha256:{DIGEST}", len(PACKAGE))

    assert data == PACKAGE
    assert cache_files(cache_dir) == [f"{DIGEST}.wasm"]  # and no temporary file left behind
    assert (cache_dir / f"{DIGEST}.wasm").read_bytes() == PACKAGE
    assert site.headers[0]["Accept-Encoding"] == "identity"


async def test_a_cache_hit_makes_no_request_even_from_a_new_fetcher(make_fetcher, start_site):
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    first = make_fetcher()
    assert await first.fetch(f"{base}/pkg.wasm", DIGEST.upper()) == PACKAGE
    assert await first.fetch(f"{base}/pkg.wasm", f"sha256:{DIGEST}") == PACKAGE
    # The cache is keyed by digest: another URL for the same package, and a restarted node, hit it too.
    second = make_fetcher()
    assert await second.fetch(f"{base}/elsewhere.wasm", DIGEST, len(PACKAGE)) == PACKAGE
    assert site.total_hits == 1


async def test_a_hash_mismatch_names_both_digests_and_caches_nothing(make_fetcher, start_site, cache_dir):
    _site, base = await start_site({"/pkg.wasm": serve_bytes(OTHER)})
    fetcher = make_fetcher()

    with pytest.raises(HashMismatchError) as caught:
        await fetcher.fetch(f"{base}/pkg.wasm", f"sha256:{DIGEST}")

    assert f"sha256:{OTHER_DIGEST}" in str(caught.value) and f"expects sha256:{DIGEST}" in str(caught.value)
    assert "do not proceed" in caught.value.hint
    assert cache_files(cache_dir) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_package_larger_than_declared_is_refused(make_fetcher, start_site, cache_dir, chunked):
    _site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE, chunked=chunked)})
    with pytest.raises(PackageSizeError, match="larger than the declared package_size|more than the declared package_size of 1000 bytes"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST, 1000)
    assert cache_files(cache_dir) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_package_smaller_than_declared_is_refused(make_fetcher, start_site, cache_dir, chunked):
    _site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE, chunked=chunked)})
    declared = len(PACKAGE) + 1
    with pytest.raises(PackageSizeError, match=f"is {len(PACKAGE)} bytes, smaller than the declared package_size of {declared} bytes"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST, declared)
    assert cache_files(cache_dir) == []


async def test_an_endless_body_stops_at_the_declared_size(make_fetcher, start_site):
    endless = Endless()
    _site, base = await start_site({"/pkg.wasm": endless})
    with pytest.raises(PackageSizeError, match="more than the declared package_size of 100000 bytes; stopped reading"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST, 100_000)
    async with asyncio.timeout(5):
        await endless.stopped.wait()


async def test_an_endless_body_without_declared_size_stops_at_the_node_maximum(make_fetcher, start_site, cache_dir):
    endless = Endless()
    _site, base = await start_site({"/pkg.wasm": endless})
    limits = FetchLimits(connect_timeout_ms=1_000, total_timeout_ms=10_000, package_size_max_bytes=256 * 1024)

    with pytest.raises(PackageSizeError, match="more than this node's package size limit of 262144 bytes; stopped reading"):
        await make_fetcher(limits=limits).fetch(f"{base}/pkg.wasm", DIGEST)

    # The client hung up: the server could not push its 1.6 GB, only what socket buffers held.
    async with asyncio.timeout(5):
        await endless.stopped.wait()
    assert endless.sent_bytes < 64 * 1024 * 1024
    assert cache_files(cache_dir) == []


async def test_size_checks_before_any_request(make_fetcher, start_site):
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    fetcher = make_fetcher()
    with pytest.raises(PackageSizeError, match="over this node's package size limit of 1048576 bytes"):
        await fetcher.fetch(f"{base}/pkg.wasm", DIGEST, 1024 * 1024 + 1)
    for bad_size in (0, -5, True, 1.5, "16392"):
        with pytest.raises(PackageSizeError, match="positive integer"):
            await fetcher.fetch(f"{base}/pkg.wasm", DIGEST, bad_size)
    assert site.total_hits == 0


async def test_a_compressed_body_is_refused(make_fetcher, start_site):
    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(PACKAGE), headers={"Content-Encoding": "gzip"})

    _site, base = await start_site({"/pkg.wasm": gzipped})
    with pytest.raises(PackageFetchError, match="'gzip'-encoded body"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST)


@pytest.mark.parametrize("status", [404, 403, 500, 503])
async def test_an_error_status_is_a_fetch_error_with_the_status(make_fetcher, start_site, status):
    _site, base = await start_site({"/pkg.wasm": serve_status(status)})
    with pytest.raises(PackageFetchError, match=f"answered HTTP {status}"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST)


def self_signed_server_context(directory: Path):
    """A TLS context for 127.0.0.1 with a self-signed certificate that no trust store knows."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


async def test_https_verifies_certificates(make_fetcher, aiohttp_server, tmp_path, cache_dir):
    site = Site()
    site.route("/pkg.wasm", serve_bytes(PACKAGE))
    server = await aiohttp_server(site.app, ssl=self_signed_server_context(tmp_path))
    url = str(server.make_url("/pkg.wasm"))
    assert url.startswith("https://")
    with pytest.raises(PackageFetchError, match="(?i)certificate"):
        await make_fetcher().fetch(url, DIGEST)
    assert cache_files(cache_dir) == []


def private_ca_server_context(directory: Path):
    """A mirror with a certificate issued by a private CA: returns (server TLS context, the CA's PEM path)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Synapse test mirror CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf-key.pem").write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                    serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "leaf.pem", directory / "leaf-key.pem")
    return context, directory / "ca.pem"


async def test_https_from_a_mirror_with_a_private_ca_works_once_the_ca_is_configured(make_fetcher, aiohttp_server, tmp_path,
                                                                                     cache_dir):
    site = Site()
    site.route("/pkg.wasm", serve_bytes(PACKAGE))
    server_context, ca_file = private_ca_server_context(tmp_path)
    server = await aiohttp_server(site.app, ssl=server_context)
    url = str(server.make_url("/pkg.wasm"))
    with pytest.raises(PackageFetchError, match="TLS certificate could not be verified") as refused:
        await make_fetcher().fetch(url, DIGEST)
    assert "packages.ca_file" in refused.value.hint and cache_files(cache_dir) == []
    trusting = PackageFetcher(PackageCache(cache_dir), limits=FAST, ca_file=ca_file)
    try:
        assert await trusting.fetch(url, DIGEST, len(PACKAGE)) == PACKAGE
    finally:
        await trusting.close()
    assert len(cache_files(cache_dir)) == 1


@pytest.mark.parametrize("content", [None, b"not a certificate", b""])
def test_a_bad_ca_file_is_a_config_error_naming_it(tmp_path, cache_dir, content):
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    with pytest.raises(ConfigError, match=r"packages\.ca_file .*ca\.pem"):
        PackageFetcher(PackageCache(cache_dir), ca_file=ca_file)


async def test_an_unreachable_host_is_a_fetch_error(make_fetcher):
    with pytest.raises(PackageFetchError, match="failed: ClientConnectorError"):
        await make_fetcher().fetch(f"http://127.0.0.1:{closed_port()}/pkg.wasm", DIGEST)


# --- servers that lie about Content-Length -------------------------------------------------------


async def test_a_huge_content_length_is_refused_before_reading_the_body(make_fetcher, raw_server):
    base = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n" + PACKAGE)
    with pytest.raises(PackageSizeError, match="limit of 1048576 bytes"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST)


async def test_a_content_length_smaller_than_the_body_gets_only_that_many_bytes(make_fetcher, raw_server, cache_dir):
    # The server announces 10 bytes, sends them, then the rest of the package: the extra bytes never count.
    base = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + PACKAGE[:10], after_pause=PACKAGE[10:])
    with pytest.raises(HashMismatchError, match=f"expects sha256:{DIGEST}"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST)
    with pytest.raises(PackageSizeError, match="Content-Length"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST, len(PACKAGE))
    assert cache_files(cache_dir) == []


async def test_a_content_length_larger_than_the_body_is_a_fetch_error(make_fetcher, raw_server, cache_dir):
    # Announces the right size, sends half, hangs up.
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(PACKAGE)}\r\n\r\n".encode()
    base = await raw_server(head + PACKAGE[: len(PACKAGE) // 2])
    with pytest.raises(PackageFetchError, match="ClientPayloadError"):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST, len(PACKAGE))
    assert cache_files(cache_dir) == []


@pytest.mark.parametrize("header", [b"Content-Length: -5", b"Content-Length: abc", b"Content-Length: 5\r\nContent-Length: 7"])
async def test_a_malformed_content_length_is_a_fetch_error(make_fetcher, raw_server, header):
    base = await raw_server(b"HTTP/1.1 200 OK\r\n" + header + b"\r\n\r\n" + PACKAGE)
    with pytest.raises(PackageFetchError):
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST)


# --- redirects and timeouts ----------------------------------------------------------------------


def redirect_to(location: str, status: int = 302):
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(location) if status == 302 else web.HTTPPermanentRedirect(location)

    return handler


async def test_redirects_within_the_limit_are_followed(make_fetcher, start_site):
    site, base = await start_site({
        "/a": redirect_to("/b"), "/b": redirect_to("c", 308), "/c": redirect_to("/pkg.wasm"), "/pkg.wasm": serve_bytes(PACKAGE),
    })
    assert await make_fetcher().fetch(f"{base}/a", DIGEST) == PACKAGE  # redirects_max=3
    assert site.total_hits == 4


async def test_a_redirect_chain_over_the_limit_is_refused(make_fetcher, start_site):
    async def forever(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/loop/{int(request.match_info['n']) + 1}")

    site, base = await start_site({"/loop/{n}": forever})
    with pytest.raises(PackageFetchError, match="redirected more than 3 times"):
        await make_fetcher().fetch(f"{base}/loop/0", DIGEST)
    assert site.total_hits == 4  # the first request and 3 redirects followed, then no more


@pytest.mark.parametrize(("location", "scheme"), [
    ("file:///etc/passwd", "'file:'"), ("ftp://127.0.0.1/pkg.wasm", "'ftp:'"), ("gopher://127.0.0.1/", "'gopher:'"),
    (f"ipfs://{CID}", "only http:// and https://"),
])
async def test_a_redirect_to_another_scheme_is_refused(make_fetcher, start_site, location, scheme):
    _site, base = await start_site({"/pkg.wasm": redirect_to(location)})
    with pytest.raises(PackageSourceRefused, match=scheme) as caught:
        await make_fetcher().fetch(f"{base}/pkg.wasm", DIGEST)
    assert "redirect" in str(caught.value)


async def test_a_stalled_body_hits_the_total_timeout(make_fetcher, start_site):
    _site, base = await start_site({"/pkg.wasm": stalled})
    limits = FetchLimits(connect_timeout_ms=300, total_timeout_ms=400)
    with pytest.raises(PackageFetchError, match="did not finish within 400 ms"):
        await make_fetcher(limits=limits).fetch(f"{base}/pkg.wasm", DIGEST)


async def test_a_server_that_never_answers_hits_the_total_timeout(make_fetcher):
    # A listening socket that never accepts: the connection completes in the kernel, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        limits = FetchLimits(connect_timeout_ms=300, total_timeout_ms=400)
        with pytest.raises(PackageFetchError, match="within .*00 ms"):
            await make_fetcher(limits=limits).fetch(f"http://127.0.0.1:{port}/pkg.wasm", DIGEST)


# --- private addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize("host, says", [("127.0.0.1", "points at 127.0.0.1, a non-public address"),
                                        ("localhost", "localhost resolves only to non-public addresses")])
async def test_a_node_that_refuses_private_addresses_never_connects_to_one(make_fetcher, start_site, cache_dir, host, says):
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    url = base.replace("127.0.0.1", host) + "/pkg.wasm"
    with pytest.raises(PackageHostRefused, match=says) as refused:
        await make_fetcher(private_addresses_allowed=False).fetch(url, DIGEST)
    assert "allow_private_addresses = true" in refused.value.hint
    assert site.total_hits == 0 and cache_files(cache_dir) == []
    # The refusal is this node's policy, not a property of the package: an upgrade it blocks is retried.
    assert classify_failure(refused.value) is FailureKind.LOCAL
    assert await make_fetcher(private_addresses_allowed=True).fetch(url, DIGEST) == PACKAGE


async def test_the_operators_own_ipfs_gateway_may_be_local_under_the_policy(make_fetcher, start_site):
    gateway, gateway_base = await start_site({f"/ipfs/{CID}": serve_bytes(PACKAGE)})
    fetcher = make_fetcher(ipfs_gateways=[gateway_base], private_addresses_allowed=False)
    assert await fetcher.fetch(f"ipfs://{CID}", DIGEST, len(PACKAGE)) == PACKAGE
    assert gateway.total_hits == 1


# --- the gateway exemption covers only what the node builds for ipfs:// ----------------------------
#
# The operator's gateway may be local (127.0.0.1:8080). Its exemption must not open its HOST to
# proposers: another port there (an admin API, a metrics page), another path on its port, or a
# redirect to either would let any proposer make every node fetch internal content, and the
# hash-mismatch error of POST /upgrades/{id}/test would hand back that content's SHA256.

SECRET = b"internal: database password is hunter2"
SECRET_DIGEST = hashlib.sha256(SECRET).hexdigest()
PUBLIC_LOOKING_HOST = "127.0.0.2"   # counted as public in these tests: stands in for any public server


class Secret:
    """Internal content; `served` counts the times any route handed it out."""

    def __init__(self) -> None:
        self.served = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.served += 1
        return web.Response(body=SECRET, content_type="application/octet-stream")

    def assert_kept(self, error) -> None:
        text = f"{error.message} {error.hint}"
        assert self.served == 0
        assert SECRET_DIGEST not in text and "hunter2" not in text


def serve_redirect(location: str, status: int = 302):
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(location) if status == 302 else web.HTTPTemporaryRedirect(location)

    return handler


@pytest.fixture
def secret() -> Secret:
    return Secret()


@pytest.fixture
async def internal_base(start_site, secret) -> str:
    """An internal service on the gateway's host (127.0.0.1, another port) holding the secret at /secret."""
    _site, base = await start_site({"/secret": secret.handler})
    return base


@pytest.fixture
def public_looking(monkeypatch):
    """Makes PUBLIC_LOOKING_HOST count as a public address, so a server there passes the policy."""
    import node.packages as packages

    real_is_public = packages._is_public
    monkeypatch.setattr(packages, "_is_public",
                        lambda address: str(address) == PUBLIC_LOOKING_HOST or real_is_public(address))


async def test_another_port_on_the_gateways_host_is_not_exempt(make_fetcher, start_site, secret, internal_base, cache_dir):
    _gateway, gateway_base = await start_site({f"/ipfs/{CID}": serve_bytes(PACKAGE)})
    fetcher = make_fetcher(ipfs_gateways=[gateway_base], private_addresses_allowed=False)
    with pytest.raises(PackageHostRefused, match="non-public address") as refused:
        await fetcher.fetch(f"{internal_base}/secret", DIGEST)
    secret.assert_kept(refused.value)
    assert cache_files(cache_dir) == []


@pytest.mark.parametrize("path", ["/secret", "/api/v0/config", f"/ipfs/{CID}"])
async def test_a_proposers_url_on_the_gateways_own_port_is_not_exempt(make_fetcher, start_site, secret, path):
    # Even the exact URL the node would build: the exemption is for what the node builds, not for look-alikes.
    _gateway, gateway_base = await start_site({"/secret": secret.handler, "/api/v0/config": secret.handler,
                                               f"/ipfs/{CID}": secret.handler})
    fetcher = make_fetcher(ipfs_gateways=[gateway_base], private_addresses_allowed=False)
    with pytest.raises(PackageHostRefused) as refused:
        await fetcher.fetch(f"{gateway_base}{path}", DIGEST)
    secret.assert_kept(refused.value)


@pytest.mark.parametrize("target", ["internal", "gateway_secret", "gateway_ipfs"])
async def test_a_redirect_from_a_public_server_to_the_gateways_host_is_refused(make_fetcher, start_site, aiohttp_server, secret,
                                                                               internal_base, public_looking, target):
    _gateway, gateway_base = await start_site({"/secret": secret.handler, f"/ipfs/{CID}": secret.handler})
    location = {"internal": f"{internal_base}/secret", "gateway_secret": f"{gateway_base}/secret",
                "gateway_ipfs": f"{gateway_base}/ipfs/{CID}"}[target]
    public = Site()
    public.route("/pkg.wasm", serve_redirect(location))
    public_server = await aiohttp_server(public.app, host=PUBLIC_LOOKING_HOST)
    fetcher = make_fetcher(ipfs_gateways=[gateway_base], private_addresses_allowed=False)
    with pytest.raises(PackageHostRefused) as refused:
        await fetcher.fetch(str(public_server.make_url("/pkg.wasm")), DIGEST)
    assert public.total_hits == 1
    secret.assert_kept(refused.value)


async def test_a_public_looking_server_is_fetched_under_the_policy(make_fetcher, aiohttp_server, public_looking):
    """Guards the tests above: the stand-in public server really passes the policy."""
    public = Site()
    public.route("/pkg.wasm", serve_bytes(PACKAGE))
    server = await aiohttp_server(public.app, host=PUBLIC_LOOKING_HOST)
    fetcher = make_fetcher(private_addresses_allowed=False)
    assert await fetcher.fetch(str(server.make_url("/pkg.wasm")), DIGEST) == PACKAGE


async def test_the_gateways_redirect_stays_exempt_only_inside_its_ipfs_prefix(make_fetcher, start_site, secret, internal_base):
    # Inside the gateway's /ipfs/ prefix (a trailing slash, a file in the CID's directory) it is still the
    # gateway serving content-addressed bytes; anywhere else it is a URL like any other, under the policy.
    _gateway, gateway_base = await start_site({
        f"/ipfs/{CID}/pkg.wasm": serve_redirect(f"/ipfs/{CID}/v1/pkg.wasm", status=307),
        f"/ipfs/{CID}/v1/pkg.wasm": serve_bytes(PACKAGE),
        f"/ipfs/{CID}/other.wasm": serve_redirect(f"{internal_base}/secret"),
        f"/ipfs/{CID}/admin.wasm": serve_redirect("/secret"),
        f"/ipfs/{CID}/dots.wasm": serve_redirect(f"/ipfs/{CID}/%2e%2e/%2e%2e/secret"),
        "/secret": secret.handler})
    fetcher = make_fetcher(ipfs_gateways=[gateway_base], private_addresses_allowed=False)
    for name in ("other.wasm", "admin.wasm", "dots.wasm"):
        with pytest.raises(PackageHostRefused) as refused:
            await fetcher.fetch(f"ipfs://{CID}/{name}", DIGEST)
        secret.assert_kept(refused.value)
    assert await fetcher.fetch(f"ipfs://{CID}/pkg.wasm", DIGEST) == PACKAGE   # last: a cached package needs no fetch


async def test_a_gateway_under_a_path_is_exempt_only_under_its_own_ipfs_prefix(make_fetcher, start_site, secret):
    gateway, gateway_base = await start_site({f"/gw/ipfs/{CID}": serve_redirect(f"/ipfs/{CID}"),
                                              f"/ipfs/{CID}": secret.handler})
    fetcher = make_fetcher(ipfs_gateways=[f"{gateway_base}/gw"], private_addresses_allowed=False)
    with pytest.raises(PackageHostRefused) as refused:
        await fetcher.fetch(f"ipfs://{CID}", DIGEST)
    assert gateway.hits[f"/gw/ipfs/{CID}"] == 1
    secret.assert_kept(refused.value)


# --- ipfs through gateways -----------------------------------------------------------------------


@pytest.mark.parametrize("first_status", [404, 500, 503])
async def test_ipfs_falls_through_to_the_next_gateway(make_fetcher, start_site, first_status, cache_dir):
    broken, broken_base = await start_site({f"/ipfs/{CID}": serve_status(first_status)})
    good, good_base = await start_site({f"/ipfs/{CID}": serve_bytes(PACKAGE)})
    fetcher = make_fetcher(ipfs_gateways=[broken_base + "/", good_base])

    assert await fetcher.fetch(f"ipfs://{CID}", DIGEST, len(PACKAGE)) == PACKAGE
    assert (broken.total_hits, good.total_hits) == (1, 1)
    assert cache_files(cache_dir) == [f"{DIGEST}.wasm"]


async def test_ipfs_skips_an_unreachable_gateway_and_one_serving_wrong_bytes(make_fetcher, start_site):
    liar, liar_base = await start_site({f"/ipfs/{CID}/pkg.wasm": serve_bytes(OTHER)})
    good, good_base = await start_site({f"/ipfs/{CID}/pkg.wasm": serve_bytes(PACKAGE)})
    fetcher = make_fetcher(ipfs_gateways=[f"http://127.0.0.1:{closed_port()}", liar_base, good_base])

    assert await fetcher.fetch(f"ipfs://{CID}/pkg.wasm", DIGEST) == PACKAGE
    assert (liar.total_hits, good.total_hits) == (1, 1)


async def test_when_all_gateways_fail_the_error_lists_each(make_fetcher, start_site, cache_dir):
    _missing, missing_base = await start_site({})
    _failing, failing_base = await start_site({f"/ipfs/{CID}": serve_status(500)})
    _liar, liar_base = await start_site({f"/ipfs/{CID}": serve_bytes(OTHER)})
    dead_base = f"http://127.0.0.1:{closed_port()}"
    fetcher = make_fetcher(ipfs_gateways=[missing_base, failing_base, liar_base, dead_base])

    with pytest.raises(PackageFetchError) as caught:
        await fetcher.fetch(f"ipfs://{CID}", DIGEST)

    message = str(caught.value)
    assert message.startswith("all 4 IPFS gateways failed")
    assert f"[1] {missing_base}/ipfs/{CID} answered HTTP 404" in message
    assert f"[2] {failing_base}/ipfs/{CID} answered HTTP 500" in message
    assert f"[3] package from {liar_base}/ipfs/{CID} has sha256:{OTHER_DIGEST}, but the proposal expects sha256:{DIGEST}" in message
    assert f"[4] download from {dead_base}/ipfs/{CID} failed: ClientConnectorError" in message
    assert cache_files(cache_dir) == []


async def test_when_every_gateway_serves_wrong_bytes_it_is_a_hash_mismatch(make_fetcher, start_site):
    _one, one_base = await start_site({f"/ipfs/{CID}": serve_bytes(OTHER)})
    _two, two_base = await start_site({f"/ipfs/{CID}": serve_bytes(OTHER)})
    with pytest.raises(HashMismatchError, match="all 2 IPFS gateways failed"):
        await make_fetcher(ipfs_gateways=[one_base, two_base]).fetch(f"ipfs://{CID}", DIGEST)


async def test_ipfs_without_gateways_is_refused_with_a_hint(make_fetcher):
    with pytest.raises(PackageSourceRefused, match="no IPFS gateway configured") as caught:
        await make_fetcher().fetch(f"ipfs://{CID}", DIGEST)
    assert "ipfs_gateways" in caught.value.hint


@pytest.mark.parametrize("gateways", ["http://127.0.0.1:8080", ["ftp://gw.example"], ["http://gw.example/?x=1"], ["not a url"],
                                      [f"http://gw{n}.example" for n in range(17)]])
def test_bad_gateway_configuration_is_refused(tmp_path, gateways):
    with pytest.raises(ConfigError):
        PackageFetcher(PackageCache(tmp_path), ipfs_gateways=gateways)


# --- refusals before any network -----------------------------------------------------------------


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/pkg.wasm", "data:application/wasm;base64,AGFzbQ==",
                                 "gopher://127.0.0.1/", "javascript:alert(1)", "127.0.0.1/pkg.wasm", "ipfs://not-a-cid"])
async def test_refused_sources_never_touch_network_or_cache(make_fetcher, url, cache_dir):
    with pytest.raises(PackageSourceRefused):
        await make_fetcher().fetch(url, DIGEST)
    assert cache_files(cache_dir) == []


@pytest.mark.parametrize("package_hash", ["", "md5:abc", "sha256:" + "z" * 64, DIGEST[:-1], None])
async def test_a_bad_hash_is_refused_before_any_request(make_fetcher, start_site, package_hash):
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    with pytest.raises(HashFormatError):
        await make_fetcher().fetch(f"{base}/pkg.wasm", package_hash)
    assert site.total_hits == 0


# --- credentials never leak ----------------------------------------------------------------------


async def test_credentials_in_urls_work_but_never_appear_in_errors_or_logs(make_fetcher, start_site, caplog):
    caplog.set_level(logging.DEBUG)
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE), "/redirect": redirect_to("/missing?token=redirsecret9")})
    with_credentials = base.replace("http://", "http://alice:s3cretpass@")
    fetcher = make_fetcher()

    assert await fetcher.fetch(f"{with_credentials}/pkg.wasm?token=tok3nvalue", DIGEST) == PACKAGE
    assert site.headers[0]["Authorization"].startswith("Basic ")  # the credentials were used, as Basic auth
    failures = []
    for url in (f"{with_credentials}/missing?token=tok3nvalue", f"{with_credentials}/redirect",
                f"http://alice:s3cretpass@127.0.0.1:{closed_port()}/pkg.wasm?api_key=tok3nvalue",
                "ftp://alice:s3cretpass@127.0.0.1/pkg.wasm"):
        with pytest.raises(Exception) as caught:
            await fetcher.fetch(url, OTHER_DIGEST)
        failures.append(caught.value.one_line())

    # Every log record of the node's side (the test server's own access log is not the node's).
    node_records = [record for record in caplog.records if not record.name.startswith("aiohttp.access")]
    shown = "\n".join(failures) + "\n" + "\n".join(f"{record.getMessage()} {record.args}" for record in node_records)
    for secret in ("s3cretpass", "alice", "tok3nvalue", "redirsecret9"):
        assert secret not in shown
    assert "http://***@127.0.0.1" in failures[0] and "token=***" in failures[0]
    assert len(failures) == 4 and "downloading package" in shown


async def test_gateway_credentials_never_appear_in_errors_or_logs(make_fetcher, start_site, caplog):
    caplog.set_level(logging.DEBUG)
    _site, base = await start_site({f"/ipfs/{CID}": serve_status(502)})
    gateway = base.replace("http://", "http://gw:gatewaysecret@")
    with pytest.raises(PackageFetchError) as caught:
        await make_fetcher(ipfs_gateways=[gateway, gateway]).fetch(f"ipfs://{CID}", DIGEST)
    assert "answered HTTP 502" in str(caught.value)
    node_log = "\n".join(record.getMessage() for record in caplog.records if not record.name.startswith("aiohttp.access"))
    assert "IPFS gateway 2 of 2 failed" in node_log
    assert "gatewaysecret" not in caught.value.one_line() + node_log


# --- the cache -----------------------------------------------------------------------------------


async def test_a_corrupt_cache_file_is_detected_and_the_package_refetched(make_fetcher, start_site, cache_dir, caplog):
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    fetcher = make_fetcher()
    await fetcher.fetch(f"{base}/pkg.wasm", DIGEST)
    cached_path = cache_dir / f"{DIGEST}.wasm"
    cached_path.write_bytes(PACKAGE[:-1] + b"X")  # one flipped byte on disk

    assert await fetcher.fetch(f"{base}/pkg.wasm", DIGEST) == PACKAGE

    assert site.total_hits == 2
    assert cached_path.read_bytes() == PACKAGE
    assert "is corrupt" in caplog.text


def test_cache_get_deletes_corrupt_files_and_keeps_good_ones(cache_dir):
    cache = PackageCache(cache_dir)
    assert cache.get(DIGEST) is None  # no directory yet
    path = cache.put(DIGEST, PACKAGE)
    assert path == cache.path_for(DIGEST) == cache_dir / f"{DIGEST}.wasm"
    assert cache.get(DIGEST) == PACKAGE
    path.write_bytes(PACKAGE[:100])
    assert cache.get(DIGEST) is None
    assert not path.exists()


def test_cache_get_does_not_follow_a_symlink(cache_dir, tmp_path):
    cache = PackageCache(cache_dir)
    target = tmp_path / "elsewhere.wasm"
    target.write_bytes(PACKAGE)  # even a symlink to the right bytes: the cache holds only its own files
    cache_dir.mkdir(parents=True)
    cache.path_for(DIGEST).symlink_to(target)
    assert cache.get(DIGEST) is None
    assert not cache.path_for(DIGEST).is_symlink() and target.read_bytes() == PACKAGE


def test_cache_get_refuses_a_fifo_without_hanging(cache_dir):
    cache = PackageCache(cache_dir)
    cache_dir.mkdir(parents=True)
    os.mkfifo(cache.path_for(DIGEST))
    assert cache.get(DIGEST) is None
    assert not cache.path_for(DIGEST).exists()


def test_cache_get_refuses_an_oversized_file(cache_dir):
    cache = PackageCache(cache_dir, file_size_max_bytes=1000)
    cache_dir.mkdir(parents=True)
    cache.path_for(DIGEST).write_bytes(PACKAGE)
    assert cache.get(DIGEST) is None


def test_cache_get_reports_a_directory_in_the_way(cache_dir):
    cache = PackageCache(cache_dir)
    cache.path_for(DIGEST).mkdir(parents=True)
    with pytest.raises(StoreError, match="could not be deleted"):
        cache.get(DIGEST)


def test_cache_put_refuses_bytes_that_do_not_match_the_key(cache_dir):
    cache = PackageCache(cache_dir)
    with pytest.raises(HashMismatchError, match=f"sha256 {OTHER_DIGEST} under the key {DIGEST}"):
        cache.put(DIGEST, OTHER)
    assert cache_files(cache_dir) == []


@pytest.mark.parametrize("key", ["../../etc/passwd", DIGEST.upper(), f"sha256:{DIGEST}", DIGEST + "/x", "", None])
def test_cache_keys_must_be_lowercase_hex_digests(cache_dir, key):
    with pytest.raises(HashFormatError):
        PackageCache(cache_dir).path_for(key)


def test_cache_put_reports_an_unwritable_directory(tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="could not write package cache file"):
        PackageCache(blocker / "cache").put(DIGEST, PACKAGE)


async def test_a_cache_hit_with_a_wrong_declared_size_is_refused_like_a_download(make_fetcher, start_site):
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    fetcher = make_fetcher()
    await fetcher.fetch(f"{base}/pkg.wasm", DIGEST)
    with pytest.raises(PackageSizeError, match="smaller than the declared package_size"):
        await fetcher.fetch(f"{base}/pkg.wasm", DIGEST, len(PACKAGE) + 1)
    assert site.total_hits == 1


# --- concurrency and lifecycle -------------------------------------------------------------------


async def test_concurrent_fetches_of_one_digest_share_one_download(make_fetcher, start_site):
    async def slow_package(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response(body=PACKAGE)

    site, base = await start_site({"/pkg.wasm": slow_package, "/mirror.wasm": slow_package})
    fetcher = make_fetcher()
    urls = [f"{base}/pkg.wasm"] * 4 + [f"{base}/mirror.wasm"] * 4
    results = await asyncio.gather(*(fetcher.fetch(url, DIGEST) for url in urls))
    assert results == [PACKAGE] * 8
    assert site.total_hits == 1


async def test_a_failed_download_lets_the_next_waiter_try_its_own_url(make_fetcher, start_site):
    site, base = await start_site({"/bad.wasm": serve_bytes(OTHER), "/good.wasm": serve_bytes(PACKAGE)})
    fetcher = make_fetcher()
    bad, good = await asyncio.gather(fetcher.fetch(f"{base}/bad.wasm", DIGEST), fetcher.fetch(f"{base}/good.wasm", DIGEST),
                                     return_exceptions=True)
    assert isinstance(bad, HashMismatchError) and good == PACKAGE
    assert site.hits == {"/bad.wasm": 1, "/good.wasm": 1}


async def test_close_is_idempotent_and_final(make_fetcher, start_site):
    _site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    fetcher = make_fetcher()
    await fetcher.fetch(f"{base}/pkg.wasm", DIGEST)
    await fetcher.close()
    await fetcher.close()
    with pytest.raises(RuntimeError, match="after close"):
        await fetcher.fetch(f"{base}/other.wasm", OTHER_DIGEST)


# --- one download per machine (a shared cache) ---------------------------------------------------


def make_shared_fetcher(tmp_path: Path, name: str, shared_dir: Path, **options) -> PackageFetcher:
    return PackageFetcher(PackageCache(tmp_path / name / "cache"), limits=FAST, shared=PackageCache(shared_dir), **options)


async def test_nodes_sharing_a_cache_download_a_package_once_the_others_wait_and_read_it(start_site, tmp_path):
    gate, arrived = asyncio.Event(), asyncio.Event()

    async def gated(request: web.Request) -> web.Response:
        arrived.set()
        await gate.wait()
        return web.Response(body=PACKAGE, content_type="application/wasm")
    site, base = await start_site({"/pkg.wasm": gated})
    shared = tmp_path / "shared" / "packages"
    fetchers = [make_shared_fetcher(tmp_path, f"node-{index}", shared) for index in range(4)]
    try:
        fetches = [asyncio.create_task(fetcher.fetch(f"{base}/pkg.wasm", DIGEST, len(PACKAGE))) for fetcher in fetchers]
        await asyncio.wait_for(arrived.wait(), 10)    # one node is downloading (it holds the digest's lock)
        for _ in range(20):                            # let the others reach the lock (and any request of theirs arrive)
            await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(*fetches) == [PACKAGE] * 4
    finally:
        for fetcher in fetchers:
            await fetcher.close()
    assert site.total_hits == 1
    assert (shared / f"{DIGEST}.wasm").read_bytes() == PACKAGE
    assert all((tmp_path / f"node-{index}" / "cache" / f"{DIGEST}.wasm").read_bytes() == PACKAGE for index in range(4))


async def test_a_tampered_file_in_the_shared_cache_is_never_used_the_package_is_downloaded(start_site, tmp_path):
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    shared = tmp_path / "shared" / "packages"
    shared.mkdir(parents=True)
    (shared / f"{DIGEST}.wasm").write_bytes(OTHER + b"planted by whoever can write the shared directory")
    fetcher = make_shared_fetcher(tmp_path, "node-1", shared)
    try:
        assert await fetcher.fetch(f"{base}/pkg.wasm", DIGEST, len(PACKAGE)) == PACKAGE
    finally:
        await fetcher.close()
    assert site.total_hits == 1 and (shared / f"{DIGEST}.wasm").read_bytes() == PACKAGE   # replaced by the verified bytes


async def test_a_download_lock_held_past_the_bound_does_not_stop_a_node(start_site, tmp_path):
    import fcntl
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    shared = tmp_path / "shared" / "packages"
    shared.mkdir(parents=True)
    holder = os.open(shared / f".{DIGEST}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)      # a node that hangs while holding it
    fetcher = make_shared_fetcher(tmp_path, "node-1", shared, shared_lock_wait_ms=100)
    try:
        assert await fetcher.fetch(f"{base}/pkg.wasm", DIGEST, len(PACKAGE)) == PACKAGE
    finally:
        await fetcher.close()
        os.close(holder)
    assert site.total_hits == 1


async def test_a_waiting_node_reads_the_file_as_soon_as_it_appears_without_waiting_for_the_lock(start_site, tmp_path):
    import fcntl
    site, base = await start_site({"/pkg.wasm": serve_bytes(PACKAGE)})
    shared = tmp_path / "shared" / "packages"
    shared.mkdir(parents=True)
    holder = os.open(shared / f".{DIGEST}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)      # the downloading node keeps its lock a while after writing the file
    fetcher = make_shared_fetcher(tmp_path, "node-1", shared, shared_lock_wait_ms=600_000)
    try:
        fetch = asyncio.create_task(fetcher.fetch(f"{base}/pkg.wasm", DIGEST, len(PACKAGE)))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not fetch.done()
        PackageCache(shared).put(DIGEST, PACKAGE)
        assert await asyncio.wait_for(fetch, 10) == PACKAGE
    finally:
        await fetcher.close()
        os.close(holder)
    assert site.total_hits == 0
