"""One node process: check everything, then serve the API and gossip on one port until told to stop.

Why it works as it does:
- Refuse early and clearly. Every check that can fail for an operator's reason runs BEFORE the event
  loop starts, in `prepare`: the config, the data dir (really written to, not just stat'ed), the key
  and its permissions, genesis and this node's place in it, the Raft secret of a validator, the API
  token, the listening socket (bound here, so "address in use" names the address and the config
  field, and nothing can take the port between the check and the use), the log file and its lock.
  Each failure is a `SynapseError`; `run_node` prints its one line and exits with EXIT_REFUSED.
- One aiohttp server, one port: the API and the gossip routes share the application, bound to the
  node's own genesis address (never a wildcard).
- Every resource and background task has a `cleanup_ctx`, so SIGTERM/SIGINT (or a failure during
  start) unwinds in reverse order: stop gossip, close the log file, close the socket. Shutdown is
  bounded by `limits.shutdown_timeout_ms`. A clean stop logs "stopped" and exits 0.
- Local entries (notes, proposals, votes, closes, certificates, reports) go through one `LocalAuthor`
  (node/local_author.py): built with the next sequence, published through gossip, rebuilt if another
  local entry took that sequence, so this node never signs two entries with one sequence (that would
  be equivocation, voided by governance).
- Governance is four jobs wired here: the log fold, this node's versions (store, sandbox, fetcher),
  the upgrade executor, and on validators the ratification driver (Raft); the API calls the
  API-facing operations (node/governance_service.py). Their cleanup contexts open the store first and
  close it last.
- Stored entries are not trusted: they are re-verified through the log at start (Gossip.load).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from node import api, api_governance, openapi
from node.config import Genesis, Limits, Member, NodeConfig, load_config, load_genesis, member_for, resolve_limits
from node.core.canonical import sha256_hex
from node.core.crdt_log import CrdtLog, LogLimits
from node.core.entries import Entry
from node.fsutil import read_private_file
from node.errors import ConfigError, StoreError, SynapseError
from node.clock import NodeClock, clock_for
from node.fault_points import fault_point_for
from node.gossip import Gossip, GossipSettings
from node.core.governance import Governance
from node.core.proposals import GovernanceRules
from node.governance_fold import GovernanceFold
from node.governance_service import GovernanceService, GovernanceSettings
from node.local_author import LocalAuthor
from node.local_versions import LocalVersions
from node.planted_bugs import planted_bugs_for
from node.raft import RaftTiming, ValidatorRaftConfig
from node.ratification_driver import RAFT_DIR_NAME, RatificationDriver
from node.upgrade_executor import UpgradeExecutor
from node.identity import Identity, verify_signature
from node.logfile import LogFile
from node.logging_setup import configure_logging, log_event
from node.metrics import Metrics
from node.limits import API_SOCKET_BACKLOG_CONNECTIONS_MAX, NODE_STARTUP_TIMEOUT_MS, RAFT_SECRET_SIZE_MAX_BYTES

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
RAFT_SECRET_FILE_NAME = "raft_secret"
LOG_DIR_NAME = "log"
LOG_FILE_NAME = "entries.bin"
_PROBE_NAME = ".write-probe"

_logger = logging.getLogger("synapse")


def wall_ms() -> int:
    """Real time of day. The node itself reads its `Prepared.clock` (node/clock.py), which the testbed may skew."""
    return time.time_ns() // 1_000_000


# --- checks before the event loop ------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Prepared:
    """Everything `prepare` checked and opened. `close()` releases what is still open."""

    config: NodeConfig
    genesis: Genesis
    identity: Identity
    member: Member
    limits: Limits
    api_token: str
    server_socket: socket.socket
    logfile: LogFile
    stored_raws: list[bytes]
    clock: NodeClock = field(default_factory=NodeClock)  # every time of day the node reads (node/clock.py)

    def close(self) -> None:
        self.server_socket.close()
        self.logfile.close()


def check_data_dir(config: NodeConfig) -> None:
    """The data dir exists (created if missing), and this user can list it and write in it."""
    data_dir, where = config.data_dir, f"node.data_dir in {config.config_path}"
    hint = f"fix its permissions (chown/chmod) so the node's user can read and write it, or change {where}"
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not data_dir.is_dir():
            raise ConfigError(f"data dir {data_dir} ({where}) is not a directory", hint=f"point {where} at a directory")
        os.listdir(data_dir)
        probe = data_dir / _PROBE_NAME
        with open(probe, "wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except FileExistsError:
        raise ConfigError(f"data dir {data_dir} ({where}) is not a directory", hint=f"point {where} at a directory") from None
    except OSError as error:
        raise ConfigError(f"data dir {data_dir} ({where}) is not readable and writable: {error.strerror}", hint=hint) from None


def check_raft_secret(config: NodeConfig, genesis: Genesis) -> None:
    """A validator's Raft password: present, private (0600), and the one genesis names."""
    path = config.data_dir / RAFT_SECRET_FILE_NAME
    hint = "copy raft_secret from the directory 'synapse genesis create' made for this node"
    try:
        secret = read_private_file(path, what="Raft secret of this validator", size_max_bytes=RAFT_SECRET_SIZE_MAX_BYTES,
                                   missing_hint=hint)
    except FileNotFoundError:
        raise ConfigError(f"this node is a validator but its Raft secret {path} does not exist", hint=hint) from None
    if sha256_hex(secret.strip()) != genesis.raft_secret_sha256:
        raise ConfigError(f"Raft secret {path} is not the one genesis names (its sha256 differs from raft_secret_sha256)",
                          hint="use the raft_secret created with this network's genesis")


