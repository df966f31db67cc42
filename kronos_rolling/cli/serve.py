"""`kronos-rolling serve` and `kronos-rolling predict`.

`python -m kronos_rolling.cli serve|predict ...` runs the same commands.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import click

from kronos_rolling.cli.options import configure_mlflow, settings_of
from kronos_rolling.model.config import MAX_TEMPERATURE, MAX_TOP_K, MIN_TEMPERATURE
from kronos_rolling.settings import DEFAULT_PORT, DEFAULT_SERVE_PORT, ServeSettings

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _settings_options(command):
    """Options shared by serve and predict (each falls back to the environment, then the default)."""
    options = [
        click.option("--base-model", default=None,
                     help="Base model: a folder with predictor/ and tokenizer/, or a hub id [env KRONOS_BASE_MODEL; "
                          "default: this machine's recorded base, else NeoQuasar/Kronos-base]."),
        click.option("--tracking-uri", default=None,
                     help="MLflow tracking server [env MLFLOW_TRACKING_URI; default http://127.0.0.1:PORT, the "
                          f"server `kronos-rolling server` starts, PORT = env KRONOS_MLFLOW_PORT or {DEFAULT_PORT}]."),
        click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Data folder with asset_classes.csv overrides and events.csv [env KRONOS_DATA_DIR]."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Cache of resolved versions [default $KRONOS_HOME/predictor-cache]."),
        click.option("--device", default=None, help="auto, cpu or cuda [env KRONOS_SERVE_DEVICE; default auto]."),
        click.option("--inference-guard/--no-inference-guard", default=None,
                     help="Serve pooled when a class's val_mae is over 10% worse than pooled's "
                          "[env KRONOS_SERVE_INFERENCE_GUARD; default off]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _settings(data_dir=None, base_model=None, **flags) -> ServeSettings:
    """The service's settings (environment, then defaults) with the flags given applied."""
    from kronos_rolling.model.base import default_base_model

    settings = settings_of(data_dir=data_dir, base_model=base_model)
    home_base = default_base_model(settings.base_model, settings.home)
    serve = replace(settings.serve, base_model=home_base, data_dir=settings.data_dir,
                    **{k: v for k, v in flags.items() if v is not None})
    configure_mlflow(serve.registry_timeout_s)
    return serve


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but loopback exposes the service (set KRONOS_API_TOKEN).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_SERVE_PORT, show_default=True)
@click.option("--poll-interval", "poll_interval_s", type=float, default=None,
              help="Seconds between registry reads [env KRONOS_SERVE_POLL_INTERVAL_S; default 30].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@_settings_options
def serve(host, port, poll_interval_s, log_level, base_model, tracking_uri, data_dir, cache_dir, device,
          inference_guard):
    """Run the predictor service: per-symbol adapters by alias, followed live."""
    import uvicorn

    from kronos_rolling.serve.app import create_app
    from kronos_rolling.serve.http import server_config
    from kronos_rolling.serve.service import PredictorService

    settings = _settings(base_model=base_model, tracking_uri=tracking_uri, data_dir=data_dir, cache_dir=cache_dir,
                         device=device, inference_guard=inference_guard, poll_interval_s=poll_interval_s)
    if host not in LOOPBACK and settings.api_token is None:
        log.warning("binding %s without KRONOS_API_TOKEN: anyone who reaches this port can use the service", host)
    if not logging.getLogger().handlers:  # called without the main group (which sets logging up)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(log_level.upper())
    service = PredictorService(settings)
    uvicorn.Server(server_config(create_app(service), settings, host=host, port=port, log_level=log_level)).run()


@click.command()
@click.option("--symbol", required=True, help="Symbol whose asset class picks the adapter, e.g. BTCUSDT.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Bars: timestamp, open, high, low, close (volume, amount optional); read and checked as "
                   "`data import` reads them.")
@click.option("--pred-len", type=click.IntRange(min=1), required=True, help="Number of future bars to forecast.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Sample paths whose median is the forecast [default: 1; 32 or more with --quantiles].")
@click.option("--temperature", type=click.FloatRange(MIN_TEMPERATURE, MAX_TEMPERATURE), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(0, MAX_TOP_K), default=0, show_default=True, help="1 = greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True)
@click.option("--seed", type=click.IntRange(min=-1), default=0, show_default=True, help="-1: unseeded.")
@click.option("--quantiles", default=None, is_flag=False, flag_value="true", metavar="[LEVELS]",
              help="Add close quantile columns: levels such as 0.05,0.5,0.95 (close_p5, close_p50, close_p95), or "
                   "no value for p10/p50/p90; calibrated by the answering version when it serves a calibration.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV to write [default: standard output].")
@_settings_options
def predict(symbol, csv_path, pred_len, samples, temperature, top_k, top_p, seed, quantiles, out_path, base_model,
            tracking_uri, data_dir, cache_dir, device, inference_guard):
    """Answer one forecast request here, through the service's own selection code.

    The CSV goes to standard output (or --out); which model answered goes to standard error.
    """
    import pandas as pd

    from kronos_rolling.data.assets import classify_asset
    from kronos_rolling.data.bars import read_bars_file
    from kronos_rolling.data.store import DataStore
    from kronos_rolling.names import POOLED
    from kronos_rolling.serve.forecasting import ForecastOptions, SeriesInput
    from kronos_rolling.serve.service import PredictorService

    now = datetime.now(timezone.utc)
    bars = read_bars_file(csv_path, now=pd.Timestamp(now))
    asset_class = classify_asset(symbol, DataStore(settings_of(data_dir=data_dir).data_dir).overrides())
    settings = _settings(base_model=base_model, tracking_uri=tracking_uri, data_dir=data_dir, cache_dir=cache_dir,
                         device=device, inference_guard=inference_guard, labels=(asset_class, POOLED))
    service = PredictorService(settings, watch=False).start()
    try:
        answer = service.forecast([SeriesInput(symbol, bars)], ForecastOptions.asked(
            pred_len=pred_len, samples=samples, temperature=temperature, top_k=top_k, top_p=top_p,
            seed=None if seed < 0 else seed, quantiles=quantiles), now=now)[0]
    finally:
        service.stop()
    frame = answer.result.point.copy()  # the median of the paths: what the evaluation scores
    for name, band in (answer.result.quantiles or {}).items():
        frame[f"close_{name}"] = band["close"].to_numpy()
    if out_path is None:
        frame.to_csv(sys.stdout, index=False)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial = out_path.with_name(f".{out_path.name}.partial")
        frame.to_csv(partial, index=False)
        os.replace(partial, out_path)
    click.echo(f"model: {answer.model.describe()}"
               + (f" (fallback: {answer.model.fallback})" if answer.model.fallback else ""), err=True)
    if answer.calibration is not None:
        click.echo(f"calibration: {answer.calibration}", err=True)
    for warning in answer.warnings:
        click.echo(f"warning: {warning}", err=True)


COMMANDS = [serve, predict]
