"""Forecasting speed: our KV-cached forecaster against the reference `KronosPredictor`.

Both run the same random Kronos-small weights (built by the reference with a fixed seed,
saved in the hub format and loaded into ours) with the Kronos-Tokenizer-base
configuration, on CPU in float32, greedy (top_k=1): lookback 400 bars, horizon 120, at
batch 1 (`predict`) and batch 16 (`predict_batch`). Prints the speed ratios and checks
that the forecasts agree. Also times our forecaster on the Kronos-base size.

    python bench/forecast_speed.py                      # batch 1 + Kronos-base: ~2-3 min on 2 quiet cores
    python bench/forecast_speed.py --batch-sizes 1,16   # adds batch 16: the reference alone needs 10+ min

Wall-clock figures on a shared machine depend on what else runs: each configuration is
timed `--repeats` times, alternating reference and ours, and the best time of each is
compared (the least disturbed run); the load average during the runs is printed too. On
a busy machine set OMP_WAIT_POLICY=PASSIVE: with the default spin-waiting, many small
operations (our single-bar steps) slow down several-fold when another process holds a core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import model as reference  # kronos-model-arch, the released implementation (test/bench only)
import numpy as np
import pandas as pd
import torch

from kronos_rolling.data.features import FEATURE_COLUMNS
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer

LOOKBACK = 400
HORIZON = 120
MAX_CONTEXT = 512


def random_bars(rng: np.random.Generator, n: int) -> pd.DataFrame:
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.003, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.003, n)))
    volume = rng.lognormal(8, 0.5, n)
    return pd.DataFrame({
        "timestamp": pd.date_range("2024-03-01 09:30", periods=n, freq="5min"),
        "open": open_, "high": high, "low": low, "close": close,
        "volume": volume, "amount": volume * close,
    })


def future_stamps(bars: pd.DataFrame) -> pd.Series:
    last = bars["timestamp"].iloc[-1]
    return pd.Series(pd.date_range(last, periods=HORIZON + 1, freq="5min")[1:])


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def relative_difference(ours: list[pd.DataFrame], theirs: list[pd.DataFrame], series: list[pd.DataFrame]) -> float:
    """Largest |ours - reference| over all bars and columns, in units of each column's lookback std."""
    worst = 0.0
    for mine, ref, bars in zip(ours, theirs, series):
        scale = bars[FEATURE_COLUMNS].to_numpy().std(axis=0) + 1e-9
        diff = np.abs(mine[FEATURE_COLUMNS].to_numpy() - ref[FEATURE_COLUMNS].to_numpy()) / scale
        worst = max(worst, float(diff.max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,16")
    parser.add_argument("--repeats", type=int, default=2, help="timings per configuration; the best is kept")
    parser.add_argument("--skip-base", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    size = MODEL_SIZES["small"]

    torch.manual_seed(0)
    ref_model = reference.Kronos(**size.predictor.to_dict()).eval()
    ref_tokenizer = reference.KronosTokenizer(**size.tokenizer.to_dict()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref_model.save_pretrained(Path(tmp) / "predictor")
        ref_tokenizer.save_pretrained(Path(tmp) / "tokenizer")
        ours = Forecaster(Kronos.from_pretrained(Path(tmp) / "predictor"),
                          KronosTokenizer.from_pretrained(Path(tmp) / "tokenizer"),
                          device="cpu", max_context=MAX_CONTEXT)
    predictor = reference.KronosPredictor(ref_model, ref_tokenizer, device="cpu", max_context=MAX_CONTEXT)

    rng = np.random.default_rng(0)
    series = [random_bars(rng, LOOKBACK) for _ in range(max(batch_sizes))]

    def run_reference(batch):
        frames = [s.drop(columns="timestamp") for s in batch]
        if len(batch) == 1:
            return [predictor.predict(frames[0], batch[0]["timestamp"], future_stamps(batch[0]), HORIZON,
                                      T=1.0, top_k=1, top_p=0.9, sample_count=1, verbose=False)]
        return predictor.predict_batch(frames, [s["timestamp"] for s in batch], [future_stamps(s) for s in batch],
                                       HORIZON, T=1.0, top_k=1, top_p=0.9, sample_count=1, verbose=False)

    def run_ours(batch):
        results = ours.forecast(batch, HORIZON, top_k=1)
        return [r.mean for r in results]

    # Warm up both (first calls allocate and pick kernels).
    ours.forecast(series[0].iloc[:50], 2, top_k=1)
    predictor.predict(series[0].iloc[:50].drop(columns="timestamp"), series[0]["timestamp"].iloc[:50],
                      future_stamps(series[0].iloc[:50])[:2], 2, top_k=1, verbose=False)

    print(f"Kronos-small weights (random, seed 0), Tokenizer-base config; lookback {LOOKBACK}, horizon {HORIZON}, "
          f"max_context {MAX_CONTEXT}, CPU float32, {args.threads} threads, greedy (top_k=1), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, best of {args.repeats}")
    print(f"{'batch':>5} {'reference s':>12} {'ours s':>8} {'speed-up':>9} {'max diff (std units)':>21} "
          f"{'load avg':>12}")
    disagreements = []
    for batch_size in batch_sizes:
        batch = series[:batch_size]
        ref_times, our_times, loads = [], [], [load()]
        for _ in range(args.repeats):
            theirs, seconds = timed(lambda: run_reference(batch))
            ref_times.append(seconds)
            loads.append(load())
            mine, seconds = timed(lambda: run_ours(batch))
            our_times.append(seconds)
            loads.append(load())
        diff = relative_difference(mine, [t.reset_index(drop=True) for t in theirs], batch)
        agree = "agree" if diff < 1e-3 else "DIFFER"
        if agree == "DIFFER":
            disagreements.append(batch_size)
        best_ref, best_ours = min(ref_times), min(our_times)
        print(f"{batch_size:>5} {best_ref:>12.2f} {best_ours:>8.2f} {best_ref / best_ours:>8.1f}x "
              f"{diff:>14.2e} {agree:>6} {min(loads)}-{max(loads):>4}", flush=True)

    if not args.skip_base:
        base = MODEL_SIZES["base"]
        torch.manual_seed(0)
        base_forecaster = Forecaster(Kronos(**base.predictor.to_dict()), KronosTokenizer(**base.tokenizer.to_dict()),
                                     device="cpu", max_context=base.max_context)
        base_forecaster.forecast(series[0].iloc[:50], 2, top_k=1)
        seconds = min(timed(lambda: base_forecaster.forecast(series[0], HORIZON, top_k=1))[1]
                      for _ in range(args.repeats))
        n_params = sum(p.numel() for p in base_forecaster.model.parameters())
        print(f"ours, Kronos-base size ({n_params / 1e6:.1f}M parameters), batch 1: {seconds:.2f} s "
              f"(load avg {load()})")
    if disagreements:  # a speed-up over different forecasts means nothing: fail loudly
        raise SystemExit(f"forecasts differ from the reference at batch size(s) {disagreements}")


if __name__ == "__main__":
    main()
