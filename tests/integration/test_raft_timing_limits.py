"""A node's raft_* limits reach its validator's Raft (node/runtime.py -> RaftTiming.for_network -> PySyncObj).

A lone validator elects itself once its election timeout has run out, counted from its Raft's start,
which comes after the cluster starts launching it. With an election timeout of 8-9 s it therefore
cannot lead sooner than 8 s after the launch; with the LAN defaults (0.3-0.6 s) it leads 1-3 s after it
(the node's own start-up included, on a loaded machine). The lower bound holds on any machine, however slow.
"""

from __future__ import annotations

import time

from cluster.local import LocalCluster

WAN_LIMITS = {"raft_heartbeat_ms": 100, "raft_election_timeout_min_ms": 8_000, "raft_election_timeout_max_ms": 9_000}
ELECTION_MIN_S = WAN_LIMITS["raft_election_timeout_min_ms"] / 1000


def seconds_until_it_leads(cluster: LocalCluster, launched: float) -> float:
    cluster.wait_for(lambda: cluster.api(0).get("/health").data.get("raft_leader") is not None, 60, "the validator to lead")
    return time.monotonic() - launched


def test_a_validator_timed_for_a_slow_network_waits_its_election_timeout_before_it_leads(tmp_path):
    launched = time.monotonic()
    with LocalCluster(nodes=1, validators=1, data_dir=tmp_path / "wan", config_limits=WAN_LIMITS) as cluster:
        assert seconds_until_it_leads(cluster, launched) >= ELECTION_MIN_S


def test_with_the_lan_defaults_the_same_validator_leads_well_before_that(tmp_path):
    launched = time.monotonic()
    with LocalCluster(nodes=1, validators=1, data_dir=tmp_path / "lan") as cluster:
        assert seconds_until_it_leads(cluster, launched) < ELECTION_MIN_S, "the test above would prove nothing"
