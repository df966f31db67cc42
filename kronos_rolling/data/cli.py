"""`kronos-rolling data ...`."""

import click


@click.group()
def data():
    """Import, list, validate and classify market data."""
