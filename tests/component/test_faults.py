"""Fault injection for real: iptables partitions between loopback addresses, node groups, process
signals through the cluster interface, and the package server that scenarios serve packages from.

The partition tests use real sockets bound to the addresses of a freshly acquired block, exactly as
nodes do (each binds its outgoing sockets to its own address), so they prove that a rule by source
and destination address cuts both new and existing connections, and that heal restores them.
"""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import threading
from contextlib import ExitStack, closing

import pytest

from cluster.addresses import acquire_block
from cluster.faults import (
    NetworkFaults,
    NodeView,
    ProcessFaults,
    chain_name,
    network_capability,
    remove_stale_chain,
    resolve,
    synapse_chains,
    unbound_peer_connections,
)
from cluster.package_server import PackageServer, build_package, cid_for
from cluster.scenario import Selector
from node.errors import ClusterError, FaultInjectionUnavailable, HashMismatchError, PackageFetchError
from node.package_urls import parse_ipfs_url
from node.packages import PackageCache, PackageFetcher

PORT = 7300
CUT_TIMEOUT_S = 0.6
CAPABILITY = network_capability()
needs_iptables = pytest.mark.skipif(not CAPABILITY.available,
                                    reason=f"partitions need root and iptables ({CAPABILITY.detail}); {CAPABILITY.hint}")


class EchoServers:
    """One echo server per host of a block, each in its own thread."""

    def __init__(self, hosts: list[str]) -> None:
        self.listeners = []
        self.threads = []
        for host in hosts:
            listener = socket.create_server((host, PORT), reuse_port=False)
            listener.settimeout(0.2)
            self.listeners.append(listener)
        self.stopping = threading.Event()
        for listener in self.listeners:
            thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    def _echo(self, connection: socket.socket) -> None:
        with closing(connection):
            connection.settimeout(20)
            try:
                while data := connection.recv(1024):
                    connection.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        for listener in self.listeners:
            listener.close()


def connect(source: str, destination: str, timeout_s: float = CUT_TIMEOUT_S) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(timeout_s)
    if source:
        client.bind((source, 0))  # as a node does: its own address is the source of everything it sends
    try:
        client.connect((destination, PORT))
    except OSError:
        client.close()
        raise
    return client


def exchange(client: socket.socket, timeout_s: float = CUT_TIMEOUT_S) -> bool:
    client.settimeout(timeout_s)
    try:
        client.sendall(b"ping")
        return client.recv(16) == b"ping"
    except OSError:
        return False


def reachable(source: str, destination: str) -> bool:
    try:
        with connect(source, destination) as client:
            return exchange(client)
    except OSError:
        return False


@pytest.fixture
def block():
    """Four hosts of a private block with echo servers; yields their addresses."""
    with ExitStack() as stack:
        lease = stack.enter_context(acquire_block(hosts=4, ports=(PORT,)))
        hosts = [lease.block.host(index) for index in range(1, 5)]
        servers = EchoServers(hosts)
        stack.callback(servers.close)
        yield lease.block.prefix, hosts


def chain_present(prefix: str) -> bool:
    return chain_name(prefix) in synapse_chains()


def jump_present(prefix: str) -> bool:
    listing = subprocess.run(["iptables", "-w", "10", "-S", "OUTPUT"], capture_output=True, text=True, check=True).stdout
    return chain_name(prefix) in listing


@needs_iptables
def test_a_partition_cuts_new_and_existing_connections_and_heal_restores_them(block):
    prefix, (one, two, three, four) = block
    existing = connect(one, three)
    assert exchange(existing)
    with NetworkFaults.open(prefix) as faults:
        faults.partition([[one, two], [three, four]])
        assert sorted(faults.rules()) == sorted((a, b) for a, b in [(one, three), (one, four), (two, three), (two, four),
                                                                    (three, one), (three, two), (four, one), (four, two)])
        assert not exchange(existing), "a connection opened before the partition is cut too"
        assert not reachable(one, three) and not reachable(four, two)
        assert reachable(one, two) and reachable(three, four), "each side still talks within itself"
        assert reachable("127.0.0.1", three), "an observer outside the cluster sees both sides"
        faults.heal()
        assert faults.rules() == []
        assert reachable(one, three) and reachable(four, two)
        existing.settimeout(15)
        assert existing.recv(16) == b"ping", "the cut connection recovers after the heal (TCP retransmits)"
    existing.close()
    assert not chain_present(prefix) and not jump_present(prefix), "close removes the chain and its jump"


@needs_iptables
def test_a_cut_is_one_way_in_the_rules_and_leaves_other_links_alone(block):
    prefix, (one, two, three, _four) = block
    with NetworkFaults.open(prefix) as faults:
        faults.cut([one], [two])
        assert faults.rules() == [(one, two)]
        assert not reachable(one, two)
        assert reachable(one, three) and reachable(three, two)
        faults.cut([one], [two])  # cutting again adds nothing
        assert faults.rules() == [(one, two)]


