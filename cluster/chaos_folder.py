"""A chaos report folder: what a run writes, and how `synapse chaos check` reads it back and judges it.

Why it works as it does (Jepsen's per-run store): a run must be judged from its folder alone, and
judged the same way whether the run just ended or a person edited the folder by hand to see a checker
fail. So the runner writes plain files and then judges them through `judge_folder`, the very function
`chaos check` calls; nothing is judged from memory.

    run.json          seed, options, network id, validators' public keys, node ids, why the run broke off
    schedule.jsonl    the schedule (cluster/chaos_plan.py): replay and shrink run it again
    history.jsonl     every event (cluster/chaos_history.py)
    finals.json       each node's final process state, /state, /health, /log and proposal statuses
    nodes/node-<i>/   each node's logs and final.json (as the scenario runner writes them)
    genesis.json      the network's genesis
    verdict.json      the verdict and every check's outcome (rewritten by `chaos check`)
    index.html        the page for people (cluster/chaos_html.py)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

from cluster.chaos_checks import RunFacts, judge, verdict
from cluster.chaos_history import HISTORY_FILE_NAME, HistoryError, read_history
from cluster.safety import Outcome

RUN_FILE_NAME = "run.json"
FINALS_FILE_NAME = "finals.json"
VERDICT_FILE_NAME = "verdict.json"
SCHEDULE_FILE_NAME = "schedule.jsonl"
FOLDER_FILE_SIZE_MAX_BYTES = 512 * 1024 * 1024


class FolderError(ValueError):
    """A report folder that cannot be judged; the message says which file and what to do."""


def write_run_document(folder: Path, document: Mapping) -> None:
    (Path(folder) / RUN_FILE_NAME).write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


def write_finals(folder: Path, finals: Mapping) -> None:
    (Path(folder) / FINALS_FILE_NAME).write_text(json.dumps(finals, sort_keys=True, default=str) + "\n")


def _read_json(path: Path) -> object:
    try:
        if path.stat().st_size > FOLDER_FILE_SIZE_MAX_BYTES:
            raise FolderError(f"{path} is larger than {FOLDER_FILE_SIZE_MAX_BYTES:,} bytes")
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FolderError(f"{path} is missing: is {path.parent} a chaos report folder (synapse chaos run --report-dir)?") from None
    except (OSError, ValueError) as error:
        raise FolderError(f"{path} is not readable JSON ({error}); restore it from the run or re-run") from None


def load_facts(folder: Path) -> RunFacts:
    folder = Path(folder)
    run = _read_json(folder / RUN_FILE_NAME)
    finals = _read_json(folder / FINALS_FILE_NAME)
    if not isinstance(run, dict) or not isinstance(finals, dict):
        raise FolderError(f"{folder}: run.json and finals.json must hold JSON objects")
    try:
        events = tuple(read_history(folder / HISTORY_FILE_NAME)) if (folder / HISTORY_FILE_NAME).exists() else ()
        return RunFacts(network_id=run.get("network_id") or "", nodes=dict(run.get("nodes") or {}),
                        validators={node_id: bytes.fromhex(key) for node_id, key in (run.get("validators") or {}).items()},
                        genesis_version=str(run.get("genesis_version", "1.0.0")),
                        liveness_bound_ms=int(run.get("liveness_bound_ms", 0)), finals=finals, events=events,
                        aborted=run.get("aborted"))
    except HistoryError as error:
        raise FolderError(str(error)) from None
    except (TypeError, ValueError) as error:
        raise FolderError(f"{folder / RUN_FILE_NAME} is malformed ({error}); restore it from the run") from None


def outcome_document(outcome: Outcome) -> dict:
    document = asdict(outcome)
    document["status"] = "passed" if outcome.ok else "skipped" if outcome.skipped else "failed"
    return document


def judge_folder(folder: Path, *, verify: Callable[[bytes, bytes, bytes], bool]) -> tuple[str, list[Outcome], RunFacts]:
    """Judge the folder and write verdict.json. Returns (verdict, outcomes, facts)."""
    facts = load_facts(folder)
    outcomes = judge(facts, verify=verify)
    result = verdict(outcomes, aborted=facts.aborted)
    document = {"verdict": result, "aborted": facts.aborted, "checks": [outcome_document(outcome) for outcome in outcomes]}
    (Path(folder) / VERDICT_FILE_NAME).write_text(json.dumps(document, indent=2) + "\n")
    return result, outcomes, facts
