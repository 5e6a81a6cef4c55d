"""Upgrade pipeline decisions: which step comes next, and whether a result may be accepted.

Why pure: every honest node must reach the same verdict on the same package and state, so the
verdicts are functions of their inputs only. The I/O shell (node/upgrader.py) downloads, runs the
sandbox and writes the store; this module only says what is allowed.
"""

from __future__ import annotations

from node.core.semver import parse_version
from node.errors import UpgradeRefused, VersionError


def check_version_allowed(current_version: str, target_version: str) -> None:
    """An upgrade must move to a strictly greater semver; going back is a rollback, not an upgrade."""
    try:
        target = parse_version(target_version)
    except ValueError as error:
        raise UpgradeRefused(str(error), hint="propose a semver version such as '1.2.0'") from None
    current = parse_version(current_version)
    if not target > current:
        raise VersionError(f"version {target_version} is not greater than the current version {current_version}")


def check_migration_output(old_state: dict, new_state: object, target_version: str) -> None:
    """The output of upgrade() must be the new network state of exactly `target_version`, and keep
    every member: removing members is a governance decision, never a side effect of a migration."""
    if not isinstance(new_state, dict):
        raise UpgradeRefused(f"upgrade() returned a JSON {type(new_state).__name__}, not an object",
                             hint="return the whole network state as a JSON object")
    new_global = new_state.get("global")
    if not isinstance(new_global, dict):
        raise UpgradeRefused("upgrade() returned a state without a 'global' object",
                             hint="keep the input's structure and change only what the migration needs")
    produced_version = new_global.get("version")
    if produced_version != target_version:
        raise UpgradeRefused(f"upgrade() set global.version to {produced_version!r}, but the upgrade is to {target_version!r}",
                             hint="set state['global']['version'] to the proposal's version")
    old_nodes = old_state.get("global", {}).get("nodes", {}) or {}
    new_nodes = new_global.get("nodes")
    if not isinstance(new_nodes, dict):
        raise UpgradeRefused("upgrade() returned a state whose global.nodes is not an object",
                             hint="keep global.nodes as an object keyed by node id")
    removed = sorted(set(old_nodes) - set(new_nodes))
    if removed:
        shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        raise UpgradeRefused(f"upgrade() removed {len(removed)} member(s) of global.nodes: {shown}",
                             hint="a migration must keep every member; removing members is a governance decision")
