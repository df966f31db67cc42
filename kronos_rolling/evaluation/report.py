"""What an evaluation writes into an MLflow run: every model's figures under one naming scheme,
the paired differences with their intervals, a per-series table and plots.

Names: the evaluated model's figures are `val_mae`, `val_nll`, `val_crps`, `val_mae_skill`,
`val_crps_skill`, `val_sharpe`, `val_coverage_50|80|90` (and `_steps`); every other model's
carry its name as a prefix (`pooled_val_nll`, `production_val_crps`, `base_val_mae_skill`,
`persistence_val_mae`, `naive_val_crps`, `buyhold_val_sharpe`); a model carrying a
calibration adds `calibrated_val_coverage_*` and, out of sample, `served_val_coverage_*`
(`production_served_val_coverage_80`). Differences (evaluated model - other, same origins):
`vs_<other>_<mae|nll|crps|sharpe>_diff` with `_lo` and `_hi`, the ends of the interval;
against the naive baseline `vs_naive_<mae|crps>_diff`.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pandas as pd

from kronos_rolling.evaluation import plots
from kronos_rolling.evaluation.compare import Difference
from kronos_rolling.evaluation.span import BASELINES, BUY_AND_HOLD, NAIVE, SpanEvaluation

COMPARED = ("pooled", "production", "base", "warm_start")  # what an evaluated model is compared with
NAIVE_METRICS = ("val_mae", "val_crps")  # compared with the naive baseline (it has no NLL; its Sharpe is noise)


def differences(evaluation: SpanEvaluation, name: str = "candidate") -> dict[str, dict[str, Difference]]:
    """{other: {metric: name - other}} for every other model evaluated beside `name`."""
    found = {}
    for other in COMPARED:
        if other in evaluation.models and other != name:
            found[other] = {metric: evaluation.difference(name, other, metric)
                            for metric in ("val_mae", "val_nll", "val_crps", "val_sharpe")}
    found[NAIVE] = {metric: evaluation.difference(name, NAIVE, metric) for metric in NAIVE_METRICS}
    return found


def metrics_of(evaluation: SpanEvaluation, name: str = "candidate") -> dict[str, float]:
    """Every figure and difference of the run, named as the module docstring says (NaN left out)."""
    metrics = {}
    for model in [*evaluation.models, *BASELINES]:
        prefix = "" if model == name else f"{model}_"
        metrics.update({f"{prefix}{key}": value for key, value in evaluation.figures(model).items()})
    metrics[f"{BUY_AND_HOLD}_val_sharpe"] = evaluation.buyhold_sharpe()
    for other, by_metric in differences(evaluation, name).items():
        for metric, difference in by_metric.items():
            short = metric.removeprefix("val_")
            metrics.update({f"vs_{other}_{short}_diff": difference.mean, f"vs_{other}_{short}_diff_lo": difference.lo,
                            f"vs_{other}_{short}_diff_hi": difference.hi})
    if len(evaluation.classes) > 1:
        for asset_class, scores in evaluation.per_class.items():
            metrics.update({f"{model}_val_mae_{asset_class}": s.val_mae for model, s in scores.items()})
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def log_evaluation(run, evaluation: SpanEvaluation, name: str = "candidate", primary: str = "val_mae") -> None:
    """`run`: a tracking.runs.TrackedRun. Settings as `eval_*` params, figures as metrics, tables, plots."""
    settings = evaluation.settings
    params = {f"eval_{key}": value for key, value in asdict(settings).items() if key not in ("lookback", "horizon")}
    params["eval_max_origins"] = settings.max_origins or "all"
    params["eval_origins"] = evaluation.origins
    params["eval_origins_in_span"] = evaluation.candidates
    launched = run.params()
    run.log_params({k: v for k, v in params.items() if k not in launched})
    run.log_metrics(metrics_of(evaluation, name))
    if evaluation.notes:
        run.set_tags({"evaluation_notes": "; ".join(evaluation.notes)[:4000]})
    run.log_table(per_series(evaluation), "evaluation/per_series.json")

    first = evaluation.classes[0]
    samples = evaluation.samples[first]
    shown = {m: evaluation.point_paths[first][m] for m in (name, "pooled", "base") if m in evaluation.point_paths[first]}
    run.log_figure(plots.forecast_vs_actual(samples, shown), "plots/forecast_vs_actual.png")
    scores = {m: evaluation.per_class[first][m] for m in evaluation.models}
    run.log_figure(plots.equity_curves(samples, scores, evaluation.buyhold_returns([first])),
                   "plots/equity_curve.png")
    others = [o for o in ("pooled", "production") if o in evaluation.models and o != name]
    if others:
        own = evaluation.per_origin(name, primary)
        diffs = {o: own - evaluation.per_origin(o, primary) for o in others
                 if own is not None and evaluation.per_origin(o, primary) is not None}
        times = np.concatenate([evaluation.samples[c].origin for c in evaluation.classes])
        if diffs:
            run.log_figure(plots.loss_differences(times, diffs, primary), "plots/loss_differences.png")
    shown = {m: evaluation.scores(m).pit for m in (name, "production", "pooled", NAIVE) if m in evaluation.per_class[first]}
    run.log_figure(plots.pit_histograms(shown, evaluation.layout.weights, evaluation.settings.samples),
                   "plots/pit.png")


def per_series(evaluation: SpanEvaluation) -> pd.DataFrame:
    rows = []
    for asset_class, by_model in evaluation.per_class.items():
        symbols = evaluation.samples[asset_class].symbols
        for model, scores in by_model.items():
            for symbol in dict.fromkeys(symbols.tolist()):
                mine = symbols == symbol
                rows.append({"class": asset_class, "model": model, "symbol": symbol, "origins": int(mine.sum()),
                             "val_mae": float(scores.mae[mine].mean()), "val_crps": float(scores.crps[mine].mean()),
                             "val_nll": float("nan") if scores.nll is None else float(scores.nll[mine].mean()),
                             "val_coverage_80": (float("nan") if scores.inside is None
                                                 else float(scores.inside[0.8][mine, -1].mean()))})
    return pd.DataFrame(rows)

