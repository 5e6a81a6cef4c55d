"""What each provider says this machine can do (it runs iptables and probes namespaces, hence a component
test): every fault kind answered, link faults never offered by loopback, and the netns provider's
answer agreeing with `synapse doctor`'s check."""

from __future__ import annotations

from cluster.doctor import check_namespaces
from cluster.providers import PROVIDERS, make_provider
from cluster.providers.base import FAULT_KINDS


def test_every_provider_answers_for_every_fault_kind():
    for name in PROVIDERS:
        capabilities = make_provider(name, nodes=3, validators=1).capabilities()
        assert set(capabilities) == set(FAULT_KINDS), name
        assert all(capability.detail for capability in capabilities.values()), name


def test_loopback_never_offers_link_faults_and_says_where_they_are():
    capabilities = make_provider("loopback").capabilities()
    for kind in ("delay", "loss", "bandwidth"):
        assert not capabilities[kind].available and "netns" in capabilities[kind].hint
    assert capabilities["kill"].available


def test_the_netns_answer_agrees_with_the_doctor():
    delay = make_provider("netns").capabilities()["delay"]
    assert delay.available == (check_namespaces().status == "ok")
