"""Real node processes: start, answer, stop cleanly; refuse to start with one clear line; leave nothing behind."""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.addresses import acquire_block
from cluster.cli import main
from cluster.genesis import create_network
from cluster.local import API_PORT, RAFT_PORT, LocalCluster, NodeApi
from node.errors import ClusterError
from node.identity import Identity
from tests.conftest import SESSION_ENV, find_session_node_processes
from tests.polling import poll_until

pytestmark = pytest.mark.slow
REFUSAL_PREFIX = "synapse-node: refusing to start: "
NOBODY = 65534


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an exited child not yet reaped)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_dead(pids, timeout_s: float = 15.0) -> None:
    poll_until(lambda: not any(is_alive(pid) for pid in pids), what=f"processes {list(pids)} to exit",
               timeout_s=timeout_s, interval_s=0.05, describe=lambda: f"alive: {[pid for pid in pids if is_alive(pid)]}")


@pytest.fixture
def lease():
    with acquire_block(hosts=2, ports=[API_PORT, RAFT_PORT]) as held:
        yield held


@pytest.fixture
def network(tmp_path, lease):
    return create_network(tmp_path / "net", nodes=2, validators=1, block=lease.block, api_port=API_PORT, raft_port=RAFT_PORT)


def run_node(config_path: Path, *, as_nobody: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "node", "--config", str(config_path)]
    if as_nobody:
        # setpriv (util-linux) rather than Popen(user=...): on machines where the interpreter lives under
        # /root (pyenv), Popen's child, already 'nobody', cannot exec it; setpriv can.
        if shutil.which("setpriv") is None:
            pytest.skip("running a node as another user needs setpriv: apt-get install util-linux")
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one-line refusal: the process exited 2 and its last stderr line says why."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(REFUSAL_PREFIX), result.stderr
    return last_line[len(REFUSAL_PREFIX):]


# --- a node runs and stops ---------------------------------------------------------------------


