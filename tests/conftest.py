"""Shared test fixtures. Real processes started by tests are tracked so that none outlives the session."""
