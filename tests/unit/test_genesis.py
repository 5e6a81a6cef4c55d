"""Genesis: `synapse genesis create` writes a network a node accepts; a bad genesis is refused clearly."""

import copy
import hashlib
import json
import stat

import pytest
from click.testing import CliRunner

from cluster.addresses import AddressBlock, parse_block
from cluster.cli import main
from cluster.genesis import create_network
from node.config import (
    initial_network_state,
    load_config,
    load_genesis,
    member_for,
    parse_genesis,
    resolve_limits,
)
from node.errors import ConfigError
from node.identity import Identity

BLOCK = AddressBlock("127.44.3")


@pytest.fixture
def network(tmp_path):
    return create_network(tmp_path / "net", nodes=4, validators=2, block=BLOCK, api_port=7000, raft_port=7100)


@pytest.fixture
def document(network):
    return json.loads(network.genesis_path.read_text())


def mode_of(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_create_writes_genesis_and_one_directory_per_node(network, document):
    assert document["version"] == "1.0.0"
    assert [member["validator"] for member in document["members"]] == [True, True, False, False]
    assert [member["api_url"] for member in document["members"]] == [f"http://127.44.3.{i}:7000" for i in range(1, 5)]
    assert [member["raft_address"] for member in document["members"]] == [f"127.44.3.{i}:7100" for i in range(1, 5)]
    assert document["governance"] == {"approval_threshold_pct": 50, "quorum_pct": 50, "voting_period_ms": 60_000}
    secrets_seen = set()
    for created, member in zip(network.nodes, document["members"]):
        key_path = created.node_dir / "node_key"
        assert mode_of(key_path) == 0o600
        assert Identity.load_or_create(key_path).node_id == member["node_id"] == created.node_id
        assert not (created.node_dir / "api_token").exists()  # made by the node at its first start
        secret_path = created.node_dir / "raft_secret"
        assert secret_path.exists() == member["validator"]
        if member["validator"]:
            assert mode_of(secret_path) == 0o600
            secret = secret_path.read_bytes()
            assert hashlib.sha256(secret).hexdigest() == document["raft_secret_sha256"]
            secrets_seen.add(secret)
        config = load_config(created.config_path)
        assert config.data_dir == created.node_dir
        assert member_for(config, load_genesis(config.genesis_path), created.node_id).api_url == member["api_url"]
    assert len(secrets_seen) == 1  # one shared Raft password
    assert secrets_seen.pop() not in network.genesis_path.read_bytes()  # genesis holds only its hash


def test_initial_network_state(network):
    state = initial_network_state(load_genesis(network.genesis_path))
    assert state["global"]["version"] == "1.0.0"
    assert state["global"]["network_id"] == network.genesis.network_id
    assert state["global"]["nodes"] == {created.node_id: {"reputation": 100, "validator": created.validator} for created in network.nodes}


def test_create_never_overwrites_a_network(network):
    with pytest.raises(ConfigError, match="already exists"):
        create_network(network.genesis_path.parent, nodes=2, validators=1, block=BLOCK)


@pytest.mark.parametrize("nodes, validators, expected", [
    (3, 4, "--validators must be from 1 to the number of nodes (3)"),
    (3, 0, "--validators must be from 1"),
    (0, 0, "--nodes must be from 1 to 256"),
    (257, 1, "--nodes must be from 1 to 256"),
])
def test_create_refuses_bad_counts(tmp_path, nodes, validators, expected):
    with pytest.raises(ConfigError) as caught:
        create_network(tmp_path / "net", nodes=nodes, validators=validators, block=BLOCK)
    assert expected in caught.value.message
    assert not (tmp_path / "net").exists()


def test_create_refuses_a_bad_governance_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="governance.approval_threshold_pct is 100"):
        create_network(tmp_path / "net", nodes=2, validators=1, block=BLOCK, governance={"approval_threshold_pct": 100})
    assert not (tmp_path / "net" / "genesis.json").exists()


def mutated(document, change):
    copied = copy.deepcopy(document)
    change(copied)
    return copied


def other_member(document):
    identity = Identity.generate()
    return {**document["members"][0], "node_id": identity.node_id, "public_key": identity.public_key.hex(),
            "api_url": "http://127.44.3.99:7000", "raft_address": "127.44.3.99:7100"}


