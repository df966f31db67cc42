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


BLOCKS_SHOWN = 6  # consecutive forecasts per series: the x-axis spans this many horizons, so each is readable


def forecast_vs_actual(samples: EvaluationSamples, closes: dict[str, np.ndarray], max_series: int = 3):
    """One panel per series: BLOCKS_SHOWN consecutive, non-overlapping forecasts from the middle of
    the span, each model's point forecast (mean of its paths, with markers) against the actual
    close, every forecast drawn from the last close it saw. The axis spans BLOCKS_SHOWN horizons,
    so a 4-bar forecast is as readable as a 16-bar one."""
    symbols = list(dict.fromkeys(samples.symbols.tolist()))[:max_series]
    fig, axes = plt.subplots(len(symbols), 1, figsize=(10, 3.4 * len(symbols)), squeeze=False)
    horizon = samples.settings.horizon
    colors = dict(zip(closes, plt.rcParams["axes.prop_cycle"].by_key()["color"][1:]))
    for ax, symbol in zip(axes[:, 0], symbols):
        rows = samples.blocks()[symbol]
        start = max(0, (len(rows) - BLOCKS_SHOWN) // 2)
        rows = rows[start:start + BLOCKS_SHOWN]
        spacing = _spacing(samples, np.flatnonzero(samples.symbols == symbol))
        for i, row in enumerate(rows):
            first = pd.to_datetime(samples.origin[row], utc=True)
            times = first + np.arange(-1, horizon) * spacing  # from the last close seen, then the horizon
            seen = samples.last_close[row]
            ax.plot(times, np.r_[seen, samples.actual_close[row]], color="black", lw=1.4, marker="o", ms=3,
                    label="actual" if i == 0 else None)
            for name, forecast in closes.items():
                ax.plot(times, np.r_[seen, forecast[row]], color=colors.get(name), lw=1.1, ls="--", marker="o",
                        ms=2.5, label=name if i == 0 else None)
            ax.axvline(times[0], color="grey", lw=0.5, ls=":")
        ax.set_title(f"{symbol}: {len(rows)} consecutive {horizon}-bar forecasts (mean of "
                     f"{samples.settings.samples} paths) vs actual close; dotted lines: forecast origins",
                     fontsize=9)
        ax.set_ylabel("close")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)  # each panel its own span, so each its own labels
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
    """Per-origin difference (candidate - other) over time; below zero the candidate is better (above, for a skill)."""
    fig, ax = plt.subplots(figsize=(10, 4))
    order = np.argsort(origin_times, kind="stable")
    times = pd.to_datetime(origin_times[order], utc=True)
    for name, d in differences.items():
        ax.plot(times, d[order], lw=0.8, marker=".", ms=2, label=f"candidate - {name} (mean {np.mean(d):+.3g})")
    ax.axhline(0, color="black", lw=0.8)
    better = "above" if metric.endswith("_skill") else "below"
    ax.set_title(f"Per-origin {metric} difference ({better} 0: the candidate is better)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def _spacing(samples: EvaluationSamples, rows: np.ndarray) -> pd.Timedelta:
    origins = np.sort(samples.origin[rows])
    if len(origins) < 2:
        return pd.Timedelta(days=1)
    return pd.Timedelta(int(np.median(np.diff(origins))), unit="ns")


def pit_histograms(pits: dict[str, np.ndarray], weights: np.ndarray, samples: int):
    """The PIT (rank) histogram of each model's paths at the horizon's end, weighted as every figure:
    flat at 1 when the outcomes are exchangeable with the paths; a U says the paths are too narrow,
    a hump too wide, a slope biased (evaluation/calibration.py)."""
    fig, axes = plt.subplots(1, len(pits), figsize=(3.4 * len(pits), 3.2), squeeze=False, sharey=True)
    edges = np.linspace(0, 1, samples + 2)  # K paths: K + 1 equally likely ranks
    for ax, (name, pit) in zip(axes[0], pits.items()):
        density, _ = np.histogram(pit, bins=edges, weights=weights, density=True)
        ax.bar(edges[:-1], density, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.7,
               edgecolor="white")
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("PIT (rank of the outcome among the paths)", fontsize=8)
    axes[0, 0].set_ylabel("density (1: calibrated)")
    fig.suptitle(f"PIT histograms at the horizon's end, {samples} paths per origin", fontsize=9)
    fig.tight_layout()
    return fig
