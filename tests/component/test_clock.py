"""The node clock (node/clock.py): real time unless the testbed armed a skew, armed only like crash points
(the environment switch AND a file in the data dir), picked up by a running node, cleared by removing it.
A skewed node seen from outside (health, log lines, HLC, deadlines) is proven with real processes in
tests/integration/test_cluster_fault.py and scenarios/clock_skew.toml."""

import json
import logging

import pytest

from node.clock import FILE_NAME, NodeClock, arm_skew, armed_skew_ms, clear_skew, clock_for, parse_skew_ms
from node.limits import CLOCK_SKEW_FAULT_MAX_MS
from node.logging_setup import JsonLineFormatter

REAL_NS = 1_700_000_000_000 * 1_000_000   # 2023-11-14T22:13:20Z


class FakeTime:
    def __init__(self) -> None:
        self.real_ns = REAL_NS
        self.monotonic_ns = 0

    def clock(self, data_dir, refresh_ms: int = 100) -> NodeClock:
        return NodeClock(skew_file=data_dir / FILE_NAME, read_ns=lambda: self.real_ns, monotonic_ns=lambda: self.monotonic_ns,
                         refresh_ms=refresh_ms)

    def advance_ms(self, milliseconds: int) -> None:
        self.real_ns += milliseconds * 1_000_000
        self.monotonic_ns += milliseconds * 1_000_000


def test_without_the_environment_switch_an_armed_file_changes_nothing(tmp_path):
    arm_skew(tmp_path, 20_000)
    for environ in ({}, {"SYNAPSE_FAULT_POINTS": "yes"}, {"SYNAPSE_FAULT_POINTS": "0"}):
        clock = clock_for(tmp_path, environ)
        assert not clock.skewable and clock.skew_ms() == 0
    assert clock_for(tmp_path, {"SYNAPSE_FAULT_POINTS": "1"}).skew_ms() == 20_000


@pytest.mark.parametrize("skew_ms", [20_000, -20_000, 1, 0])
def test_an_armed_skew_offsets_every_reading(tmp_path, skew_ms):
    fake = FakeTime()
    clock = fake.clock(tmp_path)
    arm_skew(tmp_path, skew_ms)
    assert clock.now_ms() == REAL_NS // 1_000_000 + skew_ms
    assert clock.now_ns() == REAL_NS + skew_ms * 1_000_000
    assert clock.shift_s(1000.0) == pytest.approx(1000.0 + skew_ms / 1000)
    assert armed_skew_ms(tmp_path) == skew_ms


def test_a_running_clock_picks_up_arming_and_clearing_within_the_refresh(tmp_path):
    fake = FakeTime()
    clock = fake.clock(tmp_path, refresh_ms=100)
    assert clock.skew_ms() == 0
    arm_skew(tmp_path, -20_000)
    fake.advance_ms(50)
    assert clock.skew_ms() == 0, "read at most once per refresh: not yet"
    fake.advance_ms(50)
    assert clock.skew_ms() == -20_000
    assert clear_skew(tmp_path) is True and clear_skew(tmp_path) is False
    fake.advance_ms(100)
    assert clock.skew_ms() == 0 and clock.now_ms() == fake.real_ns // 1_000_000


@pytest.mark.parametrize("text", ["", "+", "--5", "12ms", "1e5", "٣", "9" * 13, f"{CLOCK_SKEW_FAULT_MAX_MS + 1}", "0x10", "\x00"])
def test_a_file_that_is_not_a_bounded_integer_is_ignored(tmp_path, text):
    assert parse_skew_ms(text) is None
    (tmp_path / FILE_NAME).write_text(text)
    assert FakeTime().clock(tmp_path).skew_ms() == 0


@pytest.mark.parametrize("text, expected", [("20000\n", 20_000), ("-20000", -20_000), ("+5", 5), (" 7 ", 7)])
def test_the_file_format(text, expected):
    assert parse_skew_ms(text) == expected


@pytest.mark.parametrize("value", [CLOCK_SKEW_FAULT_MAX_MS + 1, -CLOCK_SKEW_FAULT_MAX_MS - 1, 1.5, "20", True])
def test_arming_refuses_what_the_clock_would_ignore(tmp_path, value):
    with pytest.raises(ValueError, match="integer of milliseconds"):
        arm_skew(tmp_path, value)
    assert not (tmp_path / FILE_NAME).exists()


def test_a_huge_file_is_read_only_up_to_its_bound(tmp_path):
    (tmp_path / FILE_NAME).write_text("1" * 10_000_000)
    assert FakeTime().clock(tmp_path).skew_ms() == 0


def test_log_lines_are_dated_by_the_node_clock(tmp_path):
    fake = FakeTime()
    clock = fake.clock(tmp_path)
    record = logging.LogRecord("synapse", logging.INFO, __file__, 1, "started", None, None)
    record.created = REAL_NS / 1e9
    assert json.loads(JsonLineFormatter("n1", clock).format(record))["ts"] == "2023-11-14T22:13:20.000Z"
    arm_skew(tmp_path, -20_000)
    fake.advance_ms(100)
    assert json.loads(JsonLineFormatter("n1", clock).format(record))["ts"] == "2023-11-14T22:13:00.000Z"
    assert json.loads(JsonLineFormatter("n1").format(record))["ts"] == "2023-11-14T22:13:20.000Z", "no clock: real time"
