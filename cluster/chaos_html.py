"""index.html of a chaos report: the verdict, the checkers' table, a timeline and a latency plot.

Why it works as it does: the page must open from a CI artifact on a laptop with no network, years
later. So it is one self-contained file: inline CSS, inline SVG drawn here from the history (no
JavaScript, no CDN, no plotting library to install). Hovering a mark shows its <title> (operation,
node, outcome, value). Pure: builds a string from the judged facts; the caller writes it.

Timeline: one lane per node. Operations are marks at their invoke time, coloured by outcome (ok,
fail, info); adversary actions are diamonds; nemesis faults are bands shaded over the lanes they hit
(a process fault over its node, a partition or cut over every node it separates) from the fault to
its heal; each successful execution report is a version label where it happened.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence

from cluster.chaos_checks import RunFacts, live_labels
from cluster.chaos_history import Operation, operations
from cluster.safety import Outcome

WIDTH_PX = 1100
LANE_HEIGHT_PX = 34
MARGIN_LEFT_PX = 80
MARGIN_TOP_PX = 24
LATENCY_HEIGHT_PX = 220
COLOURS = {"ok": "#2e9d4a", "fail": "#d2453a", "info": "#e7a02a"}
FAULT_COLOURS = {"kill": "#8a8a8a", "pause": "#6f8fd8", "crash_at": "#b05fd0", "partition": "#f0c05a", "cut": "#f08a5a",
                 "skew": "#4fb8b0", "delay": "#c8a0e0", "loss": "#e070a0"}
HEALS = {"restart": "kill", "resume": "pause", "recover": "crash_at", "heal": None, "unskew": "skew"}
VERDICT_COLOURS = {"valid": "#2e9d4a", "invalid": "#d2453a", "unknown": "#e7a02a"}


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fault_bands(facts: RunFacts, end_ms: int) -> list[tuple[int, int, str, list[str]]]:
    """(start ms, end ms, fault kind, lanes) for each nemesis fault, from its start to its heal."""
    open_faults: dict[object, tuple[int, str, list[str]]] = {}
    bands = []
    for operation in operations(facts.events):
        invoke = operation.invoke
        if invoke.process != "nemesis" or operation.outcome != "ok":
            continue
        fault = invoke.value.get("fault")
        if invoke.f in FAULT_COLOURS:
            nodes = [f"node-{index}" for index in invoke.value.get("nodes", [])]
            if invoke.f == "partition":
                nodes = [f"node-{index}" for group in invoke.value.get("groups", []) for index in group]
            elif invoke.f == "cut":
                nodes = [f"node-{index}" for index in list(invoke.value.get("from", [])) + list(invoke.value.get("to", []))]
            elif invoke.f in ("delay", "loss"):
                nodes = [f"node-{index}" for index in invoke.value.get("links_of", [])]
            open_faults[fault] = (invoke.time_ms, invoke.f, nodes)
        elif invoke.f in HEALS and fault in open_faults:
            start, kind, nodes = open_faults.pop(fault)
            bands.append((start, invoke.time_ms, kind, nodes))
        elif invoke.f == "final_heal":
            bands += [(start, invoke.time_ms, kind, nodes) for start, kind, nodes in open_faults.values()]
            open_faults.clear()
    bands += [(start, end_ms, kind, nodes) for start, kind, nodes in open_faults.values()]
    return bands


def _version_marks(facts: RunFacts) -> list[tuple[int, str, str]]:
    """(time ms, node label, version) of each successful execution report, on the history's clock."""
    if not facts.events:
        return []
    offset_ms = facts.events[0].wall_ms - facts.events[0].time_ms
    by_id = {node_id: label for label, node_id in facts.nodes.items()}
    seen, marks = set(), []
    for label in live_labels(facts):
        for entry in facts.finals[label]["log"]:
            if entry["kind"] == "EXECUTION_REPORT" and entry["body"].get("success") is True and entry["id"] not in seen:
                seen.add(entry["id"])
                marks.append((entry["hlc"]["wall_ms"] - offset_ms, by_id.get(entry["author"], entry["author"]), entry["body"].get("version")))
    return marks


