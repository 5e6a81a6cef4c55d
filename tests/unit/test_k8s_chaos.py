"""The fault mapping of the kubernetes provider (cluster/k8s/chaos.py): issue 12's faults -> Chaos Mesh objects,
each validated against the CRD schema vendored from the chaos-mesh repository; broken objects are refused."""

import copy
import random

import jsonschema
import pytest

from cluster.k8s.chaos import Fault, Topology, chaos_objects, example_faults, fault_from_params
from node.errors import ConfigError
from tests.k8s_schemas import validate_chaos

TOPOLOGY = Topology(nodes=7, validators=3, namespace="synapse-test", network_id="synapse-0badcafe")
VALIDATORS = {"app.kubernetes.io/name": "synapse-ng", "app.kubernetes.io/instance": "synapse-0badcafe",
              "app.kubernetes.io/component": "validator"}
MEMBERS = {**VALIDATORS, "app.kubernetes.io/component": "member"}


def _one(kind, params, **options):
    documents = chaos_objects(fault_from_params(kind, params, TOPOLOGY, **options), TOPOLOGY, name=kind)
    for document in documents:
        validate_chaos(document)
    assert len(documents) == 1
    return documents[0]


def test_a_partition_between_validators_and_members_cuts_both_directions():
    chaos = _one("partition", {"groups": ["validators", "members"]})
    assert chaos["kind"] == "NetworkChaos" and chaos["metadata"]["namespace"] == "synapse-test"
    spec = chaos["spec"]
    assert (spec["action"], spec["mode"], spec["direction"]) == ("partition", "all", "both")
    assert spec["selector"] == {"namespaces": ["synapse-test"], "labelSelectors": VALIDATORS}
    assert spec["target"] == {"mode": "all", "selector": {"namespaces": ["synapse-test"], "labelSelectors": MEMBERS}}
    assert "duration" not in spec        # until healed


def test_rest_in_a_partition_means_everyone_else_and_three_groups_make_three_cuts():
    assert _one("partition", {"groups": ["validators", "rest"]})["spec"]["target"]["selector"]["labelSelectors"] == MEMBERS
    fault = fault_from_params("partition", {"groups": [[1, 2], "node-3", "rest"]}, TOPOLOGY)
    assert fault.groups == ((1, 2), (3,), (4, 5, 6, 7))
    documents = chaos_objects(fault, TOPOLOGY, name="split")
    assert [document["metadata"]["name"] for document in documents] == ["split-1", "split-2", "split-3"]
    for document in documents:
        validate_chaos(document)
    first = documents[0]["spec"]
    assert first["selector"]["expressionSelectors"] == [{"key": "synapse-ng.io/node", "operator": "In", "values": ["node-1", "node-2"]}]
    assert first["target"]["selector"]["expressionSelectors"][0]["values"] == ["node-3"]


def test_delay_between_validators_adds_latency_and_jitter_on_packets_they_send_each_other():
    spec = _one("delay", {"from": "validators", "to": "validators", "ms": 200, "jitter_ms": 20}, duration_s=90)["spec"]
    assert (spec["action"], spec["direction"], spec["duration"]) == ("delay", "to", "90s")
    assert spec["delay"] == {"latency": "200ms", "jitter": "20ms", "correlation": "0"}
    assert spec["selector"]["labelSelectors"] == VALIDATORS == spec["target"]["selector"]["labelSelectors"]


def test_loss_on_one_member_and_bandwidth_on_the_members():
    loss = _one("loss", {"from": "node-5", "to": "all", "percent": 20})["spec"]
    assert loss["loss"] == {"loss": "20", "correlation": "0"}
    assert loss["selector"]["expressionSelectors"][0]["values"] == ["node-5"]
    assert "expressionSelectors" not in loss["target"]["selector"]        # all nodes of this network
    bandwidth = _one("bandwidth", {"nodes": "members", "kbit": 512})["spec"]
    assert bandwidth["bandwidth"] == {"rate": "512kbit", "limit": 20971520, "buffer": 10000} and "target" not in bandwidth


