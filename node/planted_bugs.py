"""Planted bugs: known holes re-opened on purpose, so the testbed can prove it finds them.

Why: a generative tester is only believable if it finds a real bug nobody told it about. The
trust-holes issue closed one (a backdated vote revived an expired proposal: the deadline was
checked against the voter's own clock); `synapse chaos` must find it again when it is re-opened.
Re-opening it on a branch would rot; a switch here keeps the hole one line away from the fix and
tested. Production nodes never enable it.

Enabled only when the node process runs with SYNAPSE_PLANTED_BUGS=<name>[,<name>...] in its
environment. An unknown name stops the node at start (a typo must not silently test nothing).

Bugs:
  backdated_vote   a vote the validators did not count still counts when its own (voter-chosen)
                   clock is before the deadline: the pre-fix behaviour of node/core/governance.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from node.errors import ConfigError

ENVIRONMENT_VARIABLE = "SYNAPSE_PLANTED_BUGS"
BUGS = ("backdated_vote",)


def planted_bugs_for(environ: Mapping[str, str]) -> frozenset[str]:
    """The planted bugs this process enables (usually none). Raises ConfigError for an unknown name."""
    text = environ.get(ENVIRONMENT_VARIABLE, "").strip()
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - set(BUGS))
    if unknown:
        raise ConfigError(f"{ENVIRONMENT_VARIABLE} names unknown planted bug(s) {', '.join(unknown)}",
                          hint=f"known: {', '.join(BUGS)}; unset {ENVIRONMENT_VARIABLE} for a normal node")
    return names
