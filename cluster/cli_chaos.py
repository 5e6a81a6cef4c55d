"""`synapse chaos`: plan, run, check and replay generated adversarial runs (cluster/chaos_*.py).

Why it works as it does: `plan` prints the schedule without starting anything, so what a seed does
can be read before it is run; `run` and `replay` execute a schedule and then judge the report folder
with the same function as `check`, so a verdict never depends on what was only in memory. Exit
status: 0 valid, 1 invalid, 2 unknown (the run broke off or a check could not be judged) or a usage
error (click's own).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import click

from cluster.chaos_plan import ADVERSARY_KINDS, FAULT_KINDS, OPTIONAL_FAULT_KINDS, PROVIDERS, SEED_MAX, ChaosOptions, PlanError, Schedule, make_schedule, \
    parse_kinds, parse_schedule, schedule_lines
from cluster.scenario import ScenarioFormatError, parse_duration_ms

EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN = 0, 1, 2


class FolderUnreadable(click.ClickException):
    """A report folder that cannot be judged: exit 2 (unknown), never 1 (a run judged invalid)."""
    exit_code = EXIT_UNKNOWN


def _schedule_options(function):
    options = [
        click.option("--seed", type=click.IntRange(0, SEED_MAX), default=None, help="the run's seed (default: a random one, printed)"),
        click.option("--nodes", type=int, default=5, show_default=True),
        click.option("--validators", type=int, default=3, show_default=True),
        click.option("--duration", default="120s", show_default=True, help="length of the schedule: 90s, 2m"),
        click.option("--faults", default="all", show_default=True,
                     help=f"comma list of {', '.join(FAULT_KINDS)}; all; none; opt-in (never in all): {', '.join(OPTIONAL_FAULT_KINDS)} "
                          "(delay and loss need --provider netns)"),
        click.option("--adversary", default="all", show_default=True, help=f"comma list of {', '.join(ADVERSARY_KINDS)}; all; none"),
        click.option("--faults-at-once", "faults_at_once", type=int, default=2, show_default=True, help="at most this many faults overlap"),
        click.option("--provider", type=click.Choice(PROVIDERS), default="loopback", show_default=True,
                     help="what runs the nodes (as `synapse cluster up --provider`); netns needs root"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _options(seed: int | None, nodes: int, validators: int, duration: str, faults: str, adversary: str, faults_at_once: int,
             provider: str = "loopback") -> ChaosOptions:
    try:
        duration_ms = parse_duration_ms(duration)
        return ChaosOptions(seed=seed if seed is not None else random.SystemRandom().randrange(SEED_MAX), nodes=nodes,
                            validators=validators, duration_ms=duration_ms,
                            faults=parse_kinds(faults, FAULT_KINDS, "--faults", optional=OPTIONAL_FAULT_KINDS),
                            adversary=parse_kinds(adversary, ADVERSARY_KINDS, "--adversary"), faults_at_once_max=faults_at_once,
                            provider=provider)
    except (PlanError, ScenarioFormatError) as error:
        raise click.UsageError(str(error)) from None


@click.group("chaos")
def chaos() -> None:
    """Generative adversarial testing: seeded faults, workload and a Byzantine adversary, judged by checkers."""


@chaos.command("plan")
@_schedule_options
def plan_command(**given) -> None:
    """Print the schedule `run` would execute, as JSON lines (same seed and options: same bytes)."""
    if given["seed"] is None:
        raise click.UsageError("chaos plan needs --seed S (a plan without one could not be run again)")
    try:
        lines = schedule_lines(make_schedule(_options(**given)))
    except PlanError as error:
        raise click.UsageError(str(error)) from None
    click.echo("\n".join(lines))


def _execute(schedule: Schedule, report_dir: Path) -> None:
    from cluster.chaos_run import ChaosRun

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = report_dir / f"{stamp}-chaos-{schedule.options.seed}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = report_dir / f"{stamp}-chaos-{schedule.options.seed}-{suffix}"
    ChaosRun(schedule=schedule, folder=folder, echo=click.echo).run()
    sys.exit(_judge_and_render(folder))


def _judge_and_render(folder: Path) -> int:
    from cluster.chaos_folder import FolderError, judge_folder
    from cluster.chaos_html import render
    from node.identity import verify_signature

    try:
        verdict, outcomes, facts = judge_folder(folder, verify=verify_signature)
        run_document = json.loads((folder / "run.json").read_text())
    except (FolderError, OSError, ValueError) as error:
        raise FolderUnreadable(str(error)) from None
    for outcome in outcomes:
        click.echo(f"  {'ok' if outcome.ok else 'SKIPPED' if outcome.skipped else 'FAILED'}  {outcome.name}: {outcome.seen}")
        for detail in outcome.details if not outcome.ok else ():
            click.echo(f"        {detail}")
    (folder / "index.html").write_text(render(facts=facts, outcomes=outcomes, verdict=verdict, run=run_document, folder=str(folder)))
    click.echo(f"seed: {run_document.get('options', {}).get('seed')}   verdict: {verdict}   report: {folder / 'index.html'}")
    return {"valid": EXIT_VALID, "invalid": EXIT_INVALID}.get(verdict, EXIT_UNKNOWN)


@chaos.command("run")
@_schedule_options
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("runs"), show_default=True)
def run_command(report_dir: Path, **given) -> None:
    """Launch a fresh cluster, run the schedule, heal, check; exit 0 only for a valid run."""
    try:
        schedule = make_schedule(_options(**given))
    except PlanError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"chaos: {len(schedule.items)} operations over {schedule.options.duration_ms // 1000} s")
    _execute(schedule, report_dir)


@chaos.command("check")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
def check_command(folder: Path) -> None:
    """Re-judge a report folder (history + final node states): exit 0 valid, 1 invalid, 2 unknown."""
    sys.exit(_judge_and_render(folder))


def load_folder_schedule(folder: Path) -> Schedule:
    try:
        return parse_schedule((folder / "schedule.jsonl").read_text().splitlines())
    except OSError as error:
        raise FolderUnreadable(f"{folder} has no readable schedule.jsonl ({error}); is it a chaos report folder?") from None
    except PlanError as error:
        raise FolderUnreadable(str(error)) from None


@chaos.command("replay")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="where the new run's folder goes (default: beside SOURCE)")
def replay_command(source: Path, report_dir: Path | None) -> None:
    """Run a schedule again on a fresh cluster, and judge it. SOURCE is a report folder (its
    schedule.jsonl) or a schedule file (a shrunk-schedule.jsonl)."""
    schedule = load_folder_schedule(source) if source.is_dir() else _load_schedule_file(source)
    click.echo(f"replaying {source}: {len(schedule.items)} operations")
    _execute(schedule, report_dir or (source.parent if source.is_dir() else source.parent.parent))


def _load_schedule_file(path: Path) -> Schedule:
    try:
        return parse_schedule(path.read_text().splitlines())
    except OSError as error:
        raise FolderUnreadable(f"cannot read {path} ({error})") from None
    except PlanError as error:
        raise FolderUnreadable(f"{path}: {error}") from None


@chaos.command("shrink")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--runs-max", type=click.IntRange(1, 100), default=8, show_default=True,
              help="candidate runs at most (each is a full run on a fresh cluster)")
def shrink_command(folder: Path, runs_max: int) -> None:
    """Remove faults and operations from an invalid run's schedule while it stays invalid; write the
    smallest schedule found to FOLDER/shrunk-schedule.jsonl. Exit 0 if it is smaller than the original."""
    from cluster.chaos_run import ChaosRun
    from cluster.chaos_shrink import Shrinker, write_shrunk

    schedule = load_folder_schedule(folder)
    failing = _failing_checks(folder)
    click.echo(f"shrinking {len(schedule.items)} operations that broke: {', '.join(sorted(failing))} (at most {runs_max} runs)")

    def attempt(candidate: Schedule, label: str) -> frozenset[str]:
        trial = folder / "shrink" / label
        ChaosRun(schedule=candidate, folder=trial, echo=lambda line: click.echo(f"    {line}") if "aborted" in line else None).run()
        return frozenset(_failed_names(trial))

    smallest = Shrinker(schedule=schedule, failing=failing, attempt=attempt, runs_max=runs_max, echo=click.echo).run()
    path = write_shrunk(folder, smallest)
    click.echo(f"smallest invalid schedule: {len(smallest.items)} of {len(schedule.items)} operations: {path}")
    click.echo(f"replay it: synapse chaos replay {path}")
    sys.exit(0 if len(smallest.items) < len(schedule.items) else 1)


def _failing_checks(folder: Path) -> frozenset[str]:
    try:
        document = json.loads((folder / "verdict.json").read_text())
    except (OSError, ValueError) as error:
        raise FolderUnreadable(f"{folder}/verdict.json is unreadable ({error}); run `synapse chaos check {folder}` first") from None
    failing = frozenset(check["name"] for check in document.get("checks", []) if check.get("status") == "failed")
    if document.get("verdict") != "invalid" or not failing:
        raise FolderUnreadable(f"{folder} is {document.get('verdict')}: only an invalid run can be shrunk")
    return failing


def _failed_names(folder: Path) -> list[str]:
    from cluster.chaos_folder import FolderError, judge_folder
    from cluster.chaos_html import render
    from node.identity import verify_signature

    try:
        verdict, outcomes, facts = judge_folder(folder, verify=verify_signature)
        run_document = json.loads((folder / "run.json").read_text())
    except (FolderError, OSError, ValueError):
        return []
    (folder / "index.html").write_text(render(facts=facts, outcomes=outcomes, verdict=verdict, run=run_document, folder=str(folder)))
    return [outcome.name for outcome in outcomes if not outcome.ok and not outcome.skipped] if verdict == "invalid" else []


def register(main: click.Group) -> None:
    main.add_command(chaos)
