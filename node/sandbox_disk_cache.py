"""The sandbox's disk cache of compiled modules: per node, or shared by the nodes of one local cluster.

Why it exists: compiling is the slow part of running a package (~1 s for a 5 MB Rust module), so
compiled artifacts are kept on disk across restarts. But `wasmtime.Module.deserialize` runs native code:
a file an attacker could place in the cache directory would run with the node's rights. So every
artifact carries an HMAC over the engine fingerprint (wasmtime version + engine config + machine), the
package's sha256 and the payload, and lives under a name bound to both; anything else is refused (the
sandbox recompiles and overwrites it). The payload is read once into memory, checked, and only those
bytes are deserialized: a file swapped after the check is never run. At most
SANDBOX_DISK_CACHE_ENTRIES_MAX artifacts are kept, oldest removed first. A cache that cannot be written
only costs a recompile.

Two modes:
- Per node (the default): the key is the node's own (made on first use, mode 0600, in its data dir).
- Shared (`[sandbox] shared_cache_dir` in the node config, written by `cluster up`): the nodes of one
  local cluster compile a module once per machine, not once per node. The launcher makes the directory
  (0700) and the key (0600) with `create_shared_cache`; a node never makes a shared key, and refuses a
  directory or key another user owns or could write (ConfigError at start): whoever can write the key
  can make every node run native code. Writers are safe together: an artifact is written to a temp file
  and renamed (a reader sees no file or a whole one), and `compiling(sha256)` takes an exclusive flock
  per artifact, so one node compiles while the others wait (at most SANDBOX_SHARED_CACHE_LOCK_WAIT_MS,
  then they compile themselves) and then load its artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from node import errors
from node.fsutil import lock_poll_delays_ms, try_exclusive_flock, write_atomic
from node.limits import (SANDBOX_DISK_CACHE_ENTRIES_MAX, SANDBOX_SHARED_CACHE_LOCK_POLL_MS, SHARED_LOCK_POLL_MAX_MS,
                         SANDBOX_SHARED_CACHE_LOCK_WAIT_MS)

_ARTIFACT_MAGIC = b"SYNAPSE-CWASM-1\n"
CACHE_KEY_FILE = "cache.key"
_CACHE_KEY_BYTES = 32


def create_shared_cache(directory: Path) -> Path:
    """For a launcher (cluster/genesis.py): the shared cache directory (0700) with its key (0600), made
    once; an existing key is kept. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    key_path = directory / CACHE_KEY_FILE
    if not key_path.exists():
        write_atomic(key_path, secrets.token_bytes(_CACHE_KEY_BYTES), mode=0o600)
    return directory