CASES = [
    (lambda d: d["members"].append(copy.deepcopy(d["members"][0])), "two members share the node_id"),
    (lambda d: d["members"].append({**other_member(d), "api_url": d["members"][1]["api_url"]}), "two members share the api_url"),
    (lambda d: d["members"][0].update(node_id="0" * 16), "does not match its public key"),
    (lambda d: d["members"][0].update(public_key="zz"), "members[0].public_key must be 64 lowercase hex"),
    (lambda d: d["members"][1].update(reputation=-1), "members[1].reputation is -1"),
    (lambda d: d["members"][1].update(reputation=True), "members[1].reputation must be an integer"),
    (lambda d: d["members"][1].update(validator="yes"), "members[1].validator must be true or false"),
    (lambda d: d["members"][1].update(api_url="http://0.0.0.0:7000"), "wildcard"),
    (lambda d: d["members"][1].update(extra=1), "unknown keys ['extra']"),
    (lambda d: [m.update(validator=False) for m in d["members"]], "no member is a validator"),
    (lambda d: [m.update(reputation=0) for m in d["members"]], "total reputation of the members is 0"),
    (lambda d: d.update(members=[]), "members must be a list of 1 to 1024"),
    (lambda d: d["governance"].update(quorum_pct=0), "governance.quorum_pct is 0"),
    (lambda d: d["governance"].update(approval_threshold_pct=101), "governance.approval_threshold_pct is 101"),
    (lambda d: d["governance"].update(voting_period_ms=10), "governance.voting_period_ms is 10"),
    (lambda d: d["governance"].update(typo=1), "unknown key governance.typo"),
    (lambda d: d["limits"].update(sandbox_fuel=0), "limits.sandbox_fuel is 0"),
    (lambda d: d["limits"].update(gossip_interval_ms=10), "unknown key limits.gossip_interval_ms"),
    (lambda d: d.update(version="one"), "version 'one' is not semver"),
    (lambda d: d.update(network_id="a b"), "network_id must be"),
    (lambda d: d.update(raft_secret_sha256="abc"), "raft_secret_sha256 must be"),
    (lambda d: d.update(extra=1), "unknown key extra"),
    (lambda d: d.pop("members"), "missing key members"),
]


@pytest.mark.parametrize("change, expected", CASES)
def test_a_bad_genesis_is_refused_with_a_clear_message(document, change, expected):
    with pytest.raises(ConfigError) as caught:
        parse_genesis(mutated(document, change))
    assert expected in caught.value.message


def test_load_genesis_names_the_file(tmp_path):
    path = tmp_path / "genesis.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_genesis(path)
    path.write_text(json.dumps({"network_id": "x"}))
    with pytest.raises(ConfigError) as caught:
        load_genesis(path)
    assert str(path) in caught.value.message


def test_network_limits_come_from_genesis_and_a_config_may_not_contradict_them(tmp_path):
    network = create_network(tmp_path / "net", nodes=1, validators=1, block=BLOCK,
                             network_limits={"sandbox_fuel": 1000}, config_limits={"gossip_interval_ms": 50})
    genesis = load_genesis(network.genesis_path)
    config_path = network.nodes[0].config_path
    limits = resolve_limits(load_config(config_path), genesis)
    assert (limits.sandbox_fuel, limits.gossip_interval_ms) == (1000, 50)
    config_path.write_text(config_path.read_text().replace("[limits]", "[limits]\nsandbox_fuel = 2000"))
    with pytest.raises(ConfigError, match="limits.sandbox_fuel is 2,000 in .* but 1,000 in genesis"):
        resolve_limits(load_config(config_path), genesis)
    config_path.write_text(config_path.read_text().replace("sandbox_fuel = 2000", "sandbox_fuel = 1000"))
    assert resolve_limits(load_config(config_path), genesis).sandbox_fuel == 1000  # repeating the value is fine


def test_member_for_refuses_a_stranger_and_a_wrong_address(network):
    genesis = load_genesis(network.genesis_path)
    config_path = network.nodes[1].config_path
    with pytest.raises(ConfigError, match="does not list this node's key"):
        member_for(load_config(config_path), genesis, Identity.generate().node_id)
    config_path.write_text(config_path.read_text().replace("port = 7000", "port = 7001"))
    with pytest.raises(ConfigError, match="differ from this node's api_url in genesis"):
        member_for(load_config(config_path), genesis, network.nodes[1].node_id)


def test_parse_block():
    assert parse_block("127.12.7").host(3) == "127.12.7.3"
    for bad in ("10.0.0", "127.1", "127.1.256", "127.01.1", "127.a.1"):
        with pytest.raises(ConfigError, match="is not of the form 127.A.B"):
            parse_block(bad)


def test_cli_genesis_create(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["genesis", "create", "--nodes", "3", "--validators", "2", "--out", str(tmp_path / "net"),
                                  "--address-block", "127.44.9", "--api-port", "7000", "--raft-port", "7100"])
    assert result.exit_code == 0, result.output
    assert "http://127.44.9.3:7000  member" in result.output
    assert len(load_genesis(tmp_path / "net" / "genesis.json").validators) == 2
    result = runner.invoke(main, ["genesis", "create", "--nodes", "2", "--validators", "3", "--out", str(tmp_path / "other")])
    assert result.exit_code != 0
    assert "--validators must be from 1 to the number of nodes (2)" in result.output
