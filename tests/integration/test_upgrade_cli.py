"""The spec's whole workflow from the CLI alone on a fresh cluster (issue 13): propose a local package
file, dry-run it, vote with every node, wait until it executed everywhere, read the history, then roll
the network back by a vote, each step through `synapse upgrade ... --json` with its output parsed."""

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import wasmtime

from tests.integration.test_cluster_cli import REPOSITORY, alive, kill_leftovers, synapse

pytestmark = pytest.mark.slow

FEATURE_FLAG = REPOSITORY / "examples" / "wat" / "feature_flag.wat"
WAIT_TIMEOUT_S = "90"


def cli_json(*arguments: str, tmp: Path) -> dict:
    result = synapse(*arguments, "--json", tmp=tmp)
    assert result.returncode == 0, f"synapse {' '.join(arguments)}: {result.stderr}{result.stdout}"
    return json.loads(result.stdout)


def kill_package_server(cluster_dir: Path) -> None:
    try:
        pid = json.loads((cluster_dir / "package_server.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    if isinstance(pid, int) and alive(pid):     # `cluster down` leaves {"pid": null, "url": ...}
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_propose_test_vote_execute_history_and_network_rollback_from_the_cli(tmp_path):
    cluster_dir = tmp_path / "net"
    try:
        started = synapse("cluster", "up", "--nodes", "3", "--validators", "3", "--data-dir", str(cluster_dir), "--json", tmp=tmp_path)
        assert started.returncode == 0, started.stderr + started.stdout
        up_document = json.loads(started.stdout)
        assert up_document["data_dir"] == str(cluster_dir) and len(up_document["nodes"]) == 3 and "healthy (3/3)" in started.stderr
        on = ("--data-dir", str(cluster_dir))
        health = cli_json("cluster", "status", *on, tmp=tmp_path)
        assert health["healthy"] == 3 and [node["node_id"] for node in health["nodes"]] == [
            node["node_id"] for node in up_document["nodes"]]
        before = cli_json("upgrade", "status", "--all", *on, tmp=tmp_path)
        assert {document["current_version"] for document in before.values()} == {"1.0.0"} and len(before) == 3
        genesis_hash = before["node-1"]["state_hash"]

        created = cli_json("upgrade", "propose", "--package", str(FEATURE_FLAG), "--version", "1.2.0", "--title", "Add feature flag",
                           "--description", "adds new_feature_enabled", *on, tmp=tmp_path)
        wasm = bytes(wasmtime.wat2wasm(FEATURE_FLAG.read_text()))
        assert created["package_hash"] == hashlib.sha256(wasm).hexdigest() and created["package_size"] == len(wasm)
        assert created["package_url"].startswith("http://127.0.0.1:") and created["node"] == "node-1"
        proposal_id = created["proposal_id"]

        tested = cli_json("upgrade", "test", proposal_id, "--node", "node-2", *on, tmp=tmp_path)
        assert tested["success"] is True and tested["result"]["version"] == "1.2.0" and tested["live_state_hash"] == genesis_hash

        voted = cli_json("upgrade", "vote", proposal_id, "approval", "--all", "--wait", "executed", "--timeout", WAIT_TIMEOUT_S,
                         *on, tmp=tmp_path)
        assert [vote["node"] for vote in voted["votes"]] == ["node-1", "node-2", "node-3"] and voted["failed"] is False
        assert all("entry_id" in vote or vote["skipped"].startswith("voting is already decided") for vote in voted["votes"])
        assert voted["wait"]["reached"] is True, voted["wait"]
        assert all(line.startswith("executed 1.2.0") for line in voted["wait"]["nodes"].values()), voted["wait"]

        shown = cli_json("upgrade", "show", proposal_id, "--node", "3", *on, tmp=tmp_path)
        assert shown["status"] == "executed" and len(shown["reports"]) == 3 and all(r["success"] for r in shown["reports"])
        history = cli_json("upgrade", "history", "--node", "node-3", *on, tmp=tmp_path)["history"]
        assert [(record["proposal_id"], record["version"], record["success"]) for record in history] == [(proposal_id, "1.2.0", True)]
        after = cli_json("upgrade", "status", "--all", *on, tmp=tmp_path)
        assert {(d["current_version"], d["state_hash"]) for d in after.values()} == {("1.2.0", shown["reports"][0]["state_hash"])}

        late = synapse("upgrade", "vote", proposal_id, "rejection", "--node", "node-2", *on, tmp=tmp_path)
        assert late.returncode == 1 and "node-2: error: voting on" in late.stderr and "node-2: hint: " in late.stderr

        rollback = cli_json("upgrade", "rollback-propose", proposal_id, "--node", "node-2", *on, tmp=tmp_path)
        assert rollback["action"] == "rollback" and rollback["version"] == "1.0.0"
        voted = cli_json("upgrade", "vote", rollback["proposal_id"], "approval", "--all", "--wait", "executed",
                         "--timeout", WAIT_TIMEOUT_S, *on, tmp=tmp_path)
        assert voted["wait"]["reached"] is True, voted["wait"]
        final = cli_json("upgrade", "status", "--all", *on, tmp=tmp_path)
        assert {(d["current_version"], d["state_hash"]) for d in final.values()} == {("1.0.0", genesis_hash)}
        listed = cli_json("upgrade", "list", *on, tmp=tmp_path)
        assert [(p["proposal_id"], p["status"]) for p in listed["proposals"]] == [
            (proposal_id, "rolled_back"), (rollback["proposal_id"], "executed")]

        server_pid = json.loads((cluster_dir / "package_server.json").read_text())["pid"]
        stopped = synapse("cluster", "down", *on, tmp=tmp_path)
        assert stopped.returncode == 0 and "package server: stopped" in stopped.stdout and not alive(server_pid)
    finally:
        kill_leftovers(cluster_dir)
        kill_package_server(cluster_dir)


def test_upgrade_commands_say_what_to_do_without_a_cluster_or_a_hash(tmp_path):
    missing = synapse("upgrade", "list", "--data-dir", str(tmp_path), tmp=tmp_path)
    assert missing.returncode == 2 and "cluster.json does not exist" in missing.stderr and "synapse cluster up" in missing.stderr
    local = synapse("upgrade", "propose", "--url", "http://127.0.0.1:9", "--package", str(FEATURE_FLAG), "--version", "1.2.0",
                    "--title", "t", tmp=tmp_path)
    assert local.returncode == 2 and "--package URL --sha256 HEX" in local.stderr
    unreachable = synapse("upgrade", "status", "--url", "http://127.0.0.1:9", tmp=tmp_path)
    assert unreachable.returncode == 1 and "cannot reach http://127.0.0.1:9" in unreachable.stderr


def health_of(cluster_dir: Path, tmp: Path) -> dict:
    from cluster.local import NodeApi

    document = json.loads((cluster_dir / "cluster.json").read_text())
    return {f"node-{node['index'] + 1}": NodeApi(node["api_url"], None).get("/health").data for node in document["nodes"]}


def test_a_stopped_cluster_starts_again_with_its_keys_log_and_state_and_upgrades_on(tmp_path):
    cluster_dir = tmp_path / "net"
    on = ("--data-dir", str(cluster_dir))
    try:
        started = synapse("cluster", "up", "--nodes", "3", "--validators", "3", *on, tmp=tmp_path)
        assert started.returncode == 0, started.stderr + started.stdout
        created = cli_json("upgrade", "propose", "--package", str(FEATURE_FLAG), "--version", "1.2.0", "--title", "before",
                           *on, tmp=tmp_path)
        voted = cli_json("upgrade", "vote", created["proposal_id"], "approval", "--all", "--wait", "executed",
                         "--timeout", WAIT_TIMEOUT_S, *on, tmp=tmp_path)
        assert voted["wait"]["reached"] is True, voted["wait"]
        ids_before = [node["node_id"] for node in json.loads((cluster_dir / "cluster.json").read_text())["nodes"]]
        status_before = cli_json("upgrade", "status", "--all", *on, tmp=tmp_path)
        entries_before = {name: health["entries"] for name, health in health_of(cluster_dir, tmp_path).items()}

        server_url = json.loads((cluster_dir / "package_server.json").read_text())["url"]
        assert synapse("cluster", "down", *on, tmp=tmp_path).returncode == 0
        refused = synapse("cluster", "up", "--nodes", "5", *on, tmp=tmp_path)
        assert refused.returncode == 2 and "genesis fixes --nodes" in refused.stderr
        again = synapse("cluster", "up", *on, tmp=tmp_path)
        assert again.returncode == 0 and "starting the stopped cluster again" in again.stdout, again.stderr + again.stdout
        assert f"package server: {server_url}" in again.stdout, "its packages are served again, where proposals point"
        running = synapse("cluster", "up", *on, tmp=tmp_path)
        assert running.returncode == 2 and "already holds a cluster, and it runs" in running.stderr

        document = json.loads((cluster_dir / "cluster.json").read_text())
        assert [node["node_id"] for node in document["nodes"]] == ids_before and "stopped_at" not in document
        status_after = cli_json("upgrade", "status", "--all", *on, tmp=tmp_path)
        assert {name: (d["node_id"], d["current_version"], d["state_hash"], d["applied_sequence"])
                for name, d in status_after.items()} == {
            name: (d["node_id"], d["current_version"], d["state_hash"], d["applied_sequence"]) for name, d in status_before.items()}
        entries_after = {name: health["entries"] for name, health in health_of(cluster_dir, tmp_path).items()}
        assert all(entries_after[name] >= entries_before[name] for name in entries_before), (entries_before, entries_after)

        created = cli_json("upgrade", "propose", "--package", str(REPOSITORY / "scenarios" / "packages" / "second_flag.wat"),
                           "--version", "1.3.0", "--title", "after the restart", "--node", "node-3", *on, tmp=tmp_path)
        voted = cli_json("upgrade", "vote", created["proposal_id"], "approval", "--all", "--wait", "executed",
                         "--timeout", WAIT_TIMEOUT_S, *on, tmp=tmp_path)
        assert voted["wait"]["reached"] is True, voted["wait"]
        assert {d["current_version"] for d in cli_json("upgrade", "status", "--all", *on, tmp=tmp_path).values()} == {"1.3.0"}
        waited = cli_json("upgrade", "wait", created["proposal_id"], "approved", "--timeout", "10", *on, tmp=tmp_path)
        assert waited["wait"]["reached"] is True
        local = cli_json("upgrade", "rollback", created["proposal_id"], "--node", "node-3", "--reason", "operator test",
                         *on, tmp=tmp_path)
        assert (local["previous_version"], local["restored_version"]) == ("1.3.0", "1.2.0") and local["audit_entry_id"]
        versions = cli_json("upgrade", "status", "--all", *on, tmp=tmp_path)
        assert [versions[name]["current_version"] for name in ("node-1", "node-2", "node-3")] == ["1.3.0", "1.3.0", "1.2.0"]
        assert synapse("cluster", "down", *on, tmp=tmp_path).returncode == 0
    finally:
        kill_leftovers(cluster_dir)
        kill_package_server(cluster_dir)
