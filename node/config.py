"""A node's configuration (a TOML file) and the network's genesis (a JSON file), both frozen and validated.

Why it works as it does:
- Built once at start, validated completely, then passed down (STYLE rule 7). Every mistake is a
  `ConfigError` naming the file and the field (`limits.gossip_interval_ms`) and saying what is wrong;
  unknown keys are errors too, because a misspelt limit that is silently ignored is a limit not applied.
- Two files, two owners. The config file is this node's: where its data lives, which address it binds,
  local limits (gossip pace, request sizes, timeouts). Genesis is the network's: members, keys,
  addresses, reputation, validators, governance thresholds, and the limits that decide results
  (sandbox fuel and memory, package and entry sizes, parents per entry). A result-deciding limit that
  differs between nodes would make honest nodes disagree, so a config file may repeat such a limit
  only with genesis' value (`resolve_limits` refuses anything else).
- The node's address in the config must be exactly its address in genesis: peers dial what genesis
  says, and a node that binds anything else would be unreachable (or would bind 0.0.0.0, which the
  Raft transport must never do). Wildcard addresses are refused for the same reason.
- Pure except for `load_config`/`load_genesis`, which only read one bounded file each.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from node.core.canonical import canonical_json, sha256_hex
from node.core.semver import is_valid_version
from node.errors import ConfigError
from node.identity import node_id_for
from node.limits import (
    CONFIG_FILE_SIZE_MAX_BYTES, CONFIG_HOST_LENGTH_MAX, CONFIG_URL_LENGTH_MAX, GENESIS_FILE_SIZE_MAX_BYTES, GENESIS_MEMBERS_MAX,
    GENESIS_REPUTATION_MAX, PACKAGE_IPFS_GATEWAYS_MAX,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
FIRST_VERSION = "1.0.0"
MiB = 1024 * 1024

_NETWORK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NODE_ID = re.compile(r"^[0-9a-f]{16}$")


# --- limits ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Every limit of a node. The first group decides results and comes from genesis (NETWORK_LIMITS)."""

    sandbox_fuel: int = 5_000_000_000
    sandbox_memory_max_bytes: int = 256 * MiB
    sandbox_output_max_bytes: int = 64 * MiB
    package_size_max_bytes: int = 64 * MiB
    entry_size_max_bytes: int = 64 * 1024
    parents_max: int = 16
    # Local: they change speed and resilience, never results.
    sandbox_wall_timeout_ms: int = 60_000
    clock_skew_max_ms: int = 30_000
    pending_entries_max: int = 10_000
    log_entries_max: int = 1_000_000
    gossip_fanout: int = 0  # 0 = automatic: ceil(ln N) + 1
    gossip_interval_ms: int = 200
    gossip_quiet_interval_max_ms: int = 0  # 0 = automatic: 16 x gossip_interval_ms; = gossip_interval_ms: no backoff
    gossip_report_hold_ms: int = 0  # EXECUTION_REPORTs are sent this long after they were written (0: at once)
    gossip_batch_entries_max: int = 256
    gossip_call_timeout_ms: int = 2_000
    gossip_request_body_max_bytes: int = 4 * MiB
    gossip_streams_max: int = 256  # websockets to peers for gossip calls (node/gossip_stream.py); 0: every call over HTTP
    gossip_first_write_wait_ms: int = 3_000  # after start, how long the first local write may wait to learn this node's own entries
    request_body_max_bytes: int = 1 * MiB
    shutdown_timeout_ms: int = 10_000
    # A validator's Raft (PySyncObj): the leader's heartbeat period and the election timeout, drawn at
    # random in [min, max) by each follower. Raft needs the election timeout well above a round trip
    # between validators (etcd's rule: at least 10 x the RTT); the defaults suit a LAN.
    raft_heartbeat_ms: int = 50
    raft_election_timeout_min_ms: int = 300
    raft_election_timeout_max_ms: int = 600

    def __post_init__(self) -> None:
        for name, (low, high) in LIMIT_RANGES.items():
            _check_int(f"limits.{name}", getattr(self, name), low, high)
        if self.gossip_quiet_interval_max_ms and self.gossip_quiet_interval_max_ms < self.gossip_interval_ms:
            raise ConfigError(f"limits.gossip_quiet_interval_max_ms ({self.gossip_quiet_interval_max_ms}) is below "
                              f"limits.gossip_interval_ms ({self.gossip_interval_ms})",
                              hint="set it to 0 (automatic), to gossip_interval_ms (no backoff while quiet) or higher")
        if not self.raft_election_timeout_min_ms < self.raft_election_timeout_max_ms:
            raise ConfigError(f"limits.raft_election_timeout_min_ms ({self.raft_election_timeout_min_ms}) must be below "
                              f"limits.raft_election_timeout_max_ms ({self.raft_election_timeout_max_ms})",
                              hint="each follower draws its election timeout at random between the two; e.g. 300 and 600 on a "
                                   "LAN, 10 and 20 x the round trip between validators on a WAN")
        if not 3 * self.raft_heartbeat_ms < self.raft_election_timeout_min_ms:
            raise ConfigError(f"limits.raft_heartbeat_ms ({self.raft_heartbeat_ms}) must be below a third of "
                              f"limits.raft_election_timeout_min_ms ({self.raft_election_timeout_min_ms})",
                              hint="a follower must hear several heartbeats within its election timeout, or it stands "
                                   "for election against a live leader")
        if self.gossip_request_body_max_bytes < self.entry_size_max_bytes + 1024:
            raise ConfigError(f"limits.gossip_request_body_max_bytes ({self.gossip_request_body_max_bytes}) is smaller than "
                              f"one entry (limits.entry_size_max_bytes = {self.entry_size_max_bytes}) plus 1024 bytes of framing",
                              hint="raise limits.gossip_request_body_max_bytes")