@needs_iptables
def test_only_addresses_of_the_block_can_be_cut_and_a_refusal_changes_nothing(block):
    prefix, (one, two, three, four) = block
    with NetworkFaults.open(prefix) as faults:
        with pytest.raises(ClusterError, match="not an address of the cluster block"):
            faults.cut(["127.0.0.1"], [one])
        with pytest.raises(ClusterError, match="not an address of the cluster block"):
            faults.partition([[one], ["10.0.0.1"]])
        with pytest.raises(ClusterError, match="is in two partition groups"):
            faults.partition([[one, two], [two, three]])
        with pytest.raises(ClusterError, match="not an address"):
            faults.cut(["not-an-ip"], [one])
        assert faults.rules() == []
        assert reachable(one, four)


@needs_iptables
def test_a_stale_chain_left_by_a_killed_run_is_removed(block):
    prefix, (one, two, _three, _four) = block
    crashed = NetworkFaults.open(prefix)
    crashed.partition([[one], [two]])  # ... and the run dies here without closing
    assert chain_present(prefix) and not reachable(one, two)
    with NetworkFaults.open(prefix) as faults:  # the next owner of the block starts clean
        assert faults.rules() == [] and reachable(one, two)
    leftover = NetworkFaults.open(prefix)  # another run dies with a cut in place
    leftover.cut([one], [two])
    assert not reachable(one, two)
    assert remove_stale_chain(prefix) is True
    assert not chain_present(prefix) and not jump_present(prefix) and reachable(one, two)
    assert remove_stale_chain(prefix) is False


def test_without_iptables_partitions_are_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr("cluster.faults._iptables_binary", lambda: None)
    with pytest.raises(FaultInjectionUnavailable) as caught:
        NetworkFaults.open("127.99.1")
    assert "iptables is not installed" in caught.value.message and "install-toolchain" in caught.value.hint
    assert remove_stale_chain("127.99.1") is False


def test_a_scenario_that_cuts_the_network_stops_before_starting_where_it_cannot(monkeypatch, tmp_path):
    from pathlib import Path

    from cluster.faults import Capability
    from cluster.scenario import load_scenario
    from cluster.scenario_runner import RunOptions, run_scenario

    monkeypatch.setattr("cluster.providers.loopback.network_capability",
                        lambda: Capability(available=False, detail="not root (uid 1000)", hint="run as root"))
    monkeypatch.setattr("cluster.local.LocalCluster.start", lambda self: pytest.fail("no cluster may start"))
    repository = Path(__file__).resolve().parents[2]
    lines: list[str] = []
    record = run_scenario(load_scenario(repository / "scenarios" / "partition_heal_log.toml", repository=repository),
                          RunOptions(report_root=tmp_path, seed=1, echo=lines.append))
    assert record.verdict == "FAIL" and "network partitions are not possible on this machine: not root" in record.aborted
    assert any(line.startswith("run aborted: this scenario cuts the network") for line in lines)
    (folder,) = tmp_path.iterdir()
    assert "run aborted: this scenario cuts the network" in (folder / "summary.md").read_text()


def test_a_failing_iptables_is_reported_not_pretended(monkeypatch):
    monkeypatch.setattr("cluster.faults.os.geteuid", lambda: 0)
    monkeypatch.setattr("cluster.faults.shutil.which", lambda name: "/usr/sbin/" + name)

    def refuse(command, **_options):
        return subprocess.CompletedProcess(command, 4, stdout="", stderr="iptables: Permission denied (you must be root)")
    with pytest.raises(FaultInjectionUnavailable, match="Permission denied"):
        NetworkFaults.open("127.99.1", run=refuse)


def test_block_names_are_checked():
    assert chain_name("127.12.7") == "SYNAPSE-127-12-7"
    for bad in ("10.0.0", "127.1", "127.1.256", "127.1.2.3", "127.a.b"):
        with pytest.raises(ClusterError):
            chain_name(bad)


def test_connections_from_an_unbound_socket_are_found(block):
    prefix, (one, two, _three, _four) = block
    with connect("", two) as unbound, connect(one, two) as bound:
        assert exchange(unbound) and exchange(bound)
        problems = unbound_peer_connections({__import__("os").getpid(): one}, prefix)
    assert len(problems) == 1, problems
    assert f"talks to {two}:{PORT} from 127.0.0.1:" in problems[0]


# --- node groups -----------------------------------------------------------------------------


def views(count: int = 5, validators: int = 3, down: tuple[int, ...] = (), paused: tuple[int, ...] = ()) -> list[NodeView]:
    return [NodeView(index=index, node_id=f"{index:016x}", host=f"127.9.9.{index}", validator=index <= validators,
                     state="killed" if index in down else "paused" if index in paused else "up") for index in range(1, count + 1)]