def _mark(operation: Operation, x: float, y: float, blamed: bool) -> str:
    colour = COLOURS.get(operation.outcome, "#999")
    ring = f'<circle cx="{x:.1f}" cy="{y}" r="10" fill="none" stroke="#d2453a" stroke-width="2.5"/>' if blamed else ""
    title = _escape(f"op {operation.invoke.op_id} {operation.invoke.process} {operation.invoke.f} on {operation.invoke.node}: "
                    f"{operation.outcome} {json.dumps(operation.value, default=str)[:400]}")
    if operation.invoke.process == "adversary":
        return (ring + f'<polygon points="{x:.1f},{y - 7} {x + 6:.1f},{y} {x:.1f},{y + 7} {x - 6:.1f},{y}" fill="{colour}" '
                f'stroke="#000" stroke-width="1.5"><title>{title}</title></polygon>')
    return ring + f'<circle cx="{x:.1f}" cy="{y}" r="4.5" fill="{colour}"><title>{title}</title></circle>'


def blamed_operations(outcomes: Sequence[Outcome]) -> set[int]:
    """Schedule item ids that failing checks name ("op 25 (backdated_vote): ...")."""
    texts = [text for outcome in outcomes if not outcome.ok for text in (outcome.seen, *outcome.details)]
    return {int(number) for text in texts for number in re.findall(r"\bop (\d+)\b", text)}


