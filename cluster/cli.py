"""The `synapse` command line: one click group; each area registers its own subgroup.

Why subgroups live in their own modules: package tools, node/genesis tools, the cluster launcher and
the scenario runner grow independently; this file only wires them together.

SIGTERM unwinds like Ctrl-C: `timeout`, CI runners and service managers stop a run with SIGTERM, whose
default action kills the process on the spot, leaving its cluster's nodes running and its partition
rules in iptables. Turned into SystemExit, it runs every `finally` and context manager on the way out
(LocalCluster stops its nodes, NetworkFaults removes its chain). Commands that serve until SIGTERM
(`synapse node run`) install their own handler through asyncio, which takes precedence.
"""

from __future__ import annotations

import signal
import types

import click

EXIT_TERMINATED = 128 + signal.SIGTERM


def _exit_on_sigterm(signal_number: int, frame: types.FrameType | None) -> None:
    raise SystemExit(EXIT_TERMINATED)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="synapse-ng")
def main() -> None:
    """Synapse-NG: a self-upgrading network and the testbed to attack it."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _register() -> None:
    from cluster.cli_package import package

    main.add_command(package)
    __import__("cluster.cli_node", fromlist=["register"]).register(main)  # synapse genesis / synapse node
    __import__("cluster.cli_cluster", fromlist=["register"]).register(main)  # synapse cluster / scenario / doctor
    __import__("cluster.cli_fault", fromlist=["register"]).register(main)  # synapse cluster fault / heal
    main.add_command(__import__("cluster.demo", fromlist=["demo"]).demo)  # synapse demo
    __import__("cluster.cli_chaos", fromlist=["register"]).register(main)  # synapse chaos
    __import__("cluster.cli_upgrade", fromlist=["register"]).register(main)  # synapse upgrade
    __import__("cluster.cli_restart", fromlist=["register"]).register(main)  # synapse cluster restart
    __import__("cluster.cli_dump", fromlist=["register"]).register(main)  # synapse cluster dump


_register()
