"""The provider interface without a cluster: link-fault steps refused on loopback with what to write,
parsed on netns; the netns names fit the kernel's limits; the rules written into a namespace; the
loopback provider refusing what it cannot do before touching anything."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cluster.providers import PROVIDERS, make_provider, provider_class
from cluster.providers.base import LinkFault, merge_link_fault
from cluster.providers.netns_net import NODES_MAX, SUBNETS, Names, filter_rules, subnet_block, subnet_number
from cluster.scenario import PROVIDERS as SCENARIO_PROVIDERS, parse_scenario
from node.errors import ConfigError, FaultInjectionUnavailable, ScenarioFormatError

REPOSITORY = Path(__file__).resolve().parents[2]
IFNAMSIZ_MAX = 15

SCENARIO = """
[scenario]
name = "slow link"

[cluster]
nodes = 4
validators = 3
{provider}

[[steps]]
do = "delay"
from = "validators"
to = ["node-4"]
ms = 200
jitter_ms = 20

[[steps]]
do = "loss"
from = "node-4"
to = "all"
percent = 12.5

[[steps]]
do = "bandwidth"
nodes = "node-1"
kbit = 512

[[steps]]
do = "heal"
"""


def parse(provider_line: str):
    return parse_scenario(tomllib.loads(SCENARIO.format(provider=provider_line)), base_dirs=(REPOSITORY,))


def test_link_fault_steps_parse_on_netns():
    scenario = parse('provider = "netns"')
    assert scenario.cluster.provider == "netns"
    delay, loss, bandwidth, heal = scenario.steps
    assert (delay.params["ms"], delay.params["jitter_ms"], delay.params["to"].indexes) == (200, 20, (4,))
    assert loss.params["percent"] == 12.5 and bandwidth.params["kbit"] == 512 and heal.do == "heal"


@pytest.mark.parametrize("provider_line", ["", 'provider = "loopback"'])
def test_link_fault_steps_are_refused_on_loopback_saying_what_to_write(provider_line):
    with pytest.raises(ScenarioFormatError) as caught:
        parse(provider_line)
    assert caught.value.message.startswith("steps[0].do: 'delay' needs provider = \"netns\"")
    assert 'provider = "netns"' in caught.value.hint


@pytest.mark.parametrize("wrong, place", [('provider = "docker"', "cluster.provider"), ])
def test_an_unknown_provider_is_named(wrong, place):
    with pytest.raises(ScenarioFormatError) as caught:
        parse(wrong)
    assert caught.value.message.startswith(place) and "loopback" in caught.value.message


@pytest.mark.parametrize("line, place", [("ms = 60001", "steps[0].ms"), ("ms = -1", "steps[0].ms"), ('ms = "200ms"', "steps[0].ms")])
def test_a_bad_delay_is_named_by_its_place(line, place):
    text = SCENARIO.format(provider='provider = "netns"').replace("ms = 200", line)
    with pytest.raises(ScenarioFormatError) as caught:
        parse_scenario(tomllib.loads(text), base_dirs=(REPOSITORY,))
    assert caught.value.message.startswith(place)


def test_the_scenario_format_and_the_registry_name_the_same_providers():
    assert set(SCENARIO_PROVIDERS) == set(PROVIDERS)
    for name in PROVIDERS:
        assert provider_class(name).name == name
    with pytest.raises(ConfigError):
        provider_class("docker")


def test_netns_names_fit_the_kernel_and_never_collide():
    seen = set()
    for number in (0, 1, 255, 256, SUBNETS - 1):
        names = Names(number)
        assert subnet_number(names.block.prefix) == number
        for name in (names.bridge, names.veth(NODES_MAX)):
            assert len(name) <= IFNAMSIZ_MAX, name
            assert name not in seen
            seen.add(name)
        assert names.bridge_address.endswith(".254") and names.host(NODES_MAX).endswith(".253")
    assert subnet_block(0).prefix == "198.18.0" and subnet_block(SUBNETS - 1).prefix == "198.19.255"
    for outside in ("127.0.0", "198.20.1", "198.18.256", "10.0.0", ""):
        with pytest.raises(ConfigError):
            subnet_number(outside)


def test_a_namespace_filter_table_drops_cut_links_and_queues_slow_ones_with_bypass():
    table = filter_rules(["198.18.4.2"], ["198.18.4.3"])
    assert "-A OUTPUT -d 198.18.4.2/32 -j DROP" in table
    assert "-A OUTPUT -d 198.18.4.3/32 -j NFQUEUE --queue-num 7 --queue-bypass" in table
    assert table.startswith("*filter") and table.endswith("COMMIT\n")
    assert filter_rules([], []).count("-A ") == 0, "healed: an empty table"


def test_link_faults_add_up_until_heal_and_refuse_nonsense():
    delayed = merge_link_fault(None, 0, 1, delay_ms=200, jitter_ms=10)
    lossy = merge_link_fault(delayed, 0, 1, loss_percent=20.0)
    assert (lossy.delay_ms, lossy.jitter_ms, lossy.loss_percent) == (200, 10, 20.0)
    assert LinkFault(source=0, destination=1).empty
    for bad in ({"source": 1, "destination": 1}, {"source": 0, "destination": 1, "loss_percent": 101.0},
                {"source": 0, "destination": 1, "delay_ms": -5}):
        with pytest.raises(ValueError):
            LinkFault(**bad)


def test_the_loopback_provider_refuses_link_faults_naming_netns_before_anything_starts():
    provider = make_provider("loopback", nodes=3, validators=1)
    with pytest.raises(FaultInjectionUnavailable) as caught:
        provider.delay([0], [1], ms=200)
    assert 'provider = "netns"' in caught.value.hint and caught.value.message.startswith("delay:")
    for refused in (lambda: provider.loss([0], [1], percent=5), lambda: provider.bandwidth([0], kbit=100),
                    lambda: provider.skew([0], ms=1000)):
        with pytest.raises(FaultInjectionUnavailable):
            refused()
    assert provider.cluster is None, "nothing was started"
