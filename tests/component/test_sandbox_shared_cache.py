"""The compiled-module cache shared by the nodes of one local cluster (node/sandbox_disk_cache.py):
each Sandbox here stands for one node (its own engine), all pointed at one directory made by the launcher.

What an operator checks: a package is compiled once per machine, not once per node; a tampered or
half-written artifact is refused and recompiled; nodes compiling at once do not read each other's
half-written files and compile once between them; a cache another user could write is refused."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
import tomllib

import pytest

from cluster.addresses import parse_block
from cluster.genesis import create_network
from node import errors
from node.config import load_config
from node.sandbox import Sandbox
from node.sandbox_disk_cache import CACHE_KEY_FILE, DiskCache, create_shared_cache
from tests.component.test_sandbox import FAST, FEATURE_FLAG, STATE_JSON, package

NODES_AT_ONCE = 4


@pytest.fixture
def shared(tmp_path):
    return create_shared_cache(tmp_path / "compiled-cache")


def test_the_launcher_makes_a_private_directory_and_key(shared):
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o700
    key = shared / CACHE_KEY_FILE
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and len(key.read_bytes()) == 32
    before = key.read_bytes()
    create_shared_cache(shared)
    assert key.read_bytes() == before, "starting the launcher again keeps the key (and so the artifacts)"


def test_a_module_compiled_by_one_node_is_loaded_by_the_others(shared):
    first = Sandbox(FAST, shared_cache_dir=shared)
    expected = first.run_upgrade(FEATURE_FLAG, STATE_JSON)
    others = [Sandbox(FAST, shared_cache_dir=shared) for _ in range(3)]
    assert all(other.run_upgrade(FEATURE_FLAG, STATE_JSON) == expected for other in others)
    assert first.cache_stats()["compiled"] == 1
    assert [(other.cache_stats()["compiled"], other.cache_stats()["loaded_from_disk"]) for other in others] == [(0, 1)] * 3


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated", "another_key"])
def test_a_tampered_or_half_written_artifact_is_refused_and_recompiled(shared, tmp_path, damage):
    expected = Sandbox(FAST, shared_cache_dir=shared).run_upgrade(FEATURE_FLAG, STATE_JSON)
    (artifact,) = shared.glob("*.cwasm")
    blob = artifact.read_bytes()
    if damage == "flipped_byte":
        artifact.write_bytes(blob[:len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 1]) + blob[len(blob) // 2 + 1:])
    elif damage == "truncated":     # what a writer without the atomic rename would leave mid-write
        artifact.write_bytes(blob[:len(blob) // 2])
    else:                           # a valid artifact, authenticated with a key that is not this cache's
        elsewhere = create_shared_cache(tmp_path / "elsewhere")
        Sandbox(FAST, shared_cache_dir=elsewhere).inspect(FEATURE_FLAG)
        artifact.write_bytes((elsewhere / artifact.name).read_bytes())
    node = Sandbox(FAST, shared_cache_dir=shared)
    assert node.run_upgrade(FEATURE_FLAG, STATE_JSON) == expected
    assert (node.cache_stats()["artifacts_refused"], node.cache_stats()["compiled"], node.cache_stats()["loaded_from_disk"]) == (1, 1, 0)
    later = Sandbox(FAST, shared_cache_dir=shared)
    assert later.run_upgrade(FEATURE_FLAG, STATE_JSON) == expected and later.cache_stats()["loaded_from_disk"] == 1, \
        "the recompiled artifact replaced the bad one"


def test_nodes_compiling_at_once_compile_once_and_the_others_load_it(shared):
    nodes = [Sandbox(FAST, shared_cache_dir=shared) for _ in range(NODES_AT_ONCE)]
    start = threading.Barrier(NODES_AT_ONCE)
    results: list = [None] * NODES_AT_ONCE

    def run(index: int) -> None:
        start.wait(timeout=30)
        results[index] = nodes[index].run_upgrade(FEATURE_FLAG, STATE_JSON)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(NODES_AT_ONCE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(result is not None and result == results[0] for result in results)
    stats = [node.cache_stats() for node in nodes]
    assert sum(s["compiled"] for s in stats) == 1 and sum(s["loaded_from_disk"] for s in stats) == NODES_AT_ONCE - 1
    assert sum(s["artifacts_refused"] + s["compile_lock_timeouts"] for s in stats) == 0
    assert not [path for path in shared.iterdir() if ".tmp-" in path.name], "no temporary file is left behind"


def test_a_node_waits_for_another_nodes_compile_only_up_to_the_bound(shared):
    cache = DiskCache(shared, "fingerprint", shared=True, lock_wait_ms=100)
    with cache.compiling("a" * 64) as first:
        assert first is True
        waited_from = time.monotonic()
        with DiskCache(shared, "fingerprint", shared=True, lock_wait_ms=100).compiling("a" * 64) as second:
            assert second is False and time.monotonic() - waited_from >= 0.1
        with DiskCache(shared, "fingerprint", shared=True, lock_wait_ms=100).compiling("b" * 64) as other_module:
            assert other_module is True, "locks are per artifact"
    with DiskCache(shared, "fingerprint", shared=True, lock_wait_ms=100).compiling("a" * 64) as after:
        assert after is True


def test_a_waiter_loads_the_artifact_as_soon_as_it_appears_without_queueing_for_the_lock(shared):
    compiler = Sandbox(FAST, shared_cache_dir=shared)
    compiler.inspect(package("identity.wat"))
    (lock_path,) = shared.glob(".*.lock")
    (artifact,) = shared.glob("*.cwasm")
    blob = artifact.read_bytes()
    artifact.unlink()
    descriptor = os.open(lock_path, os.O_RDWR)
    fcntl.flock(descriptor, fcntl.LOCK_EX)           # a node compiling, and then slow to let go of the lock
    try:
        waiter = Sandbox(FAST, shared_cache_dir=shared)
        waiter._disk._lock_wait_ms = 30_000
        done = threading.Event()
        thread = threading.Thread(target=lambda: (waiter.inspect(package("identity.wat")), done.set()))
        thread.start()
        assert not done.wait(0.3), "no artifact yet: the waiter waits"
        artifact.write_bytes(blob)                   # the compiler's artifact lands; the lock is still held
        assert done.wait(10), "the waiter loaded the artifact without the lock"
        thread.join(10)
        assert (waiter.cache_stats()["loaded_from_disk"], waiter.cache_stats()["compiled"]) == (1, 0)
        assert waiter.cache_stats()["compile_lock_timeouts"] == 0
    finally:
        os.close(descriptor)


def test_a_node_whose_compile_lock_wait_timed_out_compiles_itself(shared):
    holder = Sandbox(FAST, shared_cache_dir=shared)
    holder.inspect(package("identity.wat"))
    (lock_path,) = shared.glob(".*.lock")
    digest_and_fingerprint = lock_path.name[1:-len(".lock")]
    (shared / f"{digest_and_fingerprint}.cwasm").unlink()
    descriptor = os.open(lock_path, os.O_RDWR)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        node = Sandbox(FAST, shared_cache_dir=shared)
        node._disk._lock_wait_ms = 50
        node.inspect(package("identity.wat"))
        assert node.cache_stats()["compile_lock_timeouts"] == 1 and node.cache_stats()["compiled"] == 1
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("weakness", ["no_key", "key_readable_by_others", "directory_writable_by_others", "key_is_a_symlink"])
def test_a_shared_cache_others_could_write_is_refused(shared, tmp_path, weakness):
    key = shared / CACHE_KEY_FILE
    if weakness == "no_key":
        key.unlink()
    elif weakness == "key_readable_by_others":
        os.chmod(key, 0o644)
    elif weakness == "directory_writable_by_others":
        os.chmod(shared, 0o777)
    else:
        (tmp_path / "planted.key").write_bytes(key.read_bytes())
        key.unlink()
        key.symlink_to(tmp_path / "planted.key")
    with pytest.raises(errors.ConfigError, match="shared compiled module cache") as caught:
        Sandbox(FAST, shared_cache_dir=shared)
    assert "cluster up" in caught.value.hint


def test_cluster_up_configs_point_every_node_at_one_shared_cache(tmp_path):
    network = create_network(tmp_path, nodes=3, validators=1, block=parse_block("127.9.9"), shared_compiled_cache=True)
    configs = [load_config(created.config_path) for created in network.nodes]
    assert {config.sandbox_shared_cache_dir for config in configs} == {tmp_path / "compiled-cache"}
    assert stat.S_IMODE(os.stat(tmp_path / "compiled-cache" / CACHE_KEY_FILE).st_mode) == 0o600
    plain = create_network(tmp_path / "plain", nodes=1, validators=1, block=parse_block("127.9.9"))
    assert load_config(plain.nodes[0].config_path).sandbox_shared_cache_dir is None, "opt-in: off unless asked"
    assert "sandbox" not in tomllib.loads(plain.nodes[0].config_path.read_text())
