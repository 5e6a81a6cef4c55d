"""Synapse-NG testbed: local clusters, fault injection, scenarios, and the `synapse` CLI."""
