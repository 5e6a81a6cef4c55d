"""The sandbox's disk cache of compiled modules, trusted only if this node wrote it.

Why it exists: compiling is the slow part of running a package (~1 s for a 5 MB Rust module), so
compiled artifacts are kept on disk across restarts. But `wasmtime.Module.deserialize` runs native code:
a file an attacker could place in the cache directory would run with the node's rights. So every
artifact carries an HMAC under this node's own key (made on first use, mode 0600), over the engine
fingerprint (wasmtime version + engine config), the package's sha256 and the payload, and lives under a
name bound to both; anything else is refused (the sandbox recompiles and overwrites it). At most
SANDBOX_DISK_CACHE_ENTRIES_MAX artifacts are kept, oldest removed first. A cache that cannot be written only
costs a recompile.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from pathlib import Path

from node import errors
from node.fsutil import write_atomic
from node.limits import SANDBOX_DISK_CACHE_ENTRIES_MAX

_ARTIFACT_MAGIC = b"SYNAPSE-CWASM-1\n"
_CACHE_KEY_FILE = "cache.key"
_CACHE_KEY_BYTES = 32


class DiskCache:
    """Compiled artifacts on disk, each authenticated with this node's key before it is deserialized."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self._directory = directory
        self._fingerprint = fingerprint
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._key = self._load_or_make_key()
        except OSError as error:
            raise errors.ConfigError(f"compiled module cache directory {directory} is not usable: {error.strerror or error}",
                                     hint="give the node a writable data directory") from None

    def _load_or_make_key(self) -> bytes:
        path = self._directory / _CACHE_KEY_FILE
        with contextlib.suppress(FileNotFoundError):
            key = path.read_bytes()
            if len(key) == _CACHE_KEY_BYTES:
                return key
        key = secrets.token_bytes(_CACHE_KEY_BYTES)
        write_atomic(path, key, mode=0o600)
        return key

    def path_for(self, sha256: str) -> Path:
        return self._directory / f"{sha256}-{self._fingerprint}.cwasm"

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

    def _prune(self) -> None:
        artifacts = sorted(self._directory.glob("*.cwasm"), key=lambda path: path.stat().st_mtime)
        for path in artifacts[:max(0, len(artifacts) - SANDBOX_DISK_CACHE_ENTRIES_MAX)]:
            with contextlib.suppress(OSError):
                path.unlink()
