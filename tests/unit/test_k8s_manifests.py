"""The kubernetes provider's manifests (issue 12, Done when: "Manifests for N=7, K=3 validate; a test fails on
a broken manifest"): validated offline against the Kubernetes schemas, and checked for what the node itself
will demand at start (its config against its genesis, its key, its Raft secret)."""

import base64
import copy
import hashlib
import json
import stat
import tomllib

import jsonschema
import pytest
from click.testing import CliRunner

from cluster.cli import main
from cluster.k8s.manifests import PodOptions, network_objects, read_objects
from cluster.k8s.network import build_network
from node.config import member_for, parse_config, parse_genesis
from node.errors import ConfigError
from node.identity import Identity
from tests.k8s_schemas import KUBERNETES_VERSIONS, validate_kubernetes


@pytest.fixture(scope="module")
def network():
    return build_network(nodes=7, validators=3, namespace="synapse-test")


@pytest.fixture(scope="module")
def objects(network):
    return network_objects(network, PodOptions(image="registry.example.com/synapse-ng:0.1.0"))


def _by_kind(objects, kind):
    return [document for document in objects if document["kind"] == kind]


def _pod_spec(statefulset):
    return statefulset["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_for_7_nodes_and_3_validators_validates_strictly(objects, version):
    kinds = [document["kind"] for document in objects]
    assert kinds == ["Namespace", "ConfigMap"] + ["Secret"] * 7 + ["Service"] * 2 + ["NetworkPolicy"] + ["StatefulSet"] * 7
    for document in objects:
        validate_kubernetes(document, version)


@pytest.mark.parametrize("break_it, expected", [
    (lambda s: s["spec"].pop("selector"), "'selector' is a required property"),
    (lambda s: s["spec"].__setitem__("replicas", "one"), "'one' is not of type"),
    (lambda s: _pod_spec(s)["containers"][0]["readinessProbe"]["httpGet"].__setitem__("pth", "/health"), "Additional properties"),
    (lambda s: _pod_spec(s)["containers"][0].pop("name"), "'name' is a required property"),
])
def test_a_broken_statefulset_is_refused(objects, break_it, expected):
    broken = copy.deepcopy(_by_kind(objects, "StatefulSet")[0])
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError, match=expected):
        validate_kubernetes(broken)


def test_a_broken_service_is_refused(objects):
    broken = copy.deepcopy(_by_kind(objects, "Service")[0])
    broken["spec"]["publishNotReadyAddresses"] = "yes"
    with pytest.raises(jsonschema.ValidationError, match="'yes' is not of type"):
        validate_kubernetes(broken)


def test_genesis_names_every_node_by_its_stable_dns_name(objects, network):
    genesis = parse_genesis(json.loads(_by_kind(objects, "ConfigMap")[0]["data"]["genesis.json"]))
    assert [member.raft_address for member in genesis.members[:3]] == [
        f"node-{index}-0.validators.synapse-test.svc.cluster.local:9000" for index in (1, 2, 3)]
    assert genesis.members[6].api_url == "http://node-7-0.members.synapse-test.svc.cluster.local:8000"
    assert [member.validator for member in genesis.members] == [True] * 3 + [False] * 4
    assert genesis.network_id == network.network_id


def test_each_node_config_passes_the_node_own_start_checks_with_its_own_secret(objects):
    """What node/runtime.py prepare() checks: the config against genesis for this key, and the Raft secret's digest."""
    config_map, secrets = _by_kind(objects, "ConfigMap")[0], {s["metadata"]["name"]: s for s in _by_kind(objects, "Secret")}
    genesis = parse_genesis(json.loads(config_map["data"]["genesis.json"]))
    for index in range(1, 8):
        config = parse_config(tomllib.loads(config_map["data"][f"node-{index}.toml"]), config_path="/etc/synapse-ng/config.toml")
        data = secrets[f"node-{index}-secret"]["data"]
        identity = Identity.from_private_bytes(base64.b64decode(data["node_key"]))
        member = member_for(config, genesis, identity.node_id)
        assert str(config.data_dir) == "/var/lib/synapse-ng" and str(config.genesis_path) == "/etc/synapse-ng/genesis.json"
        assert member.validator == (index <= 3) == ("raft_secret" in data)
        if member.validator:
            assert hashlib.sha256(base64.b64decode(data["raft_secret"]).strip()).hexdigest() == genesis.raft_secret_sha256
        assert len(base64.b64decode(data["api_token"]).strip()) == 64


