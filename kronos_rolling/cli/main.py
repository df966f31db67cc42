"""`kronos-rolling` command line: the top-level group, with each group's commands attached.

One module per command group: data.py, model.py, pipeline.py (train, run, run-all,
evaluate, simulate, demo), registry.py (history, promote, rollback, retention, due,
cadence), serve.py (serve, predict), server.py, cron.py (around the monthly `mlflow run`);
shared options in options.py.

The command modules import torch, MLflow's model code and the pipeline inside the commands
that use them, not at the top: `kronos-rolling --help`, option errors and the MLproject
bridge then start without loading torch (under a CPU-second instead of several).
"""

from __future__ import annotations

import logging
import sys

import click

from kronos_rolling import __version__
from kronos_rolling.cli.cron import COMMANDS as CRON_COMMANDS
from kronos_rolling.cli.data import data
from kronos_rolling.cli.model import forecast, model, pretrain
from kronos_rolling.cli.options import configure_mlflow
from kronos_rolling.cli.pipeline import COMMANDS as PIPELINE_COMMANDS
from kronos_rolling.cli.registry import COMMANDS as REGISTRY_COMMANDS
from kronos_rolling.cli.serve import COMMANDS as SERVE_COMMANDS
from kronos_rolling.cli.server import server
from kronos_rolling.errors import KronosError
from kronos_rolling.settings import load_settings


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
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Keep a Kronos forecasting model current: monthly LoRA fine-tunes per asset class,
    tracked, guarded and served through MLflow."""
    ctx.obj = load_settings()
    configure_mlflow()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


model.add_command(pretrain)
for command in (model, forecast, data, *PIPELINE_COMMANDS, *REGISTRY_COMMANDS, *SERVE_COMMANDS, server,
                *CRON_COMMANDS):
    main.add_command(command)

