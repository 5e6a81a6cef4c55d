"""`synapse cluster up-kubernetes`: apply the manifests with the official client, wait for health, write cluster.json.

Why it works as it does:
- The Kubernetes API sits behind a small interface (`KubernetesApi`): apply one object, read one pod's
  readiness, delete labelled objects, delete the namespace, and say where it is. `OfficialClient` implements it with the
  official `kubernetes` package (optional: `pip install 'synapse-ng[kubernetes]'`), by server-side apply,
  so running `up` twice converges instead of failing on "already exists". Tests drive the same code
  with an in-memory twin; no API server can run on the machines this was written on.
- Only what `synapse cluster manifests` writes is applied, in a fixed order (namespace, config,
  secrets, services, policy, StatefulSets), all in the one namespace the Namespace object names: a
  tampered or mixed-up directory with a ClusterRoleBinding, or an object aimed at another namespace,
  is refused before anything is sent.
- Health is the pods' readiness, which is the node's own GET /health through the readiness probe:
  bounded by a timeout, with a progress line per pod, and on timeout the pods still waiting and the
  kubectl commands that show why.
- The API URLs genesis holds are in-cluster DNS names: cluster.json gives them (reachable from any pod)
  with the API token files and, for a person outside the cluster, the `kubectl port-forward` command and
  the local URL it makes, one local port per node.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Protocol

from cluster.k8s.manifests import FIELD_MANAGER, LABEL_INSTANCE
from node.errors import ClusterError, ConfigError

INSTALL_HINT = "install synapse-ng[kubernetes] (pip install 'synapse-ng[kubernetes]') and point KUBECONFIG at a cluster"
APPLY_ORDER = ("Namespace", "ConfigMap", "Secret", "Service", "NetworkPolicy", "StatefulSet")
READY_POLL_S = 2.0
LOCAL_PORT_BASE = 18_000       # node-i is forwarded to 127.0.0.1:(18000 + i)
NETWORK_FILE_NAME = "network.json"
DISCOVERY_CACHE_DIR: Path | None = None      # None: the client's default (its temp dir); tests point it elsewhere
CLUSTER_FILE_NAME = "cluster.json"


class KubernetesApi(Protocol):
    def where(self) -> str: ...
    def apply(self, document: dict) -> None: ...
    def pod_status(self, namespace: str, name: str) -> tuple[bool, str]: ...
    def delete_labelled(self, api_version: str, kind: str, namespace: str, label_selector: str) -> None: ...
    def delete_namespace(self, name: str) -> bool: ...


def check_documents(documents: list[dict]) -> list[dict]:
    """The documents in apply order, refused unless they are what `manifests` writes for one namespace."""
    if not documents or documents[0].get("kind") != "Namespace":
        raise ConfigError("the manifests do not start with their Namespace", hint="write them again with 'synapse cluster manifests'")
    namespace = documents[0]["metadata"]["name"]
    for document in documents:
        kind, metadata = document.get("kind"), document.get("metadata") or {}
        if kind not in APPLY_ORDER:
            raise ConfigError(f"the manifests hold a {kind!r:.40}, which 'synapse cluster manifests' never writes",
                              hint="up-kubernetes applies only the network's own objects; apply anything else yourself")
        if kind != "Namespace" and metadata.get("namespace") != namespace:
            raise ConfigError(f"{kind} {metadata.get('name')!r:.60} is in namespace {metadata.get('namespace')!r:.60}, not {namespace!r}",
                              hint="every object of a network lives in its one namespace")
    return sorted(documents, key=lambda document: APPLY_ORDER.index(document["kind"]))


def check_network_matches(network: dict, documents: list[dict]) -> None:
    """network.json must describe the manifests beside it: the same namespace, one pod per StatefulSet."""
    namespace = documents[0]["metadata"]["name"] if documents and documents[0].get("kind") == "Namespace" else None
    pods = sorted(f"{document['metadata']['name']}-0" for document in documents if document.get("kind") == "StatefulSet")
    if network["namespace"] != namespace or sorted(node.get("pod") for node in network["nodes"]) != pods:
        raise ConfigError("network.json does not describe the manifests beside it (namespace or pods differ)",
                          hint="write the directory again with 'synapse cluster manifests'; never mix two networks' files")


def apply_all(api: KubernetesApi, documents: list[dict], *, say: Callable[[str], None] = print) -> None:
    for document in check_documents(documents):
        api.apply(document)
        say(f"  applied {document['kind']} {document['metadata']['name']}")


def wait_ready(api: KubernetesApi, namespace: str, pods: list[str], timeout_s: float, *, say: Callable[[str], None] = print,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until every pod is Ready (its /health answers). Raises ClusterError naming the others on timeout."""
    deadline, waiting, last = clock() + timeout_s, list(pods), {}
    while waiting:
        for pod in list(waiting):
            ready, detail = api.pod_status(namespace, pod)
            last[pod] = detail
            if ready:
                waiting.remove(pod)
                say(f"  {pod} ready ({len(pods) - len(waiting)}/{len(pods)})")
        if not waiting:
            return
        if clock() >= deadline:
            shown = ", ".join(f"{pod} ({last[pod]})" for pod in waiting)
            raise ClusterError(f"{len(waiting)} pod(s) not ready after {timeout_s:.0f} s: {shown}",
                               hint=f"see why with: kubectl -n {namespace} describe pod {waiting[0]}; "
                                    f"kubectl -n {namespace} logs {waiting[0]} -c install-secrets; kubectl -n {namespace} logs {waiting[0]}")
        sleep(READY_POLL_S)


