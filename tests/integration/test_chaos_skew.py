"""One short chaos run with the opt-in clock-skew fault on loopback (cluster/chaos_plan.py, `--faults skew`):
a node's clock is really moved (an entry it wrote while skewed carries the skewed time), the skew is
undone by its own `unskew` operation, and the run is judged `valid`.

Why this seed: seed 13 on 3 nodes and 15 s skews node-2 by +15.2 s and has node-2 write a note inside
that window, so the test can see the skew in the log rather than only in the history. The run takes
about 15 s of schedule plus start, heal and liveness (about 25 s here)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cluster.chaos_history import read_history
from cluster.cli import main

SEED = 13
CLOCK_TOLERANCE_MS = 2_000   # a node re-reads its skew within CLOCK_SKEW_REFRESH_MS; the HTTP call takes a moment


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_short_chaos_run_with_clock_skews_is_valid_and_the_skew_is_real(tmp_path):
    arguments = ["chaos", "run", "--seed", str(SEED), "--nodes", "3", "--validators", "3", "--duration", "15s",
                 "--faults", "skew", "--adversary", "none", "--report-dir", str(tmp_path)]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0 and "verdict: valid" in result.output, result.output[-20_000:]
    (folder,) = tmp_path.iterdir()
    events = read_history(folder / "history.jsonl")
    done = {event.op_id: event for event in events if event.type == "ok"}
    skews = [event for event in events if event.f == "skew" and event.type == "invoke"]
    assert skews and all(event.op_id in done for event in skews)
    for skew in skews:   # each skew was undone by its own operation, on its node, before the final heal
        (undo,) = [event for event in events if event.f == "unskew" and event.type == "ok" and event.node == skew.node
                   and event.time_ms > skew.time_ms]
        assert undo.value["cleared"] == [skew.node]
    final_heal = next(event for event in events if event.f == "final_heal" and event.type == "ok")
    assert final_heal.value["unskewed"] == []   # nothing was left for the final heal to clear

    # The note node-2 wrote while skewed carries its skewed clock: its HLC is ahead of the runner's wall clock.
    skew = next(event for event in skews if event.node == "node-2")
    note = next(event for event in events if event.f == "note" and event.type == "ok" and event.node == "node-2"
                and event.time_ms > skew.time_ms)
    log = json.loads((folder / "finals.json").read_text())["node-1"]["log"]
    entry = next(entry for entry in log if entry["id"] == note.value["entry_id"])
    ahead_ms = entry["hlc"]["wall_ms"] - note.wall_ms
    assert abs(ahead_ms - skew.value["ms"]) <= CLOCK_TOLERANCE_MS, (ahead_ms, skew.value)
    assert json.loads((folder / "verdict.json").read_text())["verdict"] == "valid"
