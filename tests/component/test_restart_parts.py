"""The parts `synapse cluster restart` adds under LocalCluster's own restart: the stand-in for a node
process another command started (it stops a live one with SIGTERM, then SIGKILL after the grace period,
and never signals a PID that is not the node's), and the lock of an address block whose addresses are
in use by the cluster's other nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.addresses import AddressBlock, acquire_given_block, lock_block
from cluster.cli_restart import AdoptedProcess
from cluster.local import LocalCluster, NodeHandle
from node.errors import ConfigError

STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
POLITE = "import sys, time; print('ready', flush=True); time.sleep(120)"


def spawn(code: str, *words: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code, *words], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout.readline().strip() == "ready"  # its SIGTERM disposition is in place
    return process


def adopted_cluster(tmp_path: Path, process: subprocess.Popen, config_path: Path) -> tuple[LocalCluster, AdoptedProcess]:
    cluster = LocalCluster(nodes=1, validators=1, data_dir=tmp_path)
    adopted = AdoptedProcess(process.pid, config_path)
    cluster.nodes = [NodeHandle(index=0, node_id="a" * 16, api_url="http://127.0.0.1:9", raft_address="127.0.0.1:9",
                                data_dir=tmp_path, config_path=config_path, is_validator=True, process=adopted)]
    return cluster, adopted


@pytest.mark.parametrize(("code", "killed"), [(POLITE, False), (STUBBORN, True)])
def test_an_adopted_node_stops_on_sigterm_or_is_killed_after_the_grace(tmp_path, code, killed):
    config_path = tmp_path / "config.toml"
    process = spawn(code, "--config", str(config_path))
    try:
        cluster, adopted = adopted_cluster(tmp_path, process, config_path)
        assert cluster.nodes[0].running
        cluster.stop(0, timeout_s=0.5)
        assert adopted.waited_out is killed and not cluster.nodes[0].running
        assert process.wait(timeout=10) == (-9 if killed else -15)
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


def test_a_pid_that_is_not_the_node_is_never_signalled(tmp_path):
    process = spawn(POLITE, "--config", str(tmp_path / "another.toml"))  # a recycled PID: some other program
    try:
        cluster, adopted = adopted_cluster(tmp_path, process, tmp_path / "config.toml")
        assert not cluster.nodes[0].running
        cluster.stop(0, timeout_s=0.5)
        assert process.poll() is None, "stop signalled a process that is not this node"
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


def test_lock_block_keeps_other_clusters_off_the_block_until_released(tmp_path):
    block = AddressBlock("127.99.250")
    lease = lock_block(block, lock_dir=tmp_path)
    try:
        with pytest.raises(ConfigError, match="held by another"):
            acquire_given_block(block, hosts=1, ports=(7000,), lock_dir=tmp_path)
        with pytest.raises(ConfigError, match="held by another command"):
            lock_block(block, lock_dir=tmp_path)
    finally:
        lease.release()
    lock_block(block, lock_dir=tmp_path).release()
