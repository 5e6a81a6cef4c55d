"""Nodes forked from the preloaded template (cluster/template.py, node/forkserver.py) are real node
processes: what an operator checks with ps and /proc, and what kill -9, SIGSTOP, restart and a killed
launcher do, is the same as with plain spawning (SYNAPSE_SPAWN=exec), which stays available."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.local import LocalCluster
from node.errors import ClusterError
from tests.integration.test_node_process import is_alive, wait_dead
from tests.polling import poll_until

pytestmark = pytest.mark.slow


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def command_line(pid: int) -> list[str]:
    return [word.decode() for word in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if word]


def test_nodes_are_forked_from_the_template_and_are_processes_of_their_own(tmp_path):
    with LocalCluster(nodes=3, validators=1, data_dir=tmp_path / "cluster") as cluster:
        template_pid = cluster._template.pid
        assert command_line(template_pid)[1:3] == ["-m", "node.forkserver"]
        pids = [handle.pid for handle in cluster.nodes]
        assert len(set(pids)) == 3 and template_pid not in pids
        for handle in cluster.nodes:
            state, parent, group, session = stat_fields(handle.pid)[:4]
            assert (int(parent), int(group), int(session)) == (template_pid, handle.pid, handle.pid), \
                "a child of the template, leading its own session and process group"
            assert command_line(handle.pid)[1:] == ["-m", "node", "--config", str(handle.config_path)]
            assert Path(f"/proc/{handle.pid}/cwd").resolve() == handle.data_dir.resolve()
        node_ids = {cluster.api(index).get("/health").data["node_id"] for index in range(3)}
        assert node_ids == {handle.node_id for handle in cluster.nodes}


def test_kill_stop_pause_and_restart_work_through_the_template(tmp_path):
    with LocalCluster(nodes=2, validators=1, data_dir=tmp_path / "cluster") as cluster:
        template_pid = cluster._template.pid
        note = cluster.api(0).post("/log/notes", {"text": "before the crash"}).data
        cluster.wait_for(lambda: cluster.api(1).get(f"/log/{note['id']}").status == 200, 10, "the note on node 1")
        killed = cluster.nodes[0].pid
        assert cluster.kill(0) == -signal.SIGKILL and not is_alive(killed)
        cluster.restart(0)
        restarted = cluster.nodes[0].pid
        assert restarted != killed and int(stat_fields(restarted)[1]) == template_pid, "restart goes through the template"
        assert cluster.api(0).get(f"/log/{note['id']}").status == 200
        cluster.pause(1)
        poll_until(lambda: stat_fields(cluster.nodes[1].pid)[0] == "T", what="node 1 stopped by SIGSTOP", timeout_s=10)
        cluster.resume(1)
        assert cluster.api(1).get("/health").status == 200
        assert cluster.stop(1) == 0, "SIGTERM: a clean stop, its exit code reported by the template"
        cluster.nodes[0].process.send_signal(signal.SIGINT)
        assert cluster.nodes[0].process.wait(timeout=15) == 0
    assert not is_alive(template_pid), "the template exits with its cluster"


def signal_masks(pid: int) -> dict[str, int]:
    """SigIgn and SigCgt of /proc/<pid>/status: bit n-1 is signal n."""
    lines = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    return {name: int(lines[name].strip(), 16) for name in ("SigIgn", "SigCgt")}


def test_a_forked_node_has_the_signal_dispositions_of_a_plain_one_so_a_vanished_peer_cannot_kill_it(tmp_path):
    # A forked node once ran with SIGPIPE at its default action: a write to a socket whose peer had just
    # died (a Raft partner killed with SIGKILL, or a stranger resetting a connection) killed the whole
    # node (exit -13), where a plain `python -m node` gets EPIPE. Found by leader_crashes_before_publishing.
    with LocalCluster(nodes=1, validators=1, data_dir=tmp_path / "forked") as forked, \
            LocalCluster(nodes=1, validators=1, data_dir=tmp_path / "plain", extra_env={"SYNAPSE_SPAWN": "exec"}) as plain:
        forked_masks, plain_masks = signal_masks(forked.nodes[0].pid), signal_masks(plain.nodes[0].pid)
        assert forked_masks["SigIgn"] & (1 << (signal.SIGPIPE - 1)), "SIGPIPE is ignored: EPIPE, not death"
        assert forked_masks == plain_masks, (hex(forked_masks["SigIgn"]), hex(plain_masks["SigIgn"]))


def test_plain_spawning_stays_available(tmp_path):
    with LocalCluster(nodes=1, validators=1, data_dir=tmp_path / "cluster", extra_env={"SYNAPSE_SPAWN": "exec"}) as cluster:
        assert cluster._template is None
        assert int(stat_fields(cluster.nodes[0].pid)[1]) == os.getpid(), "a child of the launcher, as before"
        assert cluster.api(0).get("/health").status == 200
    with pytest.raises(ClusterError, match="SYNAPSE_SPAWN='fork' is not a spawn mode"):
        LocalCluster(nodes=1, extra_env={"SYNAPSE_SPAWN": "fork"})


def test_the_template_and_its_nodes_die_with_their_launcher_even_on_kill_9(tmp_path):
    script = textwrap.dedent(f"""
        import json, time
        from cluster.local import LocalCluster
        cluster = LocalCluster(nodes=2, validators=1, data_dir={str(tmp_path / "cluster")!r})
        cluster.__enter__()
        print(json.dumps([cluster._template.pid] + [handle.pid for handle in cluster.nodes]), flush=True)
        time.sleep(120)
    """)
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        pids = json.loads(launcher.stdout.readline())
        assert len(pids) == 3 and all(is_alive(pid) for pid in pids)
    finally:
        launcher.kill()
        launcher.wait(timeout=10)
        launcher.stdout.close()
    wait_dead(pids)


def test_the_template_refuses_malformed_requests_and_pids_it_did_not_start(tmp_path):
    from cluster.template import NodeTemplate
    template = NodeTemplate.start(env=dict(os.environ), detached=False, log_path=tmp_path / "template.log")
    try:
        with pytest.raises(ClusterError, match="refused spawn: TypeError: config must be a path string"):
            template._request({"op": "spawn", "config": 7, "cwd": "/", "stdout": "/dev/null", "stderr": "/dev/null",
                               "env": {}, "detached": False})
        with pytest.raises(ClusterError, match="refused reap: ValueError: pid 1 is not a node this template started"):
            template._request({"op": "reap", "pid": 1})
        with pytest.raises(ClusterError, match="unknown op 'exec'"):
            template._request({"op": "exec"})
        assert template.reap(1) is None
    finally:
        template.close()
    assert not is_alive(template.pid)


def decoy_packages(directory: Path) -> Path:
    """A directory holding packages named like ours that refuse to be imported: a launcher started from
    there (a user's other checkout, a project with a `node/` folder) must still run this repository's code."""
    for package in ("node", "cluster"):
        (directory / package).mkdir(parents=True)
        (directory / package / "__init__.py").write_text(f"raise SystemExit('the decoy {package} package was imported')\n")
    return directory


@pytest.mark.parametrize("spawn", ["template", "exec"])
def test_nodes_run_this_repository_s_code_whatever_directory_the_launcher_runs_in(tmp_path, monkeypatch, spawn):
    monkeypatch.chdir(decoy_packages(tmp_path / "elsewhere"))
    with LocalCluster(nodes=1, validators=1, data_dir=tmp_path / "cluster", extra_env={"SYNAPSE_SPAWN": spawn}) as cluster:
        assert (cluster._template is not None) == (spawn == "template"), "no fallback from the template to plain spawning"
        assert cluster.api(0).get("/health").status == 200
