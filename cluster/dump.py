"""Collect a cluster's debugging material for a bug report: every node's logs, state, upgrade history,
entry log, metrics, health and status, the genesis and the cluster file (`synapse cluster dump`).

Why it works as it does:
- An allowlist, not a denylist: only the files named in NODE_FILES / CLUSTER_FILES and the API answers
  in API_PARTS go in. A file nobody thought of (a new key file, a cache) is left out by default, and
  the manifest lists it with the reason, so a reader of the report knows it exists.
- Secrets stay out by three independent rules, because a mistake in one must not leak a key: (1) they
  are not on the allowlist (node_key, api_token, raft_secret, the sandbox cache key); (2) a file whose
  name says key/token/secret/password, or that only its owner may read (mode 0600, as the node writes
  its secrets), is left out even when allowlisted; (3) every part is compared with the bytes of those
  secret files (as they are, stripped, and in hex) and left out if it contains one, so a secret that
  ended up in a log line still does not travel. The secret files are read only for that comparison.
- The API answers come from routes any client may read, without a token (cluster/api_reads.py), and
  only from loopback addresses (a local cluster's): a cluster file naming another host is not followed.
  On a stopped cluster, or a node that is down, they are listed as unavailable with the reason.
- Files are opened without following symbolic links, must be regular files, and must lie inside the
  cluster's data dir (a cluster file whose node dir points elsewhere, a planted symlink to ~/.ssh: left out).
- Everything is bounded: bytes per part (a longer log keeps its end, the manifest says so), the whole
  dump, log pages, files walked for the manifest, and every API read has a timeout.
- Pure collection: it returns the parts (name, bytes) and the manifest; cluster/cli_dump.py writes the
  archive.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cluster.api_reads import TooLarge, fetch_bytes, fetch_json, is_loopback_url

PART_BYTES_MAX = 32 * 1024 * 1024
DUMP_BYTES_MAX = 256 * 1024 * 1024
LOG_PAGE_ENTRIES = 500            # node/api.py LOG_PAGE_LIMIT_MAX
LOG_PAGES_MAX = 2_000
WALK_ENTRIES_MAX = 20_000
SECRET_FILE_BYTES_MAX = 64 * 1024
SECRET_MATCH_BYTES_MIN = 16       # shorter needles would match by chance (and no secret here is shorter)
DUMP_HTTP_TIMEOUT_S = 5.0
SECRET_NAME = re.compile(r"key|token|secret|passw", re.IGNORECASE)

CLUSTER_FILES = (
    ("genesis.json", "the genesis: members, public keys, governance, limits (it holds the Raft password's sha256 only)"),
    ("cluster.json", "the cluster file: node ids, addresses, PIDs, token file paths (not the tokens)"),
    ("package_server.json", "the cluster's package server: its PID and URL"),
)
NODE_FILES = (
    ("node.log", "the node's structured log (JSON lines)"),
    ("stderr.log", "the node process's stderr (its log lines, and any crash output)"),
    ("stdout.log", "the node process's stdout"),
    ("config.toml", "the node's config: addresses, limits, package settings (no secret is kept in it)"),
    ("state/network_state.json", "the node's live state"),
    ("upgrades/manifest.json", "the version store's commit point"),
    ("upgrades/current_version.txt", "the current version"),
    ("upgrades/upgrade_history.json", "the node's upgrade history"),
)
NODE_VERSION_STATE = re.compile(r"^upgrades/versions/[0-9A-Za-z.+-]{1,64}/network_state\.json$")
API_PARTS = (
    ("health.json", "/health", "GET /health"),
    ("status.json", "/upgrades/status", "GET /upgrades/status: version, state hash, Raft"),
    ("metrics.txt", "/metrics", "GET /metrics (Prometheus text)"),
    ("proposals.json", "/proposals", "GET /proposals"),
    ("upgrade_history.json", "/upgrades/history", "GET /upgrades/history"),
    ("state.json", "/state", "GET /state"),
)
KNOWN_LEFT_OUT = (  # why a file not on the allowlist is not, when there is more to say than "not on it"
    (re.compile(r"(^|/)raft/"), "PySyncObj's binary journal; the Raft state is in api/status.json"),
    (re.compile(r"(^|/)log/entries\.bin$"), "the entry log, binary; its entries are in api/log.jsonl (GET /log) when the node runs"),
    (re.compile(r"(^|/)compiled/"), "the sandbox's compiled-code cache"),
    (re.compile(r"^compiled-cache/"), "the compiled-code cache the cluster's nodes share, and its key"),
    (re.compile(r"(^|/)upgrades/cache/"), "downloaded packages: their URLs and hashes are in the proposals"),
    (re.compile(r"^packages/"), "proposed package binaries: their hashes are in the proposals"),
)


@dataclass(slots=True)
class Dump:
    """The parts of the archive (name -> bytes) and what the manifest says about everything."""
    parts: dict[str, bytes] = field(default_factory=dict)
    included: list[tuple[str, str]] = field(default_factory=list)      # (archive name, what it is)
    left_out: list[tuple[str, str]] = field(default_factory=list)      # (data dir path, why)
    unavailable: list[tuple[str, str]] = field(default_factory=list)   # (what, why)
    total_bytes: int = 0

    def add(self, name: str, data: bytes, what: str, secrets: "SecretBytes", source: str) -> None:
        found = secrets.found_in(data)
        if found is not None:
            self.left_out.append((source, f"it contains the bytes of a secret file ({found}): left out"))
            return
        if self.total_bytes + len(data) > DUMP_BYTES_MAX:
            self.left_out.append((source, f"the dump reached its size limit ({DUMP_BYTES_MAX} bytes)"))
            return
        self.parts[name] = data
        self.total_bytes += len(data)
        self.included.append((name, what))


class SecretBytes:
    """The bytes of the data dir's secret files, for one question: does this part contain any of them?"""

    def __init__(self) -> None:
        self._needles: dict[bytes, str] = {}

    def remember(self, data: bytes, source: str) -> None:
        forms = {data, data.strip(), data.hex().encode()}
        if data.strip().isascii():
            forms.add(data.strip().upper())
        for form in forms:
            if len(form) >= SECRET_MATCH_BYTES_MIN:
                self._needles.setdefault(form, source)

    def found_in(self, data: bytes) -> str | None:
        return next((source for needle, source in self._needles.items() if needle in data), None)


