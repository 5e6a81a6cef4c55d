"""Fetch upgrade packages: refuse unsafe sources, stream with limits, verify SHA256, cache by digest.

Why it works this way:
- A package URL comes from a proposal, that is from anyone. So the URL is checked before any network
  call (only https, http and ipfs://CID: node/package_urls.py), every redirect hop is checked again (a redirect to file: or
  to any other scheme is refused), and the number of hops is counted here, not left to aiohttp.
- The body is streamed, never trusted: Content-Length is only an early refusal, the bytes really read
  are counted, and reading stops as soon as they pass the declared `package_size` or the node's
  maximum. Compressed bodies are not decompressed (a gzip bomb would otherwise pass the size cap in
  one chunk): we ask for `identity` and refuse anything else.
- The digest is computed while streaming into memory; only verified bytes are written to the cache.
  The cache is keyed by digest, so a package is downloaded once per node, and a lock per digest makes
  concurrent fetches of one package share one download. The cache re-verifies on every read: a file
  that rotted on disk (or was tampered with) is deleted and downloaded again.
- A node may be told to fetch from public addresses only. The operator's IPFS gateways are exempt,
  but only for the URLs the node builds itself for an ipfs:// proposal: same scheme, host, port and
  path prefix `{gateway path}/ipfs/`. Never by host: a proposer's URL to another port or path on the
  gateway's host, or a redirect there, is checked like any other URL (else any proposer could make
  every node fetch internal content, and a hash-mismatch error would report its SHA256). A gateway's
  own redirect stays exempt only inside that prefix; off it, the hop is under the policy. Exempt
  requests use a session of their own, so a pooled connection to the gateway's host is never reused
  for a request the policy would refuse.
- IPFS goes through HTTP gateways (`GET {gateway}/ipfs/{cid}`), tried in order. The content is
  addressed, so any failure of one gateway (connection, status, timeout, wrong bytes) is that gateway's
  fault: the next one is tried, and if all fail the error lists each gateway's failure.
  `total_timeout_ms` bounds one attempt at one source (redirects included), so a hung gateway cannot
  eat the time of the next one; a whole fetch is bounded by that times the number of gateways.
- URLs may carry credentials (`https://user:token@host/...`, `?token=...`). They never reach a log
  record or an error message: every URL shown goes through `redact_url`, and text from aiohttp
  exceptions is scrubbed the same way.
- File I/O (reading 64 MiB and hashing it, fsync) runs in a worker thread, never on the event loop.
- Download once per machine (opt-in: the nodes of one local cluster, `[sandbox] shared_cache_dir`):
  when an upgrade is ratified, N nodes on one host would fetch the same bytes at the same moment.
  With a shared cache, one node downloads under an exclusive flock per digest while the others wait
  (bounded: past PACKAGE_SHARED_LOCK_WAIT_MS they download themselves) and then read its file. The
  shared cache is trusted no more than the network: every read is verified against the digest the
  proposal names, so whoever can write the directory can only cause a download, never other bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import ipaddress
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from node.core.canonical import normalize_sha256
from node.core.canonical import sha256_hex as digest_of
from node.fsutil import lock_poll_delays_ms, try_exclusive_flock, write_atomic
from node.package_urls import check_package_url, parse_ipfs_url, parse_package_hash, redact_text, redact_url, url_scheme
from node.errors import (
    ConfigError,
    HashFormatError,
    HashMismatchError,
    PackageError,
    PackageFetchError,
    PackageHostRefused,
    PackageSizeError,
    PackageSourceRefused,
    StoreError,
)
from node.limits import (PACKAGE_CACHE_FILE_SIZE_MAX_BYTES, PACKAGE_IPFS_GATEWAYS_MAX, PACKAGE_SESSION_CLOSE_TIMEOUT_MS,
                         PACKAGE_SHARED_LOCK_POLL_MS, PACKAGE_SHARED_LOCK_WAIT_MS, SHARED_LOCK_POLL_MAX_MS)

_READ_CHUNK_BYTES = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_REQUEST_HEADERS = {
    "Accept": "application/wasm, application/octet-stream;q=0.9, */*;q=0.1",
    # Never a compressed body: the size cap must apply to the bytes we hash, not to a compressed stream.
    "Accept-Encoding": "identity",
    "User-Agent": "synapse-ng-node",
}


# --- limits ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchLimits:
    connect_timeout_ms: int = 5_000
    total_timeout_ms: int = 120_000
    redirects_max: int = 5
    package_size_max_bytes: int = 64 * 1024 * 1024
    # Downloads at once per fetcher: bounds memory to this many packages in flight.
    downloads_concurrent_max: int = 4

    def __post_init__(self) -> None:
        _check_int_field("connect_timeout_ms", self.connect_timeout_ms, 1, 600_000)
        _check_int_field("total_timeout_ms", self.total_timeout_ms, 1, 3_600_000)
        _check_int_field("redirects_max", self.redirects_max, 0, 20)
        _check_int_field("package_size_max_bytes", self.package_size_max_bytes, 1, PACKAGE_CACHE_FILE_SIZE_MAX_BYTES)
        _check_int_field("downloads_concurrent_max", self.downloads_concurrent_max, 1, 64)
        if self.connect_timeout_ms > self.total_timeout_ms:
            raise ConfigError(f"connect_timeout_ms ({self.connect_timeout_ms}) is larger than total_timeout_ms ({self.total_timeout_ms})",
                              hint="the connect timeout is part of the total: make it smaller")


def _check_int_field(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r:.40}")
    if not low <= value <= high:
        raise ConfigError(f"{name} is {value}; it must be between {low} and {high}")



# --- cache -----------------------------------------------------------------------------------


class PackageCache:
    """Verified packages on disk, one file per digest: `cache_dir/<sha256 hex>.wasm`.

    Blocking file I/O: async callers run these methods in a worker thread."""

    def __init__(self, cache_dir: Path, *, file_size_max_bytes: int = PACKAGE_CACHE_FILE_SIZE_MAX_BYTES,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self._cache_dir = Path(cache_dir)
        self._file_size_max_bytes = file_size_max_bytes
        self._logger = logger if logger is not None else logging.getLogger(__name__)

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir

    def path_for(self, sha256_hex: str) -> Path:
        # The digest becomes a file name: anything but 64 lowercase hex could walk out of the directory.
        if not isinstance(sha256_hex, str) or normalize_sha256(sha256_hex) != sha256_hex:
            raise HashFormatError(f"cache key {repr(sha256_hex)[:90]} is not 64 lowercase hex digits")
        return self._cache_dir / f"{sha256_hex}.wasm"

    def get(self, sha256_hex: str) -> bytes | None:
        """The cached bytes, verified against their digest; None when absent or corrupt (then deleted)."""
        path = self.path_for(sha256_hex)
        try:
            data = self._read_regular_file(path)
        except FileNotFoundError:
            return None
        except _NotAPackageFile as reason:
            self._discard(path, str(reason))
            return None
        actual = digest_of(data)
        if actual != sha256_hex:
            self._discard(path, f"its content has sha256 {actual}")
            return None
        return data

    def put(self, sha256_hex: str, data: bytes) -> Path:
        """Writes atomically (temporary file in the same directory, fsync, rename, fsync of the directory).

        The digest is checked with a real error, not an assert: the cache must stay trustworthy even
        under `python -O` or a caller's bug."""
        path = self.path_for(sha256_hex)
        actual = digest_of(data)
        if actual != sha256_hex:
            raise HashMismatchError(f"refusing to cache bytes with sha256 {actual} under the key {sha256_hex}")
        try:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except OSError as error:
            raise StoreError(f"could not write package cache file {path}: {error.strerror or error}") from None
        return path

    def _read_regular_file(self, path: Path) -> bytes:
        # O_NOFOLLOW: a symlink planted in the cache is not followed; O_NONBLOCK: a FIFO cannot hang us.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            descriptor = os.open(path, flags)
        except FileNotFoundError:
            raise
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _NotAPackageFile("it is a symbolic link") from None
            raise StoreError(f"could not read package cache file {path}: {error.strerror or error}") from None
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise _NotAPackageFile("it is not a regular file")
            data = _read_at_most(descriptor, self._file_size_max_bytes + 1)
        finally:
            os.close(descriptor)
        if len(data) > self._file_size_max_bytes:
            raise _NotAPackageFile(f"it is larger than {self._file_size_max_bytes} bytes")
        return data

    def _discard(self, path: Path, reason: str) -> None:
        self._logger.warning("package cache file %s is corrupt (%s); deleting it so the package is fetched again", path, reason)
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise StoreError(f"package cache file {path} is corrupt ({reason}) and could not be deleted: {error.strerror or error}",
                             hint="delete it by hand, then retry") from None


