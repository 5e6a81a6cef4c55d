"""OfficialClient (cluster/k8s/apply.py) with the real `kubernetes` package against a fake API server on loopback
that answers discovery, server-side apply, pod reads and deletes the way the API does, and records the
requests. No real API server can run here: this checks the adapter's requests (paths, verbs, fieldManager,
force, content type, label selectors) and its reading of answers, not a cluster's behaviour."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from cluster.k8s import apply as apply_module
from cluster.k8s.apply import apply_all, connect, wait_ready
from cluster.k8s.chaos import CHAOS_API_VERSION, Fault, Topology, chaos_objects
from cluster.k8s.manifests import network_objects
from cluster.k8s.network import build_network
from node.errors import ClusterError

RESOURCES = {
    "api/v1": [("namespaces", "Namespace", False), ("configmaps", "ConfigMap", True), ("secrets", "Secret", True),
               ("services", "Service", True), ("pods", "Pod", True)],
    "apis/apps/v1": [("statefulsets", "StatefulSet", True)],
    "apis/networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "apis/chaos-mesh.org/v1alpha1": [("networkchaos", "NetworkChaos", True), ("podchaos", "PodChaos", True)],
}


class FakeApiServer(BaseHTTPRequestHandler):
    requests: list = []
    ready_pods: set = set()
    refuse: str | None = None

    def log_message(self, *arguments):
        pass

    def _answer(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = urlsplit(self.path).path.strip("/")
        if path == "version":
            return self._answer(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
        if path == "apis":
            groups = [{"name": key.split("/")[1], "versions": [{"groupVersion": key[5:], "version": key.split("/")[2]}],
                       "preferredVersion": {"groupVersion": key[5:], "version": key.split("/")[2]}}
                      for key in RESOURCES if key.startswith("apis/")]
            return self._answer(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path in RESOURCES:
            listed = [{"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
                       "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}
                      for name, kind, namespaced in RESOURCES[path]]
            return self._answer(200, {"kind": "APIResourceList", "groupVersion": path.split("/", 1)[1] if "/" in path[4:] else "v1",
                                      "resources": listed})
        if "/pods/" in path:
            name = path.rsplit("/", 1)[1]
            type(self).requests.append(("GET", path, {}))
            if name not in type(self).ready_pods:
                return self._answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                          "message": f'pods "{name}" not found', "code": 404})
            return self._answer(200, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "lab"},
                                      "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        return self._answer(404, {"kind": "Status", "code": 404, "message": f"no {path}"})

    def do_PATCH(self):
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        parts = urlsplit(self.path)
        type(self).requests.append(("PATCH", parts.path, {**parse_qs(parts.query), "content-type": self.headers["Content-Type"],
                                                          "kind": body["kind"]}))
        if type(self).refuse == body["kind"]:
            return self._answer(403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                                      "message": f'{body["kind"].lower()}s is forbidden: User "dev" cannot patch'})
        return self._answer(200, body)

    def do_DELETE(self):
        parts = urlsplit(self.path)
        type(self).requests.append(("DELETE", parts.path, parse_qs(parts.query)))
        return self._answer(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


@pytest.fixture
def api_server(tmp_path, monkeypatch):
    FakeApiServer.requests, FakeApiServer.ready_pods, FakeApiServer.refuse = [], set(), None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    host, port = server.server_address
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://{host}:{port}"}}],
        "users": [{"name": "dev", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "dev"}}]}))
    monkeypatch.setattr(apply_module, "DISCOVERY_CACHE_DIR", tmp_path)     # not the client's default in /tmp
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_official_client_applies_in_order_by_server_side_apply(api_server):
    api = connect({"KUBECONFIG": str(api_server), "HOME": str(api_server.parent)})
    assert api.where() == str(api_server)
    network = build_network(nodes=4, validators=3, namespace="lab")
    apply_all(api, network_objects(network), say=lambda line: None)
    patches = [(path, query) for method, path, query in FakeApiServer.requests if method == "PATCH"]
    assert [path for path, _ in patches[:3]] == ["/api/v1/namespaces/lab", "/api/v1/namespaces/lab/configmaps/synapse-network",
                                                 "/api/v1/namespaces/lab/secrets/node-1-secret"]
    assert patches[-1][0] == "/apis/apps/v1/namespaces/lab/statefulsets/node-4"
    assert "/apis/networking.k8s.io/v1/namespaces/lab/networkpolicies/raft-from-validators-only" in [path for path, _ in patches]
    for _, query in patches:
        assert query["fieldManager"] == ["synapse-ng"] and query["force"] == ["true"]
        assert query["content-type"] == "application/apply-patch+yaml"


def test_readiness_comes_from_the_pod_conditions_and_404_means_not_created(api_server):
    api = connect({"KUBECONFIG": str(api_server)})
    assert api.pod_status("lab", "node-1-0") == (False, "not created yet")
    FakeApiServer.ready_pods = {"node-1-0", "node-2-0"}
    assert api.pod_status("lab", "node-1-0") == (True, "Running")
    wait_ready(api, "lab", ["node-1-0", "node-2-0"], 5, say=lambda line: None)


def test_chaos_objects_are_applied_and_healed_by_label(api_server):
    api = connect({"KUBECONFIG": str(api_server)})
    topology = Topology(nodes=4, validators=3, namespace="lab", network_id="synapse-1")
    for document in chaos_objects(Fault(kind="kill", sources=(4,)), topology, name="kill-4"):
        api.apply(document)
    api.delete_labelled(CHAOS_API_VERSION, "PodChaos", "lab", "app.kubernetes.io/instance=synapse-1,synapse-ng.io/fault")
    assert ("PATCH", "/apis/chaos-mesh.org/v1alpha1/namespaces/lab/podchaos/kill-4") == FakeApiServer.requests[0][:2]
    method, path, query = FakeApiServer.requests[1]
    assert (method, path) == ("DELETE", "/apis/chaos-mesh.org/v1alpha1/namespaces/lab/podchaos")
    assert query["labelSelector"] == ["app.kubernetes.io/instance=synapse-1,synapse-ng.io/fault"]
    assert api.delete_namespace("lab") is True
    assert FakeApiServer.requests[2][:2] == ("DELETE", "/api/v1/namespaces/lab")


def test_a_refusal_by_the_api_server_names_the_object_and_the_reason(api_server):
    api = connect({"KUBECONFIG": str(api_server)})
    FakeApiServer.refuse = "StatefulSet"
    network = build_network(nodes=1, validators=1, namespace="lab")
    with pytest.raises(ClusterError, match='refused StatefulSet node-1: statefulsets is forbidden: User "dev" cannot patch'):
        apply_all(api, network_objects(network), say=lambda line: None)


def test_a_broken_kubeconfig_is_reported_with_what_to_do(tmp_path):
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\ncurrent-context: missing\n")
    with pytest.raises(ClusterError, match=f"cannot use the kubeconfig {broken}") as raised:
        connect({"KUBECONFIG": str(broken)})
    assert "point KUBECONFIG at a cluster" in raised.value.hint
