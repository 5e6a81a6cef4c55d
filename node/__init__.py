"""Synapse-NG node: one OS process of a self-upgrading network."""
