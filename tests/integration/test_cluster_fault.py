"""`synapse cluster fault` and `synapse cluster heal` on a cluster `synapse cluster up` left running,
each command a separate process, as a person breaking a cluster by hand runs them.

What a user checks: a skewed node's GET /health time and its log lines are off by the skew, until
heal; kill, pause, resume and restart act on the real processes (a paused node does not answer, a
restarted one has a new PID in cluster.json); a hand-made partition outlives the command and
`doctor --fix`, keeps an upgrade proposed in the minority from executing there while the majority
executes it, and `heal` removes it so the minority catches up; a block its launcher still holds is
refused, and once the cluster is gone `doctor --fix` removes what it left. Every test stops its nodes in
`finally` from the cluster file; the partition test also checks that no iptables chain is left.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cluster.faults import chain_name, network_capability, synapse_chains
from cluster.local import NodeApi
from tests.integration.test_cluster_cli import alive, kill_leftovers, synapse
from tests.polling import poll_until

pytestmark = pytest.mark.slow

SKEW_TOLERANCE_MS = 3_000
FEATURE_FLAG = Path(__file__).resolve().parents[2] / "examples" / "wat" / "feature_flag.wat"


def nodes_of(cluster_dir: Path) -> list[dict]:
    return json.loads((cluster_dir / "cluster.json").read_text())["nodes"]


def api(cluster_dir: Path, number: int, timeout_s: float = 5.0) -> NodeApi:
    node = nodes_of(cluster_dir)[number - 1]
    return NodeApi(node["api_url"], Path(node["token_file"]).read_text().strip(), timeout_s=timeout_s)


def clock_offset_ms(cluster_dir: Path, number: int) -> tuple[int, dict]:
    before_ms = time.time_ns() // 1_000_000
    health = api(cluster_dir, number).get("/health").data
    after_ms = time.time_ns() // 1_000_000
    return health["time_ms"] - (before_ms + after_ms) // 2, health


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def fault(cluster_dir: Path, tmp: Path, *arguments: str):
    return synapse("cluster", "fault", "--data-dir", str(cluster_dir), *arguments, tmp=tmp)


def stop_cluster(cluster_dir: Path, tmp: Path) -> None:
    if (cluster_dir / "cluster.json").exists():
        synapse("cluster", "down", "--data-dir", str(cluster_dir), tmp=tmp)
        kill_leftovers(cluster_dir)


def test_skew_kill_pause_resume_restart_by_hand_and_heal(tmp_path):
    cluster_dir = tmp_path / "net"
    try:
        started = synapse("cluster", "up", "--nodes", "3", "--validators", "1", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert started.returncode == 0, started.stderr + started.stdout

        skewed = fault(cluster_dir, tmp_path, "skew", "--nodes", "node-2", "--ms", "20000")
        assert skewed.returncode == 0, skewed.stderr
        assert "node-2: clock skewed by +20000 ms" in skewed.stdout
        offset_ms, health = clock_offset_ms(cluster_dir, 2)
        assert abs(offset_ms - 20_000) < SKEW_TOLERANCE_MS and health["clock_skew_ms"] == 20_000, health
        offset_ms, health = clock_offset_ms(cluster_dir, 1)
        assert abs(offset_ms) < SKEW_TOLERANCE_MS and health["clock_skew_ms"] == 0, "the others keep real time"

        slow = fault(cluster_dir, tmp_path, "skew", "--nodes", "3", "--ms=-20000")
        assert slow.returncode == 0 and "node-3: clock skewed by -20000 ms" in slow.stdout, slow.stderr

        # A restart keeps the skew (it is the node's data dir, like a host's wrong clock): its "started" line is 20 s ahead.
        old_pid = nodes_of(cluster_dir)[1]["pid"]
        before_restart_s = time.time()
        restarted = fault(cluster_dir, tmp_path, "restart", "--nodes", "2")
        assert restarted.returncode == 0 and "node-2: stopped (SIGTERM); started again" in restarted.stdout, restarted.stderr
        new_pid = nodes_of(cluster_dir)[1]["pid"]
        assert new_pid != old_pid and alive(new_pid) and not alive(old_pid), "cluster.json names the new process"
        lines = [json.loads(line) for line in (cluster_dir / "node-2" / "node.log").read_text().splitlines()]
        started_at = [line["ts"] for line in lines if line["event"] == "started"][-1]
        logged_s = time.mktime(time.strptime(started_at[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert 20 - 3 < logged_s - before_restart_s < 20 + 30, f"node-2 logged 'started' at {started_at}, 20 s ahead"

        paused = fault(cluster_dir, tmp_path, "pause", "--nodes", "3")
        assert paused.returncode == 0 and "node-3: paused (SIGSTOP)" in paused.stdout, paused.stderr
        pid_3 = nodes_of(cluster_dir)[2]["pid"]
        assert process_state(pid_3) == "T"
        with pytest.raises(OSError):
            api(cluster_dir, 3, timeout_s=1.0).get("/health")
        again = fault(cluster_dir, tmp_path, "pause", "--nodes", "3")
        assert again.returncode == 1 and "node-3 is paused: only a running node can be paused" in again.stderr
        resumed = fault(cluster_dir, tmp_path, "resume", "--nodes", "paused")
        assert resumed.returncode == 0 and "node-3: resumed (SIGCONT)" in resumed.stdout, resumed.stderr
        assert api(cluster_dir, 3).get("/health").data["status"] == "ok"

        killed = fault(cluster_dir, tmp_path, "kill", "--nodes", "3")
        assert killed.returncode == 0 and "node-3: killed (SIGKILL)" in killed.stdout and not alive(pid_3), killed.stderr
        not_paused = fault(cluster_dir, tmp_path, "resume", "--nodes", "3")
        assert not_paused.returncode == 1 and "node-3 is down, not paused" in not_paused.stderr
        back = fault(cluster_dir, tmp_path, "restart", "--nodes", "down")
        assert back.returncode == 0 and "node-3: was down; started again" in back.stdout, back.stderr
        assert abs(clock_offset_ms(cluster_dir, 3)[0] + 20_000) < SKEW_TOLERANCE_MS, "its skew came back with it"

        fault(cluster_dir, tmp_path, "pause", "--nodes", "1")
        healed = synapse("cluster", "heal", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert healed.returncode == 0, healed.stderr
        assert "clock skews: cleared on node-2, node-3" in healed.stdout and "paused nodes: resumed node-1" in healed.stdout
        for number in (1, 2, 3):
            offset_ms, health = poll_until(lambda: (lambda seen: seen if seen[1]["clock_skew_ms"] == 0 else None)(
                clock_offset_ms(cluster_dir, number)), what=f"node-{number}'s clock real again", timeout_s=10)
            assert abs(offset_ms) < SKEW_TOLERANCE_MS, (number, offset_ms)
        status = synapse("cluster", "status", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert status.returncode == 0 and "3/3 nodes healthy" in status.stdout, status.stdout
    finally:
        stop_cluster(cluster_dir, tmp_path)


def test_mistakes_and_link_faults_on_loopback_exit_2_and_change_nothing(tmp_path):
    cluster_dir = tmp_path / "net"
    try:
        started = synapse("cluster", "up", "--nodes", "2", "--validators", "1", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert started.returncode == 0, started.stderr + started.stdout
        for arguments, said in [
            (("delay", "--from", "validators", "--to", "validators", "--ms", "200"), "'delay' needs the netns provider"),
            (("loss", "--from", "1", "--to", "2", "--percent", "20"), "--provider netns"),
            (("bandwidth", "--nodes", "1", "--kbit", "100"), "--provider netns"),
            (("skew", "--nodes", "9", "--ms", "1"), "--nodes: node 9 does not exist"),
            (("skew", "--nodes", "2", "--ms", "5", "--jitter-ms", "1"), "--jitter-ms: unknown key"),
            (("skew", "--nodes", "2", "--ms", "86400001"), "--ms: must be an integer"),
            (("skew", "--nodes", "2"), "missing key 'ms'"),
            (("partition", "--groups", "1"), "--groups: must be a list of 2 to 8"),
            (("teleport", "--nodes", "1"), "unknown fault 'teleport'"),
        ]:
            result = fault(cluster_dir, tmp_path, *arguments)
            assert result.returncode == 2 and said in result.stderr, (arguments, result.stderr)
            assert "hint: " in result.stderr
        assert not (cluster_dir / "node-2" / "clock_skew_ms").exists(), "nothing was armed"
        assert all(alive(node["pid"]) for node in nodes_of(cluster_dir))
        missing = synapse("cluster", "fault", "--data-dir", str(tmp_path / "nowhere"), "kill", "--nodes", "1", tmp=tmp_path)
        assert missing.returncode == 2 and "cluster.json does not exist" in missing.stderr
    finally:
        stop_cluster(cluster_dir, tmp_path)


def _version(cluster_dir: Path, number: int) -> str | None:
    try:
        return api(cluster_dir, number).get("/state").data["version"]
    except (OSError, TypeError, KeyError):
        return None


@pytest.mark.skipif(not network_capability().available, reason=f"partitions need root and iptables: {network_capability().detail}")
def test_a_partition_by_hand_outlives_the_command_and_heal_lets_the_minority_catch_up(tmp_path):
    cluster_dir = tmp_path / "net"
    chain = None
    try:
        started = synapse("cluster", "up", "--nodes", "5", "--validators", "3", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert started.returncode == 0, started.stderr + started.stdout
        chain = chain_name(json.loads((cluster_dir / "cluster.json").read_text())["address_block"])
        proposed = synapse("upgrade", "propose", "--package", str(FEATURE_FLAG), "--version", "1.2.0", "--title", "flag",
                           "--node", "node-5", "--data-dir", str(cluster_dir), "--json", tmp=tmp_path)
        assert proposed.returncode == 0, proposed.stderr
        proposal_id = json.loads(proposed.stdout)["proposal_id"]
        poll_until(lambda: all(api(cluster_dir, n).get(f"/proposals/{proposal_id}").status == 200 for n in range(1, 6)),
                   what="the proposal on every node", timeout_s=30, interval_s=0.2)

        cut = fault(cluster_dir, tmp_path, "partition", "--groups", "1,2,4", "--groups", "rest")
        assert cut.returncode == 0, cut.stderr
        assert "partitioned {node-1, node-2, node-4} | {node-3, node-5}: 12 links cut" in cut.stdout
        assert chain in synapse_chains(), "the partition outlives the command"
        doctor = synapse("doctor", "--fix", "--json", tmp=tmp_path)
        check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "stale partitions")
        assert chain in check["detail"] and "kept" in check["detail"] and chain in synapse_chains(), check

        for number in range(1, 6):   # everyone approves; the minority's votes stay on its side
            assert api(cluster_dir, number).post(f"/proposals/{proposal_id}/vote", {"vote": "approval"}).status in (200, 201, 409)
        poll_until(lambda: all(_version(cluster_dir, n) == "1.2.0" for n in (1, 2, 4)),
                   what="the majority {1, 2, 4} executes 1.2.0", timeout_s=120, interval_s=0.25)
        for number in (3, 5):
            assert _version(cluster_dir, number) == "1.0.0"
            assert api(cluster_dir, number).get("/log?kind=EXECUTE_UPGRADE").data["entries"] == [], "no certificate reached it"
            assert api(cluster_dir, number).get(f"/proposals/{proposal_id}").data["status"] != "executed"

        healed = synapse("cluster", "heal", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert healed.returncode == 0 and f"partitions: chain {chain} removed" in healed.stdout, healed.stderr
        assert chain not in synapse_chains()
        poll_until(lambda: len({api(cluster_dir, n).get("/state").data["state_hash"] for n in range(1, 6)}) == 1
                   and all(_version(cluster_dir, n) == "1.2.0" for n in range(1, 6)),
                   what="every node at 1.2.0 with one state hash", timeout_s=120, interval_s=0.25)
    finally:
        stop_cluster(cluster_dir, tmp_path)
        if chain is not None:
            assert chain not in synapse_chains(), "down removes a chain heal did not"


@pytest.mark.skipif(not network_capability().available, reason=f"partitions need root and iptables: {network_capability().detail}")
def test_a_held_block_is_refused_and_doctor_fix_removes_a_partition_once_its_cluster_is_gone(tmp_path):
    from cluster.addresses import lock_running_block, parse_block

    cluster_dir = tmp_path / "net"
    chain = None
    try:
        started = synapse("cluster", "up", "--nodes", "2", "--validators", "1", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert started.returncode == 0, started.stderr + started.stdout
        block = json.loads((cluster_dir / "cluster.json").read_text())["address_block"]
        chain = chain_name(block)
        with lock_running_block(parse_block(block)) as lease:   # as a scenario run or a test launching it would
            assert lease is not None
            held = fault(cluster_dir, tmp_path, "isolate", "--nodes", "1")
            assert held.returncode == 1 and "is held by the process that launched this cluster" in held.stderr, held.stderr
            assert chain not in synapse_chains(), "nothing was cut"
        cut = fault(cluster_dir, tmp_path, "isolate", "--nodes", "1")
        assert cut.returncode == 0 and "2 links cut" in cut.stdout, cut.stderr

        kill_leftovers(cluster_dir)   # the nodes die without 'down': the chain is left behind
        poll_until(lambda: not any(alive(node["pid"]) for node in nodes_of(cluster_dir)), what="the nodes gone", timeout_s=10)
        report = json.loads(synapse("doctor", "--json", tmp=tmp_path).stdout)
        check = next(c for c in report["checks"] if c["name"] == "stale partitions")
        assert check["status"] == "warn" and chain in check["detail"] and chain in synapse_chains(), check
        fixed = json.loads(synapse("doctor", "--fix", "--json", tmp=tmp_path).stdout)
        check = next(c for c in fixed["checks"] if c["name"] == "stale partitions")
        assert chain in check["detail"] and "removed" in check["detail"] and chain not in synapse_chains(), check
    finally:
        stop_cluster(cluster_dir, tmp_path)
        if chain is not None:
            assert chain not in synapse_chains()
