"""Outgoing Raft connections must leave from the node's own address, or firewall rules cannot tell
nodes apart (cluster/faults.py). Runs in a subprocess because the binding is process-wide."""

import socket
import subprocess
import sys
import textwrap


def test_pysyncobj_outgoing_connections_leave_from_the_nodes_own_address():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    port = server.getsockname()[1]
    child = textwrap.dedent(f"""
        import pysyncobj.tcp_connection as tcp_connection
        from node.raft import bind_outgoing_connections
        bind_outgoing_connections("127.0.0.77")
        sock = tcp_connection.socket.socket(tcp_connection.socket.AF_INET, tcp_connection.socket.SOCK_STREAM)
        sock.connect(("127.0.0.1", {port}))
        sock.close()
    """)
    try:
        result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        connection, peer = server.accept()
        connection.close()
    finally:
        server.close()
    assert peer[0] == "127.0.0.77"


def test_without_binding_the_kernel_picks_127_0_0_1():
    # The reason the shim exists: an unbound loopback client gets 127.0.0.1 whatever it dials.
    server = socket.socket()
    server.bind(("127.0.0.78", 0))
    server.listen(1)
    client = socket.socket()
    try:
        client.connect(server.getsockname())
        assert client.getsockname()[0] == "127.0.0.1"
    finally:
        client.close()
        server.close()
