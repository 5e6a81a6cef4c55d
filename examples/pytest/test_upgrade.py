"""A network upgrade tested the way a user tests their own: copy this file, point PACKAGE at your package.

Run it with `pytest` in this directory (synapse-ng and pytest installed; the fixtures come from the
package's pytest plugin). Every cluster is stopped after the test, even when it fails.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "wat" / "feature_flag.wat"   # your .wat, .c or .wasm


def test_an_approved_upgrade_reaches_every_node_even_one_that_was_down(synapse_cluster, package_server, wait_until):
    network = synapse_cluster(nodes=4, validators=3, governance={"voting_period_ms": 60_000},
                              limits={"sandbox_fuel": 50_000_000})
    network.kill("node-4")                                   # a member crashes before the vote

    proposal_id = network.propose(package_server.add_file(PACKAGE), version="1.2.0", title="Add a feature flag")
    network.vote(proposal_id, "approval")                    # every live node votes with its own key
    network.wait_executed(proposal_id)                       # on every live node, by its own report
    states = network.states()
    assert {(state["version"], state["state_hash"]) for state in states.values()} == {("1.2.0", states["node-1"]["state_hash"])}

    network.restart("node-4")                                # it catches up and runs the upgrade too
    network.wait_executed(proposal_id, nodes=["node-4"])
    wait_until(lambda: network.api("node-4").get("/health").data["version"] == "1.2.0", what="node-4 on 1.2.0")

    network.assert_safe()   # same log, version and state hash everywhere; certified; nothing executed twice
