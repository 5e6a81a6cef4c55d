"""A scenario run's record and its report folder: history, node logs, final states, JUnit, summary.

Why it works as it does (Jepsen's per-run store): a run that failed at 3 a.m. in CI must be
understood from its folder alone. So the folder holds everything, written even when the run broke
half-way: the step history with timings (history.json), every node's logs and final state
(nodes/node-<i>/), JUnit XML for CI dashboards (junit.xml), and summary.md, a page for people that
shows for each failure what was expected, what was seen, and the node log lines around the moment it
failed. Log excerpts come from the nodes' structured logs (one JSON object per line with a UTC "ts").
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

from cluster.safety import Outcome

EXCERPT_WINDOW_S = 3.0
EXCERPT_LINES_MAX = 25
EXCERPT_BEFORE_LINES_MAX = 10  # a node's last lines shown when the window around the failure is empty
LOG_COPY_SIZE_MAX_BYTES = 200 * 1024 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
# What XML 1.0 forbids (everything outside #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF).
_XML_FORBIDDEN = re.compile(r"[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
STATUSES = ("passed", "failed", "error", "skipped")


@dataclass(slots=True, kw_only=True)
class StepRecord:
    index: int                 # -1 for the final safety checks
    label: str
    do: str
    started_at: float          # wall clock (s since epoch), to match node log timestamps
    duration_s: float = 0.0
    status: str = "passed"     # passed | failed (an assertion did not hold) | error (the step could not run) | skipped
    expected: str = ""
    seen: str = ""
    nodes: tuple[str, ...] = ()
    details: tuple[str, ...] = ()
    excerpts: dict[str, list[str]] = field(default_factory=dict)  # node label -> log lines around the failure

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True, kw_only=True)
class RunRecord:
    scenario: str
    scenario_path: str | None
    seed: int
    started_at: float
    steps: list[StepRecord] = field(default_factory=list)
    safety: list[StepRecord] = field(default_factory=list)
    nodes: dict[str, dict] = field(default_factory=dict)  # label -> {"node_id", "api_url", "validator", ...}
    finished_at: float | None = None
    aborted: str | None = None  # why the run stopped early, if it did

    @property
    def passed(self) -> bool:
        records = self.steps + self.safety
        return self.aborted is None and bool(self.safety) and all(record.status == "passed" for record in records)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def outcome_record(outcome: Outcome, *, started_at: float, duration_s: float) -> StepRecord:
    status = "passed" if outcome.ok else ("skipped" if outcome.skipped else "failed")
    return StepRecord(index=-1, label=f"safety: {outcome.name}", do="safety", started_at=started_at, duration_s=duration_s,
                      status=status, expected=outcome.expected, seen=outcome.seen, nodes=outcome.nodes, details=outcome.details)


# --- log excerpts ----------------------------------------------------------------------------


def parse_log_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def format_log_line(label: str, line: str) -> str:
    """One JSON log line as `ts level node-i event key=value ...` (the raw line if it is not JSON)."""
    try:
        record = json.loads(line)
        fields = " ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in (record.get("fields") or {}).items())
        return f"{record.get('ts', '')} {record.get('level', ''):7} {label} {record.get('event', '')} {fields}".rstrip()
    except (ValueError, AttributeError):
        return f"{label} {line}"


def log_excerpt(log_path: Path, *, around_s: float, window_s: float = EXCERPT_WINDOW_S,
                lines_max: int = EXCERPT_LINES_MAX, before_lines_max: int = EXCERPT_BEFORE_LINES_MAX) -> list[str]:
    """The node log lines within `window_s` of `around_s` (wall clock), at most `lines_max`, the
    latest ones kept (what led up to the failure matters most).

    When the window holds no line (an assertion that polled for 30 s after the node's last word, e.g.
    a version check long after the upgrade ran), the node's last `before_lines_max` lines before the
    window's end instead: an empty block tells the reader nothing, the upgrade and the votes do."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            lines = [line.rstrip("\n") for line in handle]
    except OSError:
        return []
    timed = []
    for line in lines:
        try:
            moment = parse_log_time(json.loads(line).get("ts"))
        except (ValueError, AttributeError):
            continue
        if moment is not None and moment <= around_s + window_s:
            timed.append((moment, line))
    chosen = [line for moment, line in timed if around_s - window_s <= moment]
    if chosen:
        return chosen[-lines_max:]
    return [line for _, line in timed][-before_lines_max:]


# --- the folder ------------------------------------------------------------------------------


def report_folder(report_root: Path, scenario_name: str, started_at: float) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started_at))
    base = Path(report_root) / f"{stamp}-{_SAFE_NAME.sub('-', scenario_name).strip('-')[:60] or 'scenario'}"
    base.parent.mkdir(parents=True, exist_ok=True)
    folder, suffix = base, 1
    while True:  # mkdir decides, not exists(): `scenario run -j N` starts runs of one scenario in the same second
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            suffix += 1
            folder = base.with_name(f"{base.name}-{suffix}")


def copy_node_files(folder: Path, label: str, files: Mapping[str, Path], final_state: Mapping) -> None:
    """nodes/<label>/: the node's logs (copied, size-capped) and its final state as seen through its API."""
    target = folder / "nodes" / label
    target.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        try:
            if source.stat().st_size <= LOG_COPY_SIZE_MAX_BYTES:
                shutil.copyfile(source, target / name)
            else:
                (target / name).write_text(f"(not copied: larger than {LOG_COPY_SIZE_MAX_BYTES:,} bytes; see {source})\n")
        except OSError:
            continue
    (target / "final.json").write_text(json.dumps(final_state, indent=2, sort_keys=True, default=str) + "\n")