def is_secret_by_name_or_mode(relative: str, mode: int) -> str | None:
    """Why a file must never travel, or None."""
    if SECRET_NAME.search(relative.rsplit("/", 1)[-1]):
        return "a secret: its name says key, token, secret or password"
    if stat.S_ISREG(mode) and mode & 0o077 == 0:
        return f"only its owner may read it (mode {stat.S_IMODE(mode):o}): treated as a secret"
    return None


def _read_inside(root: Path, relative: str) -> tuple[bytes | None, str]:
    """(the file's bytes, "") or (None, why not): no symlink, a regular file inside `root`, not secret."""
    path = root / relative
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        return None, "outside the cluster's data dir (a symbolic link): not followed"
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, ""
    except OSError as error:
        return None, f"cannot be read without following a link: {error.strerror}"
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            return None, "not a regular file"
        secret = is_secret_by_name_or_mode(relative, status.st_mode)
        if secret:
            return None, secret
        if status.st_size > PART_BYTES_MAX:
            handle.seek(status.st_size - PART_BYTES_MAX)
            return handle.read(PART_BYTES_MAX), f"truncated: its last {PART_BYTES_MAX} of {status.st_size} bytes"
        return handle.read(PART_BYTES_MAX), ""


def _walk(root: Path) -> list[tuple[str, int]]:
    """(relative path, lstat mode) of every file and link under `root`, bounded, links not followed."""
    found: list[tuple[str, int]] = []
    for directory, subdirectories, files in os.walk(root, followlinks=False):
        for name in sorted(files) + [name for name in subdirectories if os.path.islink(os.path.join(directory, name))]:
            path = os.path.join(directory, name)
            try:
                found.append((os.path.relpath(path, root), os.lstat(path).st_mode))
            except OSError:
                continue
            if len(found) >= WALK_ENTRIES_MAX:
                return found
    return found


def secret_bytes_of(root: Path, walked: list[tuple[str, int]]) -> SecretBytes:
    secrets = SecretBytes()
    for relative, mode in walked:
        if stat.S_ISREG(mode) and is_secret_by_name_or_mode(relative, mode):
            try:
                with open(os.path.join(root, relative), "rb", opener=lambda path, flags: os.open(path, flags | os.O_NOFOLLOW)) as handle:
                    secrets.remember(handle.read(SECRET_FILE_BYTES_MAX), relative)
            except OSError:
                continue
    return secrets


def _node_parts(dump: Dump, data_dir: Path, node: dict, running: bool, secrets: SecretBytes, taken: set[str]) -> None:
    label = f"node-{node['index'] + 1}"
    node_dir = Path(node["data_dir"])
    real_root = os.path.realpath(data_dir)
    if os.path.commonpath([real_root, os.path.realpath(node_dir)]) != real_root:
        dump.left_out.append((str(node_dir), f"{label}'s directory is outside the cluster's data dir: not read"))
        return
    prefix = os.path.relpath(node_dir, data_dir)
    names = [relative for relative, _what in NODE_FILES]
    versions = sorted(relative for relative, _mode in _walk(node_dir) if NODE_VERSION_STATE.match(relative))
    for relative in names + versions:
        what = dict(NODE_FILES).get(relative, "the state of a version kept for rollback")
        _add_file(dump, node_dir, relative, f"nodes/{label}/files/{relative}", f"{label}: {what}", secrets, f"{prefix}/{relative}")
        taken.add(f"{prefix}/{relative}")
    why_not = ("the node is not running: only its files are in the dump" if not running else
               None if is_loopback_url(node.get("api_url")) else
               f"its API URL {str(node.get('api_url'))[:80]!r} is not a loopback address: not read")
    if why_not:
        dump.unavailable.append((f"{label} API (health, status, metrics, proposals, history, state, log)", why_not))
        return
    for name, path, what in API_PARTS:
        try:
            status, body = fetch_bytes(node["api_url"], path, timeout_s=DUMP_HTTP_TIMEOUT_S, bytes_max=PART_BYTES_MAX)
        except (OSError, TooLarge) as error:
            dump.unavailable.append((f"{label} GET {path}", str(error)[:200]))
            continue
        dump.add(f"nodes/{label}/api/{name}", body, f"{label}: {what} (HTTP {status})", secrets, f"{label} GET {path}")
    _add_log(dump, node, label, secrets)