def _read_shared_key(directory: Path) -> bytes:
    """The launcher's key, only if this user alone owns and can write the directory and the key."""
    where = f"shared compiled module cache {directory}"
    hint = "let `synapse cluster up` create it, or remove [sandbox] shared_cache_dir from the node config"
    directory_stat = os.stat(directory, follow_symlinks=False)
    if not stat.S_ISDIR(directory_stat.st_mode) or directory_stat.st_uid != os.geteuid() or directory_stat.st_mode & 0o022:
        raise errors.ConfigError(f"{where} must be a directory owned by this user and writable by no one else", hint=hint)
    try:
        descriptor = os.open(directory / CACHE_KEY_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise errors.ConfigError(f"{where} has no key file {CACHE_KEY_FILE}", hint=hint) from None
    except OSError as error:     # ELOOP: a symbolic link, which could point at a key someone else controls
        raise errors.ConfigError(f"{where}: {CACHE_KEY_FILE} cannot be opened as a plain file ({error.strerror})",
                                 hint=hint) from None
    try:
        key_stat = os.fstat(descriptor)
        if not stat.S_ISREG(key_stat.st_mode) or key_stat.st_uid != os.geteuid() or key_stat.st_mode & 0o077:
            raise errors.ConfigError(f"{where}: {CACHE_KEY_FILE} must be a file owned by this user with mode 0600", hint=hint)
        key = os.read(descriptor, _CACHE_KEY_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(key) != _CACHE_KEY_BYTES:
        raise errors.ConfigError(f"{where}: {CACHE_KEY_FILE} is not a {_CACHE_KEY_BYTES}-byte key", hint=hint)
    return key


class DiskCache:
    """Compiled artifacts on disk, each authenticated with the cache's key before it is deserialized."""

    def __init__(self, directory: Path, fingerprint: str, *, shared: bool = False,
                 lock_wait_ms: int = SANDBOX_SHARED_CACHE_LOCK_WAIT_MS) -> None:
        self._directory = directory
        self._fingerprint = fingerprint
        self.shared = shared
        self._lock_wait_ms = lock_wait_ms
        try:
            if shared:
                self._key = _read_shared_key(directory)
            else:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._key = self._load_or_make_key()
        except OSError as error:
            raise errors.ConfigError(f"compiled module cache directory {directory} is not usable: {error.strerror or error}",
                                     hint="give the node a writable data directory") from None

    def _load_or_make_key(self) -> bytes:
        path = self._directory / CACHE_KEY_FILE
        with contextlib.suppress(FileNotFoundError):
            key = path.read_bytes()
            if len(key) == _CACHE_KEY_BYTES:
                return key
        key = secrets.token_bytes(_CACHE_KEY_BYTES)
        write_atomic(path, key, mode=0o600)
        return key

    def path_for(self, sha256: str) -> Path:
        return self._directory / f"{sha256}-{self._fingerprint}.cwasm"

    def _lock_path_for(self, sha256: str) -> Path:
        return self._directory / f".{sha256}-{self._fingerprint}.lock"

    def _mac(self, sha256: str, payload: bytes) -> bytes:
        message = self._fingerprint.encode() + b"\0" + sha256.encode() + b"\0"
        signer = hmac.new(self._key, message, hashlib.sha256)
        signer.update(payload)
        return signer.digest()

    def load(self, sha256: str) -> tuple[bytes | None, bool]:
        """The artifact's payload if present and authentic; the flag says one was present but refused."""
        try:
            blob = self.path_for(sha256).read_bytes()
        except OSError:
            return None, False
        header_size = len(_ARTIFACT_MAGIC) + hashlib.sha256().digest_size
        if len(blob) <= header_size or not blob.startswith(_ARTIFACT_MAGIC):
            return None, True
        mac, payload = blob[len(_ARTIFACT_MAGIC):header_size], blob[header_size:]
        if not hmac.compare_digest(mac, self._mac(sha256, payload)):
            return None, True
        return payload, False

    def store(self, sha256: str, payload: bytes) -> bool:
        try:
            write_atomic(self.path_for(sha256), _ARTIFACT_MAGIC + self._mac(sha256, payload) + payload, mode=0o600)
            self._prune()
        except OSError:
            return False  # a cache that cannot be written only costs a recompile next time
        return True

    @contextlib.contextmanager
    def compiling(self, sha256: str) -> Iterator[bool | None]:
        """Hold the artifact's compile lock (an exclusive flock) while compiling and storing it. Yields
        True when held; None, without the lock, as soon as the artifact is there (another node compiled
        it: load it); False when another writer kept the lock past the bound or the lock file cannot be
        made (compile anyway: the atomic rename keeps concurrent writers safe, only the work is
        duplicated). Waiters never queue for the lock once the artifact exists: at N=200, 199 nodes
        taking it one after the other, each on its next poll, took 30 s."""
        try:
            descriptor = os.open(self._lock_path_for(sha256), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            yield False
            return
        try:
            yield self._acquire(descriptor, self.path_for(sha256))
        finally:
            os.close(descriptor)     # releases the flock

    def _acquire(self, descriptor: int, artifact: Path) -> bool | None:
        deadline = time.monotonic() + self._lock_wait_ms / 1000
        delays_ms = lock_poll_delays_ms(SANDBOX_SHARED_CACHE_LOCK_POLL_MS, SHARED_LOCK_POLL_MAX_MS)
        while not try_exclusive_flock(descriptor):
            if artifact.exists():
                return None
            if time.monotonic() >= deadline:
                return False
            time.sleep(next(delays_ms) / 1000)
        return True

    def _prune(self) -> None:
        artifacts = []
        for path in self._directory.glob("*.cwasm"):
            with contextlib.suppress(OSError):     # another node of a shared cache may prune it first
                artifacts.append((path.stat().st_mtime, path))
        artifacts.sort()
        for _mtime, path in artifacts[:max(0, len(artifacts) - SANDBOX_DISK_CACHE_ENTRIES_MAX)]:
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                (path.parent / f".{path.stem}.lock").unlink()