def pick(selector: Selector, nodes=None, *, leader=lambda: 2, seed: int = 1, excluded=()) -> list[int]:
    return resolve(selector, nodes or views(), leader=leader, rng=random.Random(seed), excluded=excluded)


def test_groups_resolve_to_the_documented_nodes():
    assert pick(Selector(groups=("majority",))) == [1, 2, 3]
    assert pick(Selector(groups=("minority",))) == [4, 5]
    assert pick(Selector(groups=("minority",)), views(4, 3)) == [4]
    assert pick(Selector(groups=("validators",))) == [1, 2, 3]
    assert pick(Selector(groups=("non_validators",))) == [4, 5]
    assert pick(Selector(groups=("leader",))) == [2]
    assert pick(Selector(groups=("followers",))) == [1, 3]
    assert pick(Selector(groups=("live",)), views(down=(2, 5))) == [1, 3, 4]
    assert pick(Selector(groups=("all",)), views(down=(2, 5))) == [1, 2, 3, 4, 5]
    assert pick(Selector(groups=("rest",)), excluded=(1, 2)) == [3, 4, 5]
    assert pick(Selector(groups=("down",)), views(down=(2, 5), paused=(3,))) == [2, 5]
    assert pick(Selector(groups=("paused",)), views(down=(2, 5), paused=(3,))) == [3]
    assert pick(Selector(indexes=(4,), node_ids=(f"{2:016x}",))) == [2, 4]


def test_random_picks_are_live_distinct_and_replay_from_the_seed():
    nodes = views(down=(1,))
    first = pick(Selector(random_picks=((2, None),)), nodes, seed=7)
    assert len(first) == 2 and 1 not in first
    assert pick(Selector(random_picks=((2, None),)), nodes, seed=7) == first
    assert {tuple(pick(Selector(random_picks=((2, None),)), nodes, seed=seed)) for seed in range(30)} != {tuple(first)}
    assert pick(Selector(indexes=(3,), random_picks=((1, None),)), views(down=(1, 2)))[0] == 3
    assert all(pick(Selector(random_picks=((1, "validators"),)), seed=seed)[0] in (1, 2, 3) for seed in range(20))
    assert pick(Selector(random_picks=((2, "non_validators"),)), views(down=(1,))) == [4, 5]
    with pytest.raises(ClusterError, match="cannot pick 1 random live node.s. of non_validators: only 0 left"):
        pick(Selector(random_picks=((1, "non_validators"),)), views(down=(4, 5)))
    with pytest.raises(ClusterError, match="cannot pick 3 random live node"):
        pick(Selector(random_picks=((3, None),)), views(down=(1, 2, 3)))


def test_groups_that_name_nobody_now_are_errors():
    with pytest.raises(ClusterError, match="no Raft leader"):
        pick(Selector(groups=("leader",)), leader=lambda: None)
    with pytest.raises(ClusterError, match="names no node"):
        pick(Selector(groups=("live",), text="live"), views(down=(1, 2, 3, 4, 5)))
    with pytest.raises(ClusterError, match="no node has id"):
        pick(Selector(node_ids=("f" * 16,)))


# --- process faults --------------------------------------------------------------------------


class RecordingCluster:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, action: str):
        return lambda index: self.calls.append((action, index))


def test_process_faults_signal_the_right_node_and_track_liveness():
    cluster = RecordingCluster()
    faults = ProcessFaults(cluster, 3)
    faults.apply("kill", [1])
    faults.apply("pause", [2])
    faults.apply("stop", [2])       # a paused node is resumed first, or it would never handle SIGTERM
    faults.apply("kill", [1])       # already down: nothing sent
    faults.apply("restart", [1])
    assert cluster.calls == [("kill", 0), ("pause", 1), ("resume", 1), ("stop", 1), ("restart", 0)]
    assert [faults.state(index) for index in (1, 2, 3)] == ["up", "stopped", "up"]
    with pytest.raises(ClusterError, match="not paused"):
        faults.apply("resume", [3])
    with pytest.raises(ClusterError, match="only a running node can be paused"):
        faults.apply("pause", [2])
    faults.apply("pause", [3])
    faults.resume_all()
    assert faults.live(3) and cluster.calls[-1] == ("resume", 2)
    with pytest.raises(ClusterError, match="unknown process fault"):
        faults.apply("explode", [1])


# --- the package server ----------------------------------------------------------------------

WAT = '(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 1024))'


