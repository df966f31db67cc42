"""What every command group shares: the settings, the tracking context, common options.

The top-level group loads the settings once (settings.py: defaults, then the
environment) into the click context; a flag, when given, overrides its setting. Commands
import their heavy dependencies (torch, mlflow, the pipeline) inside the command, so
`kronos-rolling --help` answers at once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import click

from kronos_rolling.errors import ConfigError
from kronos_rolling.settings import DEFAULT_TRACKING_URI, Settings, load_settings, parse_as_of


class AsOf(click.ParamType):
    """--as-of: a decision date YYYY-MM-DD, read once here into a `datetime.date`."""

    name = "YYYY-MM-DD"

    def convert(self, value, param, ctx):
        try:
            return parse_as_of(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


def as_of_option(fn=None, *, required: bool = False, help: str = "Decision date (default: today, UTC)."):
    """The one --as-of option; without a value the command uses settings.today_utc()."""
    def decorate(f):
        return click.option("--as-of", "as_of", type=AsOf(), required=required, default=None, help=help)(f)
    return decorate(fn) if fn is not None else decorate


def settings_of(ctx: click.Context | None = None, *, data_dir: Path | None = None,
                base_model: str | None = None) -> Settings:
    """The settings the top-level group loaded (or loaded now), with the given flags applied."""
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = load_settings()
    settings = root.obj
    if data_dir is not None:
        settings = replace(settings, data_dir=Path(data_dir))
    if base_model:
        settings = replace(settings, base_model=base_model)
    return settings


def connect(tracking_uri: str | None, settings: Settings | None = None):
    """The tracking context: --tracking-uri, else MLFLOW_TRACKING_URI, else the default server."""
    from kronos_rolling.tracking.context import Tracking

    return Tracking.connect(tracking_uri or (settings or settings_of()).tracking_uri)


def tracking_uri_option(fn):
    return click.option("--tracking-uri", default=None,
                        help=f"MLflow tracking server [env MLFLOW_TRACKING_URI; default {DEFAULT_TRACKING_URI}, "
                             "what `kronos-rolling server` starts].")(fn)


def data_option(fn):
    return click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                        help="Data folder [env KRONOS_DATA_DIR; default: the bundled sample data].")(fn)


def configure_mlflow(registry_timeout_s: float | None = None) -> None:
    """Quiet, bounded MLflow clients for this process.

    MLflow's HTTP client, progress bars and telemetry read environment variables only, so
    the command line (the process's entry, never library code) sets them, before any
    client exists; a value the user set wins. Artifact progress bars and run links flood
    cron logs; the predictor fails fast when the registry is down (MLflow's defaults
    retry for minutes).
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # The system-metrics sampler (CPU, memory, GPU of each training run) keeps sampling, and models
    # are still validated and awaited; their progress lines ("started / terminated monitoring",
    # "validating input example", "waiting up to 120 seconds") stay out of the job's log.
    for chatty in ("mlflow.system_metrics", "mlflow.pyfunc", "mlflow.store.model_registry.abstract_store"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if registry_timeout_s is not None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, registry_timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
