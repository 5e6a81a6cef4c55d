"""The operator's cluster tools for real (issue 13): `synapse cluster restart`, `status --watch` and
`dump`, each run as a separate process against a cluster `synapse cluster up` started, and
`synapse scenario run -j 2`.

One detached 3-node cluster serves the module's cluster tests (starting one costs seconds of CPU on a
2-core machine); each test asserts what it changes relative to what it found. The fixture stops the
cluster from its file and then kills any process whose command line names the cluster's directory, so
nothing outlives the module even when a restart failed half-way.
"""

from __future__ import annotations

import gzip
import json
import os
import pty
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from cluster.local import NodeApi
from node.api import read_token
from tests.integration.test_cluster_cli import REPOSITORY, alive, kill_leftovers, synapse, write_scenario
from tests.polling import poll_until

pytestmark = pytest.mark.slow

SECRET_NAME_PARTS = ("key", "token", "secret", "passw")
FEATURE_FLAG = REPOSITORY / "examples" / "wat" / "feature_flag.wat"


def kill_everything_of(cluster_dir: Path) -> None:
    kill_leftovers(cluster_dir)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(cluster_dir).encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, PermissionError):
                continue


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    directory = tmp / "net"
    try:
        started = synapse("cluster", "up", "--nodes", "3", "--validators", "3", "--data-dir", str(directory), tmp=tmp)
        assert started.returncode == 0, started.stderr + started.stdout
        yield directory
    finally:
        synapse("cluster", "down", "--data-dir", str(directory), "--timeout", "10", tmp=tmp)
        kill_everything_of(directory)


def cluster_file(directory: Path) -> dict:
    return json.loads((directory / "cluster.json").read_text())


def api(directory: Path, name: str) -> NodeApi:
    node = cluster_file(directory)["nodes"][int(name.split("-")[1]) - 1]
    return NodeApi(node["api_url"], read_token(Path(node["token_file"])))


def note_reaches(directory: Path, text: str, name: str) -> bool:
    notes = api(directory, name).get("/log?kind=NOTE&limit=500").data["entries"]
    return any(entry["body"].get("text") == text for entry in notes)


def test_restart_one_node_keeps_its_identity_and_log_and_it_catches_up_and_upgrades(cluster_dir):
    before = cluster_file(cluster_dir)
    assert api(cluster_dir, "node-1").post("/log/notes", {"text": "before the restart"}).status == 201
    poll_until(lambda: note_reaches(cluster_dir, "before the restart", "node-2"), what="the note on node-2", timeout_s=30)
    entries_before = api(cluster_dir, "node-2").get("/health").data["entries"]

    result = synapse("cluster", "restart", "node-2", "--json", "--data-dir", str(cluster_dir), tmp=cluster_dir.parent)
    assert result.returncode == 0, result.stderr + result.stdout
    (restarted,) = json.loads(result.stdout)["nodes"]
    old = before["nodes"][1]
    assert (restarted["node"], restarted["node_id"], restarted["pid_before"]) == ("node-2", old["node_id"], old["pid"])
    assert restarted["pid"] != old["pid"] and not alive(old["pid"]) and alive(restarted["pid"])
    assert restarted["stopped_by"] == "SIGTERM" and restarted["healthy"] and restarted["entries"] >= entries_before
    after = cluster_file(cluster_dir)
    assert [node["pid"] for node in after["nodes"]] == [before["nodes"][0]["pid"], restarted["pid"], before["nodes"][2]["pid"]]
    assert after["address_block"] == before["address_block"] and after["detached"] is True, "up's fields are kept"

    assert api(cluster_dir, "node-1").post("/log/notes", {"text": "after the restart"}).status == 201
    poll_until(lambda: note_reaches(cluster_dir, "after the restart", "node-2"), what="node-2 to catch up on a new entry",
               timeout_s=30)
    status = synapse("cluster", "status", "--data-dir", str(cluster_dir), tmp=cluster_dir.parent)
    assert status.returncode == 0 and "3/3 nodes healthy" in status.stdout, status.stdout

    on = ("--data-dir", str(cluster_dir), "--json")
    proposed = synapse("upgrade", "propose", "--package", str(FEATURE_FLAG), "--version", "1.2.0", "--title", "after a restart",
                       "--node", "node-2", *on, tmp=cluster_dir.parent)
    assert proposed.returncode == 0, proposed.stderr
    voted = synapse("upgrade", "vote", json.loads(proposed.stdout)["proposal_id"], "approval", "--all", "--wait", "executed",
                    "--timeout", "90", *on, tmp=cluster_dir.parent)
    assert voted.returncode == 0 and json.loads(voted.stdout)["wait"]["reached"] is True, voted.stderr + voted.stdout
    assert {api(cluster_dir, f"node-{index}").get("/health").data["version"] for index in (1, 2, 3)} == {"1.2.0"}


