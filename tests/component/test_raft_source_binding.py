"""Outgoing Raft connections must leave from the node's own address, or firewall rules cannot tell
nodes apart (cluster/faults.py). Our transport binds each outgoing socket to the node's host
(ValidatorRaftConfig.bind_outgoing -> TransportIdentity.source_host): per connection, not process-wide."""

import socket
import types

from node.raft_transport import RaftTransportLimits, SecureConnection, TransportIdentity


class _FakePoller:
    def __init__(self) -> None:
        self.subscribed: dict[int, object] = {}

    def subscribe(self, descriptor, callback, mask) -> None:
        self.subscribed[descriptor] = callback

    def unsubscribe(self, descriptor) -> None:
        self.subscribed.pop(descriptor, None)


def _transport(source_host: str | None) -> types.SimpleNamespace:
    identity = TransportIdentity(network_id="n", node_id="a", address="127.0.0.1:1", sign=lambda m: b"",
                                 verify=lambda *a: False, validator_keys={}, validator_addresses={}, password="x" * 16,
                                 source_host=source_host)

    def configure_socket(sock: socket.socket) -> None:
        sock.setblocking(False)

    return types.SimpleNamespace(poller=_FakePoller(), limits=RaftTransportLimits(), identity=identity,
                                 connection_timeout_s=1.5, configure_socket=configure_socket,
                                 handshake_started=lambda conn: None, handshake_ended=lambda conn: None)


def _peer_of_outgoing_connection(source_host: str | None, server_host: str) -> str:
    server = socket.socket()
    server.bind((server_host, 0))
    server.listen(1)
    server.settimeout(10)
    connection = SecureConnection(_transport(source_host), peer_label="test")
    try:
        assert connection.connect(*server.getsockname())
        accepted, peer = server.accept()
        accepted.close()
    finally:
        connection.disconnect()
        server.close()
    return peer[0]


def test_outgoing_raft_connections_leave_from_the_nodes_own_address():
    assert _peer_of_outgoing_connection("127.0.0.77", "127.0.0.1") == "127.0.0.77"


def test_without_binding_the_kernel_picks_127_0_0_1():
    # The reason the binding exists: an unbound loopback client gets 127.0.0.1 whatever it dials.
    assert _peer_of_outgoing_connection(None, "127.0.0.78") == "127.0.0.1"
