"""`synapse cluster up-kubernetes` (cluster/k8s/apply.py, cluster/cli_k8s.py) against an in-memory twin of the
Kubernetes API: what is applied and in which order, the bounded wait for health, cluster.json, and the errors
when no client or no kubeconfig is there. (No API server can run here; the real client is never called.)"""

import base64
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cluster.k8s.apply as apply_module
from cluster.cli import main
from cluster.k8s.apply import INSTALL_HINT, apply_all, check_documents, connect, wait_ready
from node.api import read_token
from node.errors import ClusterError, ConfigError


class FakeKubernetes:
    """KubernetesApi in memory: records what is applied; a pod turns Ready after `ready_after` status reads."""

    def __init__(self, ready_after=2, never_ready=()):
        self.applied, self.deleted, self.reads = [], [], {}
        self.ready_after, self.never_ready = ready_after, set(never_ready)

    def where(self):
        return "fake://cluster"

    def apply(self, document):
        self.applied.append((document["kind"], document["metadata"].get("namespace"), document["metadata"]["name"]))

    def pod_status(self, namespace, name):
        if not any(kind == "StatefulSet" and f"{object_name}-0" == name for kind, _, object_name in self.applied):
            return False, "not created yet"
        self.reads[name] = self.reads.get(name, 0) + 1
        ready = name not in self.never_ready and self.reads[name] >= self.ready_after
        return ready, "Running" if ready else "Pending"

    def delete_labelled(self, api_version, kind, namespace, label_selector):
        self.deleted.append((kind, namespace, label_selector))

    def delete_namespace(self, name):
        self.deleted.append(("Namespace", name, None))
        return True


