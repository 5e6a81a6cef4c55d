"""One short chaos run in CI: a fixed seed, 50 s of schedule on 5 nodes with faults of every kind this
machine can inject and every adversary action, judged `valid` (cluster/chaos_*.py).

Why one and short: a chaos run costs about a minute of a CI machine's two cores; longer runs and more
seeds are run by hand (README, Chaos). Where partitions are impossible (not root, no iptables) the
run keeps its process faults and crash points rather than being skipped. On failure the message holds
the run's output: its seed, every operation, the failing checks and the report folder.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cluster.chaos_history import read_history
from cluster.cli import main
from cluster.faults import network_capability

SEED = 3
DURATION = "50s"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_short_chaos_run_is_valid(tmp_path):
    faults = "all" if network_capability().available else "kill,pause,crash_at"
    arguments = ["chaos", "run", "--seed", str(SEED), "--nodes", "5", "--validators", "3", "--duration", DURATION,
                 "--faults", faults, "--adversary", "all", "--report-dir", str(tmp_path)]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0 and "verdict: valid" in result.output, result.output[-20_000:]
    (folder,) = tmp_path.iterdir()
    events = read_history(folder / "history.jsonl")
    assert any(event.process == "adversary" and event.type == "ok" for event in events), "no adversary action was delivered"
    assert any(event.process == "nemesis" and event.f in ("kill", "pause", "partition") and event.type == "ok" for event in events)
    assert json.loads((folder / "verdict.json").read_text())["verdict"] == "valid"
    assert "<svg" in (folder / "index.html").read_text()
