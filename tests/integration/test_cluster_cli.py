"""The testbed's command line for real: `synapse cluster up|status|logs|down`, `synapse scenario
run|check` and `synapse doctor`, each run as a separate process the way a user runs it.

Every test that starts nodes stops them in `finally` from the cluster file (a detached cluster does
not die with the test), and the session's leak check (tests/conftest.py) fails the run if one is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from cluster.faults import chain_name, network_capability, synapse_chains
from tests.polling import poll_until

REPOSITORY = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 240
PARTITIONS = network_capability()

pytestmark = pytest.mark.slow


def synapse(*arguments: str, tmp: Path | None = None, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the CLI as a user would. `tmp` becomes its TMPDIR, so the 'last cluster' pointer and temp
    data dirs stay inside the test's own directory."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    environment.pop("SYNAPSE_CLUSTER_DIR", None)
    if tmp is not None:
        environment["TMPDIR"] = str(tmp)
    return subprocess.run([sys.executable, "-c", "from cluster.cli import main; main()", *arguments], cwd=REPOSITORY,
                          env=environment, capture_output=True, text=True, timeout=timeout_s)


def kill_leftovers(cluster_dir: Path) -> None:
    """Whatever the test did, no node of this cluster survives it."""
    try:
        document = json.loads((cluster_dir / "cluster.json").read_text())
    except (OSError, ValueError):
        return
    for node in document.get("nodes", []):
        if node.get("pid"):
            try:
                os.killpg(node["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_cluster_up_leaves_nodes_running_and_status_logs_down_work_from_its_file(tmp_path):
    cluster_dir = None
    try:
        started = synapse("cluster", "up", "--nodes", "3", "--validators", "1", tmp=tmp_path)
        assert started.returncode == 0, started.stderr + started.stdout
        cluster_dir = Path(started.stdout.split("data dir: ", 1)[1].split("\n", 1)[0])
        assert cluster_dir.parent == tmp_path, "without --data-dir, a new temp dir (its path printed)"
        document = json.loads((cluster_dir / "cluster.json").read_text())
        pids = [node["pid"] for node in document["nodes"]]
        assert len(pids) == 3 and document["detached"] is True
        assert all(alive(pid) and os.getsid(pid) == pid for pid in pids), "nodes run on, each in a session of its own"
        for node in document["nodes"]:
            assert node["api_url"] in started.stdout and node["node_id"] in started.stdout
            assert Path(node["token_file"]).stat().st_mode & 0o077 == 0
        again = synapse("cluster", "up", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert again.returncode == 2 and "already holds a cluster" in again.stderr

        status = synapse("cluster", "status", tmp=tmp_path)
        assert status.returncode == 0 and "3/3 nodes healthy" in status.stdout, status.stdout + status.stderr
        assert f"cluster: {cluster_dir}" in status.stderr, "without --data-dir: the last cluster started, named"
        logs = synapse("cluster", "logs", "node-2", "--all", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert logs.returncode == 0 and " node-2 started " in logs.stdout and "node-1" not in logs.stdout
        raw = synapse("cluster", "logs", "--json", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert all(json.loads(line)["event"] for line in raw.stdout.splitlines())
        unknown = synapse("cluster", "logs", "node-9", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert unknown.returncode == 2 and "no node 'node-9'" in unknown.stderr

        follower = subprocess.Popen([sys.executable, "-c", "from cluster.cli import main; main()", "cluster", "logs", "--follow",
                                     "-n", "0", "--data-dir", str(cluster_dir)], cwd=REPOSITORY, stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
        printed: list[str] = []
        reader = threading.Thread(target=lambda: printed.extend(line for line in follower.stdout), daemon=True)
        reader.start()
        try:
            # The follower is past the old lines once it prints a line appended after it started: append
            # a marker line on each poll (one appended before it opened the files is never printed).
            node_log = Path(document["nodes"][0]["data_dir"]) / "node.log"

            def follower_printed_a_marker() -> bool:
                with open(node_log, "a") as handle:
                    handle.write(json.dumps({"ts": "", "level": "info", "event": "test_follow_marker", "fields": {}}) + "\n")
                return any("test_follow_marker" in line for line in printed)

            poll_until(follower_printed_a_marker, what="logs --follow to print a line appended after it started",
                       timeout_s=30, interval_s=0.2)
            stopped = synapse("cluster", "down", "--data-dir", str(cluster_dir), tmp=tmp_path)
            poll_until(lambda: all(any(f" node-{index} stopped" in line for line in printed) for index in (1, 2, 3)),
                       what="logs --follow to print each node's last line", timeout_s=30)
        finally:
            follower.terminate()
            follower.wait(timeout=10)
            reader.join(timeout=10)
            follower.stdout.close()
        followed = "".join(printed)
        assert stopped.returncode == 0 and stopped.stdout.count(": stopped") == 3, stopped.stdout
        assert all(f" node-{index} stopped" in followed for index in (1, 2, 3)), "--follow prints lines written after it started"
        assert " started " not in followed, "-n 0 shows no old lines"
        assert not any(alive(pid) for pid in pids)
        after = synapse("cluster", "status", "--data-dir", str(cluster_dir), tmp=tmp_path)
        assert after.returncode == 1 and "0/3 nodes healthy" in after.stdout
    finally:
        if cluster_dir is not None:
            kill_leftovers(cluster_dir)


def test_cluster_commands_without_a_cluster_say_what_to_do(tmp_path):
    result = synapse("cluster", "status", "--data-dir", str(tmp_path), tmp=tmp_path)
    assert result.returncode == 2 and "cluster.json does not exist" in result.stderr and "synapse cluster up" in result.stderr
    result = synapse("cluster", "down", tmp=tmp_path)
    assert result.returncode == 2 and "no cluster directory given" in result.stderr and "--data-dir" in result.stderr


def run_scenario(path: Path, report_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path | None]:
    result = synapse("scenario", "run", str(path), "--report-dir", str(report_dir), *extra, tmp=report_dir.parent)
    folders = sorted(report_dir.iterdir()) if report_dir.exists() else []
    return result, folders[-1] if folders else None


def test_the_partition_scenario_runs_and_writes_its_report(tmp_path):
    result, folder = run_scenario(REPOSITORY / "scenarios" / "partition_heal_log.toml", tmp_path / "reports", "--seed", "3")
    assert "seed: 3 (replay with --seed 3)" in result.stdout
    if not PARTITIONS.available:
        assert result.returncode == 1 and "network partitions are not possible on this machine" in result.stdout
        return
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: PASS" in result.stdout
    assert {"history.json", "junit.xml", "summary.md", "scenario.toml"} <= {path.name for path in folder.iterdir()}
    suite = ElementTree.parse(folder / "junit.xml").getroot()
    assert suite.get("failures") == "0" and suite.get("errors") == "0" and int(suite.get("tests")) == 13 + 4
    history = json.loads((folder / "history.json").read_text())
    assert history["seed"] == 3 and history["verdict"] == "PASS"
    assert [record["label"] for record in history["safety"]] == [
        "safety: logs converged", "safety: one version and one state hash",
        "safety: nothing executed without a valid certificate", "safety: nothing executed twice"]
    block = history["nodes"]["node-1"]["api_url"].split("//")[1].rsplit(".", 1)[0]
    assert chain_name(block) not in synapse_chains(), "the run removed its iptables chain"
    for index in range(1, 6):
        final = json.loads((folder / "nodes" / f"node-{index}" / "final.json").read_text())
        assert final["process"] == "up" and len(final["log"]) == 5
        assert (folder / "nodes" / f"node-{index}" / "node.log").stat().st_size > 0


def test_the_crash_scenario_passes(tmp_path):
    result, folder = run_scenario(REPOSITORY / "scenarios" / "crash_pause_catch_up.toml", tmp_path / "reports")
    assert result.returncode == 0, result.stdout + result.stderr
    history = json.loads((folder / "history.json").read_text())
    killed = history["steps"][1]["seen"]
    assert killed.startswith("kill: node-") and int(killed[-1]) <= 3, "a validator was killed"
    assert history["steps"][2]["seen"] in ("pause: node-4", "pause: node-5")


def write_scenario(directory: Path, text: str, name: str = "s.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_failing_assertion_shows_expected_seen_and_the_log_lines_around_it(tmp_path):
    path = write_scenario(tmp_path, """
        [scenario]
        name = "a note that never comes"
        settle = "5s"
        [cluster]
        nodes = 3
        validators = 1
        [[steps]]
        do = "note"
        on = 1
        text = "hello"
        [[steps]]
        name = "wait for a note nobody writes"
        do = "assert"
        check = "log_contains"
        text = "never written"
        on = [2, 3]
        within = "1s"
        [[steps]]
        do = "wait"
        duration = "30s"
        """)
    result, folder = run_scenario(path, tmp_path / "reports")
    assert result.returncode == 1 and "verdict: FAIL" in result.stdout
    assert "wait for a note nobody writes ... FAILED" in result.stdout and "waited" not in result.stdout
    summary = (folder / "summary.md").read_text()
    assert "## FAILED: wait for a note nobody writes" in summary
    assert "- expected: the log holds text 'never written'" in summary and "- seen: fails on 2 of 2 node(s)" in summary
    excerpt = summary.split("node-2 log around the failure:")[1].split("```")[1]
    assert " info    node-2 started " in excerpt, "the node's own log lines are quoted"
    junit = (folder / "junit.xml").read_text()
    assert '"event": "started"' in junit or '"event":"started"' in junit, "JUnit keeps the raw JSON lines"
    history = json.loads((folder / "history.json").read_text())
    assert [record["status"] for record in history["steps"]] == ["passed", "failed"], "no step runs after a failure"
    assert all(record["status"] == "passed" for record in history["safety"]), "the safety checks still judged the cluster"


def test_process_faults_random_picks_and_hooks_replay_from_the_seed(tmp_path):
    (tmp_path / "hooks.py").write_text(textwrap.dedent('''
        def two_down(driver, expected):
            down = [index for index in range(1, driver.node_count + 1) if not driver.processes.live(index)]
            assert len(down) == expected, f"{len(down)} nodes down"
            return f"down: {down}"
        '''))
    path = write_scenario(tmp_path, """
        [scenario]
        name = "crash, pause and catch up"
        [cluster]
        nodes = 4
        validators = 1
        [cluster.limits]
        gossip_interval_ms = 100
        [[steps]]
        do = "kill"
        nodes = "random"
        [[steps]]
        do = "pause"
        nodes = "random"
        [[steps]]
        do = "hook"
        hook = "hooks:two_down"
        args = { expected = 2 }
        [[steps]]
        do = "note"
        on = "live"
        text = "written by {node} while two nodes are down"
        save_as = "notes"
        [[steps]]
        do = "restart"
        nodes = "down"
        [[steps]]
        do = "resume"
        nodes = "paused"
        [[steps]]
        do = "assert"
        check = "log_contains"
        notes = "notes"
        on = "all"
        within = "20s"
        [[steps]]
        do = "assert"
        check = "metric"
        metric = "synapse_log_entries_visible"
        at_least = 2
        on = "all"
        within = "5s"
        """)
    picks = []
    for run in range(2):
        result, folder = run_scenario(path, tmp_path / f"reports-{run}", "--seed", "11")
        assert result.returncode == 0, result.stdout + result.stderr
        history = json.loads((folder / "history.json").read_text())
        picks.append([record["seen"] for record in history["steps"][:3]])
    assert picks[0] == picks[1], "the same seed picks the same nodes"
    assert picks[0][2].startswith("down: [")


def test_an_invalid_scenario_starts_nothing_and_names_the_mistake(tmp_path):
    path = write_scenario(tmp_path, '[scenario]\nname = "x"\n[[steps]]\ndo = "kill"\nnodes = 9\n')
    began = time.monotonic()
    result = synapse("scenario", "run", str(path), "--report-dir", str(tmp_path / "reports"), tmp=tmp_path)
    assert result.returncode == 2 and f"{path}: steps[0].nodes: node 9 does not exist" in result.stderr
    assert not (tmp_path / "reports").exists() and time.monotonic() - began < 30
    as_json = synapse("scenario", "run", str(path), "--json", "--report-dir", str(tmp_path / "reports"), tmp=tmp_path)
    document = json.loads(as_json.stdout)
    assert as_json.returncode == 2 and document["verdict"] == "INVALID" and document["runs"] == []
    assert "steps[0].nodes: node 9 does not exist" in document["error"] and not (tmp_path / "reports").exists()
    checked = synapse("scenario", "check", *map(str, sorted((REPOSITORY / "scenarios").glob("*.toml"))), tmp=tmp_path)
    assert checked.returncode == 0 and ": ok (" in checked.stdout


@pytest.mark.skipif(not PARTITIONS.available, reason=f"needs root and iptables ({PARTITIONS.detail}); {PARTITIONS.hint}")
def test_a_new_cluster_clears_drop_rules_a_killed_run_left_on_its_block(monkeypatch, tmp_path):
    import cluster.local
    from cluster.faults import NetworkFaults
    from cluster.local import LocalCluster

    real_acquire = cluster.local.acquire_block
    left_behind = []

    def acquire_with_a_stale_partition(**options):
        lease = real_acquire(**options)
        stale = NetworkFaults.open(lease.block.prefix)  # a run killed here would leave this chain behind
        stale.partition([[lease.block.host(1)], [lease.block.host(2)]])
        left_behind.append(lease.block.prefix)
        return lease
    monkeypatch.setattr(cluster.local, "acquire_block", acquire_with_a_stale_partition)
    with LocalCluster(nodes=2, validators=1, data_dir=tmp_path / "c") as started:
        assert chain_name(left_behind[0]) not in synapse_chains()
        started.wait_for(lambda: started.api(1).get("/health").data["peers_up"] == 1, 15, "node-2 reaching node-1")


def test_doctor_reports_every_check():
    result = synapse("doctor")
    assert result.returncode in (0, 1)
    for name in ("python", "loopback addresses", "free address blocks", "network partitions (iptables)", "stale partitions",
                 "stale runs", "C toolchain", "Rust toolchain", "wasmtime"):
        assert f" {name}" in result.stdout, name
    assert result.returncode == (1 if "FAIL " in result.stdout else 0)


def test_doctor_json_is_one_document_with_every_check():
    result = synapse("doctor", "--json")
    document = json.loads(result.stdout)
    names = {check["name"] for check in document["checks"]}
    for name in ("python", "loopback addresses", "free address blocks", "stale runs", "C toolchain", "Rust toolchain", "wasmtime"):
        assert any(check_name.startswith(name) for check_name in names), name
    assert all(check["status"] in ("ok", "warn", "fail") and "detail" in check and "hint" in check for check in document["checks"])
    assert document["failed"] == sum(check["status"] == "fail" for check in document["checks"])
    assert result.returncode == (1 if document["failed"] else 0) and document["ok"] == (document["failed"] == 0)


def test_scenario_run_json_prints_one_document_and_sends_progress_to_stderr(tmp_path):
    path = write_scenario(tmp_path, """
        [scenario]
        name = "one note"
        settle = "5s"
        [cluster]
        nodes = 2
        validators = 1
        [[steps]]
        do = "note"
        on = 1
        text = "hello"
        [[steps]]
        do = "assert"
        check = "log_contains"
        text = "hello"
        on = 2
        within = "10s"
        """)
    result, _folder = run_scenario(path, tmp_path / "reports", "--json", "--seed", "5")
    document = json.loads(result.stdout)
    assert result.returncode == 0 and document["verdict"] == "PASS", result.stderr[-2000:]
    (only,) = document["runs"]
    assert only["scenario"] == "one note" and only["seed"] == 5 and only["steps"] == 2 and only["failures"] == []
    assert (Path(only["report"]) / "summary.md").exists()
    assert "seed: 5" in result.stderr and "verdict: PASS" in result.stderr


def test_a_scenario_run_stopped_with_sigterm_leaves_no_process_and_no_iptables_rule(tmp_path):
    """`timeout`, CI runners and service managers stop a run with SIGTERM: the cluster's nodes and its
    partition rules must go with it, as they do on Ctrl-C."""
    path = write_scenario(tmp_path, """
        [scenario]
        name = "a partition that stays until the run is stopped"
        [cluster]
        nodes = 3
        validators = 1
        [[steps]]
        do = "partition"
        groups = [[1], [2, 3]]
        [[steps]]
        do = "wait"
        duration = "60s"
        """)
    runner = subprocess.Popen([sys.executable, "-c", "from cluster.cli import main; main()", "scenario", "run", str(path),
                               "--report-dir", str(tmp_path / "reports")], cwd=REPOSITORY, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    try:
        reader = threading.Thread(target=lambda: lines.extend(runner.stdout), daemon=True)
        reader.start()
        poll_until(lambda: any("partition" in line and "ok" in line for line in lines) or runner.poll() is not None,
                   timeout_s=120, what="the run to apply its partition (then it waits 60 s)")
        assert runner.poll() is None, "".join(lines)
        block = next(line.split("http://")[1].rsplit(".", 1)[0] for line in lines if "http://127." in line)
        if PARTITIONS.available:
            assert chain_name(block) in synapse_chains(), "the partition is in place before the stop"
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=30)
        reader.join(timeout=10)
        runner.stdout.close()
    assert runner.returncode != 0
    assert chain_name(block) not in synapse_chains(), "SIGTERM left the run's iptables chain behind"
    left = subprocess.run(["pgrep", "-f", f"{tmp_path}"], capture_output=True, text=True).stdout.split()
    assert left == [], f"SIGTERM left node processes behind: {left}"
