"""When PySyncObj's tick thread must wake, and how soon a follower may stand after losing its leader.

Why it works as it does (issue 11; the measurements are in bench/README.md):

- PySyncObj checks its election deadline (and the leader's next heartbeat time) only at the start of a
  tick, and a tick with nothing to do sleeps `autoTickPeriod` (50 ms) in its poller. After a leader
  dies, the survivors get no traffic, so their deadlines are checked every 50 ms only, and the phases
  of those checks are the same on every survivor: each woke at the leader's last heartbeat, which
  reached them all at the same moment. Two survivors whose random timeouts (0.3-0.6 s: six such slots)
  fell in the same 50 ms slot stood for election in the same millisecond, split the vote, and waited a
  whole second timeout: about 1 failover in 6 (seen: 1 in 6 runs, 1.01 s instead of ~0.45 s; the other
  cause of split votes after kill -9, an idle link between followers cut when the vote went through it,
  was in node/raft_transport.py). `tick_wait_s` lets the tick sleep only until
  what is due next (never longer than the period, never zero: a deadline already past is the tick's
  own business, e.g. when nobody is connected, and a zero wait would spin), so each survivor stands at
  its own random deadline and the vote splits only when two deadlines fall within one message delay.

- A dead leader's process closes its sockets (kill -9 included): the authenticated connection to it
  ends at once, 0.3-0.6 s before the election timeout would notice. `leader_lost_deadline_s` then brings
  the follower's deadline forward into a shorter random window; it never pushes it back. The window
  starts at three heartbeat periods, PySyncObj's own lower bound for an election timeout: a leader that
  is alive and only lost that connection redials (or is redialled) at once and its next heartbeat
  resets the deadline before it expires. The window is random for the same reason as the election
  timeout: both survivors see the leader go in the same millisecond. Only the end of an AUTHENTICATED
  connection to the node followed as leader counts (the I/O shell's job): a stranger who opens, fails or
  resets a connection of its own cannot bring an election forward.

- A replicated call that failed because the leader changed is resubmitted at once, not after the
  retry backoff: the change is news that a new leader exists or is being elected, and PySyncObj keeps
  a command submitted without a leader in its queue until one is known. After a failover the first
  commit then comes with the new leader instead of one backoff (50 ms) later. Other failures (no
  leader, queue full, ...) keep the backoff. Every command is idempotent, so a retry is always safe.

Pure: times are seconds on the caller's monotonic clock, randomness is a fraction the caller draws.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.errors import ConfigError

# A poll's timeout is rounded to milliseconds: sleeping this much past the due time makes sure the
# next tick finds it due instead of waking a hair early and sleeping again.
WAKE_SLACK_S = 0.001
FLOAT_TOLERANCE_S = 1e-9


def tick_wait_s(*, period_s: float, now_s: float, due_s: float) -> float:
    """How long the tick thread may sleep in its poller: until `due_s` (the election deadline, or a
    leader's next heartbeat) if that comes within `period_s`, else `period_s`. A due time already past
    gives `period_s`: the tick that just ran has acted on it if it could (a follower connected to
    nobody cannot stand yet), and sleeping zero would spin the thread."""
    assert period_s > 0, "the tick period must be positive"
    remaining_s = due_s - now_s
    if remaining_s <= 0:
        return period_s
    return min(period_s, remaining_s + WAKE_SLACK_S)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderLostWindow:
    """How soon, after the authenticated connection to its leader ended, a follower stands for election:
    a random time in [timeout_min_s, timeout_max_s)."""
    timeout_min_s: float
    timeout_max_s: float

    def __post_init__(self) -> None:
        if not 0 < self.timeout_min_s < self.timeout_max_s:
            raise ConfigError("leader-lost window: 0 < timeout_min_s < timeout_max_s is required")

    @classmethod
    def checked(cls, *, timeout_min_s: float, timeout_max_s: float, heartbeat_period_s: float,
                election_timeout_min_s: float) -> "LeaderLostWindow":
        """The window, refused unless it leaves a live leader three heartbeats to reconnect and lies
        within the ordinary election timeout (it only ever brings an election forward)."""
        if 3 * heartbeat_period_s - timeout_min_s > FLOAT_TOLERANCE_S:     # 3 x 0.05 is 0.15000000000000002
            raise ConfigError(f"leader-lost timeout_min_s ({timeout_min_s}) must be at least 3 heartbeat periods "
                             f"({3 * heartbeat_period_s:.3f} s): a live leader needs time to reconnect")
        if timeout_max_s > election_timeout_min_s:
            raise ConfigError(f"leader-lost timeout_max_s ({timeout_max_s}) must not exceed the election timeout's "
                             f"minimum ({election_timeout_min_s})")
        return cls(timeout_min_s=timeout_min_s, timeout_max_s=timeout_max_s)


def leader_lost_deadline_s(*, window: LeaderLostWindow, now_s: float, deadline_s: float,
                           random_fraction: float) -> float:
    """The follower's election deadline once the authenticated connection to its leader has ended at
    `now_s`: a random point of the window from now (`random_fraction` in [0, 1)), or the deadline it
    had if that is sooner."""
    assert 0.0 <= random_fraction < 1.0, "random_fraction must be in [0, 1)"
    span_s = window.timeout_max_s - window.timeout_min_s
    return min(deadline_s, now_s + window.timeout_min_s + span_s * random_fraction)


CALL_ATTEMPTS_MIN = 3   # a replicated call's whole timeout leaves room for this many attempts


def call_timeout_s(*, configured_s: float, attempt_s: float) -> float:
    """How long a replicated call (all its attempts) may take: the configured time, or enough for
    CALL_ATTEMPTS_MIN attempts if that is longer. On slow links an attempt waits at least the longest
    election timeout (RaftTiming.for_network); a call bounded by the LAN's 10 s would then have one
    attempt and a stub, and a leader change during it would fail the validator's whole step."""
    return max(configured_s, CALL_ATTEMPTS_MIN * attempt_s)


def retry_wait_s(*, leader_changed: bool, backoff_s: float) -> float:
    """How long a failed replicated call waits before it is resubmitted: not at all after a leader
    change, else the backoff."""
    return 0.0 if leader_changed else backoff_s
