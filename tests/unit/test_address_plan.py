"""The loopback address plan up to NODES_MAX = 256 nodes (cluster/addresses.py): a cluster of at most
254 nodes takes one 127.A.B.0/24, a larger one two adjacent /24s forming an aligned /23 and holding
both locks; every node address lies in the block's network (the iptables jump), and none twice."""

from __future__ import annotations

import ipaddress
import random
import tomllib
from pathlib import Path

import pytest

from cluster.addresses import (CLUSTER_HOSTS_MAX, NODES_MAX, AddressBlock, acquire_block, acquire_given_block, parse_block,
                               width_for)
from cluster.genesis import create_network
from cluster.scenario import parse_scenario
from node.errors import ConfigError, ScenarioFormatError

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("hosts, width", [(1, 1), (254, 1), (255, 2), (256, 2), (CLUSTER_HOSTS_MAX, 2)])
def test_the_width_follows_the_node_count(hosts: int, width: int) -> None:
    assert width_for(hosts) == width


@pytest.mark.parametrize("hosts", [0, CLUSTER_HOSTS_MAX + 1, 2.5])
def test_impossible_node_counts_are_refused(hosts: object) -> None:
    with pytest.raises(ConfigError, match="a local cluster has 1 to"):
        width_for(hosts)


@pytest.mark.parametrize("hosts", [5, 254, 255, NODES_MAX])
def test_every_node_address_is_distinct_usable_and_inside_the_blocks_network(hosts: int) -> None:
    block = parse_block("127.70.12", hosts=hosts)
    addresses = [block.host(index) for index in range(1, hosts + 1)]
    network = ipaddress.ip_network(block.cidr)
    assert len(set(addresses)) == hosts
    assert all(ipaddress.ip_address(address) in network for address in addresses)
    assert all(address.rsplit(".", 1)[1] not in ("0", "255") for address in addresses)  # no network / broadcast ends
    assert block.cidr == ("127.70.12.0/24" if hosts <= 254 else "127.70.12.0/23")


def test_a_wide_block_continues_in_the_next_slash_24() -> None:
    block = AddressBlock("127.70.12", 2)
    assert [block.host(index) for index in (1, 254, 255, 256, 508)] == [
        "127.70.12.1", "127.70.12.254", "127.70.13.1", "127.70.13.2", "127.70.13.254"]
    assert block.prefixes() == ("127.70.12", "127.70.13") and block.hosts_max == 508
    with pytest.raises(ValueError, match="hosts 1..508"):
        block.host(509)
    with pytest.raises(ValueError, match="hosts 1..254"):
        AddressBlock("127.70.12").host(255)


@pytest.mark.parametrize("prefix", ["127.70.13", "127.70.255"])
def test_a_wide_block_starts_at_an_even_third_number(prefix: str) -> None:
    with pytest.raises(ValueError, match="a /23 starts at an even B"):
        AddressBlock(prefix, 2)
    with pytest.raises(ConfigError, match="cannot hold 256 nodes") as raised:
        parse_block(prefix, hosts=256)
    assert "even B" in raised.value.hint


def test_a_wide_lease_holds_both_locks_and_a_small_lease_cannot_take_either_half(tmp_path: Path) -> None:
    rng = random.Random(7)
    with acquire_block(hosts=NODES_MAX, ports=(7600,), lock_dir=tmp_path, rng=rng) as wide:
        first, second = wide.block.prefixes()
        assert wide.block.width == 2 and int(first.rsplit(".", 1)[1]) % 2 == 0
        for half in (first, second):
            with pytest.raises(ConfigError, match="held by another cluster"):
                acquire_given_block(parse_block(half), hosts=3, ports=(7600,), lock_dir=tmp_path)
    with acquire_given_block(parse_block(second), hosts=3, ports=(7600,), lock_dir=tmp_path) as small:  # released: free again
        assert small.held
        with pytest.raises(ConfigError, match="held by another cluster") as raised:
            acquire_given_block(parse_block(first), hosts=NODES_MAX, ports=(7600,), lock_dir=tmp_path)
        assert f"{first}.0/23" in raised.value.message
    assert not wide.held


def test_a_stopped_wide_clusters_prefix_reopens_as_the_same_wide_block(tmp_path: Path) -> None:
    with acquire_block(hosts=300, ports=(7600,), lock_dir=tmp_path, rng=random.Random(3)) as lease:
        prefix = lease.block.prefix
    with acquire_given_block(parse_block(prefix), hosts=300, ports=(7600,), lock_dir=tmp_path) as again:
        assert again.block == AddressBlock(prefix, 2)


def test_genesis_for_256_nodes_puts_each_at_its_own_address(tmp_path: Path) -> None:
    block = parse_block("127.70.40", hosts=NODES_MAX)
    network = create_network(tmp_path / "net", nodes=NODES_MAX, validators=3, block=block)
    hosts = [node.api_url.split("//")[1].rsplit(":", 1)[0] for node in network.nodes]
    assert len(set(hosts)) == NODES_MAX and hosts[-1] == "127.70.41.2"
    with pytest.raises(ConfigError, match="--nodes must be from 1 to 256"):
        create_network(tmp_path / "more", nodes=NODES_MAX + 1, validators=3, block=AddressBlock("127.70.40", 2))
    with pytest.raises(ConfigError, match="holds 254 nodes, not 255"):
        create_network(tmp_path / "narrow", nodes=255, validators=3, block=AddressBlock("127.70.40"))


def scenario(nodes: int, steps: str = '[[steps]]\ndo = "heal"\n'):
    text = f'[scenario]\nname = "big"\n[cluster]\nnodes = {nodes}\nvalidators = 5\n' + steps
    return parse_scenario(tomllib.loads(text), base_dirs=(REPOSITORY,))


def test_a_scenario_file_may_ask_for_256_nodes_and_name_the_last_one() -> None:
    parsed = scenario(NODES_MAX, '[[steps]]\ndo = "kill"\nnodes = [256, 255]\n')
    assert parsed.cluster.nodes == NODES_MAX and parsed.steps[0].params["nodes"].indexes == (256, 255)
    with pytest.raises(ScenarioFormatError, match="cluster.nodes"):
        scenario(NODES_MAX + 1)
    with pytest.raises(ScenarioFormatError, match=r"steps\[0\]"):
        scenario(100, '[[steps]]\ndo = "kill"\nnodes = [101]\n')
