"""Evaluation against training, at the CPU-sized settings of the demo and `simulate` (issue 11).

The goal: evaluating five models with K=16 sample paths on every origin of the validation
month costs no more than the training in the same run. Measured in one process, on the
same data and cores:

  train      crypto's rolling fine-tune as the replay runs it (SimulationSettings: tiny base,
             lookback 32, horizon 4, 5 epochs of 256 samples, warm start = pooled), timed by fit()
  evaluate   the evaluation the job runs after it: candidate, pooled, production, warm start
             and the bare base (five models, each loaded on its own, so none is skipped as a
             duplicate) plus persistence, K=16 paths, every origin of the month, NLL included

and prints evaluate / train (goal <= 1) and the load average.

    python bench/eval_cost.py                       # crypto, as of 2018-01-01 (December 2017: 830+ origins)
    python bench/eval_cost.py --as-of 2018-04-01 --samples 16

The tiny base is pre-trained on the bundled bars before the validation month on first use
(a few minutes; reused from KRONOS_HOME/bases afterwards), as `simulate` does.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.forecasts import ForecastModel
from kronos_rolling.evaluation.span import evaluate_span
from kronos_rolling.pipeline.replay import SimulationSettings, offline_tiny_base
from kronos_rolling.settings import load_settings
from kronos_rolling.tracking.adapters import load_base_forecast_model
from kronos_rolling.training.loop import build_trainee, fit, training_symbols


def _trainee(config, store, warm_start_dir=None):
    """The adapter a training step would start from, with its data sets (as pipeline/steps.py builds them)."""
    model, tokenizer = config.base.load()
    calendar = store.events()
    trainee, _ = build_trainee(model, tokenizer, calendar.event_types(), config.lora, warm_start_dir, config.seed)
    window, symbols = config.window(), training_symbols(config, store)
    sets = [BarWindowDataset(store, symbols, *span, config.lookback, config.horizon, trainee.vocabulary,
                             stride=config.stride, seed=config.seed, calendar=calendar, max_samples=cap)
            for span, cap in ((window.fit_span, None), (window.inner_val_span, config.max_inner_val_samples))]
    return trainee, sets


def _train(config, store, warm_start_dir=None):
    trainee, (train_set, inner_set) = _trainee(config, store, warm_start_dir)
    result = fit(trainee, train_set, inner_set, config, device=torch.device("cpu"), progress=False)
    trainee.model.eval()
    return trainee, result


def _forecast_model(trainee, base) -> ForecastModel:
    return ForecastModel(trainee.model, trainee.tokenizer, trainee.event_embedding.eval(), trainee.vocabulary,
                         base.max_context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--as-of", default="2018-01-01", help="the candidate's as_of (validation: the month before)")
    parser.add_argument("--asset-class", default="crypto")
    parser.add_argument("--samples", type=int, default=None, help="K paths per origin (default: the job's, 16)")
    args = parser.parse_args()

    torch.manual_seed(0)
    settings, store = SimulationSettings(), DataStore()
    as_of = pd.Timestamp(args.as_of, tz="UTC")
    previous = as_of - pd.DateOffset(months=1)
    home = load_settings().home.root
    base = offline_tiny_base(store, home, previous - pd.DateOffset(months=1), progress=False)
    print(f"base: {base.predictor}; torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory(prefix="eval-cost-") as tmp:
        pooled, _ = _train(settings.train_config("pooled", f"{previous:%Y-%m-%d}", None, base), store)
        pooled.save(Path(tmp) / "pooled")
        production, _ = _train(settings.train_config("rolling", f"{previous:%Y-%m-%d}", args.asset_class, base),
                               store, Path(tmp) / "pooled")
        production.save(Path(tmp) / "production")
        config = settings.train_config("rolling", f"{as_of:%Y-%m-%d}", args.asset_class, base)
        candidate, fitted = _train(config, store, Path(tmp) / "production")
        train_seconds = fitted.seconds

        # Five models, each its own object: a second copy of production stands for the warm start.
        warm, _ = _trainee(config, store, Path(tmp) / "production")
        warm.model.eval()
        models = {"candidate": _forecast_model(candidate, base), "pooled": _forecast_model(pooled, base),
                  "production": _forecast_model(production, base), "warm_start": _forecast_model(warm, base),
                  "base": load_base_forecast_model(base)}
        eval_settings = settings.eval_settings()
        if args.samples:
            eval_settings = replace(eval_settings, samples=args.samples)
        started = time.perf_counter()
        evaluation = evaluate_span(store, [args.asset_class], config.window().val_span, models, eval_settings,
                                   candidate.vocabulary)
        eval_seconds = time.perf_counter() - started

    print(f"training: {len(fitted.history)} epochs x {settings.max_samples_per_epoch} samples, "
          f"{fitted.samples} samples in all: {train_seconds:.1f} s")
    print(f"evaluation: {len(models)} models x {evaluation.origins} origins (every origin: "
          f"{evaluation.origins == evaluation.candidates}) x K={eval_settings.samples} paths, NLL and persistence: "
          f"{eval_seconds:.1f} s ({eval_seconds / len(models):.1f} s per model)")
    print(f"evaluate / train = {eval_seconds / train_seconds:.2f}  (goal <= 1); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
