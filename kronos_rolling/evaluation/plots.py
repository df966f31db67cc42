"""Figures logged with each run: forecasts against what happened, the sign rule's equity, and
the per-origin loss differences a decision rests on."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # cron jobs and CI have no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kronos_rolling.evaluation.samples import EvaluationSamples
from kronos_rolling.evaluation.score import Scores


def forecast_vs_actual(samples: EvaluationSamples, closes: dict[str, np.ndarray], max_series: int = 3):
    """One panel per series: actual closes and each model's point forecast (mean of its paths)
    from a few origins."""
    symbols = list(dict.fromkeys(samples.symbols.tolist()))[:max_series]
    fig, axes = plt.subplots(len(symbols), 1, figsize=(10, 3.2 * len(symbols)), squeeze=False)
    horizon = samples.settings.horizon
    for ax, symbol in zip(axes[:, 0], symbols):
        rows = np.flatnonzero(samples.symbols == symbol)
        spacing = _spacing(samples, rows)
        for i, row in enumerate(rows[:: max(1, len(rows) // 4)][:4]):
            times = pd.to_datetime(samples.origin[row], utc=True) + np.arange(horizon) * spacing
            ax.plot(times, samples.actual_close[row], color="black", lw=1.2, label="actual" if i == 0 else None)
            for name, forecast in closes.items():
                ax.plot(times, forecast[row], lw=1, ls="--", label=name if i == 0 else None)
        ax.set_title(f"{symbol}: forecast (mean of {samples.settings.samples} paths) vs actual close")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def equity_curves(samples: EvaluationSamples, scores: dict[str, Scores], buyhold: dict[str, np.ndarray]):
    """Cumulative net return of each model's sign rule on non-overlapping blocks, all series pooled
    in time order, beside buy-and-hold on the same blocks."""
    blocks = samples.blocks()
    rows = np.concatenate(list(blocks.values()))
    order = np.argsort(samples.origin[rows], kind="stable")
    times = pd.to_datetime(samples.origin[rows][order], utc=True)
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, returns in {**{n: s.block_returns for n, s in scores.items()}, "buy-and-hold": buyhold}.items():
        pooled = np.concatenate([returns[symbol] for symbol in blocks])
        ax.plot(times, np.cumsum(pooled[order]), label=name)
    ax.set_title(f"Sign rule held over {samples.settings.horizon}-bar blocks, cost {samples.settings.cost:g} "
                 "per unit traded")
    ax.set_ylabel("cumulative return")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def loss_differences(origin_times: np.ndarray, differences: dict[str, np.ndarray], metric: str):
    """Per-origin loss difference (candidate - other) over time; below zero the candidate is better."""
    fig, ax = plt.subplots(figsize=(10, 4))
    order = np.argsort(origin_times, kind="stable")
    times = pd.to_datetime(origin_times[order], utc=True)
    for name, d in differences.items():
        ax.plot(times, d[order], lw=0.8, marker=".", ms=2, label=f"candidate - {name} (mean {np.mean(d):+.3g})")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(f"Per-origin {metric} difference (below 0: the candidate is better)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def _spacing(samples: EvaluationSamples, rows: np.ndarray) -> pd.Timedelta:
    origins = np.sort(samples.origin[rows])
    if len(origins) < 2:
        return pd.Timedelta(days=1)
    return pd.Timedelta(int(np.median(np.diff(origins))), unit="ns")