def _read_at_most(descriptor: int, size_max_bytes: int) -> bytes:
    chunks = []
    remaining_bytes = size_max_bytes
    while remaining_bytes > 0:
        chunk = os.read(descriptor, min(remaining_bytes, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        remaining_bytes -= len(chunk)
    return b"".join(chunks)


class _NotAPackageFile(Exception):
    """Internal: a cache entry that cannot be a package; never escapes this module."""


# --- fetcher ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _DigestLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class _GatewayPrefix:
    """Where an operator's IPFS gateway serves content-addressed bytes: the only URLs exempt from the
    public-only policy. Compared as aiohttp will request them (yarl: lowercased host, default port)."""
    scheme: str
    host: str
    port: int
    path_prefix: str   # the gateway's own path + "/ipfs/"

    @classmethod
    def of(cls, gateway: str) -> _GatewayPrefix:
        parsed = URL(gateway)   # checked by _check_gateways: http(s), a host, no query or fragment
        return cls(scheme=parsed.scheme, host=(parsed.host or "").lower(), port=parsed.port or 0,
                   path_prefix=parsed.path.rstrip("/") + "/ipfs/")

    def covers(self, url: str) -> bool:
        try:
            parsed = URL(url)
        except ValueError:
            return False
        if (parsed.scheme, (parsed.host or "").lower(), parsed.port) != (self.scheme, self.host, self.port):
            return False
        # Decoded path, as the gateway will see it: a %2e%2e segment could otherwise climb out of the prefix.
        segments = parsed.path.split("/")
        return parsed.path.startswith(self.path_prefix) and "." not in segments and ".." not in segments


@dataclass(frozen=True, slots=True, kw_only=True)
class _Source:
    """One place to download a package from; `gateway` is set only for a URL this node built for ipfs://."""
    url: str
    gateway: _GatewayPrefix | None


class PackageFetcher:
    """Gets a package's bytes: from the cache, else from its URL (or the IPFS gateways), verified."""

    def __init__(self, cache: PackageCache, *, ipfs_gateways: Sequence[str] = (), limits: FetchLimits = FetchLimits(),
                 ca_file: Path | None = None, private_addresses_allowed: bool = True,
                 shared: PackageCache | None = None, shared_lock_wait_ms: int = PACKAGE_SHARED_LOCK_WAIT_MS,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        """`ca_file`: a PEM bundle of certificate authorities trusted for https:// downloads on top of
        the system's (a mirror with a private CA); the system's trust store alone when None.
        `private_addresses_allowed=False`: package URLs (and their redirects) may only reach public
        addresses, checked on the addresses actually connected to (no DNS-rebinding gap); the
        configured IPFS gateways, chosen by the operator, are exempt for the URLs this node builds for
        ipfs:// (their `/ipfs/` prefix), never for their host as a whole. A proposer can then no longer
        make every node probe its internal network (the hash check already stops any use of the bytes).
        `shared`: a cache shared by the nodes of one machine (one download per machine, see above)."""
        if not isinstance(limits, FetchLimits):
            raise ConfigError(f"limits must be a FetchLimits, got {type(limits).__name__}")
        # True: aiohttp's own verifying context (built once per process); a context of our own only
        # when there are extra CAs (loading the system's store costs ~40 ms of CPU per node start).
        self._ssl_context: ssl.SSLContext | bool = _tls_context(ca_file) if ca_file is not None else True
        self._cache = cache
        self._shared = shared
        self._shared_lock_wait_ms = shared_lock_wait_ms
        self._gateways = _check_gateways(ipfs_gateways)
        self._private_allowed = private_addresses_allowed
        self._limits = limits
        self._logger = logger if logger is not None else logging.getLogger(__name__)
        # Keyed by "exempt": gateway requests the node built vs. everything else (see _session_for).
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._closed = False
        self._digest_locks: dict[str, _DigestLock] = {}
        self._download_slots = asyncio.Semaphore(limits.downloads_concurrent_max)

    @property
    def ipfs_gateways(self) -> tuple[str, ...]:
        return self._gateways

    async def fetch(self, url: str, package_hash: str, package_size: int | None = None) -> bytes:
        """Cache hit -> bytes without any network. Else download (streaming), enforce limits, verify
        sha256, put in cache, return bytes. Raises PackageSourceRefused / PackageFetchError /
        PackageSizeError / HashMismatchError / HashFormatError."""
        check_package_url(url)
        digest = parse_package_hash(package_hash)
        size_cap_bytes = self._size_cap_for(package_size)
        sources = self._sources_for(url)
        async with self._lock_for(digest):
            cached = await asyncio.to_thread(self._cache.get, digest)
            if cached is not None:
                _check_declared_size(len(cached), package_size, f"the cached package sha256:{digest}")
                self._logger.info("package sha256:%s found in cache (%d bytes)", digest, len(cached))
                return cached
            if self._shared is None:
                data = await self._download_from_sources(sources, digest, package_size, size_cap_bytes)
            else:
                data = await self._fetch_shared(self._shared, sources, digest, package_size, size_cap_bytes)
            await asyncio.to_thread(self._cache.put, digest, data)
            return data

    async def _fetch_shared(self, shared: PackageCache, sources: list[_Source], digest: str, package_size: int | None,
                            size_cap_bytes: int) -> bytes:
        """From the machine's shared cache, or downloaded by this node under the digest's flock (the
        other nodes wait for it, then read its file) and put there. Readers never take the lock."""
        found = await asyncio.to_thread(self._shared_get, shared, digest)
        async with self._shared_download_lock(shared, digest) if found is None else contextlib.nullcontext():
            if found is None:
                found = await asyncio.to_thread(self._shared_get, shared, digest)
            if found is not None:
                _check_declared_size(len(found), package_size, f"the shared cache's package sha256:{digest}")
                self._logger.info("package sha256:%s found in the shared cache (%d bytes)", digest, len(found))
                return found
            data = await self._download_from_sources(sources, digest, package_size, size_cap_bytes)
            with contextlib.suppress(StoreError):     # a shared cache that cannot be written costs the others a download
                await asyncio.to_thread(shared.put, digest, data)
            return data

    def _shared_get(self, shared: PackageCache, digest: str) -> bytes | None:
        try:
            return shared.get(digest)
        except StoreError as error:      # unreadable: download instead
            self._logger.warning("shared package cache unreadable (%s); downloading", error.one_line())
            return None

    @contextlib.asynccontextmanager
    async def _shared_download_lock(self, shared: PackageCache, digest: str) -> AsyncIterator[None]:
        """An exclusive flock on the shared cache's `.<digest>.lock` (polled, never blocking the loop),
        held by the one node that downloads. A waiter stops waiting as soon as the package's file
        appears (it reads it without the lock: the readers are not serialized), or after
        `shared_lock_wait_ms`, or without a lock file: then it goes on without the lock (the atomic
        rename keeps concurrent writers safe: only the download is duplicated)."""
        package_path = shared.path_for(digest)
        lock_path = package_path.with_name(f".{digest}.lock")
        try:
            shared.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            yield
            return
        try:
            deadline = time.monotonic() + self._shared_lock_wait_ms / 1000
            delays_ms = lock_poll_delays_ms(PACKAGE_SHARED_LOCK_POLL_MS, SHARED_LOCK_POLL_MAX_MS)
            while not try_exclusive_flock(descriptor):
                if package_path.exists():          # written (atomically renamed in) by the holder
                    break
                if time.monotonic() >= deadline:
                    self._logger.warning("another node has held the download lock of sha256:%s for %d ms; downloading too",
                                         digest, self._shared_lock_wait_ms)
                    break
                await asyncio.sleep(next(delays_ms) / 1000)
            yield
        finally:
            os.close(descriptor)       # releases the flock

    async def close(self) -> None:
        """Closes the HTTP sessions. The fetcher cannot be used afterwards."""
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            async with asyncio.timeout(PACKAGE_SESSION_CLOSE_TIMEOUT_MS / 1000):
                await session.close()

    # --- checks before any network ---

    def _size_cap_for(self, package_size: int | None) -> int:
        maximum = self._limits.package_size_max_bytes
        if package_size is None:
            return maximum
        if isinstance(package_size, bool) or not isinstance(package_size, int) or package_size < 1:
            raise PackageSizeError(f"package_size must be a positive integer number of bytes, got {package_size!r:.40}",
                                   hint="give package_size as the exact size of the .wasm file in bytes, or leave it out")
        if package_size > maximum:
            raise PackageSizeError(f"package_size {package_size} bytes is over this node's package size limit of {maximum} bytes")
        return package_size

    def _sources_for(self, url: str) -> list[_Source]:
        if url_scheme(url) != "ipfs":
            return [_Source(url=url, gateway=None)]
        cid, path = parse_ipfs_url(url)
        if not self._gateways:
            raise PackageSourceRefused(f"{redact_url(url)} is an IPFS URL, but this node has no IPFS gateway configured",
                                       hint="set ipfs_gateways in the node configuration (e.g. http://127.0.0.1:8080), or propose an https:// URL")
        return [_Source(url=f"{gateway}/ipfs/{cid}{path}", gateway=_GatewayPrefix.of(gateway)) for gateway in self._gateways]

    @contextlib.asynccontextmanager
    async def _lock_for(self, digest: str) -> AsyncIterator[None]:
        # One lock per digest while anyone needs it: the table never outgrows the fetches in flight.
        entry = self._digest_locks.get(digest)
        if entry is None:
            entry = self._digest_locks[digest] = _DigestLock()
        entry.users += 1
        try:
            # No timeout of its own: the holder's work is bounded by the fetch limits.
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._digest_locks[digest]

    # --- download ---

    async def _download_from_sources(self, sources: list[_Source], digest: str, package_size: int | None,
                                     size_cap_bytes: int) -> bytes:
        if len(sources) == 1:
            return await self._download_one(sources[0], digest, package_size, size_cap_bytes)
        failures: list[tuple[str, PackageError]] = []
        for index, source in enumerate(sources, start=1):
            try:
                return await self._download_one(source, digest, package_size, size_cap_bytes)
            except PackageError as error:
                self._logger.warning("IPFS gateway %d of %d failed: %s", index, len(sources), error.message)
                failures.append((source.url, error))
        raise _all_gateways_failed(failures)

    async def _download_one(self, source: _Source, digest: str, package_size: int | None, size_cap_bytes: int) -> bytes:
        url = source.url
        started_s = time.monotonic()
        self._logger.info("downloading package sha256:%s from %s", digest, redact_url(url))
        async with self._download_slots:
            try:
                async with asyncio.timeout(self._limits.total_timeout_ms / 1000):
                    data, actual = await self._follow_and_read(source, package_size, size_cap_bytes)
            except aiohttp.ClientError as error:
                raise _client_error_to_fetch_error(error, url, self._limits) from None
            except TimeoutError:
                raise PackageFetchError(f"download from {redact_url(url)} did not finish within {self._limits.total_timeout_ms} ms",
                                        hint="the server is too slow or stalled; retry, or raise the node's total download timeout") from None
            except ValueError as error:
                raise PackageFetchError(f"download from {redact_url(url)} failed: {redact_text(str(error), url)}") from None
        if actual != digest:
            raise HashMismatchError(f"package from {redact_url(url)} has sha256:{actual}, but the proposal expects sha256:{digest}")
        elapsed_ms = round((time.monotonic() - started_s) * 1000)
        self._logger.info("downloaded package sha256:%s (%d bytes) from %s in %d ms", digest, len(data), redact_url(url), elapsed_ms)
        return data

    async def _follow_and_read(self, source: _Source, package_size: int | None, size_cap_bytes: int) -> tuple[bytes, str]:
        # Redirects are followed by hand so that each hop's scheme and address are checked and the count is ours.
        url = current = source.url
        for _request_index in range(self._limits.redirects_max + 1):
            # Exempt only while the hop stays inside the prefix of the gateway the node built this URL for.
            exempt = source.gateway is not None and source.gateway.covers(current)
            self._check_literal_host(current, exempt=exempt)
            session = self._session_for(exempt=exempt)
            async with session.get(current, allow_redirects=False, headers=_REQUEST_HEADERS) as response:
                if response.status in _REDIRECT_STATUSES:
                    current = _redirect_target(current, response)
                    self._logger.debug("redirected to %s", redact_url(current))
                    continue
                if response.status != 200:
                    raise PackageFetchError(f"{redact_url(current)} answered HTTP {response.status} {redact_text(response.reason or '', url)}".rstrip())
                return await self._read_body(response, current, package_size, size_cap_bytes)
        raise PackageFetchError(f"{redact_url(url)} redirected more than {self._limits.redirects_max} times",
                                hint="point package_url at the final location of the package")

    async def _read_body(self, response: aiohttp.ClientResponse, url: str, package_size: int | None,
                         size_cap_bytes: int) -> tuple[bytes, str]:
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise PackageFetchError(f"{redact_url(url)} sent a '{encoding[:40]}'-encoded body although this node asked for identity",
                                    hint="serve the .wasm file uncompressed")
        too_large = self._too_large_error(url, package_size)
        content_length = response.content_length
        if content_length is not None:
            if content_length > size_cap_bytes:
                raise too_large
            _check_declared_size(content_length, package_size, f"{redact_url(url)} (Content-Length)")
        hasher = hashlib.sha256()
        body = bytearray()
        async for chunk in response.content.iter_chunked(_READ_CHUNK_BYTES):
            if len(body) + len(chunk) > size_cap_bytes:
                raise too_large
            hasher.update(chunk)
            body += chunk
        _check_declared_size(len(body), package_size, redact_url(url))
        return bytes(body), hasher.hexdigest()

    def _check_literal_host(self, url: str, *, exempt: bool) -> None:
        """A host written as an IP address is never resolved, so the resolver's policy cannot see it."""
        host = (urlsplit(url).hostname or "").lower()
        if self._private_allowed or exempt:
            return
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return
        if not _is_public(address):
            raise PackageHostRefused(f"{redact_url(url)} points at {host}, a non-public address; this node fetches "
                                     "packages from public addresses only")

    def _too_large_error(self, url: str, package_size: int | None) -> PackageSizeError:
        if package_size is not None:
            return PackageSizeError(f"{redact_url(url)} sends more than the declared package_size of {package_size} bytes; stopped reading")
        maximum = self._limits.package_size_max_bytes
        return PackageSizeError(f"{redact_url(url)} sends more than this node's package size limit of {maximum} bytes; stopped reading")

    def _session_for(self, *, exempt: bool) -> aiohttp.ClientSession:
        """The session for a request: under the public-only policy, or (for an exempt gateway URL) not.
        Two sessions, two connection pools: a connection the exempt one opened to a private address
        can never carry a request the policy refuses. When private addresses are allowed, one suffices."""
        if self._closed:
            raise RuntimeError("PackageFetcher.fetch called after close()")
        unrestricted = exempt or self._private_allowed
        key = unrestricted and not self._private_allowed
        session = self._sessions.get(key)
        if session is None:
            connect_s = self._limits.connect_timeout_ms / 1000
            session = self._sessions[key] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s),
                connector=aiohttp.TCPConnector(
                    limit=self._limits.downloads_concurrent_max * 2, ssl=self._ssl_context,
                    resolver=None if unrestricted else _PublicOnlyResolver()),
                auto_decompress=False,
                trust_env=False,
            )
        return session


def _check_gateways(gateways: Sequence[str]) -> tuple[str, ...]:
    if isinstance(gateways, str):
        raise ConfigError("ipfs_gateways must be a list of URLs, not one string", hint="write ipfs_gateways = [\"http://127.0.0.1:8080\"]")
    checked = tuple(gateways)
    if len(checked) > PACKAGE_IPFS_GATEWAYS_MAX:
        raise ConfigError(f"{len(checked)} IPFS gateways configured; at most {PACKAGE_IPFS_GATEWAYS_MAX} are allowed")
    result = []
    for gateway in checked:
        try:
            check_package_url(gateway)
        except PackageSourceRefused as error:
            raise ConfigError(f"IPFS gateway {redact_url(gateway)!r} is not usable: {error.message}") from None
        parts = urlsplit(gateway)
        if parts.scheme.lower() not in ("http", "https") or parts.query or parts.fragment:
            raise ConfigError(f"IPFS gateway {redact_url(gateway)!r} must be an http(s) URL without query or fragment",
                              hint="write it as http://host:port, the gateway's base URL")
        result.append(gateway.rstrip("/"))
    return tuple(result)


def _check_declared_size(actual_bytes: int, package_size: int | None, what: str) -> None:
    if package_size is None or actual_bytes == package_size:
        return
    relation = "larger" if actual_bytes > package_size else "smaller"
    raise PackageSizeError(f"{what} is {actual_bytes} bytes, {relation} than the declared package_size of {package_size} bytes")


def _redirect_target(current: str, response: aiohttp.ClientResponse) -> str:
    location = response.headers.get("Location")
    if not location:
        raise PackageFetchError(f"{redact_url(current)} answered HTTP {response.status} without a Location header")
    try:
        target = str(URL(current).join(URL(location)))
    except ValueError:
        raise PackageFetchError(f"{redact_url(current)} redirected to an invalid location {redact_url(location)!r}") from None
    try:
        check_package_url(target)
    except PackageSourceRefused as error:
        raise PackageSourceRefused(f"{redact_url(current)} redirected to a refused location: {error.message}",
                                   hint="a package download follows only http:// and https:// redirects") from None
    if url_scheme(target) not in ("http", "https"):
        raise PackageSourceRefused(f"{redact_url(current)} redirected to {redact_url(target)}; only http:// and https:// redirects are followed",
                                   hint="a package download follows only http:// and https:// redirects")
    return target


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _NonPublicHost(OSError):
    """Raised by the resolver: the host resolves only to addresses the node's policy refuses."""


class _PublicOnlyResolver(AbstractResolver):
    """DNS as usual, minus every non-public address. The connector connects to what this returns, so a
    name cannot resolve to a public address here and a private one later. No host is exempt here:
    exempt gateway requests go through another session (PackageFetcher._session_for)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [result for result in results if _is_public(ipaddress.ip_address(result["host"]))]
        if not public:
            seen = ", ".join(sorted({result["host"] for result in results})[:3])
            raise _NonPublicHost(f"{host} resolves only to non-public addresses ({seen})")
        return public

    async def close(self) -> None:
        await self._inner.close()


def _tls_context(ca_file: Path) -> ssl.SSLContext:
    """The system's trust store plus the CAs in `ca_file`."""
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except FileNotFoundError:
        raise ConfigError(f"packages.ca_file {ca_file} does not exist",
                          hint="give the path of a PEM file holding the CA certificates of your package mirrors") from None
    except (ssl.SSLError, OSError, ValueError) as error:
        raise ConfigError(f"packages.ca_file {ca_file} is not a readable PEM bundle of CA certificates: {error}",
                          hint="give a PEM file of CA certificates (-----BEGIN CERTIFICATE----- blocks)") from None
    return context


def _client_error_to_fetch_error(error: aiohttp.ClientError, url: str, limits: FetchLimits) -> PackageFetchError:
    if isinstance(error, aiohttp.ClientConnectorError) and isinstance(error.os_error, _NonPublicHost):
        return PackageHostRefused(f"download from {redact_url(url)} refused: {error.os_error}; this node fetches packages "
                                  "from public addresses only")
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return PackageFetchError(f"could not connect to {redact_url(url)} within {limits.connect_timeout_ms} ms",
                                 hint="check that the host is up and reachable from this node, then retry")
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        reason = getattr(error.certificate_error, "verify_message", None) or str(error.certificate_error)
        return PackageFetchError(f"download from {redact_url(url)} failed: its TLS certificate could not be verified ({reason})",
                                 hint="if the mirror uses a private certificate authority, set packages.ca_file in the node "
                                      "config to its PEM bundle; never serve packages over unverified TLS")
    detail = redact_text(str(error), url) or "no detail"
    return PackageFetchError(f"download from {redact_url(url)} failed: {type(error).__name__}: {detail}")


def _all_gateways_failed(failures: list[tuple[str, PackageError]]) -> PackageError:
    kinds = {type(error) for _gateway, error in failures}
    kind = kinds.pop() if len(kinds) == 1 else PackageFetchError
    listed = "; ".join(f"[{index}] {error.message}" for index, (_gateway, error) in enumerate(failures, start=1))
    return kind(f"all {len(failures)} IPFS gateways failed: {listed}",
                hint="check the gateways in ipfs_gateways, and that the CID is pinned and matches package_hash")
