"""The guard's error rates, measured with planted truths on the bundled history.

    python bench/guard_power.py                      # 12 months from 2017-07, every class, H=4
    python bench/guard_power.py --months 3 --eval-samples 8   # a quicker look

Per class and month, as the monthly job would (CPU-sized settings of `simulate`), it trains
two rolling fine-tunes that differ only in their seed (A and B, warm-started from pooled A),
and, once, two pooled adapters that differ only in their seed (pooled A and B). Every model
is evaluated on the month's validation span (every origin, K paths), then the guard's pure
rules are applied to planted truths:

- false promotions: B, as candidate, against A in @production (pooled A the reference).
  B is truly no better: the two are draws of the same training. Goal: <= 10% of class-months
  at the default settings. Also with min_confidence off (point estimates only).
- power: A as candidate against an incumbent that is A degraded by a known amount (its
  point forecast moved by delta x the series' typical move, a fresh normal draw per origin),
  for several delta; the rate at which the guard finds A significantly better.
- false withdrawals: pooled B in @production, judged by the incumbent check against pooled
  A as the fallback. Pooled B is truly as good as pooled A. Goal: <= 5% of class-months.
  For the phase's bare ratio rule (>10% worse), the ratio and significance (the default),
  and each required two months in a row.
- false regression alerts: B against A, >10% worse and significant.

Per-origin losses are cached in --workdir (class-month .npz files), so a second run only
recomputes the decisions. Prints one table; docs/evaluation.md ("Error rates") has the figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.store import DataStore
from kronos_rolling.data.windows import select_training_window
from kronos_rolling.errors import DataError
from kronos_rolling.evaluation.compare import paired_difference, time_weights
from kronos_rolling.evaluation.forecasts import ForecastModel
from kronos_rolling.evaluation.score import cumulative_returns, origin_mae
from kronos_rolling.evaluation.span import PERSISTENCE, evaluate_span
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.pipeline.replay import SimulationSettings
from kronos_rolling.registry.guard import EvalFigures, decide_incumbent, decide_promotion
from kronos_rolling.settings import Thresholds
from kronos_rolling.tracking.adapters import AdapterSource, bundle_in, load_base_forecast_model, load_forecast_model
from kronos_rolling.training.loop import build_trainee, fit, training_symbols
from kronos_rolling.training.pretrain.config import PretrainConfig
from kronos_rolling.training.pretrain.run import is_current_pretrain, run_pretraining

MODELS = ("cand_a", "cand_b", "pooled_a", "pooled_b", "base")
DEGRADATIONS = (0.1, 0.25, 0.5, 1.0)
def pretrained_base(store: DataStore, folder: Path, until: pd.Timestamp) -> BaseModelRef:
    """The tiny base as `simulate` pre-trains it (about a minute on two cores), cached in `folder`."""
    config = PretrainConfig(until=until.isoformat(), size="tiny", seed=0)
    if not is_current_pretrain(folder, config, store):
        run_pretraining(store, folder, config, force=True, progress=False)
    return BaseModelRef.resolve(str(folder))


def train(store: DataStore, settings: SimulationSettings, mode: str, as_of: date, asset_class: str | None,
          base: BaseModelRef, seed: int, warm_start: Path | None, out: Path) -> Path:
    """One fine-tune as the job runs it (CPU-sized), saved as an adapter bundle; reused when present."""
    if (out / "adapter_config.json").exists():
        return out
    config = replace(settings.train_config(mode, as_of, asset_class, base), seed=seed)
    model, tokenizer = base.load()
    calendar = store.events()
    trainee, _ = build_trainee(model, tokenizer, calendar.event_types(), config.lora, warm_start, seed)
    window = config.window()
    symbols = training_symbols(config, store)
    train_set = BarWindowDataset(store, symbols, *window.fit_span, config.lookback, config.horizon,
                                 trainee.vocabulary, stride=config.stride, seed=seed, calendar=calendar)
    inner = BarWindowDataset(store, symbols, *window.inner_val_span, config.lookback, config.horizon,
                             trainee.vocabulary, stride=config.stride, seed=seed, calendar=calendar,
                             max_samples=config.max_inner_val_samples)
    fit(trainee, train_set, inner, config, device=torch.device("cpu"), progress=False)
    trainee.save(out)
    return out


def load(base: BaseModelRef, bundle: Path | None) -> ForecastModel:
    if bundle is None:
        return load_base_forecast_model(base)
    return load_forecast_model(AdapterSource(uri=str(bundle), bundle_dir=bundle_in(bundle)), base)


def measure(store, settings, base, pooled, month: pd.Timestamp, asset_class: str, workdir: Path) -> Path | None:
    """Per-origin losses of every model on the class-month's validation span (cached)."""
    cache = workdir / f"{asset_class}-{month:%Y-%m}.npz"
    if cache.exists():
        return cache
    as_of = month.date()
    bundles = {name: train(store, settings, "rolling", as_of, asset_class, base, seed, pooled["pooled_a"],
                           workdir.parent / f"adapters-h{settings.horizon}" / f"{asset_class}-{month:%Y-%m}-{name}")
               for name, seed in (("cand_a", settings.seed), ("cand_b", settings.seed + 1))}
    models = {name: load(base, path) for name, path in {**bundles, **pooled, "base": None}.items()}
    eval_settings = settings.eval_settings()
    window = select_training_window(as_of)
    try:
        evaluation = evaluate_span(store, [asset_class], window.val_span, models, eval_settings,
                                   models["cand_a"].vocabulary)
    except DataError:
        return None
    samples = evaluation.samples[asset_class]
    actual = samples.actual_returns
    arrays = {"series": evaluation.groups.astype(str), "times": evaluation.origin_times,
              "ends": evaluation.horizon_ends, "actual": actual}
    for name in (*MODELS, PERSISTENCE):
        arrays[f"mae_{name}"] = evaluation.scores(name).mae
    sharpe = evaluation.difference("cand_a", "pooled_a", "val_sharpe")  # how wide a month's Sharpe change is
    arrays["sharpe_change"] = np.array([sharpe.mean, sharpe.lo, sharpe.hi])
    arrays["point_cand_a"] = cumulative_returns(evaluation.point_paths[asset_class]["cand_a"], samples.last_close)
    np.savez(cache, **arrays)
    return cache