LIMIT_RANGES: Mapping[str, tuple[int, int]] = {
    "sandbox_fuel": (1, 10**15),
    "sandbox_memory_max_bytes": (65_536, 4 * 1024 * MiB),
    "sandbox_output_max_bytes": (2, 4 * 1024 * MiB),
    "package_size_max_bytes": (1, 1024 * MiB),
    "entry_size_max_bytes": (1024, 1 * MiB),
    "parents_max": (1, 64),
    "sandbox_wall_timeout_ms": (1, 3_600_000),
    "clock_skew_max_ms": (0, 86_400_000),
    "pending_entries_max": (1, 1_000_000),
    "log_entries_max": (1, 100_000_000),
    "gossip_fanout": (0, 64),
    "gossip_interval_ms": (10, 600_000),
    "gossip_quiet_interval_max_ms": (0, 600_000),
    "gossip_report_hold_ms": (0, 600_000),
    "gossip_batch_entries_max": (1, 10_000),
    "gossip_call_timeout_ms": (10, 600_000),
    "gossip_request_body_max_bytes": (2048, 256 * MiB),
    "gossip_streams_max": (0, 100_000),
    "gossip_first_write_wait_ms": (0, 600_000),
    "request_body_max_bytes": (64 * 1024, 256 * MiB),
    "shutdown_timeout_ms": (100, 600_000),
    "raft_heartbeat_ms": (10, 10_000),
    "raft_election_timeout_min_ms": (100, 600_000),
    "raft_election_timeout_max_ms": (100, 600_000),
}
NETWORK_LIMITS = ("sandbox_fuel", "sandbox_memory_max_bytes", "sandbox_output_max_bytes",
                  "package_size_max_bytes", "entry_size_max_bytes", "parents_max")
assert set(LIMIT_RANGES) == {field.name for field in fields(Limits)}


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int:
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r:.40}")
    if not low <= value <= high:
        raise ConfigError(f"{name} is {value}; it must be between {low:,} and {high:,}")


# --- addresses -------------------------------------------------------------------------------


def check_host(name: str, host: object) -> str:
    """An IP address or a DNS name that peers can dial: never a wildcard such as 0.0.0.0."""
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{name} must be a non-empty string (an IP address or host name), got {host!r:.60}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ConfigError(f"{name} {host!r:.80} is neither an IP address nor a valid host name") from None
        return host
    if address.is_unspecified:
        raise ConfigError(f"{name} is the wildcard address {host}: a node binds and announces its own address",
                          hint="use the address peers dial, e.g. 127.12.7.1 or 10.0.0.5")
    return host


def check_port(name: str, port: object) -> int:
    _check_int(name, port, 1, 65_535)
    return port  # type: ignore[return-value]


