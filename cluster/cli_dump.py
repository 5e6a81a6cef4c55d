"""`synapse cluster dump --data-dir D -o FILE.tar.gz`: one archive for a bug report (cluster/dump.py
decides what goes in; this writes it).

Why it works as it does:
- The archive holds one folder, synapse-dump-<network>-<time>/, with MANIFEST.txt (what is in it, what
  was left out and why, what could not be read) and manifest.json (the same, for scripts) first, so
  whoever opens it reads that before anything else.
- Members are plain files with fixed owner (0/0) and mode 0644: no link, device or path outside the
  folder can be in it, whatever the data dir held.
- Written to a temporary file beside FILE, then renamed: an interrupted dump never leaves a half archive
  under the name the user asked for. An existing FILE is not overwritten without --force.
- Works on a stopped cluster: files only, the API parts listed as unavailable.
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import json
import os
import re
import tarfile
import time
from pathlib import Path

import click

from cluster import dump as collector
from cluster.cli_cluster import EXIT_USAGE, _config_path, _fail, _resolve_dir, load_cluster_file, node_process_alive
from node.errors import ClusterError, SynapseError

_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
NETWORK_NAME_CHARS_MAX = 64


def _tool_version() -> str:
    try:
        return importlib.metadata.version("synapse-ng")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def archive_folder(document: dict, created_at: float) -> str:
    network = _UNSAFE_NAME_CHARACTERS.sub("_", str(document.get("network_id", "cluster")))[:NETWORK_NAME_CHARS_MAX]
    return f"synapse-dump-{network}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(created_at))}"


def write_archive(output: Path, folder: str, parts: dict[str, bytes], created_at: float) -> None:
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    raw = open(temporary, "xb")  # x: a file of that name that is not ours is neither used nor removed
    try:
        with raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
            for name, data in parts.items():
                member = tarfile.TarInfo(f"{folder}/{name}")
                member.size, member.mtime, member.mode = len(data), int(created_at), 0o644
                member.uid = member.gid = 0
                member.uname = member.gname = ""
                archive.addfile(member, io.BytesIO(data))
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


@click.command("dump")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, help="the archive to write (.tar.gz)")
@click.option("--force", is_flag=True, help="overwrite OUTPUT if it exists")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document (the manifest) on stdout")
def dump(data_dir: Path | None, output: Path, force: bool, as_json: bool) -> None:
    """Every node's logs, state, history, entry log, metrics, health and status, the genesis and the
    cluster file, in one .tar.gz for a bug report. Keys, tokens and the Raft password are left out;
    MANIFEST.txt in the archive lists what is in it and what was left out, and why."""
    say = functools.partial(click.echo, err=as_json)
    data_dir = _resolve_dir(data_dir).absolute()
    output = output.absolute()
    try:
        document = load_cluster_file(data_dir)
        if output.exists() and not force:
            raise ClusterError(f"{output} already exists", hint="choose another -o FILE, or add --force to overwrite it")
        if not output.parent.is_dir():
            raise ClusterError(f"{output.parent} is not a directory", hint="create it first, or choose another -o FILE")
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    created_at = time.time()
    running = [f"node-{node['index'] + 1}" for node in document["nodes"] if node_process_alive(node.get("pid"), _config_path(node))]
    collected = collector.collect(data_dir, document, lambda node: f"node-{node['index'] + 1}" in running)
    manifest = collector.manifest_text(collected, data_dir, document, running, created_at, _tool_version())
    summary = {"output": str(output), "data_dir": str(data_dir), "running": running,
               "included": [{"name": name, "what": what} for name, what in collected.included],
               "left_out": [{"path": path, "why": why} for path, why in collected.left_out],
               "unavailable": [{"what": what, "why": why} for what, why in collected.unavailable]}
    parts = {"MANIFEST.txt": manifest.encode(), "manifest.json": json.dumps(summary, indent=2).encode() + b"\n", **collected.parts}
    folder = archive_folder(document, created_at)
    try:
        write_archive(output, folder, parts, created_at)
    except OSError as error:
        _fail(ClusterError(f"cannot write {output}: {error.strerror or error}", hint="check the directory's space and permissions"))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    say(f"wrote {output} ({output.stat().st_size} bytes): {len(collected.included)} parts included, "
        f"{len(collected.left_out)} files left out, {len(collected.unavailable)} unavailable; see {folder}/MANIFEST.txt")


def register(main: click.Group) -> None:
    main.commands["cluster"].add_command(dump)
