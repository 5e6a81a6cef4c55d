"""The real node application (runtime.Node) behind aiohttp's test client, for component tests."""

from contextlib import asynccontextmanager

from node.runtime import Node, prepare


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
