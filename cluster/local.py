"""LocalCluster: N real node processes on this machine, for tests, scenarios and benchmarks.

    with LocalCluster(nodes=5, validators=3) as cluster:
        cluster.api(0).post("/log/notes", {"text": "hello"})
        cluster.wait_for(lambda: cluster.api(4).get("/log").data["visible_total"] == 1, 10, "the note on node 4")

Why it works as it does:
- Real processes (`python -m node --config ...`), as in production: crashes, pauses and restarts are
  the real thing (SIGKILL, SIGSTOP), not a simulation.
- Isolation for `pytest -n auto`: each cluster owns a loopback block 127.A.B.0/24 (cluster/addresses.py)
  for its whole lifetime, with fixed ports per role, and its own data dir.
- Nothing outlives the cluster. Each node runs in its own process group (so signals reach only it)
  with PR_SET_PDEATHSIG=SIGKILL, so nodes die with the process that started them even when that one
  is killed with -9. (The death signal fires when the *thread* that spawned the node exits: drive a
  cluster from one long-lived thread.) On exit every node gets SIGCONT + SIGTERM, then SIGKILL after
  a grace period, and the address block is released, also when the `with` body raised.
- Every wait has a timeout, and a node that fails to come up is reported with the last lines of its
  log, so a failing test says why.
- The HTTP helper is plain urllib (no proxy: the environment's http_proxy must never see 127.x).
- Nodes are forked from a preloaded template (cluster/template.py) unless SYNAPSE_SPAWN=exec: each
  is still a process of its own (pid, process group, data dir), only its imports are already done.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from cluster.addresses import BlockLease, acquire_block, acquire_given_block, parse_block
from cluster.faults import remove_stale_chain
from cluster.genesis import create_network
from cluster.template import NodeTemplate, TemplateProcess, python_child_environment, spawn_mode
from cluster.template import die_with_parent as _die_with_parent  # noqa: F401 (netns, scenario_parallel and tests import it from here)
from node.api import API_TOKEN_FILE_NAME, read_token
from node.errors import ClusterError
from node.logging_setup import LOG_FILE_NAME

API_PORT = 7000
RAFT_PORT = 7100
START_TIMEOUT_S = 30.0
START_TIMEOUT_PER_NODE_S = 1.5
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 15
CLUSTER_FILE_NAME = "cluster.json"
STDERR_FILE_NAME = "stderr.log"
STDOUT_FILE_NAME = "stdout.log"
TEMPLATE_LOG_FILE_NAME = "template.log"

T = TypeVar("T")




@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    data: Any  # parsed JSON, or None
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class NodeApi:
    """A tiny synchronous client of one node's HTTP API (sends the node's token when it has one)."""

    _opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __init__(self, base_url: str, token: str | None, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.base_url = base_url
        self.token = token
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: bytes | None = None, *, content_type: str = "application/json",
                auth: bool = True) -> ApiResponse:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
            error.close()
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        return ApiResponse(status, data, text)

    def get(self, path: str, *, auth: bool = True) -> ApiResponse:
        return self.request("GET", path, auth=auth)

    def post(self, path: str, json_body: Any = None, *, auth: bool = True) -> ApiResponse:
        body = b"" if json_body is None else json.dumps(json_body).encode()
        return self.request("POST", path, body, auth=auth)


@dataclass(slots=True, kw_only=True)
class NodeHandle:
    index: int  # 0-based position in cluster.nodes; its directory is node-<index + 1>
    node_id: str
    api_url: str
    raft_address: str
    data_dir: Path
    config_path: Path
    is_validator: bool
    token: str | None = None
    process: subprocess.Popen | TemplateProcess | None = field(default=None, repr=False)
    paused: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def token_file(self) -> Path:
        return self.data_dir / API_TOKEN_FILE_NAME


class LocalCluster:
    """N node processes from a fresh genesis; see the module docstring. Use it as a context manager."""

    def __init__(self, nodes: int = 5, validators: int = 3, data_dir: Path | None = None, *,
                 start_timeout_s: float | None = None, governance: Mapping[str, int] | None = None,
                 network_limits: Mapping[str, int] | None = None, config_limits: Mapping[str, int] | None = None,
                 reputations: list[int] | None = None, extra_env: Mapping[str, str] | None = None,
                 ipfs_gateways: Sequence[str] = (), private_addresses_allowed: bool = True, detached: bool = False,
                 shared_compiled_cache: bool = True) -> None:
        self._node_count = nodes
        self._validator_count = validators
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        # Each node costs ~0.5 s of CPU to start (imports, key, log): on 2 cores, large clusters need longer.
        self._start_timeout_s = start_timeout_s if start_timeout_s is not None else max(START_TIMEOUT_S, START_TIMEOUT_PER_NODE_S * nodes)
        self._network_options = {"governance": governance, "network_limits": network_limits,
                                 "config_limits": config_limits, "reputations": reputations, "ipfs_gateways": tuple(ipfs_gateways),
                                 "private_addresses_allowed": private_addresses_allowed,
                                 # the nodes compile each package once per machine (DIR/compiled-cache)
                                 "shared_compiled_cache": shared_compiled_cache,
                                 "one_machine": True}     # anti-entropy paced for N nodes on this machine
        # detached: nodes outlive this process (`synapse cluster up`): a session of their own, no parent-death signal.
        self._detached = detached
        self._extra_env = dict(extra_env or {})
        self._spawn_mode = spawn_mode({**os.environ, **self._extra_env})
        self._template: NodeTemplate | None = None
        self._existing: dict | None = None   # a stopped cluster's cluster.json, for reopen()
        self._lease: BlockLease | None = None
        self.data_dir: Path | None = None
        self.nodes: list[NodeHandle] = []
        self.genesis_path: Path | None = None
        self.network_id: str | None = None

    @classmethod
    def reopen(cls, data_dir: Path, document: Mapping, **options: object) -> "LocalCluster":
        """The stopped cluster described by `document` (its DIR/cluster.json); start() runs its nodes
        again on the same addresses with their keys, logs and state. `options` as for the constructor
        (timeouts, environment, detached); the network itself is the genesis's."""
        reopened = cls(nodes=len(document["nodes"]), data_dir=Path(data_dir), **options)
        reopened._existing = dict(document)
        return reopened

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self.close(remove_data=exc_type is None)

    def start(self) -> None:
        """Create the network (genesis, keys, configs), start every node, wait until all are healthy.
        On any failure, whatever was started is stopped again before the error propagates."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        if self._existing is not None:
            self._start_existing(self._existing)
            return
        self._lease = self._lease_block(None)
        if self._given_data_dir is not None:
            self.data_dir = self._given_data_dir
            self.data_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.data_dir = Path(tempfile.mkdtemp(prefix="synapse-cluster-"))
        network = create_network(self.data_dir, nodes=self._node_count, validators=self._validator_count, block=self._lease.block,
                                 api_port=API_PORT, raft_port=RAFT_PORT, **self._network_options)
        self.genesis_path, self.network_id = network.genesis_path, network.genesis.network_id
        self.nodes = [NodeHandle(index=created.index - 1, node_id=created.node_id, api_url=created.api_url,
                                 raft_address=created.raft_address, data_dir=created.node_dir,
                                 config_path=created.config_path, is_validator=created.validator)
                      for created in network.nodes]
        for handle in self.nodes:
            self._spawn(handle)
        self._wait_healthy(self.nodes)
        self._write_cluster_file()

    def _start_existing(self, document: Mapping) -> None:
        if not document.get("address_block"):
            raise ClusterError("the cluster file names no address block, so its nodes' addresses are unknown",
                               hint="start a new cluster in another --data-dir")
        self._lease = self._lease_block(document["address_block"])
        self.adopt(document)
        for handle in self.nodes:
            self._spawn(handle)
        self._wait_healthy(self.nodes)
        self._write_cluster_file()

    def adopt(self, document: Mapping) -> None:
        """Take the nodes `document` (a cluster file) names as this cluster's, starting none of them: reopen's
        start(), and `synapse cluster restart` (cluster/cli_restart.py), which then restarts them one by one."""
        self.data_dir = self._given_data_dir
        self.genesis_path, self.network_id = Path(document["genesis"]), document["network_id"]
        self.nodes = [NodeHandle(index=node["index"], node_id=node["node_id"], api_url=node["api_url"],
                                 raft_address=node["raft_address"], data_dir=Path(node["data_dir"]),
                                 config_path=Path(node["data_dir"]) / "config.toml", is_validator=node["validator"])
                      for node in document["nodes"]]

    def close(self, *, remove_data: bool = False) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a grace period) and release the address block."""
        for handle in self.nodes:
            if handle.running:
                self._signal(handle, signal.SIGCONT)
                self._signal(handle, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for handle in self.nodes:
            self._reap(handle, deadline)
        if self._template is not None:
            self._template.close()
            self._template = None
        self._release_network()
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if remove_data and self._given_data_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- hooks of the providers (cluster/providers/): where the nodes live ----------------------

    def _lease_block(self, given_prefix: str | None) -> BlockLease:
        """Lock a free address block (or the stopped cluster's own, `given_prefix`) for the nodes."""
        if given_prefix is None:
            lease = acquire_block(hosts=self._node_count, ports=(API_PORT, RAFT_PORT))
        else:
            lease = acquire_given_block(parse_block(given_prefix, hosts=self._node_count), hosts=self._node_count,
                                        ports=(API_PORT, RAFT_PORT))
        remove_stale_chain(lease.block.prefix, width=lease.block.width)  # a killed scenario run may have left DROP rules on this block
        return lease

    # Nodes fork from the template (cluster/template.py), which runs in this namespace: a provider whose
    # nodes start elsewhere (the netns provider's `ip netns exec`) sets this False and uses _node_command.
    _forks_from_template = True

    def _node_command(self, handle: NodeHandle) -> tuple[list[str], dict]:
        """The node's command line and extra Popen options (the netns provider prefixes `ip netns exec`)."""
        return [sys.executable, "-m", "node", "--config", str(handle.config_path)], {}

    def _release_network(self) -> None:
        """After every node stopped, before the block is released: remove what the provider set up."""

    def _provider_document(self) -> dict:
        return {"provider": "loopback"}

    # --- one node -----------------------------------------------------------------------------

    def _spawn(self, handle: NodeHandle) -> None:
        env = python_child_environment({**os.environ, **self._extra_env})
        template = self._node_template(env, handle) if self._forks_from_template else None
        if template is not None:
            handle.process = template.spawn(config_path=handle.config_path, cwd=handle.data_dir, env=env, detached=self._detached,
                                            stdout_path=handle.data_dir / STDOUT_FILE_NAME,
                                            stderr_path=handle.data_dir / STDERR_FILE_NAME)
            handle.paused = False
            return
        command, options = self._node_command(handle)
        with open(handle.data_dir / STDOUT_FILE_NAME, "ab") as stdout, open(handle.data_dir / STDERR_FILE_NAME, "ab") as stderr:
            handle.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=handle.data_dir, env=env, close_fds=True,
                **options,
                **({"start_new_session": True} if self._detached else {"process_group": 0, "preexec_fn": _die_with_parent(os.getpid())}))
        handle.paused = False

    def _node_template(self, env: Mapping[str, str], handle: NodeHandle) -> NodeTemplate | None:
        """The cluster's template, started on first use; None for SYNAPSE_SPAWN=exec, or (with a warning)
        when it cannot start: plain spawning always works. Its log goes to the cluster's data dir (that of
        the node's parent when a caller spawns without starting the cluster, as `cluster fault restart` does)."""
        if self._spawn_mode == "template" and self._template is None:
            log_dir = self.data_dir if self.data_dir is not None else handle.data_dir.parent
            try:
                self._template = NodeTemplate.start(env=env, detached=self._detached, log_path=log_dir / TEMPLATE_LOG_FILE_NAME)
            except ClusterError as error:
                print(f"warning: starting nodes without the template: {error.one_line()}", file=sys.stderr)
                self._spawn_mode = "exec"
        return self._template

    def _signal(self, handle: NodeHandle, signal_number: int) -> None:
        if handle.process is None or handle.process.poll() is not None:
            return
        try:
            os.killpg(handle.process.pid, signal_number)
        except ProcessLookupError:
            pass

    def _reap(self, handle: NodeHandle, deadline: float) -> int | None:
        if handle.process is None:
            return None
        try:
            return handle.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._signal(handle, signal.SIGKILL)
            return handle.process.wait(timeout=STOP_TIMEOUT_S)

    def _check_index(self, index: int) -> NodeHandle:
        if not 0 <= index < len(self.nodes):
            raise ClusterError(f"no node {index}: this cluster has nodes 0..{len(self.nodes) - 1}", hint="index nodes from 0")
        return self.nodes[index]

    def _health(self, handle: NodeHandle) -> bool:
        try:
            response = NodeApi(handle.api_url, None, timeout_s=1.0).get("/health")
        except OSError:
            return False
        return response.status == 200 and isinstance(response.data, dict) and response.data.get("status") == "ok"

    def _wait_healthy(self, handles: list[NodeHandle]) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        waiting = list(handles)
        while waiting:
            for handle in list(waiting):
                if handle.process is not None and handle.process.poll() is not None:
                    raise ClusterError(f"node {handle.index} ({handle.node_id}) exited with code {handle.process.returncode} "
                                       f"while starting; last log lines:\n{self.log_tail(handle.index)}")
                if self._health(handle):
                    handle.token = read_token(handle.token_file)
                    waiting.remove(handle)
            if waiting and time.monotonic() > deadline:
                tails = "\n".join(f"--- node {h.index} ({h.api_url}):\n{self.log_tail(h.index)}" for h in waiting)
                raise ClusterError(f"{len(waiting)} node(s) not healthy after {self._start_timeout_s:.0f} s: "
                                   f"{', '.join(str(h.index) for h in waiting)}\n{tails}")
            if waiting:
                time.sleep(0.05)

    # --- the public helpers -------------------------------------------------------------------

    def api(self, index: int) -> NodeApi:
        handle = self._check_index(index)
        return NodeApi(handle.api_url, handle.token)

    def wait_for(self, condition: Callable[[], T], timeout_s: float, what: str) -> T:
        """Poll `condition` until it returns something truthy (returned); connection errors count as
        'not yet'. Raises ClusterError naming `what` on timeout."""
        deadline = time.monotonic() + timeout_s
        delay_s, last_error = 0.02, None
        while True:
            try:
                value = condition()
                if value:
                    return value
            except (OSError, KeyError, TypeError) as error:
                last_error = error
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_error!r})" if last_error is not None else ""
                raise ClusterError(f"timed out after {timeout_s} s waiting for {what}{detail}")
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.2)

    def kill(self, index: int) -> int | None:
        """SIGKILL the node (no clean shutdown). Returns its exit status."""
        handle = self._check_index(index)
        self._signal(handle, signal.SIGKILL)
        return self._reap(handle, time.monotonic() + STOP_TIMEOUT_S)

    def stop(self, index: int, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the node and wait for it to exit (SIGKILL after `timeout_s`). Returns its exit code."""
        handle = self._check_index(index)
        self._signal(handle, signal.SIGCONT)
        self._signal(handle, signal.SIGTERM)
        return self._reap(handle, time.monotonic() + timeout_s)

    def restart(self, index: int) -> None:
        """Stop the node if it runs, start it again with the same data, and wait until it is healthy."""
        handle = self._check_index(index)
        if handle.running:
            self.stop(index)
        self._spawn(handle)
        self._wait_healthy([handle])
        self._write_cluster_file()

    def pause(self, index: int) -> None:
        handle = self._check_index(index)
        self._signal(handle, signal.SIGSTOP)
        handle.paused = True

    def resume(self, index: int) -> None:
        handle = self._check_index(index)
        self._signal(handle, signal.SIGCONT)
        handle.paused = False

    def logs(self, index: int) -> str:
        """Everything the node wrote to stderr (its JSON log lines, and any crash output)."""
        handle = self._check_index(index)
        try:
            return (handle.data_dir / STDERR_FILE_NAME).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, index: int, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.logs(index).splitlines()[-lines:])

    def log_events(self, index: int) -> list[dict]:
        """The node's structured log (node.log) as a list of {"ts", "level", "node", "event", "fields"}."""
        handle = self._check_index(index)
        events = []
        try:
            text = (handle.data_dir / LOG_FILE_NAME).read_text(errors="replace")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def _write_cluster_file(self) -> None:
        assert self.data_dir is not None
        document = {
            "network_id": self.network_id, "genesis": str(self.genesis_path),
            "address_block": self._lease.block.prefix if self._lease else None, **self._provider_document(),
            "nodes": [{"index": h.index, "node_id": h.node_id, "api_url": h.api_url, "raft_address": h.raft_address,
                       "validator": h.is_validator, "data_dir": str(h.data_dir), "token_file": str(h.token_file), "pid": h.pid}
                      for h in self.nodes],
        }
        temporary = self.data_dir / f".{CLUSTER_FILE_NAME}.tmp"
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(temporary, self.data_dir / CLUSTER_FILE_NAME)


__all__ = ["ApiResponse", "ClusterError", "LocalCluster", "NodeApi", "NodeHandle"]
