"""The netns provider attached to a running cluster it did not start (`synapse cluster up` left it running).

    provider = attach_provider(data_dir, load_cluster_file(data_dir))   # cluster/providers/__init__.py
    provider.delay([0, 1, 2], [0, 1, 2], ms=200); provider.heal()

Why it works as it does:
- The fault state lives where it acts, so a later command (another process) finds it again: cut links
  are the DROP rules in each namespace's filter table (read back), link faults are the helpers' config
  files in the cluster's data dir (`link-faults-node-<i>.json`), and each helper's pid is in
  `link-faults-node-<i>.pid`. Nothing is remembered in this object between commands.
- Helpers started here outlive the command, like the nodes: spawned in a session of their own
  (posix_spawn with setsid, so no Popen is left to wait on), readiness read from a pipe, pid written.
  A pid is only ever signalled after /proc shows it still runs the link_delay module with this
  cluster's config file (a pid in a file may have been reused).
- heal clears every namespace (empty filter tables, no TBF) and stops every helper; `cluster down`
  stops the helpers (`stop_helpers`) before the namespaces are removed. Process faults are not this
  object's: `synapse cluster fault kill|pause|...` signals the nodes by the pids in cluster.json.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.local import NodeApi, NodeHandle
from cluster.providers import netns_net as net
from cluster.providers.base import LinkFault
from cluster.providers.netns import HELPER_READY_TIMEOUT_S, HELPER_STOP_TIMEOUT_S, NetnsProvider, helper_environment
from node.api import read_token
from node.errors import ClusterError

POLL_S = 0.05


class RunningCluster:
    """What the provider reads of a running cluster: nodes (from cluster.json), data dir, subnet names."""

    def __init__(self, data_dir: Path, document: Mapping[str, Any]) -> None:
        self.data_dir = Path(data_dir)
        self.names = net.Names(net.subnet_number(str(document.get("address_block"))))
        self._lease = None
        self.nodes = [NodeHandle(index=node["index"], node_id=node["node_id"], api_url=node["api_url"], raft_address=node["raft_address"],
                                 data_dir=Path(node["data_dir"]), config_path=Path(node["data_dir"]) / "config.toml",
                                 is_validator=node["validator"]) for node in document["nodes"]]

    def api(self, index: int) -> NodeApi:
        handle = self.nodes[index]
        return NodeApi(handle.api_url, read_token(handle.token_file))


def pid_file(data_dir: Path, index: int) -> Path:
    return Path(data_dir) / f"link-faults-node-{index}.pid"


def _helper_pid(data_dir: Path, index: int) -> int | None:
    """The live helper of node `index` (1-based) of this cluster, or None (a stale or reused pid is not)."""
    try:
        pid = int(pid_file(data_dir, index).read_text().strip())
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    config = str(Path(data_dir) / f"link-faults-node-{index}.json").encode()
    return pid if state != "Z" and b"cluster.providers.link_delay" in words and config in words else None


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)   # our own child (started by this very process): reap it
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_helpers(data_dir: Path, node_count: int) -> int:
    """SIGTERM every live helper of the cluster (SIGKILL after the grace period); remove the pid files."""
    pids = [pid for pid in (_helper_pid(data_dir, index) for index in range(1, node_count + 1)) if pid]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)   # each releases what it holds, then unbinds
    deadline = time.monotonic() + HELPER_STOP_TIMEOUT_S
    while any(not _gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for pid in pids:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
    for index in range(1, node_count + 1):
        pid_file(data_dir, index).unlink(missing_ok=True)
    return len(pids)


class AttachedNetnsProvider(NetnsProvider):
    def __init__(self, data_dir: Path, document: Mapping[str, Any]) -> None:
        super().__init__()
        self.cluster = RunningCluster(data_dir, document)
        self._read_state()

    def _read_state(self) -> None:
        index_of = {self.names.host(handle.index + 1): handle.index for handle in self.cluster.nodes}
        self._cut = set(self.cut_links())
        for handle in self.cluster.nodes:
            if _helper_pid(self.cluster.data_dir, handle.index + 1) is None:
                continue
            try:
                links = json.loads(self._helper_config(handle.index).read_text())["links"]
            except (OSError, ValueError, KeyError):
                continue
            for host, fault in links.items():
                if host in index_of:
                    self._links[(handle.index, index_of[host])] = LinkFault(
                        source=handle.index, destination=index_of[host], delay_ms=int(fault["delay_ms"]),
                        jitter_ms=int(fault["jitter_ms"]), loss_percent=float(fault["loss_percent"]))

    # --- lifecycle: the cluster runs on without this object ---------------------------------

    def setup(self) -> None:
        """Already set up by the process that started the cluster."""

    def start(self, **late_options: Any) -> None:
        raise ClusterError("an attached provider does not start nodes", hint="start the cluster with 'synapse cluster up'")

    def close(self, *, remove_data: bool = False) -> None:
        """Leaves the nodes, the namespaces and any fault in place: they belong to the running cluster."""

    def _refuse_process_fault(self, *_: object) -> None:
        raise ClusterError("process faults on a running cluster go through its pids",
                           hint="use 'synapse cluster fault kill|stop|restart|pause|resume'")

    kill = stop = restart = pause = resume = _refuse_process_fault

    # --- helpers that outlive the command ----------------------------------------------------

    def _configure_helper(self, source: int) -> None:
        path = self._write_helper_config(source)
        pid = _helper_pid(self.cluster.data_dir, source + 1)
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
            return
        pid_file(self.cluster.data_dir, source + 1).write_text(f"{self._spawn_detached(source, path)}\n")

    def _spawn_detached(self, source: int, config: Path) -> int:
        read_end, write_end = os.pipe()
        log = self.cluster.data_dir / f"link-faults-node-{source + 1}.log"
        try:
            pid = os.posix_spawnp("ip", self._helper_command(source, config), helper_environment(), setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, write_end, 1),
                (os.POSIX_SPAWN_OPEN, 2, str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), (os.POSIX_SPAWN_CLOSE, read_end)])
        finally:
            os.close(write_end)
        line = b""
        deadline = time.monotonic() + HELPER_READY_TIMEOUT_S
        try:
            while not line.endswith(b"\n") and len(line) < 64 and time.monotonic() < deadline:
                ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
                chunk = os.read(read_end, 64) if ready else b""
                if not chunk:
                    break
                line += chunk
        finally:
            os.close(read_end)
        if line.strip() != b"ready":
            os.kill(pid, signal.SIGKILL)
            raise ClusterError(f"the link-fault helper of node-{source + 1} did not start (said {line[:64]!r})", hint=f"see {log}")
        return pid

    def _stop_helpers(self) -> None:
        stop_helpers(self.cluster.data_dir, len(self.cluster.nodes))

    def helper_pids(self) -> list[int]:
        return [pid for pid in (_helper_pid(self.cluster.data_dir, h.index + 1) for h in self.cluster.nodes) if pid]

    def heal(self) -> None:
        """Every namespace back to an empty filter table and no TBF, every helper stopped."""
        self._cut.clear()
        self._links.clear()
        self._write_rules({handle.index for handle in self.cluster.nodes})
        self._stop_helpers()
        for handle in self.cluster.nodes:
            net.set_bandwidth(self.names, handle.index + 1, None)
            self._helper_config(handle.index).unlink(missing_ok=True)


__all__ = ["AttachedNetnsProvider", "RunningCluster", "stop_helpers"]