def write_report(folder: Path, run: RunRecord, scenario_text: str | None) -> None:
    """history.json, junit.xml, summary.md and the scenario itself into `folder`."""
    document = {"scenario": run.scenario, "scenario_path": run.scenario_path, "seed": run.seed, "verdict": run.verdict,
                "started_at": run.started_at, "finished_at": run.finished_at, "aborted": run.aborted, "nodes": run.nodes,
                "steps": [record.as_dict() for record in run.steps], "safety": [record.as_dict() for record in run.safety]}
    (folder / "history.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    (folder / "junit.xml").write_text(junit_xml(run))
    (folder / "summary.md").write_text(summary_text(run))
    if scenario_text is not None:
        (folder / "scenario.toml").write_text(scenario_text)


def junit_xml(run: RunRecord) -> str:
    """One <testsuite> for the run; one <testcase> per step and per safety check."""
    records = run.steps + run.safety
    suite = ElementTree.Element("testsuite", {
        "name": run.scenario, "tests": str(len(records)),
        "failures": str(sum(record.status == "failed" for record in records)),
        "errors": str(sum(record.status == "error" for record in records) + (1 if run.aborted else 0)),
        "skipped": str(sum(record.status == "skipped" for record in records)),
        "time": f"{((run.finished_at or run.started_at) - run.started_at):.3f}",
        "timestamp": datetime.fromtimestamp(run.started_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")})
    properties = ElementTree.SubElement(suite, "properties")
    ElementTree.SubElement(properties, "property", {"name": "seed", "value": str(run.seed)})
    for record in records:
        name = f"{record.index:03d} {record.label}" if record.index >= 0 else record.label
        case = ElementTree.SubElement(suite, "testcase", {"classname": f"scenario.{_SAFE_NAME.sub('_', run.scenario)[:80]}",
                                                          "name": name, "time": f"{record.duration_s:.3f}"})
        if record.status in ("failed", "error"):
            element = ElementTree.SubElement(case, "failure" if record.status == "failed" else "error",
                                             {"message": f"expected {record.expected}; saw {record.seen}"[:1000]})
            element.text = _failure_text(record)
        elif record.status == "skipped":
            ElementTree.SubElement(case, "skipped", {"message": record.seen[:1000]})
    if run.aborted:
        case = ElementTree.SubElement(suite, "testcase", {"classname": "scenario", "name": "run", "time": "0"})
        ElementTree.SubElement(case, "error", {"message": run.aborted[:1000]})
    _make_xml_safe(suite)
    ElementTree.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(suite, encoding="unicode") + "\n"


def xml_safe(text: str) -> str:
    """`text` with each character XML 1.0 forbids (ANSI escapes, NUL from hook output) replaced by U+FFFD:
    ElementTree writes them raw, and CI readers then refuse the whole file."""
    return _XML_FORBIDDEN.sub("\ufffd", text)


def _make_xml_safe(root: ElementTree.Element) -> None:
    """Every text and attribute under `root` made XML-safe, so no field can be forgotten."""
    for element in root.iter():
        element.attrib.update({key: xml_safe(value) for key, value in element.attrib.items()})
        if element.text:
            element.text = xml_safe(element.text)
        if element.tail:
            element.tail = xml_safe(element.tail)


def _failure_text(record: StepRecord) -> str:
    lines = [f"expected: {record.expected}", f"seen:     {record.seen}"]
    lines += [f"  {detail}" for detail in record.details]
    for label, excerpt in record.excerpts.items():
        lines.append(f"--- {label} log around the failure:")
        lines += [f"  {line}" for line in excerpt]
    return "\n".join(lines)


def summary_text(run: RunRecord) -> str:
    """A readable page: verdict, seed and how to replay, step table, then each failure in full."""
    duration_s = (run.finished_at or run.started_at) - run.started_at
    lines = [f"# {run.scenario}: {run.verdict}", "",
             f"- seed: {run.seed} (replay: `synapse scenario run {run.scenario_path or '<file>'} --seed {run.seed}`)",
             f"- duration: {duration_s:.1f} s"]
    if run.aborted:
        lines.append(f"- run aborted: {run.aborted}")
    if run.nodes:
        lines += ["", "| node | id | role | API |", "|---|---|---|---|"]
        lines += [f"| {label} | {info.get('node_id', '')} | {'validator' if info.get('validator') else 'member'} | {info.get('api_url', '')} |"
                  for label, info in run.nodes.items()]
    lines += ["", "| # | step | status | time (s) |", "|---|---|---|---|"]
    for record in run.steps + run.safety:
        number = str(record.index) if record.index >= 0 else "-"
        lines.append(f"| {number} | {_cell(record.label)} | {record.status} | {record.duration_s:.2f} |")
    failures = [record for record in run.steps + run.safety if record.status in ("failed", "error")]
    for record in failures:
        lines += ["", f"## {record.status.upper()}: {record.label}", "", f"- expected: {record.expected}", f"- seen: {record.seen}"]
        lines += [f"  - {detail}" for detail in record.details]
        for label, excerpt in record.excerpts.items():
            lines += ["", f"{label} log around the failure:", "", "```"] + [format_log_line(label, line) for line in excerpt] + ["```"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a '|' would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")
