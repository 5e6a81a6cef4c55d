"""Every scenario file under scenarios/ runs as a test: a fresh local cluster, its story, the shared
safety checks, and a PASS verdict (the runner's, cluster/scenario_runner.py).

Why it works as it does:
- One parametrized test per file (`pytest -n auto` spreads them over the workers), so adding a
  scenario file adds a test, and a failing story is reported by its file name.
- The run goes through the runner's API, exactly as `synapse scenario run` does, with its report
  folder under tmp_path. On failure the assertion message holds the run's progress lines (seed first:
  replay with `synapse scenario run FILE --seed S`) and the report's summary.md (for each failure:
  expected, seen, and the node log lines around it).
- A scenario that cuts the network needs root and iptables, one on the netns provider needs root,
  namespaces and NetfilterQueue; where they are missing the test is skipped with the reason and how
  to get them (never passed, never failed for the machine's sake).
- A quick check validates every file and resolves every hook it names, so a typo fails in
  milliseconds, before any cluster starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.faults import network_capability
from cluster.providers.netns import nfqueue_problem
from cluster.providers.netns_net import netns_problem
from cluster.scenario import load_scenario
from cluster.scenario_runner import REPOSITORY, RunOptions, ScenarioRun, needs_partitions
from cluster.scenario_steps import load_hook

SCENARIO_DIR = REPOSITORY / "scenarios"
SCENARIOS = sorted(SCENARIO_DIR.glob("*.toml"))
SUMMARY_SHOWN_MAX_CHARACTERS = 20_000


def run_passing(scenario, tmp_path: Path, *, label: str | None = None):
    """Run a scenario; a failed run fails the test with its progress lines and its summary.md."""
    lines: list[str] = []
    run = ScenarioRun(scenario, RunOptions(report_root=tmp_path / "runs", echo=lines.append))
    record = run.run()
    if not record.passed:
        summary_path = run.folder / "summary.md"
        summary = summary_path.read_text(errors="replace") if summary_path.exists() else "(no summary.md was written)"
        pytest.fail(f"{label or scenario.name}: verdict {record.verdict}" + (f" (aborted: {record.aborted})" if record.aborted else "")
                    + "\n--- progress\n" + "\n".join(lines)
                    + f"\n--- {summary_path}\n" + summary[:SUMMARY_SHOWN_MAX_CHARACTERS], pytrace=False)
    return record


# The stories the network must pass (issue 5), each its own file: a file lost is a story untold.
SHIPPED = {
    "happy_path", "rejected_proposal", "quorum_not_reached", "hash_mismatch", "endless_loop_package",
    "memory_bomb_package", "wasi_import_package", "garbage_output_package", "sybil_voters",
    "forged_votes_and_execute", "colluding_validator_minority", "backdated_vote", "leader_killed_during_ratification",
    "validator_partition_heals", "crash_mid_upgrade", "auto_rollback", "manual_rollback",
    "chained_upgrades_rollback", "partition_heal_log", "crash_pause_catch_up", "ssrf_gateway_host", "odd_versions",
    # issue 8: the validators' Raft transport
    "compromised_validator_raft", "raft_stranger_flood", "raft_fd_exhaustion",
    # issue 12: a node-side clock skew
    "clock_skew", "clock_skew_short_period",
    # issue 12: link faults on the netns provider
    "validator_links_delay", "lossy_member",
    # issue 11: one EXECUTE_UPGRADE per certificate, published by the Raft leader
    "leader_crashes_before_publishing",
}


def test_every_story_has_its_scenario_file():
    assert SHIPPED <= {path.stem for path in SCENARIOS}, sorted(SHIPPED - {path.stem for path in SCENARIOS})


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda path: path.stem)
def test_every_scenario_file_is_valid_and_its_hooks_resolve(path: Path):
    scenario = load_scenario(path, repository=REPOSITORY)
    for package in scenario.packages:
        assert package.source.is_file(), f"{path.name}: package {package.name} source {package.source} is missing"
    for step in scenario.steps:
        if step.do == "hook":
            assert callable(load_hook(step.params["hook"], path.parent)), f"{path.name} {step.path}: {step.params['hook']}"


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("path", SCENARIOS, ids=lambda path: path.stem)
def test_scenario_passes(path: Path, tmp_path: Path):
    scenario = load_scenario(path, repository=REPOSITORY)
    if needs_partitions(scenario):
        capability = network_capability()
        if not capability.available:
            pytest.skip(f"{path.name} cuts the network, which needs root and iptables here: {capability.detail}; {capability.hint}")
    if scenario.cluster.provider == "netns" and (netns_problem() or nfqueue_problem()):
        pytest.skip(f"{path.name} runs on the netns provider, which cannot run here: {netns_problem() or nfqueue_problem()}; "
                    "run as root after scripts/install-toolchain.sh")
    record = run_passing(scenario, tmp_path, label=path.name)
    assert record.verdict == "PASS"
    assert {outcome.status for outcome in record.safety} == {"passed"} and len(record.safety) == 4
    assert len(record.steps) == len(scenario.steps), "every step ran"