def bind_api_socket(config: NodeConfig) -> socket.socket:
    """Bind (not yet listen) the API address, or say which address and which config field is the problem."""
    address, where = f"{config.api_host}:{config.api_port}", f"api.host/api.port in {config.config_path}"
    try:
        family, kind, protocol, _, socket_address = socket.getaddrinfo(config.api_host, config.api_port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ConfigError(f"cannot resolve the API address {address} ({where}): {error.strerror}") from None
    server_socket = socket.socket(family, kind, protocol)
    try:
        server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server_socket.bind(socket_address)
    except OSError as error:
        server_socket.close()
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"address {address} ({where}) is already in use",
                              hint=f"stop the process listening there (ss -ltnp | grep :{config.api_port}), or give this node another address in its config and genesis") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"address {address} ({where}) is not an address of this host",
                              hint="use an address of one of this host's interfaces (any 127.x.y.z works on Linux)") from None
        raise ConfigError(f"cannot bind {address} ({where}): {error.strerror}") from None
    return server_socket


def _open_logfile(config: NodeConfig) -> tuple[LogFile, list[bytes]]:
    log_dir = config.data_dir / LOG_DIR_NAME
    try:
        log_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create {log_dir}: {error.strerror}") from None
    return LogFile.open(log_dir / LOG_FILE_NAME)


def prepare(config_path: Path, *, configure_logs: bool = True) -> Prepared:
    """Run every start-up check and open the node's resources. Raises SynapseError (nothing left open).
    `configure_logs=False` leaves the process's logging alone (a node inside a test process)."""
    config = load_config(config_path)
    check_data_dir(config)
    identity = Identity.load_or_create(config.data_dir / "node_key")
    clock = clock_for(config.data_dir, os.environ)
    if configure_logs:
        configure_logging(node_id=identity.node_id, data_dir=config.data_dir, level=config.log_level, clock=clock)
    genesis = load_genesis(config.genesis_path)
    member = member_for(config, genesis, identity.node_id)
    limits = resolve_limits(config, genesis)
    if member.validator:
        check_raft_secret(config, genesis)
    token = api.load_or_create_token(config.data_dir)
    server_socket = bind_api_socket(config)
    try:
        logfile, stored_raws = _open_logfile(config)
    except BaseException:
        server_socket.close()
        raise
    return Prepared(config=config, genesis=genesis, identity=identity, member=member, limits=limits, api_token=token,
                    server_socket=server_socket, logfile=logfile, stored_raws=stored_raws, clock=clock)


# --- the running node ------------------------------------------------------------------------


