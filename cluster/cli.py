"""The `synapse` command line: one click group; each area registers its own subgroup.

Why subgroups live in their own modules: package tools, node/genesis tools, the cluster launcher and
the scenario runner grow independently; this file only wires them together.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="synapse-ng")
def main() -> None:
    """Synapse-NG: a self-upgrading network and the testbed to attack it."""


def _register() -> None:
    from cluster.cli_package import package

    main.add_command(package)
    __import__("cluster.cli_node", fromlist=["register"]).register(main)  # synapse genesis / synapse node
    __import__("cluster.cli_cluster", fromlist=["register"]).register(main)  # synapse cluster / scenario / doctor
    main.add_command(__import__("cluster.demo", fromlist=["demo"]).demo)  # synapse demo
    __import__("cluster.cli_chaos", fromlist=["register"]).register(main)  # synapse chaos
    __import__("cluster.cli_upgrade", fromlist=["register"]).register(main)  # synapse upgrade


_register()
