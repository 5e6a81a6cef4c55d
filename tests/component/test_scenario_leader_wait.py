"""A scenario step that names the Raft leader waits for an election within its `within`.

Right after `cluster up`, or after a fault between validators, the validators may have no leader yet; a
WAN-timed network (raft_election_timeout_min_ms of seconds) takes seconds to elect its first one. A
step such as `check = "healthy", on = "leader", within = "60s"` is how a scenario waits for it: the
runner polls it like any check that does not hold yet. Without `within` it fails at once (it is not an
error of the testbed), and what it saw says why.
"""

from __future__ import annotations

import random
from pathlib import Path

import cluster.scenario_runner as runner_module
from cluster.faults import NodeView, resolve
from cluster.scenario import Step, load_scenario
from cluster.scenario_runner import RunOptions, ScenarioRun
from cluster.scenario_steps import Judgement

SCENARIO = """
[scenario]
name = "leader wait"
[[steps]]
do = "assert"
check = "healthy"
on = "leader"
within = "30s"
"""


def leader_step(tmp_path: Path, within: str | None) -> tuple[ScenarioRun, Step]:
    text = SCENARIO if within else SCENARIO.replace('within = "30s"\n', "")
    path = tmp_path / "leader.toml"
    path.write_text(text)
    scenario = load_scenario(path)
    return ScenarioRun(scenario, RunOptions(report_root=tmp_path / "runs", echo=lambda line: None)), scenario.steps[0]


NODES = [NodeView(index=index, node_id=f"{index:016x}", host=f"127.0.0.{index}", validator=index <= 3) for index in range(1, 6)]


def elected_after(looks_without_leader: int, calls: list[int]):
    """A check on "leader" as the driver resolves it (cluster/faults.py), with no leader for the first looks."""
    def healthy(driver, step) -> Judgement:
        calls.append(1)
        leader = None if len(calls) <= looks_without_leader else 2
        (index,) = resolve(step.params["on"], NODES, leader=lambda: leader, rng=random.Random(1))
        return Judgement(ok=True, expected="GET /health says ok", seen=f"holds on node-{index}")
    return healthy


def test_a_step_on_the_leader_polls_through_an_election_until_one_is_elected(tmp_path, monkeypatch):
    run, step = leader_step(tmp_path, within="30s")
    calls: list[int] = []
    monkeypatch.setitem(runner_module.CHECKS, "healthy", elected_after(3, calls))
    monkeypatch.setattr(run, "_sleep", lambda seconds: None)      # the polls themselves, not their pace
    judgement = run._judge(step)
    assert judgement.ok and judgement.seen == "holds on node-2" and len(calls) == 4


def test_without_within_a_missing_leader_fails_the_step_and_says_why(tmp_path, monkeypatch):
    run, step = leader_step(tmp_path, within=None)
    calls: list[int] = []
    monkeypatch.setitem(runner_module.CHECKS, "healthy", elected_after(3, calls))
    judgement = run._judge(step)
    assert not judgement.ok and len(calls) == 1
    assert "no Raft leader" in judgement.seen and "within" in judgement.seen     # the hint: how to wait


def test_a_missing_leader_after_the_within_runs_out_is_a_failed_step(tmp_path, monkeypatch):
    run, step = leader_step(tmp_path, within="30s")
    calls: list[int] = []
    monkeypatch.setitem(runner_module.CHECKS, "healthy", elected_after(10**9, calls))
    clock = iter(range(0, 10**6, 5))       # each look takes 5 s: the 30 s window closes after 7 looks
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(run, "_sleep", lambda seconds: None)
    judgement = run._judge(step)
    assert not judgement.ok and judgement.expected == "the validators have a Raft leader" and 5 <= len(calls) <= 8
