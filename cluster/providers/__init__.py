"""Providers: what runs a cluster's nodes and injects its faults (see base.py for the interface).

`loopback` (the default, the fastest: processes on 127.A.B.i) and `netns` (a network namespace per
node, root only: delay, jitter, loss and bandwidth on real links). `make_provider(name, **options)`
is the one way the scenario runner, `chaos` and the CLI get one; the modules are imported on demand,
so choosing `loopback` never loads the netns plumbing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.providers.base import Capability, LinkFault, Provider, unavailable
from node.errors import ConfigError

DEFAULT_PROVIDER = "loopback"
PROVIDERS = {"loopback": "cluster.providers.loopback:LoopbackProvider", "netns": "cluster.providers.netns:NetnsProvider"}
# Providers attached to a running cluster, where it is a class of its own (netns: state read back, helpers detached).
ATTACHED = {"netns": "cluster.providers.netns_attached:AttachedNetnsProvider"}


def provider_class(name: str) -> type[Provider]:
    if name not in PROVIDERS:
        raise ConfigError(f"unknown provider {name!r}", hint=f"providers: {', '.join(PROVIDERS)}")
    module_name, class_name = PROVIDERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_provider(name: str = DEFAULT_PROVIDER, **cluster_options: Any) -> Provider:
    """A provider of that name for a new cluster; `cluster_options` are LocalCluster's."""
    return provider_class(name)(**cluster_options)


def attach_provider(data_dir: Path, document: Mapping[str, Any]) -> Provider:
    """The provider of a running cluster, from its DIR/cluster.json (`provider`, default loopback): faults
    that outlive this process (see Provider.attach)."""
    name = document.get("provider", DEFAULT_PROVIDER)
    if name in ATTACHED:
        module_name, class_name = ATTACHED[name].split(":")
        return getattr(importlib.import_module(module_name), class_name)(Path(data_dir), document)
    return provider_class(name).attach(Path(data_dir), document)


__all__ = ["attach_provider", "DEFAULT_PROVIDER", "PROVIDERS", "Capability", "LinkFault", "Provider", "make_provider", "provider_class", "unavailable"]
