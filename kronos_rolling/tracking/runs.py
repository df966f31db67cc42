"""What a training run records in MLflow: inputs, evaluation figures, plots, completeness.

A run gets the `kronos.complete` tag last; only a complete run may be registered.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pandas as pd

from kronos_rolling import __version__
from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.compare import EvalResult
from kronos_rolling.evaluation.samples import (
    EvaluationSamples,
)

COMPLETE_TAG = "kronos.complete"  # set last: only a finished run may be registered


LAUNCHER_RUN_ENV = "KRONOS_LAUNCHER_RUN_ID"  # see kronos_rolling.project.route_launcher_run


MODEL_NAME = "model"  # the logged pyfunc model inside the run


def experiment_name(label: str) -> str:
    return f"kronos-rolling/{label}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def window_frame(store: DataStore, symbols: list[str], start, end) -> pd.DataFrame:
    """The bars a span covers, all symbols stacked: logged as the run's dataset input."""
    parts = []
    for symbol in symbols:
        bars = store.load(symbol)
        inside = bars[(bars["timestamp"] >= start) & (bars["timestamp"] < end)]
        parts.append(inside.assign(symbol=symbol))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return frame[["symbol"] + [c for c in frame.columns if c != "symbol"]]


def _log_run_inputs(config, base, window, symbols, warm_source, dataset, train_set, inner_set) -> None:
    params = {
        "mode": config.mode, "asset_class": config.label, "as_of": config.as_of,
        "train_start": window.train_start.isoformat(), "train_end": window.train_end.isoformat(),
        "inner_val_start": window.inner_val_start.isoformat(),
        "val_start": window.val_start.isoformat(), "val_end": window.val_end.isoformat(),
        "symbols": ",".join(symbols), "base_model": base.predictor, "base_tokenizer": base.tokenizer,
        "base_revision": base.revision or "", "base_digest": base.predictor_digest or "",
        "warm_start": warm_source.uri if warm_source else "none",
        "warm_start_version": (warm_source.version or "") if warm_source else "",
        "lr": config.lr, "epochs": config.epochs, "batch_size": config.batch_size,
        "lookback": config.lookback, "horizon": config.horizon, "stride": config.stride,
        "max_samples_per_epoch": config.max_samples_per_epoch or "all",
        "lora_rank": config.lora.rank, "lora_alpha": config.lora.alpha, "lora_dropout": config.lora.dropout,
        "lora_targets": ",".join(config.lora.target_modules), "seed": config.seed,
        "weight_decay": config.weight_decay, "warmup_fraction": config.warmup_fraction,
        "grad_clip": config.grad_clip, "patience": config.patience, "precision": config.precision,
        "train_samples": len(train_set), "inner_val_samples": len(inner_set),
        "code_version": git_commit(), "kronos_rolling_version": __version__,
    }
    # A run made by `mlflow run` already holds the -P values as typed (lr 5e-5, as_of '', a base
    # folder); MLflow never changes a logged param, so a resolved value that differs goes beside it.
    launched = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({(f"resolved.{key}" if key in launched and launched[key] != str(value) else key): value
                       for key, value in params.items()})
    mlflow.set_tags({"asset_class": config.label, "as_of": config.as_of, "mode": config.mode})
    mlflow.log_input(dataset, context="training")


def _log_evaluation(figures: dict[str, EvalResult], samples: EvaluationSamples, closes: dict,
                    candidate_name: str = "candidate") -> None:
    from kronos_rolling.evaluation import plots

    candidate = figures[candidate_name]
    metrics = {"val_mae": candidate.val_mae, "val_sharpe": candidate.val_sharpe,
               "val_origins": candidate.origins}
    for name, result in figures.items():
        if name != candidate_name:
            metrics[f"{name}_val_mae"] = result.val_mae
            metrics[f"{name}_val_sharpe"] = result.val_sharpe
    mlflow.log_metrics(metrics)
    rows = [{"model": name, "symbol": s.symbol, "origins": s.origins, "val_mae": s.val_mae,
             "val_sharpe": s.val_sharpe} for name, result in figures.items() for s in result.series]
    mlflow.log_table(pd.DataFrame(rows), "evaluation/per_series.json")
    shown = {name: closes[name] for name in (candidate_name, "pooled", "base") if name in closes}
    fig = plots.forecast_vs_actual(samples, shown)
    mlflow.log_figure(fig, "plots/forecast_vs_actual.png")
    equity = {**{name: closes[name] for name in closes}, "persistence": None}
    fig2 = plots.equity_curves(samples, equity)
    mlflow.log_figure(fig2, "plots/equity_curve.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(fig2)