def load_network_file(data_dir: Path) -> dict:
    path = Path(data_dir) / NETWORK_FILE_NAME
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", hint="write the manifests first: synapse cluster manifests --provider kubernetes -o DIR") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), list) or not isinstance(document.get("namespace"), str):
        raise ConfigError(f"{path} is not a network file of the kubernetes provider")
    return document


def cluster_document(data_dir: Path, network: dict, *, where: str) -> dict:
    """cluster.json: what a person or a script needs to reach each node (0-based index, as LocalCluster's)."""
    namespace, nodes = network["namespace"], []
    for node in network["nodes"]:
        local_port = LOCAL_PORT_BASE + node["index"]
        nodes.append({"index": node["index"] - 1, "node_id": node["node_id"], "validator": node["validator"], "pod": node["pod"],
                      "api_url": node["api_url"], "token_file": str(Path(data_dir) / node["token_file"]),
                      "local_url": f"http://127.0.0.1:{local_port}",
                      "port_forward": f"kubectl -n {namespace} port-forward pod/{node['pod']} {local_port}:{network['api_port']}"})
    return {"provider": "kubernetes", "kubernetes": where, "namespace": namespace, "network_id": network["network_id"],
            "genesis": str(Path(data_dir) / "genesis.json"), "nodes": nodes,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_cluster_file(data_dir: Path, document: dict) -> Path:
    path = Path(data_dir) / CLUSTER_FILE_NAME
    temporary = path.with_name(f".{CLUSTER_FILE_NAME}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)
    return path


# --- the official client -----------------------------------------------------------------------


def _kubeconfig_path(environ: dict) -> Path | None:
    """The kubeconfig the client would read: the first existing file of $KUBECONFIG, else ~/.kube/config."""
    listed = [Path(part).expanduser() for part in environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    for path in listed or [Path(environ.get("HOME", "~")).expanduser() / ".kube" / "config"]:
        if path.is_file():
            return path
    return None


def connect(environ: dict | None = None) -> KubernetesApi:
    """An OfficialClient on the kubeconfig's current context (or the pod's service account inside a cluster).
    Raises ClusterError saying what to install or configure."""
    environ = dict(os.environ if environ is None else environ)
    try:
        import kubernetes  # noqa: F401  (optional dependency: the [kubernetes] extra)
    except ImportError:
        raise ClusterError("the Kubernetes Python client is not installed", hint=INSTALL_HINT) from None
    from kubernetes import config as kube_config

    in_cluster = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    path = _kubeconfig_path(environ)
    if path is None and not in_cluster:
        raise ClusterError("no kubeconfig found ($KUBECONFIG is unset or names no file, and ~/.kube/config does not exist)",
                           hint=INSTALL_HINT)
    try:
        if path is not None:
            kube_config.load_kube_config(config_file=str(path))
        else:
            kube_config.load_incluster_config()
    except Exception as error:  # the client raises ConfigException, TypeError, YAML errors ... for a bad file
        raise ClusterError(f"cannot use the kubeconfig {path or '(in-cluster)'}: {error}", hint=INSTALL_HINT) from None
    return OfficialClient(where=str(path) if path else "in-cluster service account")


class OfficialClient:
    """KubernetesApi over the official client (server-side apply through its dynamic client)."""

    def __init__(self, *, where: str) -> None:
        from kubernetes import client, dynamic

        self._where = where
        self._api_client = client.ApiClient()
        cache = None if DISCOVERY_CACHE_DIR is None else str(Path(DISCOVERY_CACHE_DIR) / "discovery-cache.json")
        self._dynamic = dynamic.DynamicClient(self._api_client, cache_file=cache)
        self._core = client.CoreV1Api(self._api_client)

    def where(self) -> str:
        return self._where

    def _resource(self, api_version: str, kind: str):
        return self._dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, document: dict) -> None:
        resource = self._resource(document["apiVersion"], document["kind"])
        try:
            self._dynamic.server_side_apply(resource, body=document, namespace=document["metadata"].get("namespace"),
                                            field_manager=FIELD_MANAGER, force_conflicts=True)
        except Exception as error:
            raise ClusterError(f"the API server refused {document['kind']} {document['metadata']['name']}: {_reason(error)}",
                               hint="check your rights in the namespace (kubectl auth can-i create statefulsets -n NAMESPACE)") from None

    def pod_status(self, namespace: str, name: str) -> tuple[bool, str]:
        from kubernetes.client.exceptions import ApiException

        try:
            pod = self._core.read_namespaced_pod(name=name, namespace=namespace)
        except ApiException as error:
            if error.status == 404:
                return False, "not created yet"
            raise ClusterError(f"cannot read pod {name}: {_reason(error)}") from None
        conditions = {condition.type: condition.status for condition in (pod.status.conditions or [])}
        return conditions.get("Ready") == "True", pod.status.phase or "unknown"

    def delete_labelled(self, api_version: str, kind: str, namespace: str, label_selector: str) -> None:
        resource = self._resource(api_version, kind)
        self._dynamic.delete(resource, namespace=namespace, label_selector=label_selector)

    def delete_namespace(self, name: str) -> bool:
        """Delete the namespace (and so everything in it, volumes included). False if it did not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._core.delete_namespace(name=name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise ClusterError(f"cannot delete namespace {name}: {_reason(error)}") from None
        return True


def _reason(error: Exception) -> str:
    """The API server's own message (a Status object's `message`), else the client's text."""
    try:
        status = json.loads(getattr(error, "body", None) or "null")
    except (TypeError, ValueError):
        status = None
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) and message else str(error)


def instance_selector(network_id: str) -> str:
    return f"{LABEL_INSTANCE}={network_id}"