def test_each_pod_mounts_only_its_own_secret_and_only_in_the_init_step(objects):
    for index, statefulset in enumerate(_by_kind(objects, "StatefulSet"), start=1):
        spec = _pod_spec(statefulset)
        secrets = [volume["secret"]["secretName"] for volume in spec["volumes"] if "secret" in volume]
        assert secrets == [f"node-{index}-secret"]
        assert [mount["name"] for mount in spec["containers"][0]["volumeMounts"]].count("secret") == 0
        assert any(mount["name"] == "secret" for mount in spec["initContainers"][0]["volumeMounts"])
        items = next(volume for volume in spec["volumes"] if volume["name"] == "config")["configMap"]["items"]
        assert {"key": f"node-{index}.toml", "path": "config.toml"} in items


def test_statefulsets_services_and_probes_are_as_raft_needs_them(objects):
    services = {service["metadata"]["name"]: service["spec"] for service in _by_kind(objects, "Service")}
    assert set(services) == {"validators", "members"}
    assert all(spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True for spec in services.values())
    assert [port["port"] for port in services["validators"]["ports"]] == [8000, 9000]
    for index, statefulset in enumerate(_by_kind(objects, "StatefulSet"), start=1):
        spec = statefulset["spec"]
        assert statefulset["metadata"]["name"] == f"node-{index}"
        assert spec["serviceName"] == ("validators" if index <= 3 else "members")
        assert spec["podManagementPolicy"] == "Parallel" and spec["replicas"] == 1
        assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
        container = spec["template"]["spec"]["containers"][0]
        assert container["command"] == ["synapse", "node", "run", "--config", "/etc/synapse-ng/config.toml"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "api"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "api"}
        assert set(container["resources"]) == {"requests", "limits"}


def test_pods_run_unprivileged(objects):
    for statefulset in _by_kind(objects, "StatefulSet"):
        spec = _pod_spec(statefulset)
        assert spec["automountServiceAccountToken"] is False and spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"] + spec["initContainers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsUser"] != 0


@pytest.mark.parametrize("options, message", [
    ({"image": "evil image\nwith: newline"}, "is not an image reference"),
    ({"storage": "1 PB"}, "is not a size"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        PodOptions(**options)


@pytest.mark.parametrize("namespace", ["Synapse", "a_b", "x" * 64, "-a", ""])
def test_a_namespace_kubernetes_would_refuse_is_refused_first(namespace):
    with pytest.raises(ConfigError, match="not a valid Kubernetes namespace"):
        build_network(nodes=3, validators=1, namespace=namespace)


def test_the_cli_writes_a_directory_that_validates_and_keeps_secrets_private(tmp_path):
    out = tmp_path / "k8s"
    result = CliRunner().invoke(main, ["cluster", "manifests", "--provider", "kubernetes", "--nodes", "7", "--validators", "3",
                                       "--namespace", "chaos-lab", "--image", "synapse-ng:test", "-o", str(out)])
    assert result.exit_code == 0, result.output
    documents = read_objects(out / "manifests")
    assert len(documents) == 19
    for document in documents:
        validate_kubernetes(document)
    for path in (out / "manifests").glob("*-secret-*.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (out / "tokens").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    network = json.loads((out / "network.json").read_text())
    assert network["namespace"] == "chaos-lab" and [node["pod"] for node in network["nodes"]] == [f"node-{i}-0" for i in range(1, 8)]
    again = CliRunner().invoke(main, ["cluster", "manifests", "-o", str(out)])
    assert again.exit_code == 2 and "is not empty" in again.output