class NodeState:
    """What the API reports about the node, and the fan-out of newly visible entries to listeners."""

    def __init__(self, *, genesis: Genesis, metrics: Metrics) -> None:
        self._version = genesis.version
        self._metrics = metrics
        self._listeners: list[Callable[[Sequence[Entry]], None]] = []
        self.peers_up_source: Callable[[], int] = lambda: 0
        self.visible_at_ns_source: Callable[[str], int | None] = lambda entry_id: None

    def current_version(self) -> str:
        return self._version

    def set_current_version(self, version: str) -> None:
        self._version = version

    def peers_up(self) -> int:
        return self.peers_up_source()

    def visible_at_ms(self, entry_id: str) -> int | None:
        at_ns = self.visible_at_ns_source(entry_id)
        return None if at_ns is None else at_ns // 1_000_000

    def subscribe(self, listener: Callable[[Sequence[Entry]], None]) -> None:
        """Call `listener(entries)` with every batch of newly visible entries (governance, executor)."""
        self._listeners.append(listener)

    def on_visible(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            self._metrics.inc("log_entries_visible_total", kind=entry.kind)
        for listener in self._listeners:
            try:
                listener(entries)
            except Exception:
                _logger.exception("visible_listener_failed", extra={"fields": {"listener": repr(listener)}})


def log_limits(limits: Limits) -> LogLimits:
    return LogLimits(entry_size_max_bytes=limits.entry_size_max_bytes, clock_skew_max_ms=limits.clock_skew_max_ms,
                     pending_max=limits.pending_entries_max, parents_max=limits.parents_max, entries_max=limits.log_entries_max)


class Node:
    """The wiring of one node: log, gossip, local author, API. `build_app()` gives the aiohttp app."""

    def __init__(self, prepared: Prepared, *, rng: random.Random | None = None,
                 governance_settings: GovernanceSettings = GovernanceSettings()) -> None:
        self.prepared = prepared
        genesis, limits, node_id = prepared.genesis, prepared.limits, prepared.identity.node_id
        self.now_ms = prepared.clock.now_ms
        self.metrics = Metrics.for_node()
        self.log = CrdtLog(network_id=genesis.network_id, members=genesis.public_keys(), verify=verify_signature, limits=log_limits(limits))
        self.state = NodeState(genesis=genesis, metrics=self.metrics)
        self.gossip = Gossip(
            log=self.log, logfile=prepared.logfile, self_id=node_id,
            peers={member.node_id: member.api_url for member in genesis.members if member.node_id != node_id},
            sign=prepared.identity.sign, public_keys=genesis.public_keys(),
            settings=GossipSettings(fanout=limits.gossip_fanout or None, interval_ms=limits.gossip_interval_ms,
                                    quiet_interval_max_ms=limits.gossip_quiet_interval_max_ms or None,
                                    report_hold_ms=limits.gossip_report_hold_ms,
                                    batch_entries_max=limits.gossip_batch_entries_max,
                                    request_body_max_bytes=limits.gossip_request_body_max_bytes,
                                    call_timeout_ms=limits.gossip_call_timeout_ms,
                                    first_write_wait_ms=limits.gossip_first_write_wait_ms,
                                    streams_max=limits.gossip_streams_max),
            rng=rng or random.Random(), now_ms=self.now_ms, now_ns=prepared.clock.now_ns, on_visible=self.state.on_visible, metrics=self.metrics,
            logger=logging.getLogger("synapse.gossip"), local_host=prepared.config.api_host)
        self.state.peers_up_source = self.gossip.peers_up
        self.state.visible_at_ns_source = self.gossip.visible_at_ns
        self.author = LocalAuthor(node_id=node_id, log=self.log, sign=prepared.identity.sign, publish=self.gossip.publish,
                                  now_ms=self.now_ms, append_timeout_ms=governance_settings.append_timeout_ms)
        self._wire_governance(governance_settings)

    def _wire_governance(self, settings: GovernanceSettings) -> None:
        """The governance jobs: the log fold, this node's versions, the executor, the ratification driver
        (validators only) and the API-facing operations."""
        prepared, genesis, config = self.prepared, self.prepared.genesis, self.prepared.config
        validators = {member.node_id: member.public_key for member in genesis.validators}
        fault_point = fault_point_for(config.data_dir, os.environ)
        self.versions = LocalVersions(genesis=genesis, limits=prepared.limits, data_dir=config.data_dir, metrics=self.metrics,
                                      now_ms=self.now_ms, ipfs_gateways=config.ipfs_gateways, package_ca_file=config.package_ca_file,
                                      package_private_addresses_allowed=config.package_private_addresses_allowed,
                                      on_version=self.state.set_current_version, fault_point=fault_point,
                                      store_open_timeout_ms=settings.store_open_timeout_ms,
                                      shared_compiled_cache_dir=config.sandbox_shared_cache_dir)
        rules = GovernanceRules(approval_threshold_pct=genesis.governance.approval_threshold_pct,
                                quorum_pct=genesis.governance.quorum_pct, voting_period_ms=genesis.governance.voting_period_ms,
                                open_proposals_per_author_max=genesis.governance.open_proposals_per_author_max)
        governance = Governance(network_id=genesis.network_id, validators=validators, verify=verify_signature,
                                local_node_id=prepared.identity.node_id, rules=rules,
                                planted_bugs=planted_bugs_for(os.environ))
        self.fold = GovernanceFold(governance=governance, log=self.log, node_id=prepared.identity.node_id,
                                   network_id=genesis.network_id, validators=validators, metrics=self.metrics,
                                   state=self.versions.network_state, now_ms=self.now_ms)
        self.executor = UpgradeExecutor(fold=self.fold, versions=self.versions, author=self.author,
                                        network_id=genesis.network_id, validators=validators, metrics=self.metrics,
                                        now_ms=self.now_ms, settings=settings, fault_point=fault_point)
        self.fold.wake(self.executor.wake)
        self.driver = None
        if prepared.member.validator:
            self.driver = RatificationDriver(config=raft_config_for(prepared, settings), identity=prepared.identity,
                                             fold=self.fold, versions=self.versions, author=self.author,
                                             network_id=genesis.network_id, now_ms=self.now_ms, settings=settings,
                                             fault_point=fault_point)
            self.fold.wake(self.driver.wake)
        self.governance = GovernanceService(node_id=prepared.identity.node_id, limits=prepared.limits, fold=self.fold,
                                            versions=self.versions, author=self.author, now_ms=self.now_ms, settings=settings,
                                            driver=self.driver)
        self.state.subscribe(self.fold.on_visible)

    def build_app(self) -> web.Application:
        limits = self.prepared.limits
        app = api.make_app(client_max_size_bytes=max(limits.request_body_max_bytes, limits.gossip_request_body_max_bytes))
        app[api.NODE_ID] = self.prepared.identity.node_id
        app[api.GENESIS] = self.prepared.genesis
        app[api.LIMITS] = limits
        app[api.CRDT_LOG] = self.log
        app[api.METRICS] = self.metrics
        app[api.API_TOKEN] = self.prepared.api_token
        app[api.APPENDER] = self.author
        app[api.STATUS] = self.state
        api.add_log_routes(app)
        api.add_health_routes(app)
        api.add_metrics_routes(app)
        self.gossip.add_routes(app)
        api_governance.add_governance_routes(app, self.governance)
        app.setdefault(api.HEALTH_EXTRAS, []).append(self._clock_facts)
        openapi.add_openapi_route(app)
        app.cleanup_ctx.append(self._logfile_context)
        app.cleanup_ctx.append(self._gossip_context)
        app.cleanup_ctx.append(self.versions.context)
        if self.driver is not None:
            app.cleanup_ctx.append(self.driver.context)
        app.cleanup_ctx.append(self.executor.context)
        return app

    def _clock_facts(self) -> dict:
        """GET /health: this node's time of day (so clock trouble between hosts is visible at a glance), and
        on a testbed node (SYNAPSE_FAULT_POINTS=1) the skew the testbed armed (node/clock.py)."""
        clock = self.prepared.clock
        facts: dict = {"time_ms": clock.now_ms()}
        if clock.skewable:
            facts["clock_skew_ms"] = clock.skew_ms()
        return facts

    async def _logfile_context(self, app: web.Application) -> AsyncIterator[None]:
        logfile = self.prepared.logfile
        self.metrics.set("log_torn_tail_bytes", logfile.torn_tail_bytes)
        accepted = self.gossip.load(self.prepared.stored_raws)
        log_event(_logger, logging.INFO, "log_loaded", stored=len(self.prepared.stored_raws), accepted=accepted,
                  visible=self.log.visible_count(), torn_tail_bytes=logfile.torn_tail_bytes)
        self.prepared.stored_raws = []
        with self.fold.replaying():                # load() does not call on_visible: listeners start from the stored log
            self.state.on_visible(self.log.visible())
        yield
        logfile.close()

    async def _gossip_context(self, app: web.Application) -> AsyncIterator[None]:
        await self.gossip.start()
        yield
        await self.gossip.stop()


def raft_config_for(prepared: Prepared, settings: GovernanceSettings) -> ValidatorRaftConfig:
    """This validator's place in the validators' Raft cluster, from genesis."""
    genesis, config = prepared.genesis, prepared.config
    partners = tuple(member.raft_address for member in genesis.validators if member.node_id != prepared.identity.node_id)
    return ValidatorRaftConfig(
        self_address=prepared.member.raft_address, partner_addresses=partners, data_dir=config.data_dir / RAFT_DIR_NAME,
        password=read_raft_password(config.data_dir), network_id=genesis.network_id,
        validator_id=prepared.identity.node_id,
        validators={member.node_id: member.public_key for member in genesis.validators},
        validator_addresses={member.node_id: member.raft_address for member in genesis.validators},
        timing=settings.raft_timing, bind_outgoing=settings.raft_bind_outgoing)


def read_raft_password(data_dir: Path) -> str:
    """The validators' shared Raft secret (prepare() already checked its mode and digest)."""
    path = Path(data_dir) / RAFT_SECRET_FILE_NAME
    try:
        with open(path, "rb") as handle:
            return handle.read(RAFT_SECRET_SIZE_MAX_BYTES).strip().decode("ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the Raft secret {path}: {error}",
                          hint="copy raft_secret from the directory 'synapse genesis create' made for this node") from None


async def serve(prepared: Prepared, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, then unwind every cleanup_ctx within the shutdown timeout."""
    limits = prepared.limits
    timing = RaftTiming.for_network(heartbeat_ms=limits.raft_heartbeat_ms, election_timeout_min_ms=limits.raft_election_timeout_min_ms,
                                    election_timeout_max_ms=limits.raft_election_timeout_max_ms)
    node = Node(prepared, governance_settings=GovernanceSettings(raft_bind_outgoing=True, raft_timing=timing))
    shutdown_timeout_s = prepared.limits.shutdown_timeout_ms / 1000
    runner = web.AppRunner(node.build_app(), access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout_s / 2)
    try:
        await asyncio.wait_for(runner.setup(), timeout=NODE_STARTUP_TIMEOUT_MS / 1000)
        site = web.SockSite(runner, prepared.server_socket, backlog=API_SOCKET_BACKLOG_CONNECTIONS_MAX)
        await site.start()
        log_event(_logger, logging.INFO, "started", api_url=prepared.config.api_url, network_id=prepared.genesis.network_id,
                  validator=prepared.member.validator, version=node.state.current_version(), pid=os.getpid())
        await stop.wait()
        log_event(_logger, logging.INFO, "stopping")
    finally:
        await asyncio.wait_for(runner.cleanup(), timeout=shutdown_timeout_s)


async def _serve_until_signal(prepared: Prepared) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await serve(prepared, stop)


def _refuse(error: SynapseError) -> int:
    """Log the refusal (if logging has started), then print it as the last line of stderr, for humans."""
    if logging.getLogger().handlers:
        log_event(_logger, logging.ERROR, "refused", error=type(error).__name__, message=error.message, hint=error.hint)
        for handler in logging.getLogger().handlers:
            handler.flush()
    print(f"synapse-node: refusing to start: {error.one_line()}", file=sys.stderr, flush=True)
    return EXIT_REFUSED


def run_node(config_path: Path) -> int:
    """Run one node until SIGTERM/SIGINT. Returns the process exit code."""
    try:
        prepared = prepare(config_path)
    except SynapseError as error:
        return _refuse(error)
    try:
        asyncio.run(_serve_until_signal(prepared))
    except SynapseError as error:
        return _refuse(error)
    except Exception:
        _logger.exception("crashed")
        return EXIT_FAILED
    finally:
        prepared.close()
    log_event(_logger, logging.INFO, "stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node", description="Run one Synapse-NG node.")
    parser.add_argument("--config", required=True, type=Path, help="the node's config.toml")
    arguments = parser.parse_args(argv)
    return run_node(arguments.config)
