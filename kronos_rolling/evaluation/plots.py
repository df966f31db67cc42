"""Figures logged with each run: forecasts against what happened, and the strategy's equity."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # cron jobs and CI have no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kronos_rolling.evaluation.samples import EvaluationSamples
from kronos_rolling.evaluation.score import cumulative_returns, strategy_returns


def forecast_vs_actual(samples: EvaluationSamples, closes: dict[str, np.ndarray], max_series: int = 3):
    """One panel per series: actual closes and each model's forecast from a few origins."""
    symbols = list(dict.fromkeys(samples.symbols))[:max_series]
    fig, axes = plt.subplots(len(symbols), 1, figsize=(10, 3.2 * len(symbols)), squeeze=False)
    horizon = samples.settings.horizon
    for ax, symbol in zip(axes[:, 0], symbols):
        rows = np.flatnonzero(np.asarray(samples.symbols) == symbol)
        rows = rows[np.argsort(samples.origin[rows])]
        step = max(1, len(rows) // 4)
        shown = rows[::step][:4]
        for i, row in enumerate(shown):
            times = pd.to_datetime(samples.origin[row], utc=True) + np.arange(horizon) * _spacing(samples, rows)
            ax.plot(times, samples.actual_close[row], color="black", lw=1.2, label="actual" if i == 0 else None)
            for name, forecast in closes.items():
                ax.plot(times, forecast[row], lw=1, ls="--", label=name if i == 0 else None)
        ax.set_title(f"{symbol}: forecast vs actual close ({horizon}-bar horizon)")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def equity_curves(samples: EvaluationSamples, closes: dict[str, np.ndarray | None]):
    """Cumulative return of the sign rule per model, all series pooled in time order."""
    hold = samples.settings.hold
    actual = cumulative_returns(samples.actual_close, samples.last_close)[:, hold - 1]
    order = np.argsort(samples.origin, kind="stable")
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, forecast in closes.items():
        predicted = (np.zeros_like(actual) if forecast is None
                     else cumulative_returns(forecast, samples.last_close)[:, hold - 1])
        equity = np.cumsum(strategy_returns(predicted[order], actual[order], samples.settings.cost))
        ax.plot(pd.to_datetime(samples.origin[order], utc=True), equity, label=name)
    ax.set_title(f"Equity of the sign rule (hold {hold} bar(s), cost {samples.settings.cost:g} per unit traded)")
    ax.set_ylabel("cumulative return")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def _spacing(samples: EvaluationSamples, rows: np.ndarray) -> pd.Timedelta:
    origins = np.sort(samples.origin[rows])
    if len(origins) < 2:
        return pd.Timedelta(days=1)
    return pd.Timedelta(int(np.median(np.diff(origins))) // samples.settings.hold, unit="ns")
