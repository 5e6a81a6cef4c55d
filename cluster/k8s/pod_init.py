"""The pod's init step: `python -m cluster.k8s.pod_init --config FILE --secret-dir DIR [--dns-wait S]`.

Why it works as it does:
- The node reads its key, API token and Raft secret from its data dir, and refuses a file it reaches
  through a symlink or that group or others can read (node/fsutil.py read_private_file). A Secret
  volume is made of symlinks into `..data/`, readable by the pod's group. So this step copies each file
  into the data volume as a regular 0600 file of the node's user, and the node never sees the Secret.
- The data volume outlives the pod. A file already there is kept when it holds the same bytes, and the
  step fails (the pod does not start) when it differs: a volume holding another node's identity, or a
  Secret replaced under a running network, must be noticed by a person, never silently overwritten.
- The node binds its own DNS name at start. Kubelet writes that name into the pod's /etc/hosts (a
  StatefulSet sets hostname and subdomain), so it normally resolves at once; the step still checks,
  bounded, that the name resolves to an address this pod can bind, so manifests made for another
  namespace or cluster domain fail here with the reason instead of crash-looping the node. Which files
  and which name come from the node's config (node/config.py load_config): one source of truth.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from node.config import load_config
from node.errors import ConfigError, SynapseError
from node.fsutil import write_atomic

SECRET_FILES = ("node_key", "api_token", "raft_secret")
SECRET_SIZE_MAX_BYTES = 4096
DNS_POLL_S = 1.0


def install_secrets(secret_dir: Path, data_dir: Path) -> list[str]:
    """Copy the Secret's files into data_dir (0600); returns the names copied. Raises ConfigError on a
    file that differs from the one already in the data dir, or on a Secret without a node key."""
    secret_dir, data_dir = Path(secret_dir), Path(data_dir)
    if not (secret_dir / "node_key").is_file():
        raise ConfigError(f"the Secret mounted at {secret_dir} has no node_key",
                          hint="apply the manifests that 'synapse cluster manifests --provider kubernetes' wrote for this network")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    copied = []
    for name in SECRET_FILES:
        source = secret_dir / name
        if not source.is_file():
            continue
        with open(source, "rb") as handle:
            wanted = handle.read(SECRET_SIZE_MAX_BYTES + 1)
        if len(wanted) > SECRET_SIZE_MAX_BYTES:
            raise ConfigError(f"{source} is larger than {SECRET_SIZE_MAX_BYTES} bytes: not a key, token or password")
        target = data_dir / name
        if target.exists() or target.is_symlink():
            if target.is_symlink() or not target.is_file() or target.read_bytes() != wanted:
                raise ConfigError(f"{target} on the data volume differs from the Secret's {name}",
                                  hint="this volume belongs to another node or network: delete the PersistentVolumeClaim "
                                       "only if its data may be lost, or restore the matching Secret")
            continue
        write_atomic(target, wanted, mode=0o600)
        copied.append(name)
    return copied


def _bindable(host: str) -> bool:
    try:
        addresses = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            try:
                probe.bind(address)
                return True
            except OSError:
                continue
    return False


def wait_for_own_name(host: str, timeout_s: float, *, bindable: Callable[[str], bool] = _bindable,
                      clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                      say: Callable[[str], None] = print) -> None:
    """Wait until `host` resolves to an address of this pod. Raises ConfigError after timeout_s."""
    deadline = clock() + timeout_s
    while not bindable(host):
        if clock() >= deadline:
            raise ConfigError(f"{host} did not resolve to an address of this pod within {timeout_s:.0f} s",
                              hint="check that the headless Service exists with publishNotReadyAddresses: true and that "
                                   "the pod's namespace and cluster domain are the ones the manifests were made for")
        say(f"waiting for DNS: {host}")
        sleep(DNS_POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.k8s.pod_init", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--secret-dir", type=Path, required=True)
    parser.add_argument("--dns-wait", type=float, default=120.0)
    arguments = parser.parse_args(argv)
    try:
        config = load_config(arguments.config)
        copied = install_secrets(arguments.secret_dir, config.data_dir)
        print(f"installed into {config.data_dir}: {', '.join(copied) or 'nothing new (the volume already held them)'}")
        wait_for_own_name(config.api_host, arguments.dns_wait)
    except SynapseError as error:
        print(f"error: {error.one_line()}", file=sys.stderr)
        return 1
    print(f"{config.api_host} resolves to this pod; the node can start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
