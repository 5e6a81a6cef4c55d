"""cluster/dump.py against a data dir an attacker arranged: the allowlist, the name and mode rules and
the byte check each keep secrets out on their own, and links never lead outside the data dir."""

from __future__ import annotations

import os
from pathlib import Path

from cluster.dump import collect, manifest_text

TOKEN = b"f" * 64 + b"\n"
KEY = bytes(range(100, 132))


def make_cluster(root: Path, outside: Path) -> dict:
    node = root / "node-1"
    (node / "state").mkdir(parents=True)
    (node / "node_key").write_bytes(KEY)
    os.chmod(node / "node_key", 0o600)
    (node / "api_token").write_bytes(TOKEN)
    os.chmod(node / "api_token", 0o600)
    (node / "config.toml").write_text("[node]\n")
    (node / "state" / "network_state.json").write_text("{}")
    (node / "node.log").write_bytes(b'{"event": "started"}\n')
    (node / "stderr.log").write_bytes(b"an unlucky traceback printed the token: " + TOKEN)
    (node / "stdout.log").write_bytes(b"key material in hex: " + KEY.hex().encode())
    (node / "notes.txt").write_text("a file nobody put on the allowlist")
    (outside / "id_rsa").write_text("PRIVATE")
    os.symlink(outside / "id_rsa", node / "upgrades_history_link")
    (node / "upgrades").mkdir()
    os.symlink(outside / "id_rsa", node / "upgrades" / "upgrade_history.json")
    (root / "genesis.json").write_text('{"network_id": "n"}')
    return {"network_id": "n", "nodes": [
        {"index": 0, "node_id": "a" * 16, "api_url": "http://127.0.0.1:9", "data_dir": str(node)},
        {"index": 1, "node_id": "b" * 16, "api_url": "http://127.0.0.1:9", "data_dir": str(outside)}]}


def test_secrets_links_and_unknown_files_stay_out_and_the_manifest_says_why(tmp_path):
    root, outside = tmp_path / "cluster", tmp_path / "home"
    root.mkdir()
    outside.mkdir()
    document = make_cluster(root, outside)
    dump = collect(root, document, lambda node: False)
    names = set(dump.parts)
    assert {"genesis.json", "nodes/node-1/files/node.log", "nodes/node-1/files/config.toml",
            "nodes/node-1/files/state/network_state.json"} <= names
    assert not any(b"PRIVATE" in data or TOKEN.strip() in data or KEY in data or KEY.hex().encode() in data
                   for data in dump.parts.values())
    why = dict(dump.left_out)
    assert why["node-1/node_key"].startswith("a secret") and why["node-1/api_token"].startswith("a secret")
    assert "secret file (node-1/api_token)" in why["node-1/stderr.log"], "the byte check caught the token in a log"
    assert "secret file (node-1/node_key)" in why["node-1/stdout.log"], "and the key in hex"
    assert why["node-1/notes.txt"] == "not on the dump's allowlist"
    assert why["node-1/upgrades_history_link"] == "a symbolic link: not followed"
    assert "outside the cluster's data dir" in why["node-1/upgrades/upgrade_history.json"]
    assert "outside the cluster's data dir" in why[str(outside)], "a node dir elsewhere is not read at all"
    assert [what for what, _why in dump.unavailable] == [
        "node-1 API (health, status, metrics, proposals, history, state, log)"]
    manifest = manifest_text(dump, root, document, [], 0.0, "test")
    assert "INCLUDED (" in manifest and "node-1/api_token  --  a secret" in manifest and "UNAVAILABLE (1)" in manifest


def test_a_file_only_its_owner_may_read_stays_out_even_when_allowlisted(tmp_path):
    root, outside = tmp_path / "cluster", tmp_path / "home"
    root.mkdir()
    outside.mkdir()
    document = make_cluster(root, outside)
    os.chmod(root / "node-1" / "config.toml", 0o600)
    dump = collect(root, document, lambda node: False)
    assert "nodes/node-1/files/config.toml" not in dump.parts
    assert dict(dump.left_out)["node-1/config.toml"].startswith("only its owner may read it (mode 600)")


def test_the_api_of_a_node_is_read_only_on_a_loopback_address(tmp_path):
    from cluster.api_reads import is_loopback_url

    root, outside = tmp_path / "cluster", tmp_path / "home"
    root.mkdir()
    outside.mkdir()
    document = make_cluster(root, outside)
    document["nodes"][0]["api_url"] = "http://169.254.169.254:80"  # a cloud metadata service, say
    dump = collect(root, document, lambda node: True)
    assert dump.unavailable == [("node-1 API (health, status, metrics, proposals, history, state, log)",
                                 "its API URL 'http://169.254.169.254:80' is not a loopback address: not read")]
    assert is_loopback_url("http://127.64.3.1:7000") and not is_loopback_url("https://127.0.0.1:7000")
    assert not is_loopback_url("http://127.0.0.1") and not is_loopback_url("http://localhost.evil:7000") and not is_loopback_url(None)
