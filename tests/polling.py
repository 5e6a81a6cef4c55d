"""The tests' way to wait lives in the package now (cluster/polling.py), so the pytest plugin gives users
the same `wait_until`; this module keeps the tests' imports short."""

from cluster.polling import INTERVAL_S_DEFAULT, TIMEOUT_S_MAX, poll_until, poll_until_async

__all__ = ["INTERVAL_S_DEFAULT", "TIMEOUT_S_MAX", "poll_until", "poll_until_async"]
