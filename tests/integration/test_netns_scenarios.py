"""Scenarios on the netns provider: the slow-validator story measured against its twin, and the shipped
stories replayed with a namespace per node.

Why it works as it does:
- Delay: scenarios/validator_links_delay.toml runs as written (200 ms on every validator link) and as
  its twin without the delay (the same steps minus `delay`, on the same provider, so the only
  difference is the delay). Each run's timing hook reports the ratification time from the log's own
  timestamps (last approving vote -> first EXECUTE_UPGRADE); the delayed run must be >= 200 ms slower,
  and both must pass (executed everywhere, one state hash, the shared safety checks).
- Every shipped scenario also runs on netns (the file's `[cluster] provider` replaced): the same story
  must hold when every node has its own TCP stack and the launcher reaches them through a bridge.
  That is ~27 clusters: on 2 cores it takes longer than a CI run should spend on it, so by default a
  representative subset runs (happy path, a partition, a crash, a Raft attack, the SSRF story whose
  gateway host moves to the bridge), and SYNAPSE_NETNS_ALL_SCENARIOS=1 runs them all.
- Like tests/integration/test_scenarios.py, a failure prints the run's progress and its summary.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from cluster.providers import netns_net
from cluster.providers.netns import nfqueue_problem
from cluster.scenario import load_scenario
from cluster.scenario_runner import REPOSITORY
from tests.integration.test_scenarios import run_passing as run_shipped_passing

PROBLEM = netns_net.netns_problem() or nfqueue_problem()
SCENARIO_DIR = REPOSITORY / "scenarios"
DELAY_SCENARIO = SCENARIO_DIR / "validator_links_delay.toml"
SUBSET = ("happy_path", "validator_partition_heals", "crash_pause_catch_up", "raft_stranger_flood", "ssrf_gateway_host")
ALL = os.environ.get("SYNAPSE_NETNS_ALL_SCENARIOS") == "1"
LOOPBACK_SCENARIOS = sorted(path for path in SCENARIO_DIR.glob("*.toml") if load_scenario(path, repository=REPOSITORY).cluster.provider
                            == "loopback")
ON_NETNS = LOOPBACK_SCENARIOS if ALL else [path for path in LOOPBACK_SCENARIOS if path.stem in SUBSET]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(PROBLEM is not None, reason=f"the netns provider cannot run here: {PROBLEM}; "
                                                                               "run as root after scripts/install-toolchain.sh")]


def run_passing(scenario, tmp_path: Path):
    record = run_shipped_passing(scenario, tmp_path)
    assert {outcome.status for outcome in record.safety} == {"passed"} and len(record.safety) == 4
    return record


def ratification_ms(record) -> int:
    (seen,) = [step.seen for step in record.steps if step.do == "hook" and "ratification took" in step.seen]
    return int(re.search(r"ratification took (\d+) ms", seen).group(1))


def without_delay(scenario):
    """The same story on the same provider, minus the delay (and minus the delay's lower bound)."""
    steps = []
    for step in scenario.steps:
        if step.do == "delay":
            continue
        if step.do == "hook" and step.params["hook"] == "hooks.timing:ratification":
            step = dataclasses.replace(step, params={**step.params, "args": {**step.params["args"], "at_least_ms": 0}})
        steps.append(step)
    return dataclasses.replace(scenario, name=scenario.name + " (twin without the delay)", steps=tuple(steps))


@pytest.mark.timeout(600)
def test_200_ms_on_every_validator_link_slows_ratification_by_200_ms_and_it_still_executes(tmp_path):
    scenario = load_scenario(DELAY_SCENARIO, repository=REPOSITORY)
    assert scenario.cluster.provider == "netns" and [step.params["ms"] for step in scenario.steps if step.do == "delay"] == [200]
    delayed = run_passing(scenario, tmp_path / "delayed")
    baseline = run_passing(without_delay(scenario), tmp_path / "baseline")
    delayed_ms, baseline_ms = ratification_ms(delayed), ratification_ms(baseline)
    print(f"ratification: {baseline_ms} ms without the delay, {delayed_ms} ms with 200 ms on every validator link")
    assert delayed_ms - baseline_ms >= 200, f"{delayed_ms} ms with the delay against {baseline_ms} ms without"


def test_the_twin_without_delay_is_really_without_it():
    twin = without_delay(load_scenario(DELAY_SCENARIO, repository=REPOSITORY))
    assert not [step for step in twin.steps if step.do == "delay"] and twin.cluster.provider == "netns"


@pytest.mark.timeout(480)
@pytest.mark.parametrize("path", ON_NETNS, ids=lambda path: path.stem)
def test_shipped_scenario_passes_on_the_netns_provider(path: Path, tmp_path: Path):
    scenario = load_scenario(path, repository=REPOSITORY)
    on_netns = dataclasses.replace(scenario, cluster=dataclasses.replace(scenario.cluster, provider="netns"))
    record = run_passing(on_netns, tmp_path)
    assert len(record.steps) == len(scenario.steps), "every step ran"
