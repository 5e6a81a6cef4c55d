"""The pod's init step (cluster/k8s/pod_init.py): a Secret volume as kubelet lays it out (symlinks into ..data,
group-readable) becomes files the node itself accepts; a volume with another identity stops the pod."""

import os
import stat

import pytest

from cluster.k8s.pod_init import install_secrets, main, wait_for_own_name
from node.api import read_token
from node.config import render_config
from node.errors import ConfigError
from node.fsutil import read_private_file
from node.identity import Identity
from node.runtime import read_raft_password


def _kubelet_secret(directory, files):
    """The layout kubelet gives a Secret volume: real files in a timestamped dir, ..data -> it, names -> ..data/name."""
    payload = directory / "..2026_12_05_00_00_00.000000001"
    payload.mkdir(parents=True)
    for name, data in files.items():
        (payload / name).write_bytes(data)
        os.chmod(payload / name, 0o440)
        os.symlink(f"..data/{name}", directory / name)
    os.symlink(payload.name, directory / "..data")
    return directory


@pytest.fixture
def identity():
    return Identity.generate()


@pytest.fixture
def secret_dir(tmp_path, identity):
    return _kubelet_secret(tmp_path / "secret", {"node_key": identity.private_bytes(), "api_token": b"ab" * 32 + b"\n",
                                                "raft_secret": b"cd" * 32})


def test_the_node_refuses_the_secret_as_mounted(secret_dir):
    with pytest.raises(ConfigError):
        read_private_file(secret_dir / "node_key", what="key file", size_max_bytes=32, missing_hint="")


def test_installed_files_are_private_regular_files_the_node_accepts(secret_dir, tmp_path, identity):
    data_dir = tmp_path / "data"
    assert install_secrets(secret_dir, data_dir) == ["node_key", "api_token", "raft_secret"]
    for name in ("node_key", "api_token", "raft_secret"):
        status = os.lstat(data_dir / name)
        assert stat.S_ISREG(status.st_mode) and stat.S_IMODE(status.st_mode) == 0o600
    assert Identity.load_or_create(data_dir / "node_key").node_id == identity.node_id
    assert read_token(data_dir / "api_token") == "ab" * 32
    assert read_raft_password(data_dir) == "cd" * 32


def test_a_restarted_pod_keeps_the_volume_and_a_different_identity_stops_it(secret_dir, tmp_path):
    data_dir = tmp_path / "data"
    install_secrets(secret_dir, data_dir)
    assert install_secrets(secret_dir, data_dir) == []          # same bytes: nothing to do
    other = _kubelet_secret(tmp_path / "other", {"node_key": Identity.generate().private_bytes()})
    with pytest.raises(ConfigError, match="differs from the Secret's node_key"):
        install_secrets(other, data_dir)
    assert Identity.load_or_create(data_dir / "node_key").private_bytes() == (secret_dir / "node_key").read_bytes()


def test_a_secret_without_a_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="has no node_key"):
        install_secrets(_kubelet_secret(tmp_path / "s", {"api_token": b"x"}), tmp_path / "data")


def test_the_dns_wait_is_bounded_and_says_what_it_waits_for():
    now, lines = [0.0], []
    with pytest.raises(ConfigError, match="did not resolve to an address of this pod within 5 s"):
        wait_for_own_name("node-1-0.validators.ns.svc.cluster.local", 5, bindable=lambda host: False, clock=lambda: now[0],
                          sleep=lambda seconds: now.__setitem__(0, now[0] + seconds), say=lines.append)
    assert lines[0] == "waiting for DNS: node-1-0.validators.ns.svc.cluster.local" and len(lines) == 5
    wait_for_own_name("x", 5, bindable=lambda host: True, say=lines.append)   # resolvable: returns at once


def test_main_reads_the_paths_from_the_node_config(secret_dir, tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text(render_config(data_dir=str(tmp_path / "volume"), genesis="genesis.json", api_host="127.0.0.1", api_port=8000,
                                    raft_address="127.0.0.1:9000"))
    assert main(["--config", str(config), "--secret-dir", str(secret_dir), "--dns-wait", "1"]) == 0
    assert (tmp_path / "volume" / "node_key").is_file()
    assert "127.0.0.1 resolves to this pod" in capsys.readouterr().out
    assert main(["--config", str(tmp_path / "missing.toml"), "--secret-dir", str(secret_dir)]) == 1
    assert "does not exist" in capsys.readouterr().err
