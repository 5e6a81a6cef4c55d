"""node/limits.py keeps its promise: every limit is an int whose name ends in its unit (issue 9)."""

import node.limits as limits

UNIT_CONSTANTS = {"KiB", "MiB", "GiB"}
UNIT_SUFFIXES = ("_MS", "_BYTES", "_MAX")


def test_every_limit_is_an_int_named_with_its_unit_last():
    names = [name for name in vars(limits) if name.isupper() and name not in UNIT_CONSTANTS]
    assert len(names) > 30, names
    for name in names:
        value = getattr(limits, name)
        assert type(value) is int and value > 0, f"{name} = {value!r}: limits are positive ints (durations in ms)"
        assert name.endswith(UNIT_SUFFIXES), f"{name}: end the name with its unit ({', '.join(UNIT_SUFFIXES)})"
