"""`synapse cluster status --watch`: a live table of a running cluster, redrawn every interval until
Ctrl-C or SIGTERM (exit 0).

Why it works as it does:
- Read-only and token-free: every column comes from routes any client may read (GET /health,
  /upgrades/status, /proposals; cluster/api_reads.py), so watching a cluster never opens a token file.
- Bounded: each request has a short timeout and a response size cap (a node that hangs or floods costs
  one timeout, and its row says so); the nodes are asked in parallel by a bounded pool, so a table
  takes about one timeout however many nodes are down. A hidden --count N stops after N tables (tests).
- Ctrl-C and SIGTERM only set a flag that the loop checks between tables and while it waits, so the
  command stops at a clean point, restores the terminal and exits 0 (watching is not a failure). The
  signal handlers it installs are the previous ones again when it returns.
- On a terminal the table is redrawn in place (the cursor moves up over the last table, ANSI); into a
  pipe or file each table is printed after the last, with its time, so a log of it reads as a history.
  With --json, one JSON document per line per interval (JSON Lines).
- The cluster file is read again for every table: `cluster restart` and `down`/`up` may change it.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, TextIO

from cluster.api_reads import fetch_json
from node.errors import SynapseError

WATCH_HTTP_TIMEOUT_S = 1.0
WATCH_WORKERS_MAX = 16
STATE_HASH_SHOWN_CHARS = 12
OPEN_STATUSES = frozenset({"voting", "approved", "ratified"})


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRow:
    node: str
    node_id: str
    role: str
    health: str           # "ok", "unreachable", or what the node answered instead
    version: str | None = None
    state_hash: str | None = None
    raft_leader: str | None = None      # as this node sees it (validators), by node name when known
    entries: int | None = None
    open_proposals: int | None = None
    open_proposals_truncated: bool = False


def _short_hash(state_hash: object) -> str | None:
    if not isinstance(state_hash, str):
        return None
    return state_hash.split(":", 1)[-1][:STATE_HASH_SHOWN_CHARS]


def observe_node(node: dict, leader_names: dict[str, str], timeout_s: float) -> NodeRow:
    """One node's row: three GETs, each bounded by `timeout_s`."""
    identity = {"node": f"node-{node['index'] + 1}", "node_id": node["node_id"],
                "role": "validator" if node.get("validator") else "member"}
    try:
        status, health = fetch_json(node["api_url"], "/health", timeout_s=timeout_s)
    except (OSError, ValueError):
        return NodeRow(**identity, health="unreachable")
    if status != 200 or not isinstance(health, dict) or health.get("status") != "ok":
        return NodeRow(**identity, health=f"HTTP {status}" if status != 200 else str((health or {}).get("status", "?"))[:20])
    upgrade_status, proposals = {}, None
    try:
        upgrade_status = fetch_json(node["api_url"], "/upgrades/status", timeout_s=timeout_s)[1] or {}
        proposals = fetch_json(node["api_url"], "/proposals", timeout_s=timeout_s)[1]
    except (OSError, ValueError):
        pass
    leader = health.get("raft_leader")
    listed = proposals.get("proposals") if isinstance(proposals, dict) else None
    return NodeRow(**identity, health="ok", version=health.get("version"), entries=health.get("entries"),
                   state_hash=_short_hash(upgrade_status.get("state_hash") if isinstance(upgrade_status, dict) else None),
                   raft_leader=leader_names.get(leader, leader) if isinstance(leader, str) else None,
                   open_proposals=sum(isinstance(item, dict) and item.get("status") in OPEN_STATUSES for item in listed)
                   if isinstance(listed, list) else None,
                   open_proposals_truncated=bool(isinstance(proposals, dict) and proposals.get("truncated")))


def observe(document: dict, pool: ThreadPoolExecutor, timeout_s: float) -> list[NodeRow]:
    nodes = document["nodes"]
    leader_names = {node["raft_address"]: f"node-{node['index'] + 1}" for node in nodes}
    return list(pool.map(lambda node: observe_node(node, leader_names, timeout_s), nodes))


def agreed_leader(rows: list[NodeRow]) -> str | None:
    """The Raft leader when every validator that answered names the same one."""
    seen = {row.raft_leader for row in rows if row.role == "validator" and row.health == "ok"}
    return seen.pop() if len(seen) == 1 else None


def render(rows: list[NodeRow], network_id: str, moment: float) -> list[str]:
    healthy = sum(row.health == "ok" for row in rows)
    leader = agreed_leader(rows)
    header = ("node", "id", "role", "version", "state hash", "raft leader", "entries", "open proposals", "health")
    table = [header] + [(row.node, row.node_id, row.role, row.version or "-", row.state_hash or "-", row.raft_leader or "-",
                         "-" if row.entries is None else str(row.entries),
                         "-" if row.open_proposals is None else f"{row.open_proposals}{'+' if row.open_proposals_truncated else ''}",
                         row.health) for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    title = (f"{time.strftime('%H:%M:%S', time.gmtime(moment))} UTC  {network_id}  {healthy}/{len(rows)} healthy  "
             f"raft leader: {leader or 'none agreed'}")
    return [title] + ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]


def as_document(rows: list[NodeRow], network_id: str, moment: float) -> dict:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment)), "network_id": network_id,
            "healthy": sum(row.health == "ok" for row in rows), "raft_leader": agreed_leader(rows),
            "nodes": [asdict(row) for row in rows]}


class _StopOnSignals:
    """SIGINT and SIGTERM set an event instead of unwinding; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> threading.Event:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, lambda *_: self.stopped.set())
        return self.stopped

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def watch_cluster(load_document: Callable[[], dict], *, interval_s: float, count: int | None, as_json: bool,
                  timeout_s: float = WATCH_HTTP_TIMEOUT_S, out: TextIO | None = None) -> int:
    """Print a table (or a JSON line) every `interval_s` until a signal, or `count` tables. Returns 0."""
    out = out or sys.stdout
    in_place = out.isatty() and not as_json
    drawn_lines, drawn, document = 0, 0, None
    with _StopOnSignals() as stopped, ThreadPoolExecutor(max_workers=WATCH_WORKERS_MAX) as pool:
        while not stopped.is_set() and (count is None or drawn < count):
            try:
                document = load_document()
            except SynapseError as error:  # a cluster file being rewritten, or gone: keep the last one
                if document is None:
                    raise
                print(f"note: cannot read the cluster file now ({error}); showing the last one", file=sys.stderr)
            moment = time.time()
            rows = observe(document, pool, timeout_s)
            network_id = str(document.get("network_id", "?"))
            if as_json:
                out.write(json.dumps(as_document(rows, network_id, moment)) + "\n")
            else:
                lines = render(rows, network_id, moment)
                prefix = f"\x1b[{drawn_lines}A\r\x1b[J" if in_place and drawn_lines else ("\n" if drawn else "")
                out.write(prefix + "\n".join(lines) + "\n")
                drawn_lines = len(lines)
            out.flush()
            drawn += 1
            if count is None or drawn < count:
                stopped.wait(interval_s)
    return 0
