"""The real node application (runtime.Node) behind aiohttp's test client, for component tests."""

from contextlib import asynccontextmanager

import pytest

from cluster.addresses import acquire_block
from cluster.genesis import create_network
from node.runtime import Node, prepare

API_PORT = 7000
RAFT_PORT = 7100


@asynccontextmanager
async def node_test_client(config_path, aiohttp_client):
    """A test client on the node configured at `config_path`, with `.node` and `.token` (its API token)."""
    prepared = prepare(config_path, configure_logs=False)
    try:
        node = Node(prepared)
        client = await aiohttp_client(node.build_app())
        client.node = node
        client.token = prepared.api_token
        yield client
    finally:
        prepared.close()


# One member node of a two-member network whose other member never runs, so node 0 alone can never
# approve anything: what the API fuzz and schema tests need (import both fixtures by these names).
@pytest.fixture(name="network")
def lone_member_network(tmp_path):
    with acquire_block(hosts=2, ports=[API_PORT, RAFT_PORT]) as lease:
        yield create_network(tmp_path / "net", nodes=2, validators=1, block=lease.block, api_port=API_PORT,
                             raft_port=RAFT_PORT, reputations=[100, 300],   # node 0 alone can never approve
                             config_limits={"gossip_first_write_wait_ms": 0})  # node 1 never runs


@pytest.fixture(name="client")
async def lone_member_client(network, aiohttp_client):
    async with node_test_client(network.nodes[0].config_path, aiohttp_client) as test_client:
        yield test_client