def timeline_svg(facts: RunFacts, blamed: set[int] = frozenset()) -> str:
    labels = sorted(facts.nodes, key=lambda label: int(label.split("-")[-1]))
    lanes = labels + ["cluster"]
    end_ms = max((event.time_ms for event in facts.events), default=0) + 1_000
    scale = (WIDTH_PX - MARGIN_LEFT_PX - 20) / end_ms
    height = MARGIN_TOP_PX + LANE_HEIGHT_PX * len(lanes) + 20
    lane_y = {label: MARGIN_TOP_PX + LANE_HEIGHT_PX * number + LANE_HEIGHT_PX / 2 for number, label in enumerate(lanes)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{height}" font-family="sans-serif" font-size="11">']
    for label in lanes:
        y = lane_y[label]
        parts.append(f'<text x="4" y="{y + 4}">{_escape(label)}</text><line x1="{MARGIN_LEFT_PX}" y1="{y}" x2="{WIDTH_PX - 10}" '
                     f'y2="{y}" stroke="#ddd"/>')
    for start, stop, kind, nodes in _fault_bands(facts, end_ms):
        for label in nodes:
            if label in lane_y:
                parts.append(f'<rect x="{MARGIN_LEFT_PX + start * scale:.1f}" y="{lane_y[label] - LANE_HEIGHT_PX / 2 + 2}" '
                             f'width="{max(2.0, (stop - start) * scale):.1f}" height="{LANE_HEIGHT_PX - 4}" fill="{FAULT_COLOURS[kind]}" '
                             f'opacity="0.35"><title>{_escape(kind)} {start}-{stop} ms</title></rect>')
    for moment, label, version in _version_marks(facts):
        if label in lane_y:
            parts.append(f'<text x="{MARGIN_LEFT_PX + moment * scale:.1f}" y="{lane_y[label] - 9}" font-size="9" fill="#333">'
                         f'{_escape(version)}</text>')
    for operation in operations(facts.events):
        lane = operation.invoke.node if operation.invoke.node in lane_y else "cluster"
        parts.append(_mark(operation, MARGIN_LEFT_PX + operation.invoke.time_ms * scale, lane_y[lane],
                           operation.invoke.op_id in blamed and operation.invoke.process != "checker"))
    for second in range(0, end_ms // 1000 + 1, max(1, end_ms // 10_000)):
        x = MARGIN_LEFT_PX + second * 1000 * scale
        parts.append(f'<text x="{x:.1f}" y="{height - 4}" font-size="9" fill="#666">{second}s</text>')
    parts.append("</svg>")
    return "".join(parts)


def latency_svg(facts: RunFacts) -> str:
    """Jepsen's latency-raw: each completed operation at (invoke time, latency), coloured by outcome."""
    done = [operation for operation in operations(facts.events) if operation.completion is not None]
    end_ms = max((event.time_ms for event in facts.events), default=0) + 1_000
    latency_max_ms = max((operation.completion.time_ms - operation.invoke.time_ms for operation in done), default=0) + 1
    scale_x = (WIDTH_PX - MARGIN_LEFT_PX - 20) / end_ms
    scale_y = (LATENCY_HEIGHT_PX - 30) / latency_max_ms
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{LATENCY_HEIGHT_PX}" font-family="sans-serif" font-size="10">',
             f'<text x="4" y="14">{latency_max_ms} ms</text><text x="4" y="{LATENCY_HEIGHT_PX - 12}">0 ms</text>']
    for operation in done:
        latency_ms = operation.completion.time_ms - operation.invoke.time_ms
        x, y = MARGIN_LEFT_PX + operation.invoke.time_ms * scale_x, LATENCY_HEIGHT_PX - 15 - latency_ms * scale_y
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{COLOURS.get(operation.outcome, "#999")}">'
                     f'<title>{_escape(operation.invoke.f)} {latency_ms} ms {operation.outcome}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _checks_table(outcomes: Sequence[Outcome]) -> str:
    rows = []
    for outcome in outcomes:
        status = "passed" if outcome.ok else "skipped" if outcome.skipped else "FAILED"
        colour = "#2e9d4a" if outcome.ok else "#e7a02a" if outcome.skipped else "#d2453a"
        details = "".join(f"<li>{_escape(detail)}</li>" for detail in outcome.details)
        rows.append(f'<tr><td>{_escape(outcome.name)}</td><td style="color:{colour};font-weight:bold">{status}</td>'
                    f'<td>{_escape(outcome.seen)}<ul>{details}</ul></td></tr>')
    return "<table><tr><th>check</th><th>result</th><th>seen</th></tr>" + "".join(rows) + "</table>"


def render(*, facts: RunFacts, outcomes: Sequence[Outcome], verdict: str, run: Mapping, folder: str) -> str:
    options = run.get("options") or {}
    seed = options.get("seed")
    counts = {kind: sum(1 for operation in operations(facts.events) if operation.outcome == kind) for kind in COLOURS}
    legend = " ".join(f'<span style="color:{colour}">&#9679; {kind} ({counts[kind]})</span>' for kind, colour in COLOURS.items())
    legend += " &#9670; adversary " + " ".join(f'<span style="background:{colour};opacity:0.6">&nbsp;{kind}&nbsp;</span>'
                                                 for kind, colour in FAULT_COLOURS.items())
    aborted = f"<p><b>run broke off:</b> {_escape(facts.aborted)}</p>" if facts.aborted else ""
    if run.get("planted_bugs"):
        aborted += f"<p><b>planted bug(s) on every node:</b> {_escape(', '.join(run['planted_bugs']))} (SYNAPSE_PLANTED_BUGS)</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>chaos {seed}: {verdict}</title>
<style>body{{font-family:sans-serif;margin:20px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}} .verdict{{font-size:28px;font-weight:bold;color:{VERDICT_COLOURS.get(verdict, "#333")}}}
code{{background:#f3f3f3;padding:2px 4px}} ul{{margin:2px 0}}</style></head><body>
<h1>synapse chaos: <span class="verdict">{_escape(verdict)}</span></h1>
{aborted}<p>seed <b>{_escape(seed)}</b>, options <code>{_escape(json.dumps(options, sort_keys=True))}</code></p>
<p>replay: <code>synapse chaos replay {_escape(folder)}</code> &middot; same schedule from the seed:
<code>synapse chaos run --seed {_escape(seed)} --nodes {_escape(options.get("nodes"))} --validators {_escape(options.get("validators"))}
--duration {int(options.get("duration_ms", 0)) // 1000}s --faults-at-once {_escape(options.get("faults_at_once_max"))}
--faults {_escape(",".join(options.get("faults", [])) or "none")}
--adversary {_escape(",".join(options.get("adversary", [])) or "none")}</code> &middot; re-judge: <code>synapse chaos check {_escape(folder)}</code></p>
<h2>Checks</h2>{_checks_table(outcomes)}
<h2>Timeline</h2><p>{legend} &middot; ringed: named by a failing check</p>{timeline_svg(facts, blamed_operations(outcomes))}
<h2>Latency</h2>{latency_svg(facts)}
<p>Files: history.jsonl, schedule.jsonl, finals.json, verdict.json, run.json, nodes/*/ (logs, final.json).</p>
</body></html>
"""
