"""Paired comparisons of two models on the same origins, with an interval that respects overlap.

Two models scored on the very same origins give per-origin losses a and b; the comparison
is d = a - b (negative: the first model is better). Consecutive origins of one series
share H - 1 bars of their horizons, so their differences are correlated; the interval
is the Diebold-Mariano one, with its long-run (HAC) variance and the Harvey-Leybourne-
Newbold small-sample correction:

    per series s:  mean_s = mean(d_s),  n_s origins,  L = H - 1 (h-step forecasts overlap by H - 1)
                   lrv_s = g_0 + 2 sum_{k=1..L} g_k,  g_k the lag-k autocovariance of d_s
                           (Bartlett weights 1 - k/(L+1) instead, if that sum is not positive)
                   var(mean_s) = lrv_s / n_s * n_s / (n_s + 1 - 2H + H(H-1)/n_s)
    overall:       mean = sum_s (n_s/N) mean_s,  var = sum_s (n_s/N)^2 var(mean_s)
    interval:      mean -/+ t * sqrt(var),  t the Student quantile of (1 + confidence) / 2, N - 1 dof

Series are taken as independent of each other. Simulated MA(H-1) differences (the overlap
structure) are covered 86-90% of the time by the 90% interval once a series has 30 or more
origins and 4H or more; with fewer than 3H origins in every series there is no interval:
`lo` and `hi` are NaN and `reason` says why.

The Sharpe ratio is not an average of per-origin losses; its change gets a bootstrap
interval instead: the sign rule's block returns (non-overlapping, so roughly
independent) are resampled with replacement within each series, paired between the two
models, and the change of the mean-over-series Sharpe is recomputed each time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kronos_rolling.evaluation.score import sharpe_of


@dataclass(frozen=True)
class Difference:
    """first - second, on the same origins (for losses, negative: the first is better)."""

    metric: str
    mean: float
    lo: float
    hi: float
    origins: int
    confidence: float
    reason: str | None = None  # why there is no interval, when there is none

    @property
    def has_interval(self) -> bool:
        return self.reason is None and math.isfinite(self.lo) and math.isfinite(self.hi)

    def describe(self) -> str:
        interval = (f"[{self.lo:+.3g}, {self.hi:+.3g}] ({self.confidence:.0%})" if self.has_interval
                    else f"(no interval: {self.reason})")
        return f"{self.metric} {self.mean:+.3g} {interval} on {self.origins} origins"


def paired_difference(first: np.ndarray, second: np.ndarray, groups: np.ndarray, horizon: int, *,
                      metric: str, confidence: float = 0.90) -> Difference:
    """first - second per origin; `groups` names each origin's series, origins in time order within it."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.shape != np.asarray(groups).shape:
        raise ValueError(f"shapes differ: {first.shape}, {second.shape}, {np.asarray(groups).shape}")
    d = first - second
    n = len(d)
    if n == 0:
        return Difference(metric, math.nan, math.nan, math.nan, 0, confidence, "no origins")
    if not np.all(np.isfinite(d)):
        return Difference(metric, float(np.mean(d)), math.nan, math.nan, n, confidence, "a loss is not finite")
    groups = np.asarray(groups)
    needed = max(3 * horizon, 3)
    mean, variance, usable = 0.0, 0.0, 0
    for group in dict.fromkeys(groups.tolist()):
        d_s = d[groups == group]
        weight = len(d_s) / n
        mean += weight * float(d_s.mean())
        if len(d_s) >= needed:
            usable += len(d_s)
            variance += weight**2 * diebold_mariano_variance_of_mean(d_s, horizon)
    if usable == 0:
        return Difference(metric, mean, math.nan, math.nan, n, confidence,
                          f"{n} origins, but no series has the {needed} an interval over "
                          f"{horizon}-bar overlapping horizons needs")
    half = float(stats.t.ppf(0.5 + confidence / 2, max(usable - 1, 1))) * math.sqrt(max(variance, 0.0))
    return Difference(metric, mean, mean - half, mean + half, n, confidence)


def diebold_mariano_variance_of_mean(values: np.ndarray, horizon: int) -> float:
    """Variance of the mean of `values`, h-step loss differences (see the module docstring)."""
    centred = np.asarray(values, dtype=np.float64) - np.mean(values)
    n, lag = len(centred), max(horizon - 1, 0)
    gammas = [float(centred[k:] @ centred[:n - k]) / n for k in range(0, min(lag, n - 1) + 1)]
    long_run = gammas[0] + 2 * sum(gammas[1:])
    if long_run <= 0:  # the rectangular kernel can go negative in a sample; Bartlett cannot
        long_run = gammas[0] + 2 * sum((1 - k / (lag + 1)) * g for k, g in enumerate(gammas[1:], start=1))
    correction = n / (n + 1 - 2 * horizon + horizon * (horizon - 1) / n)
    return max(long_run, 0.0) / n * max(correction, 1.0)


def sharpe_difference(first: dict[str, np.ndarray], second: dict[str, np.ndarray],
                      blocks_per_year: dict[str, float], *, confidence: float = 0.90, resamples: int = 2000,
                      seed: int = 0) -> Difference:
    """Sharpe(first) - Sharpe(second): block returns per series of two rules on the same blocks."""
    estimate = sharpe_of(first, blocks_per_year) - sharpe_of(second, blocks_per_year)
    blocks = sum(len(r) for r in first.values())
    if min((len(r) for r in first.values()), default=0) < 3:
        return Difference("val_sharpe", estimate, math.nan, math.nan, blocks, confidence,
                          "fewer than 3 non-overlapping blocks in a series")
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        picks = {s: rng.integers(0, len(r), len(r)) for s, r in first.items()}
        draws[i] = (sharpe_of({s: first[s][p] for s, p in picks.items()}, blocks_per_year)
                    - sharpe_of({s: second[s][p] for s, p in picks.items()}, blocks_per_year))
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Difference("val_sharpe", estimate, float(lo), float(hi), blocks, confidence)
