"""Paired comparisons of two models on the same origins, with intervals that hold their coverage.

Two models scored on the very same origins give per-origin losses a and b; the comparison
is d = a - b (negative: the first model is better). Three things make the d's dependent,
and the interval allows for each:

- overlapping horizons: consecutive origins of a series share H - 1 bars of their horizons;
- series that move together: BTC, ETH and LTC on the same day answer to one market shock;
- gaps and caps: origins dropped by `max_origins` or missing bars break index contiguity.

So the origins are laid out on **calendar time**, never on array index (`CalendarLayout`):

    time  ──|slot|slot|slot|slot|slot|slot|slot|slot|slot|──>   slot = the finest bar spacing
    BTC-1D    d    d    d    d         d    d    d    d         (a gap: no slot is invented)
    ETH       d    d    d    d    d    d    d    d    d
    x_t     avg  avg  avg  avg   d   avg  avg  avg  avg          x_t: the mean of the d's at t
            |<---- W: a horizon ---->|                           W: the longest horizon, in time
            B = (last origin - first origin + W) / W             non-overlapping horizons in all

The estimate is the mean over occupied slots of x_t: every origin time counts once, its
series averaged (`time_weights`; the evaluation's val_mae uses the same weights, so a
difference is exactly the difference of two models' figures). Its variance is the
long-run variance of the slot series (Driscoll-Kraay: cross-sectional sums first, so
correlated series are one observation per time, not many), estimated with the
**equal-weighted cosine** (EWC) estimator of Müller (2007), recommended by Lazarus,
Lewis, Stock and Watson (2018, "HAR inference: recommendations for practice"):

    S_t    = sum of w_i (d_i - mean) over the origins i in slot t        (0 where none)
    L_j    = DCT-II of S, orthonormal, j = 1..nu (scipy.fft.dct)         nu = floor(B / 2.5)
    var    = T_slots x mean_j(L_j^2)
    interval = mean -/+ t_{nu, (1 + c)/2} x sqrt(var)

With nu cosines that vary more slowly than one horizon, the L_j are (nearly) independent
draws of the same long-run variance, so the ratio is Student-t with nu degrees of freedom
in small samples: the degrees of freedom come from the number of non-overlapping
horizons, not from the number of origins. Below 2.5 horizons (nu < 1) there is no
interval: `lo` and `hi` are NaN and `reason` says why. Measured coverage of the 90%
interval: 85-95% over correlated (to 0.9), short and long, gapped series with H 1..16
and 1..20 series (tests/unit/evaluation/test_compare.py; docs/evaluation.md has the grid).

The Sharpe ratio is not an average of per-origin losses; its change gets a bootstrap
interval instead (`sharpe_difference`): the sign rule's non-overlapping blocks are put in
calendar buckets, the SAME buckets are resampled for every series (paired between the
two models), and the change of the mean-over-series Sharpe is recomputed each time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft, stats

from kronos_rolling.evaluation.score import MIN_SHARPE_BLOCKS, annualized_sharpe

# Horizons of data per degree of freedom: the cosines used stay slower than one horizon
# (the lowest 1/2.5 of the frequencies a horizon could resolve), where the spectrum of
# overlapping-horizon losses is still flat. 2 to 3 all keep coverage in 85-95%; 2.5 is
# the middle of what the simulation grid supports.
HORIZONS_PER_DOF = 2.5
MAX_SLOTS = 2_000_000  # of the calendar grid (a year of minute bars is 525,600)


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
    horizons: float = math.nan  # non-overlapping horizons of calendar time behind it
    dof: int = 0  # degrees of freedom of the interval (0: none)
    notes: tuple[str, ...] = ()  # series left out of an interval, and why

    @property
    def has_interval(self) -> bool:
        return self.reason is None and math.isfinite(self.lo) and math.isfinite(self.hi)

    def describe(self) -> str:
        interval = (f"[{self.lo:+.3g}, {self.hi:+.3g}] ({self.confidence:.0%})" if self.has_interval
                    else f"(no interval: {self.reason})")
        evidence = f"{self.origins} origins"
        if math.isfinite(self.horizons):
            evidence += f", {self.horizons:.1f} non-overlapping horizons"
        return f"{self.metric} {self.mean:+.3g} {interval} on {evidence}"


@dataclass(frozen=True)
class CalendarLayout:
    """Where each origin sits in calendar time: its slot on a regular grid and its weight."""

    slot: np.ndarray  # (N,) int: slot of each origin, 0 = the first origin's
    slots: int  # slots from the first origin's to the last one's
    weights: np.ndarray  # (N,) float, sum 1: 1 / (origins in its slot x occupied slots)
    horizons: float  # B: (last origin - first origin + W) / W
    reason: str | None = None  # why the layout cannot support an interval (then horizons is NaN)

    @classmethod
    def of(cls, series: np.ndarray, times: np.ndarray, horizon: int, ends: np.ndarray | None = None
           ) -> CalendarLayout:
        """times: each origin's first horizon bar (datetime64); ends: when its horizon ends (the
        bar after its last horizon bar), if known; else H x the series' bar spacing."""
        stamps = _nanoseconds(times)
        series = np.asarray(series)
        spacing, width = {}, {}
        for name in dict.fromkeys(series.tolist()):
            mine = series == name
            steps = np.diff(np.unique(stamps[mine]))
            spacing[name] = int(steps.min()) if len(steps) else None
            if ends is not None:
                width[name] = float(np.median(_nanoseconds(ends)[mine] - stamps[mine]))
        known = [s for s in spacing.values() if s]
        if not known:  # every series has one origin time: no spacing to lay out
            slot = np.zeros(len(stamps), dtype=np.int64)
            return cls(slot, 1, _slot_weights(slot, 1), math.nan,
                       "every series has a single origin time: nothing to measure their dependence with")
        # Without `ends`: H bars of the series' own spacing (a series with one origin: the coarsest known).
        longest = max(width.get(name, horizon * (step or max(known))) for name, step in spacing.items())
        grid = min(known)
        first = stamps.min()
        grid = max(grid, int(stamps.max() - first) // MAX_SLOTS + 1)  # a fine grid over years: coarsen
        slot = ((stamps - first) // grid).astype(np.int64)
        slots = int(slot.max()) + 1
        horizons = (float(stamps.max() - first) + longest) / longest
        return cls(slot, slots, _slot_weights(slot, slots), horizons)

    def weighted_mean(self, values: np.ndarray) -> float:
        return float(self.weights @ np.asarray(values, dtype=np.float64))


def _nanoseconds(times) -> np.ndarray:
    """int64 ns since the epoch of datetime64 values, Timestamps (naive: UTC) or ints (ns)."""
    values = np.asarray(times)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).asi8


def _slot_weights(slot: np.ndarray, slots: int) -> np.ndarray:
    counts = np.bincount(slot, minlength=slots)
    occupied = int((counts > 0).sum())
    return 1.0 / (counts[slot] * occupied)


def time_weights(series: np.ndarray, times: np.ndarray, horizon: int = 1) -> np.ndarray:
    """Per-origin weights (sum 1) that make a mean count every origin time once: the weights
    of every figure the evaluation reports and of every difference it compares."""
    return CalendarLayout.of(series, times, horizon).weights


def paired_difference(first, second, *, series, times, horizon: int, confidence: float = 0.90,
                      ends=None, metric: str = "loss") -> Difference:
    """first - second per origin, with a `confidence` interval that holds its coverage.

    first, second: per-origin losses; series: each origin's series name; times: its
    timestamp (the first horizon bar, datetime64); all 1-D and of equal length. `ends`
    (optional): when each origin's horizon ends, for markets whose bars skip nights or
    weekends; without it a horizon is H x the series' bar spacing. `.lo`/`.hi` are NaN
    where the data cannot support an interval, and `.reason` says why.
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    series = np.asarray(series)
    if not (first.shape == second.shape == series.shape == np.shape(times)) or first.ndim != 1:
        raise ValueError(f"first, second, series and times must be 1-D of one length, got {first.shape}, "
                         f"{second.shape}, {series.shape}, {np.shape(times)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = first - second
    n = len(d)
    if n == 0:
        return Difference(metric, math.nan, math.nan, math.nan, 0, confidence, "no origins")
    layout = CalendarLayout.of(series, times, horizon, ends)
    if not np.all(np.isfinite(d)):
        return Difference(metric, layout.weighted_mean(d), math.nan, math.nan, n, confidence,
                          "a loss is not finite", layout.horizons)
    mean = layout.weighted_mean(d)
    if layout.reason:
        return Difference(metric, mean, math.nan, math.nan, n, confidence, layout.reason)
    dof = int(layout.horizons // HORIZONS_PER_DOF)
    if dof < 1:
        return Difference(metric, mean, math.nan, math.nan, n, confidence,
                          f"{layout.horizons:.1f} non-overlapping horizons of data; an interval needs "
                          f"{HORIZONS_PER_DOF:g}", layout.horizons)
    sums = np.bincount(layout.slot, weights=layout.weights * (d - mean), minlength=layout.slots)
    cosines = fft.dct(sums, type=2, norm="ortho")[1:dof + 1]
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(layout.slots * float(np.mean(cosines**2)))
    return Difference(metric, mean, mean - half, mean + half, n, confidence, None, layout.horizons, dof)


def sharpe_difference(first: dict[str, np.ndarray], second: dict[str, np.ndarray],
                      blocks_per_year: dict[str, float], starts: dict[str, np.ndarray],
                      block_length: dict[str, float], *, confidence: float = 0.90, resamples: int = 2000,
                      seed: int = 0) -> Difference:
    """Sharpe(first) - Sharpe(second), the mean over series of each series' annualised Sharpe.

    first, second: per series, the two rules' net returns on the same non-overlapping blocks;
    starts: each block's start (datetime64); block_length: a block's span in ns, per series.
    A series with fewer than MIN_SHARPE_BLOCKS blocks is left out (with a note). The blocks
    are bucketed by calendar time (bucket = the longest block kept) and the same buckets are
    drawn for every series, so series that move together are resampled together.
    """
    kept = [s for s in first if len(first[s]) >= MIN_SHARPE_BLOCKS]
    notes = tuple(f"{s} left out of the Sharpe change: {len(first[s])} block(s), fewer than {MIN_SHARPE_BLOCKS}"
                  for s in first if s not in kept)
    blocks = sum(len(first[s]) for s in kept)
    if not kept:
        return Difference("val_sharpe", math.nan, math.nan, math.nan, 0, confidence,
                          f"no series has {MIN_SHARPE_BLOCKS} non-overlapping blocks", notes=notes)
    estimate = (np.mean([annualized_sharpe(first[s], blocks_per_year[s]) for s in kept])
                - np.mean([annualized_sharpe(second[s], blocks_per_year[s]) for s in kept]))
    bucket_length = max(block_length[s] for s in kept)
    origin = min(int(_nanoseconds(starts[s]).min()) for s in kept)
    bucket = {s: ((_nanoseconds(starts[s]) - origin) // bucket_length).astype(np.int64) for s in kept}
    occupied = np.unique(np.concatenate(list(bucket.values())))
    index = {s: np.searchsorted(occupied, bucket[s]) for s in kept}
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(occupied), np.full(len(occupied), 1 / len(occupied)), size=resamples)
    draws = np.zeros(resamples)
    for s in kept:
        times_drawn = counts[:, index[s]].astype(np.float64)  # (R, blocks): how often each block is drawn
        draws += (_weighted_sharpe(first[s], times_drawn) - _weighted_sharpe(second[s], times_drawn)) \
            * math.sqrt(blocks_per_year[s])
    draws /= len(kept)
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Difference("val_sharpe", float(estimate), float(lo), float(hi), blocks, confidence,
                      horizons=float(len(occupied)), notes=notes)


def _weighted_sharpe(returns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per row of `weights` (R, n): mean / std of `returns` drawn that many times; 0 where undefined."""
    total = weights.sum(axis=1)
    mean = weights @ returns / np.maximum(total, 1)
    spread = (weights * (returns[None, :] - mean[:, None]) ** 2).sum(axis=1) / np.maximum(total - 1, 1)
    std = np.sqrt(spread)
    ok = (total >= 2) & (std > 1e-12)
    return np.where(ok, mean / np.where(ok, std, 1.0), 0.0)