def test_restart_without_names_restarts_all_and_simply_starts_a_stopped_node(cluster_dir):
    before = cluster_file(cluster_dir)
    killed = before["nodes"][2]["pid"]
    os.killpg(killed, signal.SIGKILL)
    poll_until(lambda: not alive(killed), what="node-3 to die", timeout_s=10)

    result = synapse("cluster", "restart", "--data-dir", str(cluster_dir), tmp=cluster_dir.parent)
    assert result.returncode == 0, result.stderr + result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("node-")}
    assert "was not running" in rows["node-3"] and "SIGTERM" in rows["node-1"] and "SIGTERM" in rows["node-2"]
    assert "3/3 restarted nodes healthy" in result.stdout and "raft leader: " in result.stdout
    after = cluster_file(cluster_dir)
    assert [node["node_id"] for node in after["nodes"]] == [node["node_id"] for node in before["nodes"]]
    assert all(alive(node["pid"]) and node["pid"] != old["pid"] for node, old in zip(after["nodes"], before["nodes"]))
    unknown = synapse("cluster", "restart", "node-9", "--data-dir", str(cluster_dir), tmp=cluster_dir.parent)
    assert unknown.returncode == 2 and "no node 'node-9'" in unknown.stderr


def test_status_watch_prints_a_table_per_interval_and_json_lines(cluster_dir):
    result = synapse("cluster", "status", "--watch", "--count", "2", "--interval", "0.2", "--data-dir", str(cluster_dir),
                     tmp=cluster_dir.parent)
    assert result.returncode == 0, result.stderr
    state_hash = api(cluster_dir, "node-3").get("/upgrades/status").data["state_hash"].split(":")[1][:12]
    version = api(cluster_dir, "node-3").get("/health").data["version"]  # 1.2.0 once the restart test's upgrade ran
    tables = result.stdout.strip().split("\n\n")
    assert len(tables) == 2 and "\x1b[" not in result.stdout, "into a pipe: one table after the other, no ANSI"
    for table in tables:
        title, header, *rows = table.splitlines()
        assert "3/3 healthy" in title and "raft leader: node-" in title
        assert header.split()[:4] == ["node", "id", "role", "version"] and "open proposals" in header
        assert [row.split()[0] for row in rows] == ["node-1", "node-2", "node-3"]
        assert all("validator" in row and f" {version} " in row and state_hash in row and row.endswith("ok") for row in rows)

    as_json = synapse("cluster", "status", "--watch", "--json", "--count", "2", "--interval", "0.2", "--data-dir",
                      str(cluster_dir), tmp=cluster_dir.parent)
    documents = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert as_json.returncode == 0 and len(documents) == 2
    assert all(document["healthy"] == 3 and document["raft_leader"] in ("node-1", "node-2", "node-3") for document in documents)
    assert {node["open_proposals"] for node in documents[0]["nodes"]} == {0}


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_status_watch_exits_0_on_ctrl_c_and_sigterm(cluster_dir, stop_signal):
    watcher = subprocess.Popen([sys.executable, "-c", "from cluster.cli import main; main()", "cluster", "status", "--watch",
                                "--interval", "0.3", "--data-dir", str(cluster_dir)], cwd=REPOSITORY, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(watcher.stdout), daemon=True)
    reader.start()
    try:
        poll_until(lambda: sum(line.startswith("node-3") for line in printed) >= 2, what="two tables", timeout_s=60)
        watcher.send_signal(stop_signal)
        assert watcher.wait(timeout=30) == 0, watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(timeout=10)
        reader.join(timeout=10)
        watcher.stdout.close()
        watcher.stderr.close()
    assert "Traceback" not in "".join(printed)


