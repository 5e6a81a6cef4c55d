"""A node's config file: what a valid one gives, and that every mistake is refused naming its field."""

from pathlib import Path

import pytest

from node.config import (
    NETWORK_LIMITS,
    Limits,
    check_host,
    load_config,
    parse_api_url,
    parse_config,
    render_config,
    split_host_port,
)
from node.errors import ConfigError

VALID = """
[node]
data_dir = "data"
genesis = "../net/genesis.json"

[api]
host = "127.12.7.1"
port = 7000

[raft]
address = "127.12.7.1:7100"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.one_line()


def test_a_minimal_config_gets_defaults_and_paths_relative_to_the_file(tmp_path):
    config = load_config(write(tmp_path, VALID))
    assert config.data_dir == tmp_path / "data"
    assert config.genesis_path == tmp_path.parent / "net" / "genesis.json"
    assert (config.api_host, config.api_port, config.api_url) == ("127.12.7.1", 7000, "http://127.12.7.1:7000")
    assert config.raft_address == "127.12.7.1:7100"
    assert config.limits == Limits()
    assert config.limits_set == frozenset()
    assert config.ipfs_gateways == ()
    assert config.package_ca_file is None
    assert config.package_private_addresses_allowed is False   # a hand-written config: public addresses only
    assert config.log_level == "info"


def test_limits_and_gateways_are_read(tmp_path):
    config = load_config(write(tmp_path, VALID + """
[limits]
gossip_interval_ms = 50
request_body_max_bytes = 100000
[packages]
ipfs_gateways = ["https://ipfs.io/", "http://127.0.0.1:8080"]
ca_file = "certs/mirror-ca.pem"
allow_private_addresses = true
[log]
level = "debug"
"""))
    assert config.limits.gossip_interval_ms == 50
    assert config.limits.request_body_max_bytes == 100_000
    assert config.limits_set == {"gossip_interval_ms", "request_body_max_bytes"}
    assert config.ipfs_gateways == ("https://ipfs.io", "http://127.0.0.1:8080")
    assert config.package_ca_file == tmp_path / "certs" / "mirror-ca.pem"   # relative to the config file
    assert config.package_private_addresses_allowed is True
    assert config.log_level == "debug"


def test_render_config_round_trips(tmp_path):
    text = render_config(data_dir=".", genesis="../genesis.json", api_host="127.1.2.3", api_port=7000,
                         raft_address="127.1.2.3:7100", ipfs_gateways=("https://ipfs.io",), limits={"gossip_fanout": 3})
    config = load_config(write(tmp_path, text))
    assert config.data_dir == tmp_path
    assert config.api_url == "http://127.1.2.3:7000"
    assert config.limits.gossip_fanout == 3
    assert config.ipfs_gateways == ("https://ipfs.io",)
    assert config.package_private_addresses_allowed is True   # a local network serves packages on loopback
    public_only = render_config(data_dir=".", genesis="../genesis.json", api_host="127.1.2.3", api_port=7000,
                                raft_address="127.1.2.3:7100", private_addresses_allowed=False)
    assert load_config(write(tmp_path, public_only)).package_private_addresses_allowed is False


@pytest.mark.parametrize("extra, expected", [
    ("[limits]\ngossip_intervall_ms = 5\n", "unknown key limits.gossip_intervall_ms"),
    ("[nodes]\nx = 1\n", "unknown section [nodes]"),
    ("[limits]\ngossip_interval_ms = 1\n", "limits.gossip_interval_ms is 1; it must be between 10 and 600,000"),
    ("[limits]\ngossip_interval_ms = \"fast\"\n", "limits.gossip_interval_ms must be an integer"),
    ("[limits]\ngossip_interval_ms = 2.5\n", "limits.gossip_interval_ms must be an integer"),
    ("[limits]\nentry_size_max_bytes = 1048576\ngossip_request_body_max_bytes = 65536\n", "smaller than one entry"),
    ("[log]\nlevel = \"loud\"\n", "log.level is 'loud'"),
    ("[packages]\nipfs_gateways = [\"file:///etc\"]\n", "not an http(s) URL"),
    ("[packages]\nipfs_gateways = \"https://ipfs.io\"\n", "packages.ipfs_gateways must be a list"),
    ("[packages]\nallow_private_addresses = \"yes\"\n", "packages.allow_private_addresses must be true or false"),
])
def test_bad_values_are_refused_naming_the_field(tmp_path, extra, expected):
    assert expected in refused(tmp_path, VALID + extra)


@pytest.mark.parametrize("replace, by, expected", [
    ('host = "127.12.7.1"', 'host = "0.0.0.0"', "api.host is the wildcard address 0.0.0.0"),
    ('host = "127.12.7.1"', 'host = "not a host!"', "api.host 'not a host!' is neither an IP address nor a valid host name"),
    ("port = 7000", "port = 70000", "api.port is 70000"),
    ("port = 7000", "port = true", "api.port must be an integer"),
    ('address = "127.12.7.1:7100"', 'address = "127.12.7.1"', "raft.address '127.12.7.1' is not 'host:port'"),
    ('address = "127.12.7.1:7100"', 'address = "[::]:7100"', "raft.address is the wildcard address"),
    ('data_dir = "data"', "data_dir = 5", "node.data_dir must be a non-empty path string"),
    ('genesis = "../net/genesis.json"', "", "missing key node.genesis"),
])
def test_bad_required_fields_are_refused(tmp_path, replace, by, expected):
    assert expected in refused(tmp_path, VALID.replace(replace, by))


def test_a_missing_section_and_a_broken_file_are_refused(tmp_path):
    assert "missing key raft.address" in refused(tmp_path, VALID.split("[raft]")[0])
    assert "is not valid TOML" in refused(tmp_path, VALID + "\n[api\n")
    assert "does not exist" in load_error(tmp_path / "nope.toml")
    (tmp_path / "dir.toml").mkdir()
    assert "is a directory" in load_error(tmp_path / "dir.toml")
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    assert "larger than" in load_error(big)


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.message


def test_the_error_names_the_file(tmp_path):
    path = write(tmp_path, VALID + "[limits]\nbogus = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message
    assert caught.value.hint  # says what the known keys are


def test_parse_config_with_a_table_where_a_section_should_be():
    with pytest.raises(ConfigError, match=r"\[limits\] must be a table"):
        parse_config({"limits": 5}, config_path=Path("/x/config.toml"))


def test_address_helpers():
    assert split_host_port("f", "127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("f", "[::1]:80") == ("::1", 80)
    assert parse_api_url("f", "http://127.1.1.1:7000") == ("127.1.1.1", 7000)
    assert check_host("f", "node-1.example.org") == "node-1.example.org"
    for bad in ("https://127.1.1.1:7000", "http://127.1.1.1", "http://u:p@127.1.1.1:7000", "http://127.1.1.1:7000/x", 7):
        with pytest.raises(ConfigError):
            parse_api_url("f", bad)
    for bad in ("127.0.0.1:", ":80", "127.0.0.1:0", "127.0.0.1:abc", "127.0.0.1:123456"):
        with pytest.raises(ConfigError):
            split_host_port("f", bad)


def test_network_limits_are_real_limit_names():
    assert set(NETWORK_LIMITS) <= set(Limits.__dataclass_fields__)
