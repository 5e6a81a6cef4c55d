"""Nodes that share one machine pace their anti-entropy for the machine (cluster/genesis.py).

Each node paces only itself. At the default period, 100 nodes on 2 cores started 500 rounds a second; while
an upgrade's reports spread, every digest differed and those rounds alone saturated the cores (bench_scale:
44 s until executed everywhere, 6 s with a 1 s period). A local cluster's launcher therefore writes a longer
period into the configs once N passes 20 (and, past 20 nodes, a report hold and a smaller push fanout); a
network whose nodes run elsewhere (`genesis create`, Kubernetes) keeps the defaults, and a value the user
gives always wins.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cluster.addresses import parse_block
from cluster.genesis import (MACHINE_ANTI_ENTROPY_ROUNDS_PER_S, create_network, machine_gossip_fanout, machine_gossip_interval_ms,
                             machine_report_hold_ms)
from node.config import Limits, load_config
from node.core.gossip_settings import fanout_for


@pytest.mark.parametrize("nodes, expected_ms", [(1, 200), (20, 200), (21, 210), (33, 330), (100, 1000), (256, 2560)])
def test_the_machine_starts_at_most_a_hundred_rounds_a_second_and_small_clusters_keep_the_default(nodes, expected_ms) -> None:
    interval_ms = machine_gossip_interval_ms(nodes)
    assert interval_ms == expected_ms and interval_ms >= Limits().gossip_interval_ms
    if interval_ms > Limits().gossip_interval_ms:     # paced: the machine's rounds a second stay within the bound
        assert nodes * 1000 / interval_ms <= MACHINE_ANTI_ENTROPY_ROUNDS_PER_S


def configured_interval(network, index: int = 0) -> int | None:
    document = tomllib.loads(Path(network.nodes[index].config_path).read_text())
    return document.get("limits", {}).get("gossip_interval_ms")


def test_a_one_machine_network_writes_the_paced_period_into_every_config(tmp_path: Path) -> None:
    block = parse_block("127.70.40", hosts=100)
    network = create_network(tmp_path / "one", nodes=100, validators=3, block=block, one_machine=True)
    assert {configured_interval(network, index) for index in range(100)} == {1000}
    elsewhere = create_network(tmp_path / "many", nodes=100, validators=3, block=block)
    assert configured_interval(elsewhere) is None          # nodes on other machines: the node's default
    small = create_network(tmp_path / "small", nodes=5, validators=3, block=block, one_machine=True)
    assert configured_interval(small) is None
    given = create_network(tmp_path / "given", nodes=100, validators=3, block=block, one_machine=True,
                           config_limits={"gossip_interval_ms": 150})
    assert configured_interval(given) == 150                # the user's choice wins


def configured_hold(network, index: int = 0) -> int | None:
    return tomllib.loads(Path(network.nodes[index].config_path).read_text()).get("limits", {}).get("gossip_report_hold_ms")


@pytest.mark.parametrize("nodes, expected_ms", [(5, 0), (20, 0), (33, 660), (100, 2000), (256, 5120)])
def test_reports_are_held_two_paced_periods_once_the_machine_paces_its_nodes(nodes, expected_ms) -> None:
    assert machine_report_hold_ms(nodes) == expected_ms


def test_a_one_machine_network_writes_the_report_hold_and_a_hold_the_user_gives_wins(tmp_path: Path) -> None:
    block = parse_block("127.70.41", hosts=100)
    network = create_network(tmp_path / "one", nodes=100, validators=3, block=block, one_machine=True)
    assert {configured_hold(network, index) for index in range(100)} == {2000}
    assert configured_hold(create_network(tmp_path / "many", nodes=100, validators=3, block=block)) is None
    assert configured_hold(create_network(tmp_path / "small", nodes=5, validators=3, block=block, one_machine=True)) is None
    given = create_network(tmp_path / "given", nodes=100, validators=3, block=block, one_machine=True,
                           config_limits={"gossip_report_hold_ms": 0})
    assert configured_hold(given) == 0
    assert Limits().gossip_report_hold_ms == 0, "a node on its own machine sends its report at once"


def configured_fanout(network, index: int = 0) -> int | None:
    return tomllib.loads(Path(network.nodes[index].config_path).read_text()).get("limits", {}).get("gossip_fanout")


@pytest.mark.parametrize("nodes, expected", [(5, 0), (20, 0), (21, 4), (33, 4), (100, 4), (256, 4)])
def test_a_paced_machine_pushes_each_entry_to_the_automatic_fanout_of_twenty_nodes(nodes, expected) -> None:
    assert machine_gossip_fanout(nodes) == expected
    if expected:       # fewer pushes than the node's automatic fanout, never more
        assert expected == fanout_for(19, None) < fanout_for(nodes - 1, None)


def test_a_one_machine_network_writes_the_fanout_and_a_fanout_the_user_gives_wins(tmp_path: Path) -> None:
    block = parse_block("127.70.42", hosts=100)
    network = create_network(tmp_path / "one", nodes=100, validators=3, block=block, one_machine=True)
    assert {configured_fanout(network, index) for index in range(100)} == {4}
    assert load_config(Path(network.nodes[0].config_path)).limits.gossip_fanout == 4     # what the node itself reads
    assert configured_fanout(create_network(tmp_path / "many", nodes=100, validators=3, block=block)) is None
    assert configured_fanout(create_network(tmp_path / "small", nodes=5, validators=3, block=block, one_machine=True)) is None
    given = create_network(tmp_path / "given", nodes=100, validators=3, block=block, one_machine=True,
                           config_limits={"gossip_fanout": 7})
    assert configured_fanout(given) == 7