def split_host_port(name: str, text: object) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    if not isinstance(text, str) or len(text) > CONFIG_HOST_LENGTH_MAX + 8:
        raise ConfigError(f"{name} must be a string 'host:port', got {text!r:.60}")
    if text.startswith("["):
        host, separator, port_text = text[1:].partition("]:")
    else:
        host, separator, port_text = text.rpartition(":")
    if not separator or not port_text.isdigit() or len(port_text) > 5:
        raise ConfigError(f"{name} {text!r} is not 'host:port'", hint="write it like 127.12.7.1:9000")
    return check_host(name, host), check_port(name, int(port_text))


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_api_url(name: str, url: object) -> tuple[str, int]:
    """`http://host:port` (no path, no credentials) -> (host, port)."""
    if not isinstance(url, str) or len(url) > CONFIG_URL_LENGTH_MAX:
        raise ConfigError(f"{name} must be a URL string like http://127.12.7.1:8000, got {url!r:.60}")
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigError(f"{name} {url!r} must be exactly http://host:port", hint="for example http://127.12.7.1:8000")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or parts.hostname is None:
        raise ConfigError(f"{name} {url!r} has no valid host and port", hint="for example http://127.12.7.1:8000")
    return check_host(name, parts.hostname), check_port(name, port)


def api_url_for(host: str, port: int) -> str:
    return f"http://{join_host_port(host, port)}"


# --- the node's config file ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    config_path: Path
    data_dir: Path
    genesis_path: Path
    api_host: str
    api_port: int
    raft_address: str
    ipfs_gateways: tuple[str, ...] = ()
    package_ca_file: Path | None = None   # extra CAs for https:// package downloads (a private mirror)
    # Package URLs may reach private, loopback and link-local addresses: off unless the config says so
    # (a proposer could otherwise make every node probe its internal network); local clusters say so.
    package_private_addresses_allowed: bool = False
    log_level: str = "info"
    # A compiled-module cache shared with the other nodes of a local cluster (node/sandbox_disk_cache.py);
    # None: this node's own cache in its data dir.
    sandbox_shared_cache_dir: Path | None = None
    limits: Limits = Limits()
    limits_set: frozenset[str] = frozenset()  # the limits this file sets explicitly

    @property
    def api_url(self) -> str:
        return api_url_for(self.api_host, self.api_port)


_CONFIG_SCHEMA: Mapping[str, frozenset[str]] = {
    "node": frozenset({"data_dir", "genesis"}),
    "api": frozenset({"host", "port"}),
    "raft": frozenset({"address"}),
    "packages": frozenset({"ipfs_gateways", "ca_file", "allow_private_addresses"}),
    "log": frozenset({"level"}),
    "sandbox": frozenset({"shared_cache_dir"}),
    "limits": frozenset(LIMIT_RANGES),
}
_REQUIRED = (("node", "data_dir"), ("node", "genesis"), ("api", "host"), ("api", "port"), ("raft", "address"))


