"""What `synapse upgrade ...` does, without click: find the nodes, call their API, wait for outcomes.

Why it works as it does:
- A target is a node's URL and token. `--data-dir D` reads them from the cluster's own file
  (cluster.json: API URLs, token files), `--url U --token-file F` names one node of any network; both
  end as the same `Target`, so every command works on both.
- A node's refusal is its own error document (`message`, `hint`, `definite`): `ApiError` carries it
  unchanged, so the user reads the node's words, not ours. A node that cannot be reached is a
  ClusterError saying which node and what to check.
- Waiting is judged from each node's OWN view (GET /proposals/{id} on every target): a proposal is
  executed on a node once that node's own EXECUTION_REPORT is in its log. What a poll sees is reduced to
  one short line per node by a pure function (`node_stage`), and a line is printed only when it changes.
  A wait fails at once, with the reason, on a final status that cannot reach the goal (rejected,
  expired, failed, rolled back) or on a failed report (the node and its error); otherwise it ends at
  its timeout, naming the nodes still pending.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cluster.local import NodeApi
from node.api import read_token
from node.errors import BadRequest, ClusterError, SynapseError

HTTP_TIMEOUT_S = 30.0      # a dry run downloads and runs a package before it answers
WAIT_POLL_S = 0.25
WAIT_GOALS = ("approved", "executed")
_PAST_APPROVED = ("approved", "ratified", "executed")
_DEAD_ENDS = ("rejected", "expired", "failed", "rolled_back")


class ApiError(SynapseError):
    """A node refused a request; message and hint are the node's own."""

    def __init__(self, status: int, document: Any, text: str, what: str) -> None:
        document = document if isinstance(document, dict) else {}
        message = document.get("message") or f"{what}: HTTP {status} {text.strip()[:200]}"
        super().__init__(message, hint=document.get("hint") or "", definite=document.get("definite", True) is not False)
        self.status = status
        self.error = document.get("error", "")


@dataclass(frozen=True, slots=True)
class Target:
    name: str           # node-<i>, or the URL for --url
    url: str
    token: str | None

    def api(self) -> NodeApi:
        return NodeApi(self.url, self.token, timeout_s=HTTP_TIMEOUT_S)


def cluster_targets(data_dir: Path, document: dict, wanted: tuple[str, ...] | None) -> list[Target]:
    """Targets of a cluster file: `wanted` names (1..N, node-<i>, a node id), all when None."""
    nodes = {f"node-{node['index'] + 1}": node for node in document["nodes"]}
    if wanted is None:
        chosen = list(nodes)
    else:
        chosen = []
        for name in wanted:
            match = [label for label, node in nodes.items() if name in (label, str(node["index"] + 1), node["node_id"])]
            if not match:
                raise ClusterError(f"no node {name!r} in the cluster at {data_dir}",
                                   hint=f"give 1..{len(nodes)}, node-<i> or a node id (see 'synapse cluster status')")
            chosen += [label for label in match if label not in chosen]
    return [Target(label, nodes[label]["api_url"], _token(Path(nodes[label]["token_file"]))) for label in chosen]


def url_target(url: str, token_file: Path | None) -> Target:
    return Target(url.rstrip("/"), url.rstrip("/"), _token(token_file) if token_file is not None else None)


def _token(path: Path) -> str | None:
    try:
        return read_token(path)       # a missing or malformed file is its own ConfigError
    except OSError as error:
        raise ClusterError(f"cannot read the API token {path}: {error.strerror}",
                           hint="the token is created at the node's first start, in its data dir (api_token)") from None


def call(target: Target, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201)) -> Any:
    """The node's JSON answer; ApiError when it refuses, ClusterError when it cannot be reached."""
    api = target.api()
    try:
        response = api.get(path) if method == "GET" else api.post(path, body)
    except OSError as error:
        raise ClusterError(f"cannot reach {target.name} at {target.url}: {getattr(error, 'reason', error)}",
                           hint="is it running? see 'synapse cluster status' (or check --url)", definite=False) from None
    if response.status not in ok:
        raise ApiError(response.status, response.data, response.text, f"{method} {path} on {target.name}")
    return response.data


def vote(target: Target, proposal_id: str, choice: str) -> dict:
    """Vote with `target`'s key. A vote refused because voting is already decided or closed (the usual
    race when every node votes: the last votes arrive after the outcome is settled) comes back as
    {"skipped": why, "error": the node's refusal}: whether that is an error depends on whether the
    command's other votes were recorded (the caller decides)."""
    try:
        return {"node": target.name, **call(target, "POST", f"/proposals/{proposal_id}/vote", {"vote": choice})}
    except ApiError as error:
        if error.status != 409:
            raise
        view = call(target, "GET", f"/proposals/{proposal_id}")
        outcome = (view.get("tally") or {}).get("outcome")
        if view.get("status") == "voting" and outcome == "voting":
            raise
        return {"node": target.name, "proposal_id": proposal_id, "vote": choice, "error": error.to_dict(),
                "skipped": f"voting is already decided ({view.get('status')}, outcome {outcome})"}


