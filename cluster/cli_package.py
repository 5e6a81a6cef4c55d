"""`synapse package ...`: inspect and dry-run upgrade packages (filled in by the sandbox work)."""

import click


@click.group()
def package() -> None:
    """Inspect and test WASM upgrade packages."""
