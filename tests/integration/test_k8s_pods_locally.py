"""The kubernetes provider's pods, run on this machine without Kubernetes: what the manifests put in the
ConfigMap and the Secrets, through the init step, into real node processes that find each other by the
cluster DNS names of genesis.

Each "pod" is a node process in a mount namespace of its own whose /etc/hosts maps the names
`node-<i>-0.<validators|members>.lab.svc.cluster.local` to loopback addresses of a block this test owns,
as cluster DNS maps them to pod IPs (kubelet mounts a pod's /etc/hosts the same way). The Secret is laid
out as kubelet does (symlinks into ..data); the config's two absolute in-pod paths are moved under the
test's directory, nothing else is changed. A validator "rescheduled" to a new address must rejoin Raft in
seconds (PySyncObj cached a resolved peer address for 600 s before node/raft.py set it to 5 s).
Needs root for the mount namespaces (CI runs as root)."""

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.addresses import acquire_block
from cluster.local import NodeApi, _die_with_parent
from cluster.k8s.manifests import network_objects
from cluster.k8s.network import DATA_DIR, GENESIS_PATH, build_network
from tests.polling import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
REPOSITORY = Path(__file__).resolve().parents[2]
NODES, VALIDATORS, SPARE = 4, 3, 5          # address SPARE of the block: where node-1 is "rescheduled"
STOP_TIMEOUT_S = 10.0
POD_SCRIPT = ('mount --bind "$0" /etc/hosts && "$1" -m cluster.k8s.pod_init --config "$2" --secret-dir "$3" --dns-wait 10 '
              '&& exec "$1" -m node --config "$2"')


def _kubelet_secret(directory: Path, data: dict) -> None:
    payload = directory / "..2026_12_05_00_00_00.000000001"
    payload.mkdir(parents=True)
    for name, encoded in data.items():
        (payload / name).write_bytes(base64.b64decode(encoded))
        os.chmod(payload / name, 0o440)
        os.symlink(f"..data/{name}", directory / name)
    os.symlink(payload.name, directory / "..data")


class Pods:
    """The network's pods as local processes; stop() ends every one of them, also when a test fails."""

    def __init__(self, tmp_path: Path, block) -> None:
        self.network = build_network(nodes=NODES, validators=VALIDATORS, namespace="lab")
        objects = network_objects(self.network)
        self.config_map = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
        self.secrets = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "Secret"}
        self.block, self.root, self.processes = block, tmp_path, {}
        self.address = {node.index: block.host(node.index) for node in self.network.nodes}
        self.hosts = tmp_path / "hosts"
        self.write_hosts()
        (tmp_path / "genesis.json").write_text(self.config_map["genesis.json"])
        for node in self.network.nodes:
            pod = tmp_path / node.pod
            (pod / "config").mkdir(parents=True)
            config = self.config_map[f"{node.name}.toml"].replace(DATA_DIR, str(pod / "data")).replace(GENESIS_PATH, str(tmp_path / "genesis.json"))
            (pod / "config" / "config.toml").write_text(config)
            _kubelet_secret(pod / "secret", self.secrets[f"{node.name}-secret"])

    def write_hosts(self) -> None:
        # Written in place: a bind mount pins the file's inode, so the pods see the new mapping at once.
        lines = ["127.0.0.1 localhost"] + [f"{self.address[node.index]} {node.host}" for node in self.network.nodes]
        with open(self.hosts, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def start(self, index: int) -> None:
        pod = self.root / self.network.nodes[index - 1].pod
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH", "")]))}
        with open(pod / "stderr.log", "ab") as stderr:
            self.processes[index] = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--kill-child", "sh", "-c", POD_SCRIPT,
                 str(self.hosts), sys.executable, str(pod / "config" / "config.toml"), str(pod / "secret")],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=pod, env=env,
                process_group=0, preexec_fn=_die_with_parent(os.getpid()))

    def stop(self, index: int, signal_number: int = signal.SIGTERM) -> None:
        process = self.processes.pop(index, None)
        if process is None:
            return
        try:
            os.killpg(process.pid, signal_number)
            process.wait(timeout=STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        for index in list(self.processes):
            self.stop(index)

    def api(self, index: int) -> NodeApi:
        return NodeApi(f"http://{self.address[index]}:8000", self.network.nodes[index - 1].api_token, timeout_s=2.0)

    def health(self, index: int) -> dict:
        try:
            response = self.api(index).get("/health")
        except OSError:
            return {}
        return response.data if response.status == 200 and isinstance(response.data, dict) else {}

    def agreed_leader(self) -> str | None:
        leaders = {self.health(index).get("raft_leader") for index in range(1, VALIDATORS + 1)}
        return leaders.pop() if len(leaders) == 1 and None not in leaders else None

    def logs(self) -> str:
        return "\n".join(f"--- {node.pod}:\n" + "\n".join((self.root / node.pod / "stderr.log").read_text(errors="replace").splitlines()[-8:])
                         for node in self.network.nodes if (self.root / node.pod / "stderr.log").exists())


@pytest.fixture
def pods(tmp_path):
    with acquire_block(hosts=SPARE, ports=(8000, 9000)) as lease:
        running = Pods(tmp_path, lease.block)
        try:
            yield running
        finally:
            running.stop_all()


def test_pods_made_from_the_manifests_elect_a_leader_and_gossip_over_dns_names(pods):
    for index in range(1, NODES + 1):
        pods.start(index)
    for index in range(1, NODES + 1):
        poll_until(lambda: pods.health(index).get("status") == "ok", what=f"node-{index} healthy", timeout_s=60, describe=pods.logs)
    leader = poll_until(pods.agreed_leader, what="the validators agreeing on a Raft leader", timeout_s=60, describe=pods.logs)
    assert leader.endswith(".validators.lab.svc.cluster.local:9000")
    note = pods.api(4).post("/log/notes", {"text": "from a member pod"})
    assert note.ok, note.text
    poll_until(lambda: pods.api(1).get("/log").data.get("visible_total", 0) >= 1, what="the note gossiped to node-1",
               timeout_s=30, describe=pods.logs)
    installed = pods.root / "node-1-0" / "data" / "node_key"
    assert installed.is_file() and not installed.is_symlink() and installed.stat().st_mode & 0o777 == 0o600


def test_a_validator_rescheduled_to_a_new_address_rejoins_raft_in_seconds(pods):
    for index in range(1, NODES + 1):
        pods.start(index)
    poll_until(pods.agreed_leader, what="the validators agreeing on a Raft leader", timeout_s=90, describe=pods.logs)
    pods.stop(1, signal.SIGKILL)
    pods.address[1] = pods.block.host(SPARE)          # the pod comes back with another IP, same name and volume
    pods.write_hosts()
    pods.start(1)
    poll_until(lambda: pods.health(1).get("status") == "ok", what="node-1 healthy at its new address", timeout_s=60, describe=pods.logs)
    # node-1's name sorts first, so the other validators dial it (PySyncObj): they must re-resolve its name.
    leader = poll_until(pods.agreed_leader, what="node-1 back in Raft with the others", timeout_s=45, describe=pods.logs)
    assert leader and pods.health(1).get("raft_has_quorum") is True