def figures(mae, weights, persistence_mae, diff_vs_persistence, version=None) -> EvalFigures:
    val_mae = float(weights @ mae)
    skill = 1 - val_mae / float(weights @ persistence_mae)
    return EvalFigures(val_mae=val_mae, val_sharpe=math.nan, val_mae_skill=skill, origins=len(mae), version=version,
                       vs_persistence=diff_vs_persistence)


def decisions(path: Path, horizon: int, rng: np.random.Generator) -> dict:
    data = np.load(path, allow_pickle=False)
    series, times, ends = data["series"], data["times"], data["ends"]

    def diff(a, b):
        return paired_difference(a, b, series=series, times=times, horizon=horizon, ends=ends, metric="val_mae")

    weights = time_weights(series, times)
    persistence = data[f"mae_{PERSISTENCE}"]
    fig = {m: figures(data[f"mae_{m}"], weights, persistence, diff(data[f"mae_{m}"], persistence), m)
           for m in MODELS}
    out = {"horizons": diff(data["mae_cand_a"], data["mae_cand_b"]).horizons}
    if "sharpe_change" in data:
        out["sharpe_width"] = float(data["sharpe_change"][2] - data["sharpe_change"][1])
    for label, thresholds in (("default", Thresholds()), ("point", Thresholds(min_confidence=False))):
        decision = decide_promotion(fig["cand_b"], pooled=fig["pooled_a"], production=fig["cand_a"], base=fig["base"],
                                    vs_pooled=diff(data["mae_cand_b"], data["mae_pooled_a"]),
                                    vs_production=diff(data["mae_cand_b"], data["mae_cand_a"]),
                                    vs_base=diff(data["mae_cand_b"], data["mae_base"]), thresholds=thresholds)
        out[f"false_promotion_{label}"] = decision.promote
        out[f"decided_{label}"] = not decision.pending
        out[f"false_regression_{label}"] = decision.regression_alert
        # the incumbent comparison alone: B significantly (or, point: on average) better than A
        versus = diff(data["mae_cand_b"], data["mae_cand_a"])
        out[f"beats_incumbent_{label}"] = bool(versus.has_interval and (
            versus.hi < 0 if thresholds.min_confidence else versus.mean < 0))
    for label, thresholds in (("ratio", Thresholds(withdraw_significant=False)), ("default", Thresholds())):
        check = decide_incumbent(fig["pooled_b"], fig["pooled_a"], diff(data["mae_pooled_b"], data["mae_pooled_a"]),
                                 thresholds)
        out[f"false_withdrawal_{label}"] = check.withdraw
    # Power: A against A degraded by delta x the series' typical move, per origin.
    actual, point = data["actual"], data["point_cand_a"]
    typical = {s: np.abs(actual[series == s]).mean() for s in np.unique(series)}
    scale = np.array([typical[s] for s in series])[:, None]
    for delta in DEGRADATIONS:
        degraded = origin_mae(point + delta * scale * rng.standard_normal((len(point), 1)), actual)
        versus = diff(data["mae_cand_a"], degraded)
        out[f"power_{delta}"] = bool(versus.has_interval and versus.hi < 0)
        out[f"degradation_{delta}"] = float(weights @ degraded) / float(weights @ data["mae_cand_a"]) - 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", default="2017-07")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--classes", default=",".join(ASSET_CLASSES))
    parser.add_argument("--eval-samples", type=int, default=SimulationSettings.eval_samples)
    parser.add_argument("--horizon", type=int, default=SimulationSettings.horizon)
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".kronos-rolling" / "bench-guard-power")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    settings = SimulationSettings(eval_samples=args.eval_samples, horizon=args.horizon)
    workdir = args.workdir / f"h{args.horizon}-k{args.eval_samples}"
    workdir.mkdir(parents=True, exist_ok=True)
    store = DataStore()
    months = list(pd.date_range(args.start + "-01", periods=args.months, freq="MS"))
    started = time.monotonic()
    base = pretrained_base(store, args.workdir / "base", (months[0] - pd.DateOffset(months=1)).tz_localize("UTC"))
    as_of = months[0].date()
    adapters = args.workdir / f"adapters-h{args.horizon}"
    pooled = {name: train(store, settings, "pooled", as_of, None, base, seed, None, adapters / name)
              for name, seed in (("pooled_a", settings.seed), ("pooled_b", settings.seed + 1))}
    rows = []
    rng = np.random.default_rng(7)
    for month in months:
        for asset_class in args.classes.split(","):
            tick = time.monotonic()
            path = measure(store, settings, base, pooled, month, asset_class, workdir)
            if path is None:
                continue
            row = {"asset_class": asset_class, "month": f"{month:%Y-%m}", **decisions(path, args.horizon, rng)}
            rows.append(row)
            print(f"{row['month']} {asset_class:<15} {row['horizons']:6.1f} horizons "
                  f"({time.monotonic() - tick:.0f}s)", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(workdir / "decisions.csv", index=False)
    print(summary(frame, args))
    print(f"{len(frame)} class-months in {time.monotonic() - started:.0f}s; rows in {workdir / 'decisions.csv'}")
    return 0


def two_in_a_row(frame: pd.DataFrame, column: str) -> float:
    hits = []
    for _, rows in frame.sort_values("month").groupby("asset_class"):
        flags = rows[column].astype(bool).to_numpy()
        hits.extend(flags[1:] & flags[:-1])
    return float(np.mean(hits)) if hits else math.nan


def summary(frame: pd.DataFrame, args) -> str:
    decided = frame["decided_default"]
    lines = [f"guard error rates on {len(frame)} class-months ({args.start} + {args.months} months, "
             f"H={args.horizon}, K={args.eval_samples}); decidable (an interval on >= 3 horizons) in "
             f"{decided.mean():.0%}",
             "  per class: " + ", ".join(f"{c} {g['decided_default'].mean():.0%} of {len(g)}"
                                         for c, g in frame.groupby("asset_class")),
             "",
             "| measure | rate |", "|---|---|",
             f"| false promotions, default (significance) | {frame['false_promotion_default'].mean():.1%} |",
             f"| false promotions, point estimates (min_confidence off) | {frame['false_promotion_point'].mean():.1%} |",
             f"| B beats A, the incumbent comparison alone: default / point | "
             f"{frame['beats_incumbent_default'].mean():.1%} / {frame['beats_incumbent_point'].mean():.1%} |",
             f"| false regression alerts (>10% worse and significant) | "
             f"{frame['false_regression_default'].mean():.1%} |",
             f"| false withdrawals, ratio > 1.1 only (the phase's bare rule) | "
             f"{frame['false_withdrawal_ratio'].mean():.1%} |",
             f"| false withdrawals, ratio > 1.1 two months in a row | "
             f"{two_in_a_row(frame, 'false_withdrawal_ratio'):.1%} |",
             f"| false withdrawals, ratio > 1.1 and significant (default) | "
             f"{frame['false_withdrawal_default'].mean():.1%} |",
             "", "| degradation of the incumbent (delta) | val_mae worse by | promoted (significantly better) |",
             "|---|---|---|"]
    for delta in DEGRADATIONS:
        lines.append(f"| {delta} | {frame[f'degradation_{delta}'].mean():+.1%} | {frame[f'power_{delta}'].mean():.0%} |")
    if "sharpe_width" in frame:
        widths = frame.groupby("asset_class")["sharpe_width"].median()
        lines.append("\nmedian width of one month's 90% interval of a Sharpe change (candidate - pooled): "
                     + ", ".join(f"{c} {w:.2f}" for c, w in widths.items() if np.isfinite(w)))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
