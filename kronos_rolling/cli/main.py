"""`kronos-rolling` command line.

The top-level group lives here; each area keeps its commands beside its code
(`model/cli.py`, `data/cli.py`, ...) and is attached below.
"""

from __future__ import annotations

import logging
import sys

import click

from kronos_rolling import __version__
from kronos_rolling.errors import KronosError


class KronosGroup(click.Group):
    """A click group that turns `KronosError` into a one-line message and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KronosError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=KronosGroup)
@click.version_option(__version__, prog_name="kronos-rolling")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Keep a Kronos forecasting model current: monthly LoRA fine-tunes per asset class,
    tracked, guarded and served through MLflow."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _attach_commands() -> None:
    from kronos_rolling.cli.data import data
    from kronos_rolling.cli.model import forecast, model, pretrain
    from kronos_rolling.cli.pipeline import COMMANDS as PIPELINE_COMMANDS
    from kronos_rolling.cli.registry import COMMANDS as REGISTRY_COMMANDS
    from kronos_rolling.cli.serve import COMMANDS as SERVE_COMMANDS
    from kronos_rolling.cli.server import server

    model.add_command(pretrain)
    for command in (model, forecast, data, *PIPELINE_COMMANDS, *REGISTRY_COMMANDS, *SERVE_COMMANDS, server):
        main.add_command(command)


_attach_commands()