@pytest.fixture
def manifest_dir(tmp_path):
    out = tmp_path / "k8s"
    result = CliRunner().invoke(main, ["cluster", "manifests", "--nodes", "4", "--validators", "3", "--namespace", "lab", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def fake(monkeypatch):
    api = FakeKubernetes()
    monkeypatch.setattr(apply_module, "connect", lambda environ=None: api)
    monkeypatch.setattr(apply_module, "READY_POLL_S", 0.0)
    return api


def test_up_applies_everything_in_order_waits_for_health_and_writes_cluster_json(manifest_dir, fake):
    result = CliRunner().invoke(main, ["cluster", "up-kubernetes", "--data-dir", str(manifest_dir), "--timeout", "30"])
    assert result.exit_code == 0, result.output
    kinds = [kind for kind, _, _ in fake.applied]
    assert kinds == ["Namespace", "ConfigMap"] + ["Secret"] * 4 + ["Service", "Service", "NetworkPolicy"] + ["StatefulSet"] * 4
    assert {namespace for kind, namespace, _ in fake.applied if kind != "Namespace"} == {"lab"}
    assert "node-4-0 ready (4/4)" in result.output
    document = json.loads((manifest_dir / "cluster.json").read_text())
    assert document["provider"] == "kubernetes" and document["namespace"] == "lab"
    first = document["nodes"][0]
    assert first["index"] == 0 and first["api_url"] == "http://node-1-0.validators.lab.svc.cluster.local:8000"
    assert first["port_forward"] == "kubectl -n lab port-forward pod/node-1-0 18001:8000"
    secret = json.loads((manifest_dir / "manifests" / "002-secret-node-1-secret.json").read_text())
    assert read_token(Path(first["token_file"])) == base64.b64decode(secret["data"]["api_token"]).decode().strip()


def test_cluster_up_with_the_kubernetes_provider_is_the_same_apply(manifest_dir, fake, tmp_path):
    result = CliRunner().invoke(main, ["cluster", "up", "--provider", "kubernetes", "--data-dir", str(manifest_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert [kind for kind, _, _ in fake.applied][:2] == ["Namespace", "ConfigMap"]
    assert json.loads(result.stdout)["provider"] == "kubernetes"
    refused = CliRunner().invoke(main, ["cluster", "up", "--provider", "kubernetes", "--data-dir", str(tmp_path / "empty")])
    assert refused.exit_code == 2 and "synapse cluster manifests --provider kubernetes" in refused.output


def test_up_json_prints_one_document(manifest_dir, fake):
    result = CliRunner().invoke(main, ["cluster", "up-kubernetes", "--data-dir", str(manifest_dir), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["nodes"][3]["pod"] == "node-4-0"


def test_a_pod_that_never_gets_ready_fails_up_with_the_commands_that_show_why(manifest_dir, fake):
    fake.ready_after, fake.never_ready = 1, {"node-2-0"}
    result = CliRunner().invoke(main, ["cluster", "up-kubernetes", "--data-dir", str(manifest_dir), "--timeout", "0"])
    assert result.exit_code == 1
    assert "1 pod(s) not ready after 0 s: node-2-0 (Pending)" in result.output
    assert "kubectl -n lab describe pod node-2-0" in result.output
    assert not (manifest_dir / "cluster.json").exists()


def test_the_wait_is_bounded_by_its_clock():
    api = FakeKubernetes(never_ready={"node-1-0"})
    api.applied.append(("StatefulSet", "lab", "node-1"))
    now = [0.0]
    with pytest.raises(ClusterError, match="not ready after 10 s"):
        wait_ready(api, "lab", ["node-1-0"], 10, say=lambda line: None, clock=lambda: now[0],
                   sleep=lambda seconds: now.__setitem__(0, now[0] + 2))
    assert api.reads["node-1-0"] == 6        # every 2 s from 0 to 10 s


def test_a_tampered_directory_is_refused_before_anything_is_sent(manifest_dir):
    from cluster.k8s.manifests import read_objects

    documents = read_objects(manifest_dir / "manifests")
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "own-the-cluster"}}
    api = FakeKubernetes()
    with pytest.raises(ConfigError, match="ClusterRoleBinding"):
        apply_all(api, documents + [binding])
    elsewhere = json.loads(json.dumps(documents))
    elsewhere[5]["metadata"]["namespace"] = "kube-system"
    with pytest.raises(ConfigError, match="is in namespace 'kube-system', not 'lab'"):
        apply_all(api, elsewhere)
    with pytest.raises(ConfigError, match="do not start with their Namespace"):
        check_documents(documents[1:])
    assert api.applied == []


def test_a_network_file_from_another_network_is_refused_before_connecting(manifest_dir, tmp_path, fake):
    network = json.loads((manifest_dir / "network.json").read_text())
    network["nodes"][0]["pod"] = "kube-apiserver-0"
    (manifest_dir / "network.json").write_text(json.dumps(network))
    result = CliRunner().invoke(main, ["cluster", "up-kubernetes", "--data-dir", str(manifest_dir)])
    assert result.exit_code == 2 and "does not describe the manifests beside it" in result.output
    assert fake.applied == []


def test_shuffled_files_are_still_applied_namespace_first(manifest_dir):
    from cluster.k8s.manifests import read_objects

    documents = read_objects(manifest_dir / "manifests")
    reordered = [documents[0]] + list(reversed(documents[1:]))
    assert [document["kind"] for document in check_documents(reordered)][:3] == ["Namespace", "ConfigMap", "Secret"]


def test_without_the_client_up_says_what_to_install(manifest_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "kubernetes", None)      # import kubernetes -> ImportError
    with pytest.raises(ClusterError, match="client is not installed") as raised:
        connect({})
    assert raised.value.hint == INSTALL_HINT
    result = CliRunner().invoke(main, ["cluster", "up-kubernetes", "--data-dir", str(manifest_dir)])
    assert result.exit_code == 1
    assert "install synapse-ng[kubernetes]" in result.output and "KUBECONFIG" in result.output


def test_without_a_kubeconfig_up_says_where_it_looked(tmp_path, monkeypatch):
    import types

    fake_package = types.ModuleType("kubernetes")
    fake_package.config = types.SimpleNamespace(load_kube_config=None, load_incluster_config=None)
    monkeypatch.setitem(sys.modules, "kubernetes", fake_package)
    with pytest.raises(ClusterError, match=r"no kubeconfig found \(\$KUBECONFIG is unset or names no file") as raised:
        connect({"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)})
    assert "point KUBECONFIG at a cluster" in raised.value.hint


def test_chaos_kubernetes_prints_a_list_for_kubectl_and_heal_deletes_by_label(manifest_dir, fake):
    runner = CliRunner()
    printed = runner.invoke(main, ["cluster", "chaos-kubernetes", "delay", "--data-dir", str(manifest_dir),
                                   "--from", "validators", "--to", "validators", "--ms", "200"])
    assert printed.exit_code == 0, printed.output
    listed = json.loads(printed.output)
    assert listed["kind"] == "List" and listed["items"][0]["spec"]["delay"]["latency"] == "200ms"
    applied = runner.invoke(main, ["cluster", "chaos-kubernetes", "partition", "--data-dir", str(manifest_dir),
                                   "--groups", "1,2|rest", "--apply"])
    assert applied.exit_code == 0 and fake.applied == [("NetworkChaos", "lab", "partition")]
    healed = runner.invoke(main, ["cluster", "chaos-kubernetes", "heal", "--data-dir", str(manifest_dir), "--apply"])
    assert healed.exit_code == 0
    assert [kind for kind, _, _ in fake.deleted] == ["NetworkChaos", "PodChaos"]
    assert fake.deleted[0][2].endswith(",synapse-ng.io/fault")
    refused = runner.invoke(main, ["cluster", "chaos-kubernetes", "skew", "--data-dir", str(manifest_dir), "--nodes", "1", "--ms", "5"])
    assert refused.exit_code == 2 and "TimeChaos" in refused.output


def test_down_deletes_the_namespace_only_when_confirmed(manifest_dir, fake):
    refused = CliRunner().invoke(main, ["cluster", "down-kubernetes", "--data-dir", str(manifest_dir)])
    assert refused.exit_code == 2 and "run again with --yes" in refused.output and fake.deleted == []
    done = CliRunner().invoke(main, ["cluster", "down-kubernetes", "--data-dir", str(manifest_dir), "--yes"])
    assert done.exit_code == 0 and fake.deleted == [("Namespace", "lab", None)]
    assert "namespace lab: deleting" in done.output
