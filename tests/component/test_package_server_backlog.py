"""Both package servers (the test/bench one and a cluster's own) take a whole cluster's fetches at once.

Every node fetches the package the moment an upgrade is ratified. With socketserver's default listen
backlog (5) the kernel drops the SYNs past it and each of those nodes waits for a 1 s (then 3 s) SYN
retransmission: at N=100 the mean fetch took 4.5 s and 5 fetches timed out. Here the servers accept
nothing (serve_forever is not running), so every connection has to wait in the kernel's accept queue:
a connect that does not complete within 0.5 s was dropped.
"""

from __future__ import annotations

import socket

import pytest

from cluster import package_host, package_server

CONNECTIONS = 200          # more than a 200-node cluster's fetches at once
CONNECT_TIMEOUT_S = 0.5    # a completed handshake on loopback takes microseconds; a dropped SYN >= 1 s


@pytest.mark.parametrize("server_class, handler", [(package_server._Server, package_server._Handler),
                                                   (package_host._Server, package_host._Handler)],
                         ids=["PackageServer", "cluster package host"])
def test_a_package_server_queues_a_whole_clusters_connections(server_class, handler) -> None:
    server = server_class(("127.0.0.1", 0), handler)
    clients: list[socket.socket] = []
    try:
        address = server.server_address[:2]
        for number in range(CONNECTIONS):
            try:
                clients.append(socket.create_connection(address, timeout=CONNECT_TIMEOUT_S))
            except (TimeoutError, OSError) as error:
                pytest.fail(f"connection {number + 1} of {CONNECTIONS} was not queued ({error}): the listen backlog is too short")
    finally:
        for client in clients:
            client.close()
        server.server_close()