def _read_bounded(path: Path, size_max_bytes: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(size_max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist", hint=f"check the path, or create the {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file") from None
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}", hint="check its permissions") from None
    if len(data) > size_max_bytes:
        raise ConfigError(f"{what} {path} is larger than {size_max_bytes:,} bytes")
    return data


def load_config(path: Path) -> NodeConfig:
    """Read and validate a node's TOML config. Relative paths in it are relative to the file's directory."""
    path = Path(path).absolute()
    data = _read_bounded(path, CONFIG_FILE_SIZE_MAX_BYTES, "config file")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    try:
        return parse_config(document, config_path=path)
    except ConfigError as error:
        raise ConfigError(f"config file {path}: {error.message}", hint=error.hint) from None


def _check_schema(document: Mapping[str, Any]) -> None:
    for section, value in document.items():
        if section not in _CONFIG_SCHEMA:
            raise ConfigError(f"unknown section [{section}]", hint=f"known sections: {', '.join(_CONFIG_SCHEMA)}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{section}] must be a table", hint=f"write it as a [{section}] header followed by keys")
        for key in value:
            if key not in _CONFIG_SCHEMA[section]:
                raise ConfigError(f"unknown key {section}.{key}", hint=f"known keys of [{section}]: {', '.join(sorted(_CONFIG_SCHEMA[section]))}")
    for section, key in _REQUIRED:
        if key not in document.get(section, {}):
            raise ConfigError(f"missing key {section}.{key}", hint=f"add '{key} = ...' under [{section}]")


def _path_field(name: str, value: object, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value or "\0" in value or len(value) > 4096:
        raise ConfigError(f"{name} must be a non-empty path string, got {value!r:.60}")
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def _boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r:.40}")
    return value


def _gateways(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > PACKAGE_IPFS_GATEWAYS_MAX:
        raise ConfigError(f"packages.ipfs_gateways must be a list of at most {PACKAGE_IPFS_GATEWAYS_MAX} URLs")
    for url in value:
        if not isinstance(url, str) or len(url) > CONFIG_URL_LENGTH_MAX or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ConfigError(f"packages.ipfs_gateways has {url!r:.80}, not an http(s) URL", hint="for example https://ipfs.io")
    return tuple(url.rstrip("/") for url in value)


def parse_config(document: Mapping[str, Any], *, config_path: Path) -> NodeConfig:
    """Validate a parsed TOML document. Raises ConfigError naming the first bad field."""
    _check_schema(document)
    base_dir = Path(config_path).absolute().parent
    node, api, raft = document["node"], document["api"], document["raft"]
    level = document.get("log", {}).get("level", "info")
    if level not in LOG_LEVELS:
        raise ConfigError(f"log.level is {level!r:.40}; it must be one of {', '.join(LOG_LEVELS)}")
    raft_host, raft_port = split_host_port("raft.address", raft["address"])
    limits_given = dict(document.get("limits", {}))
    return NodeConfig(
        config_path=Path(config_path).absolute(),
        data_dir=_path_field("node.data_dir", node["data_dir"], base_dir),
        genesis_path=_path_field("node.genesis", node["genesis"], base_dir),
        api_host=check_host("api.host", api["host"]),
        api_port=check_port("api.port", api["port"]),
        raft_address=join_host_port(raft_host, raft_port),
        ipfs_gateways=_gateways(document.get("packages", {}).get("ipfs_gateways", [])),
        package_ca_file=(_path_field("packages.ca_file", document["packages"]["ca_file"], base_dir)
                         if "ca_file" in document.get("packages", {}) else None),
        package_private_addresses_allowed=_boolean("packages.allow_private_addresses",
                                                   document.get("packages", {}).get("allow_private_addresses", False)),
        log_level=level,
        sandbox_shared_cache_dir=(_path_field("sandbox.shared_cache_dir", document["sandbox"]["shared_cache_dir"], base_dir)
                                  if "shared_cache_dir" in document.get("sandbox", {}) else None),
        limits=Limits(**limits_given),
        limits_set=frozenset(limits_given),
    )


def render_config(*, data_dir: str, genesis: str, api_host: str, api_port: int, raft_address: str,
                  ipfs_gateways: tuple[str, ...] = (), limits: Mapping[str, int] | None = None,
                  private_addresses_allowed: bool = True, sandbox_shared_cache_dir: str | None = None) -> str:
    """The TOML text of a config file (what `synapse genesis create` writes). json.dumps quotes TOML basic strings.
    `private_addresses_allowed`: true for a local network (its packages are on loopback addresses).
    `sandbox_shared_cache_dir`: a compiled-module cache shared by the nodes of a local cluster."""
    lines = ["# Synapse-NG node configuration. Relative paths are relative to this file's directory.",
             "[node]", f"data_dir = {json.dumps(data_dir)}", f"genesis = {json.dumps(genesis)}", "",
             "[api]", f"host = {json.dumps(api_host)}", f"port = {int(api_port)}", "",
             "[raft]", f"address = {json.dumps(raft_address)}", "",
             "[packages]", f"ipfs_gateways = [{', '.join(json.dumps(url) for url in ipfs_gateways)}]",
             "# A local network: packages are served from this machine's loopback addresses. Leave this",
             "# false on a real network unless its package mirror is on a private network.",
             f"allow_private_addresses = {'true' if private_addresses_allowed else 'false'}", ""]
    if sandbox_shared_cache_dir is not None:
        lines += ["[sandbox]", "# Compile each package once per machine: the nodes of this local cluster share this",
                  "# cache (its key, cache.key, was made by the launcher; remove the line for a per-node cache).",
                  f"shared_cache_dir = {json.dumps(sandbox_shared_cache_dir)}", ""]
    if limits:
        lines += ["[limits]"] + [f"{name} = {int(value)}" for name, value in sorted(limits.items())] + [""]
    return "\n".join(lines)


# --- genesis ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    node_id: str
    public_key: bytes
    api_url: str
    raft_address: str
    reputation: int
    validator: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernanceParams:
    approval_threshold_pct: int = 50  # approval weight must EXCEED this share of the cast weight
    quorum_pct: int = 50              # cast weight must REACH this share of the total reputation
    voting_period_ms: int = 60_000
    open_proposals_per_author_max: int = 16   # one member's proposals whose voting periods overlap

    def __post_init__(self) -> None:
        _check_int("governance.approval_threshold_pct", self.approval_threshold_pct, 0, 99)
        _check_int("governance.open_proposals_per_author_max", self.open_proposals_per_author_max, 1, 10_000)
        _check_int("governance.quorum_pct", self.quorum_pct, 1, 100)
        _check_int("governance.voting_period_ms", self.voting_period_ms, 1_000, 30 * 86_400_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Genesis:
    network_id: str
    created_at: str
    version: str
    members: tuple[Member, ...]
    governance: GovernanceParams
    limits: Mapping[str, int]          # the NETWORK_LIMITS, every one present
    raft_secret_sha256: str | None     # sha256 hex of the validators' shared Raft password
    digest: str                        # sha256 hex of the canonical JSON of the whole document

    def member(self, node_id: str) -> Member | None:
        return next((member for member in self.members if member.node_id == node_id), None)

    @property
    def validators(self) -> tuple[Member, ...]:
        return tuple(member for member in self.members if member.validator)

    def public_keys(self) -> dict[str, bytes]:
        return {member.node_id: member.public_key for member in self.members}


_GENESIS_KEYS = frozenset({"network_id", "created_at", "version", "members", "governance", "limits", "raft_secret_sha256"})
_MEMBER_KEYS = frozenset({"node_id", "public_key", "api_url", "raft_address", "reputation", "validator"})


def load_genesis(path: Path) -> Genesis:
    path = Path(path)
    data = _read_bounded(path, GENESIS_FILE_SIZE_MAX_BYTES, "genesis file")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"genesis file {path} is not valid JSON: {error}") from None
    try:
        return parse_genesis(document)
    except ConfigError as error:
        raise ConfigError(f"genesis file {path}: {error.message}", hint=error.hint) from None


def _parse_member(index: int, item: object) -> Member:
    where = f"members[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object")
    if set(item) != _MEMBER_KEYS:
        raise ConfigError(f"{where} has missing keys {sorted(_MEMBER_KEYS - set(item))} and unknown keys {sorted(set(item) - _MEMBER_KEYS)[:5]}",
                          hint=f"a member has exactly {', '.join(sorted(_MEMBER_KEYS))}")
    public_hex, node_id = item["public_key"], item["node_id"]
    if not isinstance(public_hex, str) or not _HEX64.match(public_hex):
        raise ConfigError(f"{where}.public_key must be 64 lowercase hex digits (a raw ed25519 key)")
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        raise ConfigError(f"{where}.node_id must be 16 lowercase hex digits")
    public_key = bytes.fromhex(public_hex)
    if node_id_for(public_key) != node_id:
        raise ConfigError(f"{where}.node_id {node_id} does not match its public key (which gives {node_id_for(public_key)})",
                          hint="node_id is the first 16 hex digits of sha256(public key); regenerate genesis")
    parse_api_url(f"{where}.api_url", item["api_url"])
    raft_host, raft_port = split_host_port(f"{where}.raft_address", item["raft_address"])
    _check_int(f"{where}.reputation", item["reputation"], 0, GENESIS_REPUTATION_MAX)
    if type(item["validator"]) is not bool:
        raise ConfigError(f"{where}.validator must be true or false")
    return Member(node_id=node_id, public_key=public_key, api_url=item["api_url"].rstrip("/"),
                  raft_address=join_host_port(raft_host, raft_port), reputation=item["reputation"], validator=item["validator"])


def _check_unique(members: tuple[Member, ...]) -> None:
    for attribute in ("node_id", "public_key", "api_url", "raft_address"):
        seen: set = set()
        for member in members:
            value = getattr(member, attribute)
            if value in seen:
                shown = value.hex() if isinstance(value, bytes) else value
                raise ConfigError(f"two members share the {attribute} {shown}", hint="every member needs its own key and addresses")
            seen.add(value)


def _parse_network_limits(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ConfigError("limits must be an object")
    unknown = sorted(set(value) - set(NETWORK_LIMITS))
    if unknown:
        raise ConfigError(f"unknown key limits.{unknown[0]}", hint=f"genesis limits are {', '.join(NETWORK_LIMITS)}")
    defaults = Limits()
    limits = {name: value.get(name, getattr(defaults, name)) for name in NETWORK_LIMITS}
    for name, number in limits.items():
        _check_int(f"limits.{name}", number, *LIMIT_RANGES[name])
    return limits


def _parse_governance(value: object) -> GovernanceParams:
    if not isinstance(value, dict):
        raise ConfigError("governance must be an object")
    known = {field.name for field in fields(GovernanceParams)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown key governance.{unknown[0]}", hint=f"governance keys are {', '.join(sorted(known))}")
    return GovernanceParams(**value)


def _check_header(document: Mapping[str, Any]) -> None:
    unknown = sorted(set(document) - _GENESIS_KEYS)
    missing = sorted(_GENESIS_KEYS - {"raft_secret_sha256"} - set(document))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}", hint=f"genesis keys are {', '.join(sorted(_GENESIS_KEYS))}")
    if missing:
        raise ConfigError(f"missing key {missing[0]}")
    if not isinstance(document["network_id"], str) or not _NETWORK_ID.match(document["network_id"]):
        raise ConfigError("network_id must be 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(document["created_at"], str) or len(document["created_at"]) > 64:
        raise ConfigError("created_at must be a timestamp string")
    if not is_valid_version(document["version"]):
        raise ConfigError(f"version {document['version']!r:.40} is not semver", hint=f"the first network version is {FIRST_VERSION}")


def parse_genesis(document: object) -> Genesis:
    """Validate a genesis document. Raises ConfigError naming the first problem."""
    if not isinstance(document, dict):
        raise ConfigError("genesis must be a JSON object")
    _check_header(document)
    raw_members = document["members"]
    if not isinstance(raw_members, list) or not 1 <= len(raw_members) <= GENESIS_MEMBERS_MAX:
        raise ConfigError(f"members must be a list of 1 to {GENESIS_MEMBERS_MAX} members")
    members = tuple(_parse_member(index, item) for index, item in enumerate(raw_members))
    _check_unique(members)
    if not any(member.validator for member in members):
        raise ConfigError("no member is a validator", hint="at least one member needs \"validator\": true")
    if sum(member.reputation for member in members) == 0:
        raise ConfigError("the total reputation of the members is 0: no vote could ever reach quorum",
                          hint="give members a positive reputation")
    secret_digest = document.get("raft_secret_sha256")
    if not isinstance(secret_digest, str) or not _HEX64.match(secret_digest):
        raise ConfigError("raft_secret_sha256 must be the sha256 (64 lowercase hex) of the validators' Raft secret")
    return Genesis(network_id=document["network_id"], created_at=document["created_at"], version=document["version"],
                   members=members, governance=_parse_governance(document["governance"]),
                   limits=_parse_network_limits(document["limits"]), raft_secret_sha256=secret_digest,
                   digest=sha256_hex(canonical_json(document)))


def initial_network_state(genesis: Genesis) -> dict:
    """The network state at genesis: what the first upgrade's `upgrade()` receives."""
    return {"global": {
        "version": genesis.version,
        "network_id": genesis.network_id,
        "nodes": {member.node_id: {"reputation": member.reputation, "validator": member.validator} for member in genesis.members},
    }}


# --- a config against its genesis ------------------------------------------------------------


def resolve_limits(config: NodeConfig, genesis: Genesis) -> Limits:
    """The node's limits: genesis' values for NETWORK_LIMITS, the config's (or defaults) for the rest."""
    for name in NETWORK_LIMITS:
        if name in config.limits_set and getattr(config.limits, name) != genesis.limits[name]:
            raise ConfigError(f"limits.{name} is {getattr(config.limits, name):,} in {config.config_path} but {genesis.limits[name]:,} in genesis",
                              hint=f"{name} decides results, so every node uses the network's value: remove it from the config file")
    values = {field.name: getattr(config.limits, field.name) for field in fields(Limits)}
    values.update(genesis.limits)
    return Limits(**values)


def member_for(config: NodeConfig, genesis: Genesis, node_id: str) -> Member:
    """This node's genesis entry; its addresses must be the config's."""
    member = genesis.member(node_id)
    if member is None:
        raise ConfigError(f"genesis {config.genesis_path} does not list this node's key (node id {node_id}, key {config.data_dir / 'node_key'})",
                          hint="use the data dir that 'synapse genesis create' made for this node, or add its key to genesis")
    if parse_api_url("api_url", member.api_url) != (config.api_host.strip("[]"), config.api_port):
        raise ConfigError(f"api.host/api.port ({config.api_url}) differ from this node's api_url in genesis ({member.api_url})",
                          hint="peers dial the genesis address: set api.host and api.port to it")
    if member.raft_address != config.raft_address:
        raise ConfigError(f"raft.address ({config.raft_address}) differs from this node's raft_address in genesis ({member.raft_address})",
                          hint="set raft.address to the genesis value")
    return member