def test_status_watch_redraws_in_place_on_a_terminal(cluster_dir):
    controller, terminal = pty.openpty()
    try:
        watcher = subprocess.Popen([sys.executable, "-c", "from cluster.cli import main; main()", "cluster", "status", "--watch",
                                    "--count", "2", "--interval", "0.2", "--data-dir", str(cluster_dir)], cwd=REPOSITORY,
                                   stdout=terminal, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
        os.close(terminal)
        terminal = -1
        output = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the watcher closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert watcher.wait(timeout=30) == 0
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    text = output.decode()
    lines_per_table = 2 + 3  # title, header, three nodes
    assert text.count("\r\nnode-3  ") == 2 and f"\x1b[{lines_per_table}A\r\x1b[J" in text, repr(text[-600:])


def secret_files(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*")
            if path.is_file() and any(part in path.name.lower() for part in SECRET_NAME_PARTS)}


def leaks(archive: bytes, secrets: dict[str, bytes]) -> list[str]:
    """The attacker's check: any secret file's bytes (as they are, stripped, or hex) anywhere in the archive."""
    opened = gzip.decompress(archive)
    found = []
    for name, data in secrets.items():
        for form in {data, data.strip(), data.hex().encode(), data.strip().upper()}:
            if len(form) >= 8 and form in opened:
                found.append(name)
    return found


def test_the_attacker_check_finds_a_leaked_secret(tmp_path):
    from cluster.cli_dump import write_archive

    secrets = {"node-1/api_token": b"a" * 64 + b"\n", "node-1/node_key": bytes(range(32))}
    write_archive(tmp_path / "bad.tar.gz", "x", {"log": b"... Bearer " + b"a" * 64 + b" ...",
                                                  "raw": b"key " + bytes(range(32)).hex().encode()}, 0)
    assert sorted(leaks((tmp_path / "bad.tar.gz").read_bytes(), secrets)) == ["node-1/api_token", "node-1/node_key"]


def read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        members = archive.getmembers()
        assert all(member.isfile() and member.mode == 0o644 and not member.name.startswith("/") and ".." not in member.name
                   for member in members)
        return {member.name.split("/", 1)[1]: archive.extractfile(member).read() for member in members}


def test_dump_of_a_running_cluster_has_logs_state_and_api_parts_and_no_secret(cluster_dir):
    assert api(cluster_dir, "node-1").post("/log/notes", {"text": "in the dump"}).status == 201
    poll_until(lambda: note_reaches(cluster_dir, "in the dump", "node-3"), what="the note on node-3", timeout_s=30)
    output = cluster_dir.parent / "dump.tar.gz"
    result = synapse("cluster", "dump", "--data-dir", str(cluster_dir), "-o", str(output), tmp=cluster_dir.parent)
    assert result.returncode == 0 and "parts included" in result.stdout, result.stderr + result.stdout
    parts = read_archive(output)
    assert parts["genesis.json"] == (cluster_dir / "genesis.json").read_bytes()
    assert json.loads(parts["cluster.json"])["nodes"][0]["node_id"] == cluster_file(cluster_dir)["nodes"][0]["node_id"]
    for index in (1, 2, 3):
        node = f"nodes/node-{index}"
        assert b'"event": "started"' in parts[f"{node}/files/node.log"] or b'"event":"started"' in parts[f"{node}/files/node.log"]
        assert json.loads(parts[f"{node}/files/state/network_state.json"]) is not None
        assert json.loads(parts[f"{node}/api/health.json"])["status"] == "ok"
        assert "state_hash" in json.loads(parts[f"{node}/api/status.json"])
        assert b"synapse_log_entries_visible" in parts[f"{node}/api/metrics.txt"]
        entries = [json.loads(line) for line in parts[f"{node}/api/log.jsonl"].decode().splitlines()]
        assert all(entry["kind"] and entry["signature"] for entry in entries)
        assert any(entry["body"].get("text") == "in the dump" for entry in entries), "every node's entry log, from GET /log"
    manifest = parts["MANIFEST.txt"].decode()
    assert "LEFT OUT" in manifest and "node-1/api_token" in manifest and "node-1/raft_secret" in manifest
    assert "node-2/node_key" in manifest and "UNAVAILABLE (0)" in manifest

    secrets = secret_files(cluster_dir)
    assert {"node-1/api_token", "node-1/node_key", "node-1/raft_secret", "compiled-cache/cache.key"} <= set(secrets), \
        "the shared compiled-module cache's key (cluster up's nodes share one) is a secret too"
    assert leaks(output.read_bytes(), secrets) == [], "a secret file's bytes are in the dump"
    assert not any(name.endswith(("node_key", "api_token", "raft_secret", "cache.key")) for name in parts)
    again = synapse("cluster", "dump", "--data-dir", str(cluster_dir), "-o", str(output), tmp=cluster_dir.parent)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr


def test_dump_of_a_stopped_cluster_has_its_files_and_says_what_is_unavailable(cluster_dir):
    """It stops the cluster, and `cluster restart` starts it again for the tests that may follow."""
    assert synapse("cluster", "down", "--data-dir", str(cluster_dir), tmp=cluster_dir.parent).returncode == 0
    output = cluster_dir.parent / "stopped.tar.gz"
    result = synapse("cluster", "dump", "--json", "--data-dir", str(cluster_dir), "-o", str(output), tmp=cluster_dir.parent)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["running"] == [] and len(summary["unavailable"]) == 3
    assert all("not running" in item["why"] for item in summary["unavailable"])
    parts = read_archive(output)
    assert "nodes/node-2/files/node.log" in parts and "nodes/node-2/api/health.json" not in parts
    assert b" node-2 stopped" in parts["nodes/node-2/files/stderr.log"] or b"stopped" in parts["nodes/node-2/files/node.log"]
    assert leaks(output.read_bytes(), secret_files(cluster_dir)) == []
    started = synapse("cluster", "restart", "--json", "--data-dir", str(cluster_dir), tmp=cluster_dir.parent)
    assert started.returncode == 0, started.stderr
    assert {node["stopped_by"] for node in json.loads(started.stdout)["nodes"]} == {"was not running"}


ONE_NOTE = """
    [scenario]
    name = "{name}"
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
    text = "{expected}"
    on = 2
    within = "{within}"
    """


def test_scenario_run_in_parallel_prefixes_progress_and_reports_the_worst(tmp_path):
    passing = write_scenario(tmp_path, ONE_NOTE.format(name="one note", expected="hello", within="10s"), "a.toml")
    failing = write_scenario(tmp_path, ONE_NOTE.format(name="no such note", expected="never written", within="1s"), "b.toml")
    result = synapse("scenario", "run", "-j", "2", "--json", "--seed", "7", str(passing), str(failing),
                     "--report-dir", str(tmp_path / "reports"), tmp=tmp_path)
    document = json.loads(result.stdout)
    assert result.returncode == 1 and document["verdict"] == "FAIL" and document["jobs"] == 2, result.stderr[-3000:]
    assert [(run["scenario"], run["verdict"], run["seed"]) for run in document["runs"]] == [
        ("one note", "PASS", 7), ("no such note", "FAIL", 7)]
    assert all((Path(run["report"]) / "summary.md").exists() for run in document["runs"])
    progress = result.stderr.splitlines()
    assert "[one note] verdict: PASS" in " ".join(progress) and "[no such note] seed: 7 (replay with --seed 7)" in progress
    assert all(line.startswith(("[one note] ", "[no such note] ")) for line in progress if line.strip()), progress
    starts = [index for index, line in enumerate(progress) if line.endswith("starting 2 nodes (1 validator) ...")]
    verdicts = [index for index, line in enumerate(progress) if "verdict:" in line]
    assert len(starts) == 2 and max(starts) < min(verdicts), "both clusters started before either run ended"
    too_many = synapse("scenario", "run", "-j", "9", str(passing), tmp=tmp_path)
    assert too_many.returncode == 2 and "-j" in too_many.stderr


@pytest.mark.parametrize(("shell", "marker"), [("bash", "_synapse_completion"), ("zsh", "#compdef synapse"),
                                                ("fish", "function _synapse_completion")])
def test_shell_completion_scripts_as_the_readme_shows(shell, marker):
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "_SYNAPSE_COMPLETE": f"{shell}_source"}
    script = subprocess.run([sys.executable, "-c", "from cluster.cli import main; main(prog_name='synapse')"], cwd=REPOSITORY,
                            env=environment, capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and marker in script.stdout, script.stdout[:500] + script.stderr


def test_bash_completion_completes_the_new_commands():
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "_SYNAPSE_COMPLETE": "bash_complete",
                   "COMP_WORDS": "synapse cluster re", "COMP_CWORD": "2"}
    completed = subprocess.run([sys.executable, "-c", "from cluster.cli import main; main(prog_name='synapse')"], cwd=REPOSITORY,
                               env=environment, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and "plain,restart" in completed.stdout.splitlines(), completed.stdout
