"""What an evaluation writes into an MLflow run: its figures as metrics, a per-series table, plots."""

from __future__ import annotations

import pandas as pd

from kronos_rolling.evaluation import plots
from kronos_rolling.evaluation.compare import EvalResult
from kronos_rolling.evaluation.samples import EvaluationSamples


def log_evaluation(run, figures: dict[str, EvalResult], samples: EvaluationSamples, closes: dict,
                   candidate_name: str = "candidate") -> None:
    """`run`: a tracking.runs.TrackedRun. The candidate's figures are `val_*`, the others `<name>_val_*`."""
    candidate = figures[candidate_name]
    metrics = {"val_mae": candidate.val_mae, "val_sharpe": candidate.val_sharpe,
               "val_origins": candidate.origins}
    for name, result in figures.items():
        if name != candidate_name:
            metrics[f"{name}_val_mae"] = result.val_mae
            metrics[f"{name}_val_sharpe"] = result.val_sharpe
    run.log_metrics(metrics)
    rows = [{"model": name, "symbol": s.symbol, "origins": s.origins, "val_mae": s.val_mae,
             "val_sharpe": s.val_sharpe} for name, result in figures.items() for s in result.series]
    run.log_table(pd.DataFrame(rows), "evaluation/per_series.json")
    shown = {name: closes[name] for name in (candidate_name, "pooled", "base") if name in closes}
    run.log_figure(plots.forecast_vs_actual(samples, shown), "plots/forecast_vs_actual.png")
    equity = {**{name: closes[name] for name in closes}, "persistence": None}
    run.log_figure(plots.equity_curves(samples, equity), "plots/equity_curve.png")
