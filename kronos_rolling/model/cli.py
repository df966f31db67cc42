"""`kronos-rolling model ...` and `kronos-rolling forecast`."""

import click


@click.group()
def model():
    """Build, load and pretrain Kronos models."""


@click.command()
def forecast():
    """Forecast the next bars of a CSV of candles."""
    raise click.ClickException("not implemented yet")
