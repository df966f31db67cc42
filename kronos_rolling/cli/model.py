"""`kronos-rolling model ...` and `kronos-rolling forecast`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.cli.options import connect, data_option, settings_of, tracking_uri_option
from kronos_rolling.errors import ModelError
from kronos_rolling.model.config import MAX_TEMPERATURE, MAX_TOP_K, MIN_TEMPERATURE, MODEL_SIZES
from kronos_rolling.training.pretrain.config import DEFAULT_UNTIL, PretrainConfig


@click.group()
def model():
    """Build, load and pretrain Kronos models."""


@model.command("init")
@click.option("--size", type=click.Choice(["tiny", "mini", "small", "base"]), required=True,
              help="Released configuration to build (tiny: for tests and offline demos).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to create; receives tokenizer/ and predictor/ in the hub format.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random initialisation.")
def init_command(size: str, out_dir: Path, seed: int) -> None:
    """Write a randomly initialised tokenizer and predictor of a released size."""
    import torch

    from kronos_rolling.model.config import MODEL_SIZES
    from kronos_rolling.model.kronos import Kronos
    from kronos_rolling.model.tokenizer import KronosTokenizer

    targets = [out_dir / "tokenizer", out_dir / "predictor"]
    taken = [str(t) for t in targets if t.exists()]
    if taken:
        raise ModelError(f"{', '.join(taken)} already exist(s); choose another --out folder or delete them")
    spec = MODEL_SIZES[size]
    torch.manual_seed(seed)
    tokenizer = KronosTokenizer.from_config(spec.tokenizer)
    predictor = Kronos.from_config(spec.predictor)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-init-", dir=out_dir))
    try:
        tokenizer.save_pretrained(staging / "tokenizer")
        predictor.save_pretrained(staging / "predictor")
        for target in targets:
            os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    n_tok = sum(p.numel() for p in tokenizer.parameters())
    n_pred = sum(p.numel() for p in predictor.parameters())
    click.echo(
        f"wrote {size} tokenizer ({n_tok:,} parameters) to {targets[0]} and predictor ({n_pred:,} parameters) "
        f"to {targets[1]}; forecast with --max-context {spec.max_context}"
    )


@click.command()
@click.option("--model", "model_source", default=None,
              help="Predictor folder or hub id [required without --adapter; with it: the adapter's base].")
@click.option("--tokenizer", "tokenizer_source", default=None, help="Tokenizer folder or hub id (with --model).")
@click.option("--adapter", default=None,
              help="Forecast with a registered version or adapter on its base: models:/kronos-lora-crypto@production, "
                   "runs:/<run id>/adapter or a bundle folder; its calibration then applies to the close quantiles.")
@tracking_uri_option
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Bars: timestamp, open, high, low, close (volume, amount optional); read and checked as "
                   "`data import` reads them (any case, unix seconds or ms, UTC offsets).")
@click.option("--pred-len", type=click.IntRange(min=1), required=True, help="Number of future bars to forecast.")
@click.option("--top-k", type=click.IntRange(0, MAX_TOP_K), default=0, show_default=True,
              help="Keep the k most likely tokens (1 = greedy).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Nucleus sampling mass (when top-k is 0).")
@click.option("--temperature", type=click.FloatRange(MIN_TEMPERATURE, MAX_TEMPERATURE), default=1.0, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Sample paths whose median is the forecast [default: 1; 32 or more with --quantiles].")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed that makes sampling reproducible.")
@click.option("--max-context", type=click.IntRange(min=1), default=None,
              help="Context of the predictor in bars [default: 2048 for Kronos-mini, else 512].")
@click.option("--lookback", type=click.IntRange(min=2), default=None, help="Use only the last N bars [default: all].")
@click.option("--asset-class", type=click.Choice(ASSET_CLASSES), default=None,
              help="Market hours and holidays of the forecast's timestamps [default: the series' own calendar "
                   "only].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--precision", type=click.Choice(["float32", "bf16", "fp16"]), default="float32", show_default=True,
              help="Autocast precision (bf16/fp16 need CUDA).")
@click.option("--quantiles", default=None, is_flag=False, flag_value="true", metavar="[LEVELS]",
              help="Add quantile columns across the sample paths: levels such as 0.05,0.5,0.95 (columns <column>_p5, "
                   "_p50, _p95), or no value for p10/p50/p90.")
@click.option("--revision", default=None, help="Hub revision for --model and --tokenizer ids.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV to write: timestamp + open..amount of the point forecast (the median of the paths).")
def forecast(model_source, tokenizer_source, adapter, tracking_uri, csv_path, pred_len, top_k, top_p, temperature,
             samples, seed, max_context, lookback, asset_class, device, precision, quantiles, revision, out_path):
    """Forecast the next bars of a CSV of candles."""
    import pandas as pd

    from kronos_rolling.data.bars import read_bars_file
    from kronos_rolling.evaluation.calibration import apply_calibration
    from kronos_rolling.model.forecast import Forecaster
    from kronos_rolling.model.kronos import Kronos
    from kronos_rolling.model.quantiles import paths_for, quantile_levels
    from kronos_rolling.model.tokenizer import KronosTokenizer

    levels = quantile_levels(quantiles)
    bars = read_bars_file(csv_path, now=pd.Timestamp.now(tz="UTC"))  # the bars first: no model loads for bad ones
    calibration = note = None
    if adapter is not None:
        import tempfile

        from kronos_rolling.tracking.integrity import fetch_verified
        from kronos_rolling.tracking.adapters import calibration_of, load_forecast_model

        tracking = None if Path(adapter).expanduser().is_dir() else connect(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="kronos-forecast-") as scratch:
            # a registered version is checked as before it may serve: files, weights, calibration
            source = fetch_verified(adapter, tracking, Path(scratch))
            loaded = load_forecast_model(source)
            calibration = calibration_of(source)
        predictor, tokenizer, events = loaded.model, loaded.tokenizer, loaded.event_embedding
        asset_class = asset_class or source.metadata.get("asset_class")
        max_context = max_context or loaded.max_context
    elif model_source is None or tokenizer_source is None:
        raise click.UsageError("give --model and --tokenizer (a base), or --adapter (a version on its base)")
    else:
        predictor = Kronos.from_pretrained(model_source, revision=revision)
        tokenizer = KronosTokenizer.from_pretrained(tokenizer_source, revision=revision)
        events = None
    forecaster = Forecaster(predictor, tokenizer, device=device, max_context=max_context, precision=precision,
                            event_embedding=events)
    result = forecaster.forecast(
        bars, pred_len, temperature=temperature, top_k=top_k, top_p=top_p, samples=paths_for(samples, levels),
        seed=seed, quantiles=levels, lookback=lookback, asset_class=asset_class,
    )
    if levels:
        note = apply_calibration(result, levels, calibration, asset_class,
                                 source.describe() if adapter is not None else "the bare base")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    result.to_frame().to_csv(partial, index=False)
    os.replace(partial, out_path)
    click.echo(f"wrote {pred_len} forecast bars to {out_path}", err=True)
    if note:
        click.echo(f"calibration: {note}", err=True)


@click.command("pretrain")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder to write: tokenizer/, predictor/ (hub format) and pretrain.json.")
@click.option("--size", type=click.Choice(list(MODEL_SIZES)), default="tiny", show_default=True,
              help="Model size to build (tiny: trains in about a minute on two cores).")
@click.option("--until", default=DEFAULT_UNTIL, show_default=True,
              help="Train on bars strictly before this date (UTC); evaluate the base only after it.")
@data_option
@click.option("--symbol", "symbols", multiple=True,
              help="Train on this symbol only (repeatable; default: every symbol with bars before --until).")
@click.option("--tokenizer-steps", type=int, default=PretrainConfig.tokenizer_steps, show_default=True)
@click.option("--predictor-steps", type=int, default=PretrainConfig.predictor_steps, show_default=True)
@click.option("--batch-size", type=int, default=PretrainConfig.batch_size, show_default=True)
@click.option("--lookback", type=int, default=PretrainConfig.lookback, show_default=True,
              help="Bars of context per window (each window adds --horizon bars).")
@click.option("--horizon", type=int, default=PretrainConfig.horizon, show_default=True)
@click.option("--seed", type=int, default=PretrainConfig.seed, show_default=True)
@click.option("--force", is_flag=True, help="Replace --out even if it holds something other than a pretrained base.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def pretrain(out_dir, size, until, data_dir, symbols, tokenizer_steps, predictor_steps, batch_size, lookback,
             horizon, seed, force, quiet):
    """Pre-train a small Kronos base (tokenizer, then predictor) on history before --until."""
    from kronos_rolling.data.store import DataStore
    from kronos_rolling.training.pretrain.run import pretrain_base

    report = pretrain_base(
        DataStore(settings_of(data_dir=data_dir).data_dir), out_dir, until=until, size=size, symbols=list(symbols) or None,
        tokenizer_steps=tokenizer_steps, predictor_steps=predictor_steps, batch_size=batch_size,
        lookback=lookback, horizon=horizon, seed=seed, force=force, progress=not quiet,
    )
    click.echo(report.summary())
