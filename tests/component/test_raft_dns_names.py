"""Raft peers named by DNS (the kubernetes provider: node-<i>-0.validators.<ns>.svc...): a name that does not
resolve yet must not break the Raft tick, and a peer's new address (a restarted pod) must be picked up in
seconds, not after PySyncObj's default 600 s cache."""

import os
import socket
import types
from pathlib import Path

from node.identity import Identity, verify_signature
from node.raft import RaftTiming, ValidatorRaft, ValidatorRaftConfig
from node.raft_transport import RaftTransportLimits, SecureConnection, TransportIdentity


def _transport() -> types.SimpleNamespace:
    identity = TransportIdentity(network_id="n", node_id="a", address="127.0.0.1:1", sign=lambda m: b"",
                                 verify=lambda *a: False, validator_keys={}, validator_addresses={}, password="x" * 16)
    poller = types.SimpleNamespace(subscribe=lambda *a: None, unsubscribe=lambda *a: None)
    return types.SimpleNamespace(poller=poller, limits=RaftTransportLimits(), identity=identity, connection_timeout_s=1.5,
                                 configure_socket=lambda sock: sock.setblocking(False),
                                 handshake_started=lambda conn: None, handshake_ended=lambda conn: None)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_peer_whose_name_does_not_resolve_is_a_failed_attempt_not_an_exception():
    # PySyncObj's resolver answers None for a name that does not resolve; socket.connect((None, port))
    # raised TypeError out of the Raft tick (skipping elections and heartbeats) and leaked the socket.
    connection = SecureConnection(_transport(), peer_label="test")
    before = _open_descriptors()
    for _ in range(20):
        assert connection.connect(None, 9000) is False
    assert _open_descriptors() == before


def test_pysyncobj_re_resolves_peer_names_within_seconds(tmp_path: Path):
    identities = [Identity.generate() for _ in range(3)]
    addresses = [f"node-{index}-0.validators.lab.svc.cluster.local:9000" for index in (1, 2, 3)]
    config = ValidatorRaftConfig(self_address=addresses[0], partner_addresses=tuple(addresses[1:]), data_dir=tmp_path,
                                 password="p" * 32, network_id="lab", validator_id=identities[0].node_id,
                                 validators={i.node_id: i.public_key for i in identities},
                                 validator_addresses={i.node_id: a for i, a in zip(identities, addresses)})
    raft = ValidatorRaft(config, sign=identities[0].sign, verify=verify_signature, on_change=lambda events: None)
    # The SyncObj configuration start() would use (start() itself would bind the DNS name, absent here);
    # the replicated state it names is made by start(), so a stand-in takes its place.
    raft._replicated = types.SimpleNamespace(_serialize=lambda: b"", _deserialize=lambda data: None)
    conf = raft._conf()
    assert conf.dnsCacheTime == RaftTiming().dns_cache_s <= 10
    assert conf.dnsFailCacheTime == RaftTiming().dns_fail_cache_s <= 2
    assert socket.getaddrinfo("127.0.0.1", 9000)  # (the loopback provider's peers are IP literals: no DNS query at all)
