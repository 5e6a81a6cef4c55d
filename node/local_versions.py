"""This node's versions: the store (data dir, backups, the commit point), the sandbox, the package
fetcher and the upgrade manager, and the live network state read from the store.

Why one object: the executor, the API's dry runs and rollbacks, and the governance queries (which need
the current reputations and version) all read or change the same store; opening and closing it, and
re-reading the state after it changed, happen in one place. Blocking work (opening the store, reading
the state) runs in threads, and every await is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from node.config import Genesis, Limits, initial_network_state
from node.errors import Unavailable
from node.limits import UPGRADE_INLINE_STATE_BYTES_MAX
from node.logging_setup import log_event
from node.metrics import Metrics
from node.packages import FetchLimits, PackageCache, PackageFetcher
from node.sandbox import Sandbox, SandboxLimits
from node.store import VersionStore, parse_stored_state
from node.upgrader import UpgradeManager

COMPILED_DIR_NAME = "compiled"
SHARED_PACKAGES_DIR_NAME = "packages"   # packages downloaded once per machine, in the shared cache dir

_logger = logging.getLogger("synapse.governance")


class LocalVersions:
    """Open with `start()` (or as an aiohttp cleanup_ctx through `context`), close with `stop()`."""

    def __init__(self, *, genesis: Genesis, limits: Limits, data_dir: Path, metrics: Metrics, now_ms: Callable[[], int],
                 ipfs_gateways: Sequence[str] = (), package_ca_file: Path | None = None,
                 package_private_addresses_allowed: bool = True, on_version: Callable[[str], None] | None = None,
                 fault_point: Callable[[str], None] | None = None, store_open_timeout_ms: int = 120_000,
                 shared_compiled_cache_dir: Path | None = None) -> None:
        self._shared_compiled_cache_dir = shared_compiled_cache_dir
        self._limits = limits
        self._data_dir = Path(data_dir)
        self._metrics = metrics
        self._now_ms = now_ms
        self._ipfs_gateways = tuple(ipfs_gateways)
        self._package_ca_file = package_ca_file
        self._package_private_addresses_allowed = package_private_addresses_allowed
        self._on_version = on_version or (lambda version: None)
        self._fault_point = fault_point or (lambda _name: None)
        self._timeout_s = store_open_timeout_ms / 1000
        self._genesis_state = initial_network_state(genesis)
        self._state: Mapping = self._genesis_state
        self.store: VersionStore | None = None
        self.manager: UpgradeManager | None = None
        self._fetcher: PackageFetcher | None = None
        self._sandbox: Sandbox | None = None

    async def context(self, app: Any) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Open the store (repairing a torn commit), build the sandbox, fetcher and manager, read the state."""
        assert self.store is None, "LocalVersions.start() twice"
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        limits = self._limits
        self.store = await asyncio.wait_for(asyncio.to_thread(
            VersionStore.open, self._data_dir, genesis_state=self._genesis_state, fault_point=self._fault_point,
            logger=logging.getLogger("synapse.store")), self._timeout_s)
        for repair in self.store.repairs:
            log_event(_logger, logging.WARNING, "store_repaired_at_start", repair=repair)
        sandbox = Sandbox(SandboxLimits(fuel=limits.sandbox_fuel, memory_size_max_bytes=limits.sandbox_memory_max_bytes,
                                        module_size_max_bytes=limits.package_size_max_bytes,
                                        output_size_max_bytes=limits.sandbox_output_max_bytes,
                                        wall_timeout_ms=limits.sandbox_wall_timeout_ms),
                          compiled_cache_dir=self._data_dir / COMPILED_DIR_NAME,
                          shared_cache_dir=self._shared_compiled_cache_dir)
        self._fetcher = PackageFetcher(PackageCache(self.store.cache_dir), ipfs_gateways=self._ipfs_gateways,
                                       ca_file=self._package_ca_file,
                                       private_addresses_allowed=self._package_private_addresses_allowed,
                                       limits=FetchLimits(package_size_max_bytes=limits.package_size_max_bytes),
                                       shared=(PackageCache(self._shared_compiled_cache_dir / SHARED_PACKAGES_DIR_NAME)
                                               if self._shared_compiled_cache_dir is not None else None),
                                       logger=logging.getLogger("synapse.packages"))
        self._sandbox = sandbox
        self.manager = UpgradeManager(self.store, self._fetcher, sandbox, now_ms=self._now_ms, metrics=self._metrics,
                                      logger=logging.getLogger("synapse.upgrader"))
        await self.refresh_state()

    async def stop(self) -> None:
        if self._fetcher is not None:
            await self._fetcher.close()
        if self.store is not None:
            self.store.close()

    def require_started(self) -> tuple[VersionStore, UpgradeManager]:
        if self.store is None or self.manager is None:
            raise Unavailable("the node's governance is still starting", hint="retry in a moment")
        return self.store, self.manager

    async def refresh_state(self) -> None:
        """Re-read the live state after the store changed (only the executor and rollbacks change it)."""
        store, _ = self.require_started()
        version, _state_hash, raw = await asyncio.wait_for(asyncio.to_thread(store.snapshot), self._timeout_s)
        # A small state is parsed on the loop (~0.1 ms for 8 KiB): on a busy machine, the trip to a thread
        # and back waits for a CPU longer than that, on the way from the commit to the node's report.
        self._state = (parse_stored_state(raw) if len(raw) <= UPGRADE_INLINE_STATE_BYTES_MAX
                       else await asyncio.to_thread(parse_stored_state, raw))
        self._on_version(version)
        self._metrics.set("applied_sequence", store.applied_sequence)
        if self._sandbox is not None:     # how this node got its compiled modules: compiled, from disk, refused
            for event, count in self._sandbox.cache_stats().items():
                self._metrics.set("sandbox_compiled_cache", count, event=event)

    def network_state(self) -> Mapping:
        """The live network state as last read (reputations and version for governance)."""
        return self._state

    async def state_document(self) -> dict:
        store, _ = self.require_started()
        version, state_hash, raw = await asyncio.wait_for(asyncio.to_thread(store.snapshot), self._timeout_s)
        return {"version": version, "state_hash": state_hash, "applied_sequence": store.applied_sequence,
                "state": await asyncio.to_thread(parse_stored_state, raw)}