def http_get(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with closing(error):
            return error.code, error.read()


def test_the_package_server_serves_by_name_and_by_cid(tmp_path):
    source = tmp_path / "p.wat"
    source.write_text(WAT)
    data = build_package(source, tmp_path)
    assert data.startswith(b"\0asm")
    with PackageServer() as server:
        package = server.add("p", data)
        bad = server.add("bad", data + b"\0", corrupt=True)
        with pytest.raises(ClusterError, match="same content"):
            server.add("clash", data, corrupt=True)
        assert parse_ipfs_url(package.ipfs_url) == (package.cid, "") and package.cid.startswith("bafkrei")
        assert http_get(package.http_url) == (200, data)
        assert http_get(f"{server.gateway_url}/ipfs/{package.cid}") == (200, data)
        status, served = http_get(bad.http_url)
        assert status == 200 and len(served) == bad.size and hashlib.sha256(served).hexdigest() != bad.sha256
        server.set_available("p", False)
        assert http_get(package.http_url)[0] == 503
        server.set_available("p", True)
        assert http_get(f"{server.base_url}/packages/none.wasm")[0] == 404
        assert server.requests("p") == 3  # by name, by CID, and the 503
        with pytest.raises(ClusterError, match="no package"):
            server.set_available("none", False)
    assert cid_for(b"") != cid_for(b"x")


async def test_a_node_fetches_through_the_gateway_stand_in_and_refuses_a_corrupt_package(tmp_path):
    source = tmp_path / "p.wat"
    source.write_text(WAT)
    data = build_package(source, tmp_path)
    with PackageServer() as server:
        package = server.add("p", data)
        corrupt = server.add("c", data + b"\0", corrupt=True)
        fetcher = PackageFetcher(PackageCache(tmp_path / "cache"), ipfs_gateways=(server.gateway_url,))
        try:
            assert await fetcher.fetch(package.ipfs_url, f"sha256:{package.sha256}", package.size) == data
            with pytest.raises((HashMismatchError, PackageFetchError)):
                await fetcher.fetch(corrupt.http_url, corrupt.sha256, corrupt.size)
        finally:
            await fetcher.close()


def test_nodes_are_configured_with_the_gateway_stand_in(tmp_path):
    from cluster.addresses import AddressBlock
    from cluster.genesis import create_network
    from node.config import load_config

    with PackageServer() as server:
        network = create_network(tmp_path, nodes=2, validators=1, block=AddressBlock("127.99.3"), ipfs_gateways=(server.gateway_url,))
        assert all(load_config(node.config_path).ipfs_gateways == (server.gateway_url,) for node in network.nodes)


def test_package_builds_fail_clearly(tmp_path):
    with pytest.raises(ClusterError, match="does not exist"):
        build_package(tmp_path / "missing.wat", tmp_path)
    (tmp_path / "bad.wat").write_text("(module (func (export")
    with pytest.raises(ClusterError, match="not valid WAT"):
        build_package(tmp_path / "bad.wat", tmp_path)
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(ClusterError, match="not .wat, .c or .wasm"):
        build_package(tmp_path / "p.txt", tmp_path)


@pytest.fixture
def wide_block():
    """A block for 256 nodes (two /24s, one /23) with echo servers on hosts 1, 2 (first /24) and 255, 256
    (second /24); yields the prefix and those addresses."""
    with ExitStack() as stack:
        lease = stack.enter_context(acquire_block(hosts=256, ports=(PORT,)))
        hosts = [lease.block.host(index) for index in (1, 2, 255, 256)]
        servers = EchoServers(hosts)
        stack.callback(servers.close)
        yield lease.block, hosts


@needs_iptables
def test_a_wide_blocks_partition_cuts_across_its_two_slash_24s_and_heals(wide_block):
    block, (one, two, far, farther) = wide_block
    assert far.rsplit(".", 1)[0] != one.rsplit(".", 1)[0]        # host 255 lives in the second /24
    with NetworkFaults.open(block.prefix, width=2) as faults:
        assert jump_present(block.prefix) and faults.cidr == f"{block.prefix}.0/23"
        faults.partition([[one, two], [far]])
        assert not reachable(one, far) and not reachable(far, two)
        assert reachable(one, two) and reachable(far, farther) and reachable(one, farther)
        faults.heal()
        assert reachable(one, far)
    assert not chain_present(block.prefix) and not jump_present(block.prefix)


@needs_iptables
def test_a_stale_wide_jump_is_removed_by_whoever_takes_either_half_next(wide_block):
    block, (one, _two, far, _farther) = wide_block
    crashed = NetworkFaults.open(block.prefix, width=2)
    crashed.cut([one], [far])                   # ... and the run dies here without closing
    assert not reachable(one, far)
    second_half = block.prefixes()[1]
    assert remove_stale_chain(second_half) is True   # a small cluster that takes 127.A.(B+1) next
    assert reachable(one, far) and not jump_present(block.prefix)
    assert remove_stale_chain(block.prefix) is True and not chain_present(block.prefix)