def test_kill_and_pause_are_pod_chaos():
    kill = _one("kill", {"nodes": [4, "node-6"]})
    assert kill["kind"] == "PodChaos" and kill["spec"]["action"] == "pod-kill" and kill["spec"]["gracePeriod"] == 0
    assert kill["spec"]["selector"]["expressionSelectors"][0]["values"] == ["node-4", "node-6"]
    pause = _one("pause", {"nodes": "validators"}, duration_s=30)
    assert pause["spec"]["action"] == "pod-failure" and pause["spec"]["duration"] == "30s"
    assert pause["metadata"]["labels"]["synapse-ng.io/fault"] == "pause"      # heal deletes by this label


def test_random_picks_replay_from_the_seed():
    picks = [fault_from_params("kill", {"nodes": "random:2@non_validators"}, TOPOLOGY, rng=random.Random(7)).sources for _ in range(2)]
    assert picks[0] == picks[1] and len(picks[0]) == 2 and set(picks[0]) <= {4, 5, 6, 7}


@pytest.mark.parametrize("kind, params, message", [
    ("skew", {"nodes": "node-1", "ms": 20000}, "TimeChaos"),
    ("delay", {"from": "validators", "ms": 200}, "needs 'to'"),
    ("delay", {"from": "validators", "to": "members", "ms": 0}, "ms is 0"),
    ("delay", {"from": "validators", "to": "members", "ms": 200, "percent": 5}, "unknown key 'percent'"),
    ("loss", {"from": "node-1", "to": "all", "percent": 101}, "percent is 101"),
    ("loss", {"from": "node-9", "to": "all", "percent": 10}, "does not exist"),
    ("kill", {"nodes": "leader"}, "depend on the running network"),
    ("pause", {"nodes": "live"}, "depend on the running network"),
    ("partition", {"groups": ["validators", [1, 4]]}, "in two partition groups"),
    ("partition", {"groups": ["validators"]}, "at least two"),
    ("bandwidth", {"nodes": "all", "kbit": 100, "direction": "from"}, "unknown key 'direction'"),
    ("fire", {}, "unknown fault"),
])
def test_impossible_faults_are_refused_with_the_reason(kind, params, message):
    with pytest.raises(ConfigError, match=message):
        fault_from_params(kind, params, TOPOLOGY)


def test_a_bad_object_name_is_refused():
    with pytest.raises(ConfigError, match="not a short DNS label"):
        chaos_objects(Fault(kind="kill", sources=(1,)), TOPOLOGY, name="Kill All")


@pytest.mark.parametrize("break_it, message", [
    (lambda spec: spec.pop("selector"), "'selector' is a required property"),
    (lambda spec: spec.__setitem__("direction", "sideways"), "'sideways' is not one of"),
    (lambda spec: spec["delay"].__setitem__("latency", "200 ms"), "does not match"),
    (lambda spec: spec.__setitem__("directon", "to"), "Additional properties"),
    (lambda spec: spec["delay"].__setitem__("jitter", 20), "20 is not of type 'string'"),
])
def test_a_broken_network_chaos_is_refused_by_the_crd_schema(break_it, message):
    chaos = _one("delay", {"from": "validators", "to": "validators", "ms": 200})
    broken = copy.deepcopy(chaos)
    break_it(broken["spec"])
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_chaos(broken)


def test_a_broken_pod_chaos_is_refused_by_the_crd_schema():
    chaos = _one("kill", {"nodes": "node-2"})
    for break_it, message in [(lambda c: c["spec"].__setitem__("action", "pod-pause"), "is not one of"),
                              (lambda c: c["spec"].__setitem__("gracePeriod", -1), "less than the minimum"),
                              (lambda c: c.__setitem__("apiVersion", "chaos-mesh.org/v1"), "is not chaos-mesh.org/v1alpha1")]:
        broken = copy.deepcopy(chaos)
        break_it(broken)
        with pytest.raises(jsonschema.ValidationError, match=message):
            validate_chaos(broken)


def test_the_examples_written_next_to_the_manifests_validate():
    faults = example_faults(TOPOLOGY)
    assert {fault.kind for fault in faults.values()} == {"partition", "delay", "loss", "bandwidth", "kill", "pause"}
    for name, fault in faults.items():
        for document in chaos_objects(fault, TOPOLOGY, name=name):
            validate_chaos(document)
    only_validators = Topology(nodes=3, validators=3, namespace="n", network_id="synapse-1")
    assert "partition-validators-members" not in example_faults(only_validators)