def test_a_node_starts_answers_health_and_stops_cleanly_on_sigterm(tmp_path):
    with LocalCluster(nodes=1, validators=1, data_dir=tmp_path / "cluster") as cluster:
        handle = cluster.nodes[0]
        health = cluster.api(0).get("/health")
        assert health.status == 200
        assert health.data["status"] == "ok" and health.data["node_id"] == handle.node_id
        note = cluster.api(0).post("/log/notes", {"text": "persisted"})
        assert note.status == 201
        cli = CliRunner()
        result = cli.invoke(main, ["node", "note", "--config", str(handle.config_path), "from the CLI"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["sequence"] == 2  # the CLI read the token from the data dir
        result = cli.invoke(main, ["node", "health", "--config", str(handle.config_path)])
        assert json.loads(result.output)["entries"] == 2
        assert cluster.stop(0) == 0
        events = [event["event"] for event in cluster.log_events(0)]
        assert events.index("started") < events.index("stopping") < events.index("stopped")
        assert '"event":"stopped"' in cluster.logs(0)  # the same JSON lines go to stderr
        stopped = next(event for event in cluster.log_events(0) if event["event"] == "stopped")
        assert stopped["node"] == handle.node_id and stopped["level"] == "info" and stopped["ts"].endswith("Z")
        cluster.restart(0)  # same data dir, same key, same token
        assert cluster.api(0).get(f"/log/{note.data['id']}").data["body"] == {"text": "persisted"}
        handle.process.send_signal(signal.SIGINT)
        assert handle.process.wait(timeout=15) == 0


def test_cluster_helpers_kill_pause_resume_restart(tmp_path):
    with LocalCluster(nodes=2, validators=1, data_dir=tmp_path / "cluster") as cluster:
        description = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
        assert [node["pid"] for node in description["nodes"]] == [handle.pid for handle in cluster.nodes]
        assert [node["node_id"] for node in description["nodes"]] == [handle.node_id for handle in cluster.nodes]
        note = cluster.api(0).post("/log/notes", {"text": "before the crash"}).data
        cluster.wait_for(lambda: cluster.api(1).get(f"/log/{note['id']}").status == 200, 10, "the note on node 1")
        assert cluster.kill(0) == -signal.SIGKILL
        cluster.restart(0)
        assert cluster.api(0).get(f"/log/{note['id']}").status == 200  # acknowledged before kill -9: still there
        cluster.pause(1)
        with pytest.raises(OSError):  # a paused node accepts the connection but never answers
            NodeApi(cluster.nodes[1].api_url, None, timeout_s=0.5).get("/health")
        cluster.resume(1)
        assert cluster.api(1).get("/health").status == 200
        with pytest.raises(ClusterError, match="timed out after 0.2 s waiting for something impossible"):
            cluster.wait_for(lambda: False, 0.2, "something impossible")
        with pytest.raises(ClusterError, match="no node 2"):
            cluster.api(2)


# --- refusals: a clear line and a non-zero exit ------------------------------------------------


def test_a_bad_config_is_refused_naming_the_field(network):
    config_path = network.nodes[0].config_path
    config_path.write_text(config_path.read_text() + "\n[limits]\ngossip_intervall_ms = 5\n")
    result = run_node(config_path)
    message = refusal(result)
    assert "unknown key limits.gossip_intervall_ms" in message and str(config_path) in message
    assert len(result.stderr.strip().splitlines()) == 1  # before logging starts: just the one line


def test_a_package_ca_file_that_is_not_a_pem_bundle_is_refused(network):
    config_path = network.nodes[0].config_path
    bad = network.nodes[0].node_dir / "mirror-ca.pem"
    bad.write_text("not a certificate\n")
    config_path.write_text(config_path.read_text().replace("[packages]\n", '[packages]\nca_file = "mirror-ca.pem"\n'))
    message = refusal(run_node(config_path))
    assert f"packages.ca_file {bad} is not a readable PEM bundle" in message


def test_a_missing_config_file_is_refused_also_through_the_cli(tmp_path):
    assert "does not exist" in refusal(run_node(tmp_path / "missing.toml"))
    synapse = Path(sys.executable).parent / "synapse"
    result = subprocess.run([str(synapse), "node", "run", "--config", str(tmp_path / "missing.toml")],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "does not exist" in refusal(result)


def test_a_key_with_loose_permissions_is_refused(network):
    key_path = network.nodes[0].node_dir / "node_key"
    key_path.chmod(0o644)
    message = refusal(run_node(network.nodes[0].config_path))
    assert f"chmod 600 {key_path}" in message


def test_an_address_in_use_is_refused_naming_it_and_the_config_field(network):
    host = network.nodes[0].api_url.removeprefix("http://").rsplit(":", 1)[0]
    with socket.socket() as squatter:
        squatter.bind((host, API_PORT))
        squatter.listen()
        message = refusal(run_node(network.nodes[0].config_path))
    assert f"address {host}:{API_PORT}" in message and "is already in use" in message
    assert "api.host/api.port in" in message and str(network.nodes[0].config_path) in message


def test_a_data_dir_that_is_a_file_is_refused(network):
    config_path = network.nodes[0].config_path
    (config_path.parent / "not-a-dir").write_text("x")
    config_path.write_text(config_path.read_text().replace('data_dir = "."', 'data_dir = "not-a-dir"'))
    message = refusal(run_node(config_path))
    assert "is not a directory" in message and "node.data_dir" in message


def test_an_unreadable_data_dir_is_refused(lease):
    # Root bypasses permissions, so as root the node runs as 'nobody' in a directory nobody may traverse.
    root = Path(tempfile.mkdtemp(prefix="synapse-e1-"))
    try:
        root.chmod(0o755)
        network = create_network(root / "net", nodes=1, validators=1, block=lease.block, api_port=API_PORT, raft_port=RAFT_PORT)
        config_path = network.nodes[0].config_path
        (root / "net").chmod(0o755)
        data_dir = root / "net" / "locked"
        data_dir.mkdir(mode=0o000)
        config_path.write_text(config_path.read_text().replace('data_dir = "."', f'data_dir = "{data_dir}"'))
        config_path.chmod(0o644)
        network.nodes[0].node_dir.chmod(0o755)
        message = refusal(run_node(config_path, as_nobody=os.geteuid() == 0))
        assert f"data dir {data_dir}" in message and "is not readable and writable" in message
        assert "node.data_dir" in message
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_genesis_that_does_not_list_this_node_is_refused(network):
    node_dir = network.nodes[1].node_dir
    (node_dir / "node_key").unlink()
    (node_dir / "node_key").write_bytes(Identity.generate().private_bytes())
    (node_dir / "node_key").chmod(0o600)
    result = run_node(network.nodes[1].config_path)
    message = refusal(result)
    assert "does not list this node's key" in message
    assert '"event":"refused"' in result.stderr  # logging had started: the refusal is in the JSON log too
    assert "does not list this node's key" in (node_dir / "node.log").read_text()


def test_a_validator_with_a_wrong_raft_secret_is_refused(network):
    secret_path = network.nodes[0].node_dir / "raft_secret"
    secret_path.write_text("0" * 64)
    assert "is not the one genesis names" in refusal(run_node(network.nodes[0].config_path))
    secret_path.unlink()
    assert "Raft secret" in refusal(run_node(network.nodes[0].config_path))


# --- nothing is left behind --------------------------------------------------------------------


def test_local_cluster_cleans_up_when_the_test_body_raises(tmp_path):
    cluster = LocalCluster(nodes=2, validators=1, data_dir=tmp_path / "cluster")
    with pytest.raises(RuntimeError, match="boom"):
        with cluster:
            pids = [handle.pid for handle in cluster.nodes]
            assert all(is_alive(pid) for pid in pids)
            lock_path = cluster._lease.lock_path
            cluster.pause(1)  # a stopped node must be stopped too
            raise RuntimeError("boom")
    wait_dead(pids, timeout_s=1)  # already reaped by close()
    descriptor = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the block is free again
    finally:
        os.close(descriptor)


def test_a_node_that_cannot_start_is_reported_with_its_log(tmp_path):
    # An unknown limit in every config.toml: the node refuses to start, and the launcher says why.
    with pytest.raises(ClusterError) as caught:
        with LocalCluster(nodes=1, validators=1, data_dir=tmp_path / "cluster", config_limits={"bogus_limit": 1}):
            pass
    assert "exited with code 2 while starting" in caught.value.message
    assert "unknown key limits.bogus_limit" in caught.value.message


def test_nodes_die_with_their_launcher_even_on_kill_9(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys, time
        from cluster.local import LocalCluster
        cluster = LocalCluster(nodes=2, validators=1, data_dir={str(tmp_path / "cluster")!r})
        cluster.__enter__()
        print(json.dumps([handle.pid for handle in cluster.nodes]), flush=True)
        time.sleep(120)
    """)
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        pids = json.loads(launcher.stdout.readline())
        assert len(pids) == 2 and all(is_alive(pid) for pid in pids)
    finally:
        launcher.kill()
        launcher.wait(timeout=10)
        launcher.stdout.close()
    wait_dead(pids)


def test_the_leak_check_finds_a_node_process_of_this_session():
    session_id = "leak-check-self-test"
    fake_node = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "node"],
                                 env={**os.environ, SESSION_ENV: session_id}, stdin=subprocess.DEVNULL)
    try:
        found = poll_until(lambda: find_session_node_processes(session_id), what="the fake node among the session's "
                           "processes", timeout_s=10)
        assert [pid for pid, _ in found] == [fake_node.pid]
        assert find_session_node_processes("another-session") == []
    finally:
        fake_node.kill()
        fake_node.wait(timeout=10)
    assert find_session_node_processes(session_id) == []
