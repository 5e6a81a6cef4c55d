"""`synapse upgrade propose|vote|wait|show|list|test|status|history|rollback|rollback-propose`.

Why it works as it does:
- Thin: each command resolves its target nodes, makes one client call per node
  (cluster/upgrade_client.py) and prints. Humans get tables; `--json` prints one JSON document on stdout
  (live wait lines then go to stderr) so scripts can parse it.
- Targets: `--data-dir D` (default: $SYNAPSE_CLUSTER_DIR, else the last cluster `cluster up` started)
  with `--node` (default node-1; `vote` and `status` take it repeated, or `--all`), or `--url URL
  --token-file F` for one node of any network.
- A local `--package FILE` (.wasm, .wat, .c) is stored in the cluster's data dir and served by the
  cluster's package server (cluster/package_host.py: detached, stopped by `synapse cluster down`),
  because nodes fetch it when the upgrade executes, long after `propose` returned. Without a cluster
  (`--url`) a package must be published by the operator: `--package URL --sha256 HEX`.
- Exit status: 0 done; 1 the node refused (its message and hint are shown), a dry run failed, or a
  wait ended without its goal (the reason is shown); 2 bad usage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import click

from cluster import upgrade_client as client
from cluster.cli_cluster import EXIT_FAILED, EXIT_USAGE, _fail, _print_table, _resolve_dir, load_cluster_file
from node.errors import BadRequest, SynapseError

WAIT_TIMEOUT_S = 120.0
WAIT_TIMEOUT_RANGE_S = click.FloatRange(0.1, 3600.0)


class Context:
    """The resolved target options of one command."""

    def __init__(self, data_dir: Path | None, nodes: tuple[str, ...], every: bool, url: str | None,
                 token_file: Path | None, as_json: bool) -> None:
        self.as_json = as_json
        self.data_dir = None
        if url is not None:
            if nodes or every or data_dir is not None:
                _fail(BadRequest("--url names one node: it does not go with --data-dir, --node or --all",
                                 hint="use --data-dir D [--node node-2] for a local cluster, or --url U --token-file F"), EXIT_USAGE)
            self.targets = [client.url_target(url, token_file)]
            self.every_target = self.targets
            return
        if token_file is not None:
            _fail(BadRequest("--token-file goes with --url", hint="a cluster's token files are read from its cluster.json"),
                  EXIT_USAGE)
        self.data_dir = _resolve_dir(data_dir)
        try:
            document = load_cluster_file(self.data_dir)
            self.every_target = client.cluster_targets(self.data_dir, document, None)
            self.targets = self.every_target if every else client.cluster_targets(self.data_dir, document, nodes or ("node-1",))
        except SynapseError as error:
            _fail(error, EXIT_USAGE)

    def one(self) -> client.Target:
        if len(self.targets) != 1:
            _fail(BadRequest("this command talks to one node", hint="give one --node (or none: node-1)"), EXIT_USAGE)
        return self.targets[0]

    def echo(self, text: str) -> None:
        click.echo(text, err=self.as_json)

    def emit(self, document: object, human: Callable[[dict], None]) -> None:
        if self.as_json:
            click.echo(json.dumps(document, indent=2, sort_keys=True))
        else:
            human(document)


def target_options(*, many: bool):
    def decorate(command):
        options = [
            click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                         help="the cluster's data dir (default: $SYNAPSE_CLUSTER_DIR, else the last cluster started)"),
            click.option("--node", "nodes", multiple=many, default=() if many else None,
                         help="node-<i>, 1..N or a node id (default node-1)" + ("; repeat for several" if many else "")),
            click.option("--url", default=None, help="one node's API URL instead of a cluster"),
            click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                         help="with --url: the node's api_token file"),
            click.option("--json", "as_json", is_flag=True, help="print one JSON document for scripts"),
        ]
        if many:
            options.append(click.option("--all", "every", is_flag=True, help="every node of the cluster"))
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def _context(data_dir, nodes, url, token_file, as_json, every=False) -> Context:
    nodes = tuple(nodes) if isinstance(nodes, tuple) else ((nodes,) if nodes else ())
    return Context(data_dir, nodes, every, url, token_file, as_json)


def _call(target: client.Target, method: str, path: str, body=None):
    try:
        return client.call(target, method, path, body)
    except SynapseError as error:
        _fail(error)


def wait_options(command):
    command = click.option("--timeout", "timeout_s", type=WAIT_TIMEOUT_RANGE_S, default=WAIT_TIMEOUT_S, show_default=True,
                           help="seconds --wait waits at most")(command)
    return click.option("--wait", "goal", type=click.Choice(client.WAIT_GOALS), default=None,
                        help="wait until the proposal is approved, or executed on every node")(command)


def _wait(context: Context, proposal_id: str, goal: str, timeout_s: float) -> dict:
    context.echo(f"waiting up to {timeout_s:.0f} s for {proposal_id} to be {goal} ...")
    try:
        result = client.wait_for(context.every_target, proposal_id, goal, timeout_s, context.echo)
    except SynapseError as error:
        _fail(error)
    context.echo(f"{proposal_id}: {goal}" if result.reached else f"{proposal_id}: not {goal}: {result.reason}")
    return result.to_dict()


def _finish(context: Context, document: dict, human) -> None:
    context.emit(document, human)
    wait = document.get("wait")
    sys.exit(EXIT_FAILED if (wait is not None and not wait["reached"]) or document.get("failed") else 0)


@click.group()
def upgrade() -> None:
    """Propose, vote, test, watch and roll back upgrades, on a local cluster or on one node."""


@upgrade.command("propose")
@click.option("--package", "package", required=True, help="a local .wasm/.wat/.c file (served for the cluster), or a URL")
@click.option("--version", "version", required=True, help="the version the package upgrades to, e.g. 1.2.0")
@click.option("--title", required=True)
@click.option("--description", default="", help="what the upgrade changes and why")
@click.option("--sha256", default=None, help="with a package URL: the SHA256 of the file (hex)")
@click.option("--size", "size_bytes", type=int, default=None, help="with a package URL: its size in bytes")
@wait_options
@target_options(many=False)
def propose(package, version, title, description, sha256, size_bytes, goal, timeout_s, data_dir, nodes, url, token_file, as_json):
    """Propose an upgrade; prints its proposal id."""
    context = _context(data_dir, nodes, url, token_file, as_json)
    target = context.one()
    reference = _package(context, package, sha256, size_bytes)
    created = _call(target, "POST", "/upgrades/propose", {
        "title": title, "description": description, "version": version, "package_url": reference.url,
        "package_hash": "sha256:" + reference.sha256, "package_size": reference.size})
    document = {**created, "node": target.name, "package_url": reference.url, "package_hash": reference.sha256,
                "package_size": reference.size}
    _created_then_wait(context, document, goal, timeout_s)


def _created_then_wait(context: Context, document: dict, goal: str | None, timeout_s: float) -> None:
    """Show a new proposal; with --wait, wait for it (the JSON document then carries the outcome)."""
    if goal is None:
        context.emit(document, _show_created)
        return
    if not context.as_json:
        _show_created(document)
    document["wait"] = _wait(context, document["proposal_id"], goal, timeout_s)
    _finish(context, document, lambda _document: None)


def _package(context: Context, package: str, sha256: str | None, size_bytes: int | None) -> client.PackageRef:
    try:
        if "://" in package:
            return client.remote_package(package, sha256, size_bytes)
        if context.data_dir is None:
            raise BadRequest(f"{package} is a local file, and --url names no cluster that could serve it to the nodes",
                             hint="publish it where every node can fetch it, then pass --package URL --sha256 HEX; "
                                  "or use --data-dir for a local cluster")
        if sha256 or size_bytes:
            raise BadRequest("--sha256 and --size are computed for a local file", hint="leave them out")
        return client.local_package(Path(package), context.data_dir)
    except SynapseError as error:
        _fail(error, EXIT_USAGE if isinstance(error, BadRequest) else EXIT_FAILED)


def _show_created(document: dict) -> None:
    click.echo(f"proposed {document['proposal_id']} on {document['node']}: {document.get('action', 'upgrade')} "
               f"to {document.get('version')}, voting until {document.get('voting_deadline')}")
    if document.get("package_url"):
        click.echo(f"  package {document['package_url']} sha256:{document['package_hash']} ({document['package_size']} bytes)")
    click.echo(f"next: synapse upgrade vote {document['proposal_id']} approval --all")


@upgrade.command("vote")
@click.argument("proposal_id")
@click.argument("choice", type=click.Choice(["approval", "rejection"]))
@wait_options
@target_options(many=True)
def vote(proposal_id, choice, goal, timeout_s, data_dir, nodes, url, token_file, as_json, every):
    """Vote with each chosen node's key (--node repeated, or --all).

    A node whose vote comes after the outcome is settled is skipped, not failed, when another node's
    vote of this command was recorded (every node voting at once races the validators' close)."""
    context = _context(data_dir, nodes, url, token_file, as_json, every)
    votes, failed = [], False
    for target in context.targets:
        try:
            answer = client.vote(target, proposal_id, choice)
        except SynapseError as error:
            failed = True
            answer = {"node": target.name, "error": error.to_dict()}
            _echo_error(target.name, error.to_dict())
        votes.append(answer)
        if "skipped" in answer:
            context.echo(f"{target.name}: not sent: {answer['skipped']}")
        elif "entry_id" in answer:
            context.echo(f"{target.name}: {choice} recorded (status {answer['status']}, provisional outcome "
                         f"{answer['tally']['outcome']})")
    if not any("entry_id" in answer for answer in votes):
        failed = True
        for answer in votes:
            if "skipped" in answer:
                _echo_error(answer["node"], answer["error"])
    document = {"proposal_id": proposal_id, "vote": choice, "votes": votes, "failed": failed}
    if goal is not None and not failed:
        document["wait"] = _wait(context, proposal_id, goal, timeout_s)
    _finish(context, document, lambda _document: None)


def _echo_error(name: str, error: dict) -> None:
    click.echo(f"{name}: error: {error.get('message')}", err=True)
    if error.get("hint"):
        click.echo(f"{name}: hint: {error['hint']}", err=True)


@upgrade.command("wait")
@click.argument("proposal_id")
@click.argument("goal", type=click.Choice(client.WAIT_GOALS))
@click.option("--timeout", "timeout_s", type=WAIT_TIMEOUT_RANGE_S, default=WAIT_TIMEOUT_S, show_default=True)
@target_options(many=False)
def wait(proposal_id, goal, timeout_s, data_dir, nodes, url, token_file, as_json):
    """Wait until a proposal is approved, or executed on every node (a live line per node)."""
    context = _context(data_dir, nodes, url, token_file, as_json)
    _finish(context, {"proposal_id": proposal_id, "wait": _wait(context, proposal_id, goal, timeout_s)}, lambda _d: None)


@upgrade.command("show")
@click.argument("proposal_id")
@target_options(many=False)
def show(proposal_id, data_dir, nodes, url, token_file, as_json):
    """One proposal: status, tally, votes, ratification, every node's execution report."""
    context = _context(data_dir, nodes, url, token_file, as_json)
    context.emit(_call(context.one(), "GET", f"/proposals/{proposal_id}"), _show_proposal)


def _show_proposal(document: dict) -> None:
    tally = document.get("tally") or {}
    for label, value in (("proposal", document["proposal_id"]), ("action", document.get("action")),
                         ("title", document.get("title")), ("version", document.get("version")),
                         ("status", document.get("status")), ("author", document.get("author")),
                         ("voting until", document.get("voting_deadline")),
                         ("tally", f"approval {tally.get('approval_weight')}, rejection {tally.get('rejection_weight')}, "
                                   f"cast {tally.get('cast_weight')} of {tally.get('total_weight')} "
                                   f"(outcome {tally.get('outcome')})"),
                         ("closed by", ", ".join(document.get("closed_by") or []) or "-"),
                         ("package", document.get("package_url") or "-"), ("target", document.get("target_proposal_id") or "-")):
        click.echo(f"{label + ':':14}{value}")
    if document.get("votes"):
        click.echo("votes:")
        _print_table([(v["voter"][:16], v["vote"], str(v["weight"]), "counted" if v.get("counted") else "not_counted")
                      for v in document["votes"]], ("voter", "vote", "weight", "counted"))
    if document.get("reports"):
        click.echo("execution reports:")
        _print_table([(r["node_id"][:16], "ok" if r["success"] else "FAILED", str(r.get("version")),
                       str(r.get("state_hash"))[:16], client.error_text(r.get("error")) if r.get("error") else "")
                      for r in document["reports"]], ("node", "result", "version", "state hash", "error"))


@upgrade.command("list")
@click.option("--status", default=None, help="only proposals with this status (voting, approved, executed, ...)")
@target_options(many=False)
def list_proposals(status, data_dir, nodes, url, token_file, as_json):
    """Every proposal this node knows, oldest first."""
    context = _context(data_dir, nodes, url, token_file, as_json)
    context.emit(_call(context.one(), "GET", "/proposals" + (f"?status={status}" if status else "")), _show_list)


def _show_list(document: dict) -> None:
    rows = [(p["proposal_id"], p["action"], p["version"], p["status"],
             f"{p['tally']['approval_weight']}/{p['tally']['total_weight']}", p["voting_deadline"], p["title"][:40])
            for p in document["proposals"]]
    if rows:
        _print_table(rows, ("proposal", "action", "version", "status", "approval", "voting until", "title"))
    click.echo(f"{document['total']} proposal(s)")


@upgrade.command("test")
@click.argument("proposal_id")
@target_options(many=False)
def test(proposal_id, data_dir, nodes, url, token_file, as_json):
    """Dry run on the node: download, verify, run the package on a copy of the state; nothing changes."""
    context = _context(data_dir, nodes, url, token_file, as_json)
    document = _call(context.one(), "POST", f"/upgrades/{proposal_id}/test")
    context.emit(document, _show_test)
    sys.exit(0 if document.get("success") else EXIT_FAILED)


def _show_test(document: dict) -> None:
    if document.get("success"):
        result = document.get("result") or {}
        changes = result.get("changes") or {}
        click.echo(f"dry run of {document['proposal_id']}: ok, version {result.get('version')}, "
                   f"{changes.get('total', '?')} change(s); the live state was not touched")
    else:
        click.echo(f"dry run of {document['proposal_id']}: FAILED at {document.get('failed_step')}: "
                   f"{client.error_text(document.get('error'))}")


@upgrade.command("status")
@target_options(many=True)
def status(data_dir, nodes, url, token_file, as_json, every):
    """Each chosen node's version, state hash and number of upgrades (--all: every node)."""
    context = _context(data_dir, nodes, url, token_file, as_json, every)
    documents = {target.name: _call(target, "GET", "/upgrades/status") for target in context.targets}
    context.emit(documents, lambda found: _print_table(
        [(name, str(d.get("current_version")), str(d.get("total_upgrades")), str(d.get("applied_sequence")),
          str(d.get("state_hash"))[:24], "validator" if d.get("validator") else "member") for name, d in found.items()],
        ("node", "version", "upgrades", "sequence", "state hash", "role")))


@upgrade.command("history")
@target_options(many=False)
def history(data_dir, nodes, url, token_file, as_json):
    """The node's upgrade history (executions and rollbacks)."""
    context = _context(data_dir, nodes, url, token_file, as_json)
    document = _call(context.one(), "GET", "/upgrades/history")
    context.emit(document, _show_history)


def _show_history(document: dict) -> None:
    rows = [(str(item.get("executed_at", "-")), str(item.get("event", "-")), str(item.get("proposal_id", "-")),
             f"{item.get('from_version', '?')} -> {item.get('version', '?')}", "ok" if item.get("success") else "FAILED",
             str(item.get("state_hash") or "-")[:16], client.error_text(item.get("error")) if item.get("error") else "")
            for item in document.get("history", [])]
    if rows:
        _print_table(rows, ("when", "event", "proposal", "versions", "result", "state hash", "error"))
    click.echo(f"{len(rows)} record(s)")


@upgrade.command("rollback")
@click.argument("proposal_id")
@click.option("--reason", default=None, help="why (recorded in the ROLLBACK audit entry)")
@target_options(many=False)
def rollback(proposal_id, reason, data_dir, nodes, url, token_file, as_json):
    """Roll back THIS node's latest applied upgrade (operator action; the network keeps its version)."""
    context = _context(data_dir, nodes, url, token_file, as_json)
    document = _call(context.one(), "POST", f"/upgrades/{proposal_id}/rollback", {"reason": reason} if reason else None)
    context.emit(document, lambda d: click.echo(
        f"{context.one().name}: rolled back {d['previous_version']} -> {d['restored_version']} (audit entry {d.get('audit_entry_id')})"))


@upgrade.command("rollback-propose")
@click.argument("target_proposal_id")
@click.option("--title", default=None)
@click.option("--description", default=None)
@wait_options
@target_options(many=False)
def rollback_propose(target_proposal_id, title, description, goal, timeout_s, data_dir, nodes, url, token_file, as_json):
    """Propose a network-wide rollback of the latest executed upgrade TARGET_PROPOSAL_ID."""
    context = _context(data_dir, nodes, url, token_file, as_json)
    target = context.one()
    body = {"target_proposal_id": target_proposal_id, **({"title": title} if title else {}),
            **({"description": description} if description else {})}
    document = {**_call(target, "POST", "/rollbacks/propose", body), "node": target.name}
    _created_then_wait(context, document, goal, timeout_s)


def register(main: click.Group) -> None:
    main.add_command(upgrade)