# --- packages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageRef:
    url: str
    sha256: str
    size: int | None


def local_package(path: Path, data_dir: Path) -> PackageRef:
    """Build (.wat, .c) or read (.wasm) a local package, store it in the cluster and serve it."""
    from cluster import package_host
    from cluster.package_server import build_package

    data = build_package(path, Path(data_dir) / "build")
    sha256 = package_host.store_package(data_dir, data)
    base_url = package_host.ensure_running(data_dir)
    return PackageRef(f"{base_url}/packages/{sha256}.wasm", sha256, len(data))


def remote_package(url: str, sha256: str | None, size: int | None) -> PackageRef:
    if not sha256:
        raise BadRequest(f"{url} is a remote package: its hash must be given",
                           hint="pass --sha256 HEX (sha256sum of the file every node will download)")
    return PackageRef(url, sha256.removeprefix("sha256:"), size)


# --- waiting ----------------------------------------------------------------------------------


def node_stage(document: dict | None, node_id: str | None, goal: str) -> tuple[str, str | None, bool]:
    """(line, failure, done) for one node's view of a proposal. `document` None: not received yet."""
    if document is None:
        return "not received yet", None, False
    status = document.get("status", "?")
    mine = [report for report in document.get("reports", []) if report.get("node_id") == node_id]
    if goal == "executed" and mine:
        report = mine[-1]
        if report.get("success"):
            return f"executed {report.get('version')} (state {str(report.get('state_hash'))[:16]})", None, True
        error = error_text(report.get("error"))
        return f"failed: {error}", f"failed: {error}", False
    if status in _DEAD_ENDS:
        return status, status + _tally_text(document), False
    if goal == "approved" and status in _PAST_APPROVED:
        return status, None, True
    closed = "" if status != "voting" else f" (provisional outcome {document.get('tally', {}).get('outcome')})"
    return status + closed, None, False


def _tally_text(document: dict) -> str:
    tally = document.get("tally") or {}
    return f" (approval {tally.get('approval_weight')}, rejection {tally.get('rejection_weight')} of {tally.get('total_weight')})"


def error_text(error: Any) -> str:
    """A node's error (its JSON document, or a string) as one line: 'FuelExhausted message'."""
    if isinstance(error, dict):
        return " ".join(str(part) for part in (error.get("error"), error.get("message")) if part)
    return str(error)


@dataclass(slots=True)
class WaitResult:
    reached: bool
    reason: str | None
    lines: dict[str, str]

    def to_dict(self) -> dict:
        return {"reached": self.reached, "reason": self.reason, "nodes": dict(self.lines)}


def wait_for(targets: list[Target], proposal_id: str, goal: str, timeout_s: float,
             echo: Callable[[str], None]) -> WaitResult:
    """Poll every target's view until all reach `goal`, one fails, or `timeout_s` passes."""
    node_ids = {target.name: _node_id(target) for target in targets}
    lines: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        done = 0
        for target in targets:
            line, failure, reached = node_stage(_view(target, proposal_id), node_ids[target.name], goal)
            if lines.get(target.name) != line:
                lines[target.name] = line
                echo(f"  {target.name}: {line}")
            if failure is not None:
                return WaitResult(False, f"{failure} on {target.name}" if failure.startswith("failed") else failure, lines)
            done += reached
        if done == len(targets):
            return WaitResult(True, None, lines)
        if time.monotonic() >= deadline:
            pending = ", ".join(name for name, line in lines.items() if not node_stage_done(line, goal))
            return WaitResult(False, f"timed out after {timeout_s:.0f} s waiting for {goal} (pending: {pending})", lines)
        time.sleep(WAIT_POLL_S)


def node_stage_done(line: str, goal: str) -> bool:
    return line.startswith("executed") if goal == "executed" else line.split(" ")[0] in _PAST_APPROVED


def _node_id(target: Target) -> str | None:
    try:
        return (call(target, "GET", "/health") or {}).get("node_id")
    except SynapseError:
        return None


def _view(target: Target, proposal_id: str) -> dict | None:
    try:
        return call(target, "GET", f"/proposals/{proposal_id}")
    except ApiError as error:
        if error.status == 404:
            return None
        raise
    except ClusterError:
        return {"status": "unreachable"}
