"""`synapse chaos replay` runs exactly the recorded schedule: the new folder's schedule.jsonl is
byte-identical to the old one. No cluster: starting one is replaced by a failure, which also shows
that a run that breaks off is judged `unknown` (exit 2), never `valid`, and still leaves its folder."""

from click.testing import CliRunner

from cluster import chaos_run
from cluster.chaos_plan import ChaosOptions, make_schedule, schedule_lines
from cluster.cli import main
from node.errors import ClusterError


def _no_cluster(self, stack, data_dir, log_dirs):
    raise ClusterError("no cluster in a unit test", hint="nothing to do")


def test_replay_runs_the_same_schedule_and_a_broken_run_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(chaos_run.ChaosRun, "_start", _no_cluster)
    original = tmp_path / "original"
    original.mkdir()
    lines = schedule_lines(make_schedule(ChaosOptions(seed=8, duration_ms=60_000, faults=("kill", "pause"))))
    (original / "schedule.jsonl").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["chaos", "replay", str(original), "--report-dir", str(tmp_path / "again")])
    assert result.exit_code == 2, result.output
    assert "run aborted: no cluster in a unit test" in result.output and "verdict: unknown" in result.output
    (folder,) = (tmp_path / "again").iterdir()
    assert (folder / "schedule.jsonl").read_text() == (original / "schedule.jsonl").read_text()
    assert (folder / "index.html").is_file() and "seed: 8" in result.output


def test_replay_takes_a_schedule_file_and_refuses_what_is_not_one(tmp_path, monkeypatch):
    monkeypatch.setattr(chaos_run.ChaosRun, "_start", _no_cluster)
    path = tmp_path / "shrunk-schedule.jsonl"
    path.write_text("\n".join(schedule_lines(make_schedule(ChaosOptions(seed=8, duration_ms=20_000)))) + "\n")
    assert CliRunner().invoke(main, ["chaos", "replay", str(path), "--report-dir", str(tmp_path / "r")]).exit_code == 2
    path.write_text('{"format": "something else"}\n')
    result = CliRunner().invoke(main, ["chaos", "replay", str(path)])
    assert result.exit_code == 2 and "not a chaos schedule" in result.output