def _add_file(dump: Dump, root: Path, relative: str, name: str, what: str, secrets: SecretBytes, source: str) -> None:
    data, note = _read_inside(root, relative)
    if data is None:
        if note:
            dump.left_out.append((source, note))
        return
    dump.add(name, data, f"{what}{' (' + note + ')' if note else ''}", secrets, source)


def _add_log(dump: Dump, node: dict, label: str, secrets: SecretBytes) -> None:
    """Every visible entry, page by page (GET /log), as JSON lines."""
    lines, after, size = [], 0, 0
    for _page in range(LOG_PAGES_MAX):
        try:
            status, page = fetch_json(node["api_url"], f"/log?after={after}&limit={LOG_PAGE_ENTRIES}",
                                      timeout_s=DUMP_HTTP_TIMEOUT_S, bytes_max=PART_BYTES_MAX)
        except (OSError, TooLarge) as error:
            dump.unavailable.append((f"{label} GET /log (after {after})", str(error)[:200]))
            break
        if status != 200 or not isinstance(page, dict) or not isinstance(page.get("entries"), list):
            dump.unavailable.append((f"{label} GET /log (after {after})", f"HTTP {status}, not a log page"))
            break
        for entry in page["entries"]:
            line = json.dumps(entry, sort_keys=True)
            size += len(line) + 1
            lines.append(line)
        next_after = page.get("next")
        if not page.get("more") or not isinstance(next_after, int) or next_after <= after or size > PART_BYTES_MAX:
            break
        after = next_after
    data = ("\n".join(lines) + "\n").encode() if lines else b""
    dump.add(f"nodes/{label}/api/log.jsonl", data, f"{label}: GET /log, every visible entry ({len(lines)}), one per line",
             secrets, f"{label} GET /log")


def collect(data_dir: Path, document: dict, is_running: Callable[[dict], bool]) -> Dump:
    """Everything the allowlist takes from the cluster in `data_dir` (its cluster file: `document`)."""
    data_dir = Path(data_dir).absolute()
    walked = _walk(data_dir)
    secrets = secret_bytes_of(data_dir, walked)
    dump, taken = Dump(), set()
    for relative, what in CLUSTER_FILES:
        _add_file(dump, data_dir, relative, relative, what, secrets, relative)
        taken.add(relative)
    for node in document["nodes"]:
        _node_parts(dump, data_dir, node, is_running(node), secrets, taken)
    noted = {source for source, _why in dump.left_out}
    for relative, mode in walked:
        if relative in taken or relative in noted:
            continue
        known = next((reason for pattern, reason in KNOWN_LEFT_OUT if pattern.search(relative)), None)
        secret = is_secret_by_name_or_mode(relative, mode)
        why = ("a symbolic link: not followed" if stat.S_ISLNK(mode)
               else "; ".join(filter(None, (secret, known))) or "not on the dump's allowlist")
        dump.left_out.append((relative, why))
    if len(walked) >= WALK_ENTRIES_MAX:
        dump.left_out.append(("...", f"more files: the manifest lists the first {WALK_ENTRIES_MAX} found"))
    return dump


def manifest_text(dump: Dump, data_dir: Path, document: dict, running: list[str], created_at: float, tool_version: str) -> str:
    """MANIFEST.txt: what is in the archive, what was left out and why, what could not be read."""
    nodes = [f"node-{node['index'] + 1}" for node in document["nodes"]]
    lines = [
        "Synapse-NG cluster dump",
        f"created:  {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(created_at))} by synapse-ng {tool_version}",
        f"cluster:  {data_dir} (network {document.get('network_id', '?')}, {len(nodes)} nodes)",
        f"running:  {', '.join(running) or 'none (a stopped cluster: files only)'}",
        "",
        "Built from an allowlist: only the files and API answers listed under INCLUDED are in this archive.",
        "Secrets are never in it: node keys, API tokens, the Raft password, the sandbox cache key, any file",
        "named key/token/secret/password or readable by its owner only, and any part holding their bytes.",
        "API answers were read without a token (routes any client may read).",
        "",
        f"INCLUDED ({len(dump.included)})",
        *(f"  {name}  --  {what}" for name, what in dump.included),
        "",
        f"LEFT OUT ({len(dump.left_out)}; paths relative to the data dir)",
        *(f"  {source}  --  {why}" for source, why in dump.left_out),
        "",
        f"UNAVAILABLE ({len(dump.unavailable)})",
        *(f"  {what}  --  {why}" for what, why in dump.unavailable),
    ]
    return "\n".join(lines) + "\n"
