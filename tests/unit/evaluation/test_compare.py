"""Paired differences on the same origins, with intervals that respect overlapping horizons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kronos_rolling.evaluation.compare import (
    diebold_mariano_variance_of_mean,
    paired_difference,
    sharpe_difference,
)


def overlapping_noise(n: int, horizon: int, seed: int) -> np.ndarray:
    """Per-origin losses that share H-1 of their H steps with the next origin's (a moving sum)."""
    steps = np.random.default_rng(seed).normal(size=n + horizon)
    return np.convolve(steps, np.ones(horizon) / horizon, mode="valid")[:n]


def test_identical_losses_are_an_exact_tie_with_a_zero_width_interval():
    losses = np.abs(np.random.default_rng(0).normal(size=200))
    d = paired_difference(losses, losses.copy(), np.zeros(200), 4, metric="val_mae")
    assert (d.mean, d.lo, d.hi) == (0.0, 0.0, 0.0) and d.has_interval


def test_a_clear_improvement_lies_below_zero_and_noise_straddles_it():
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(size=400))
    better = paired_difference(base * 0.8, base, np.zeros(400), 4, metric="val_mae")
    assert better.hi < 0 and better.mean == pytest.approx(-0.2 * base.mean())
    noise = paired_difference(base + overlapping_noise(400, 4, 2) * 0.01, base, np.zeros(400), 4, metric="val_mae")
    assert noise.lo < 0 < noise.hi


def test_overlap_widens_the_interval_as_it_should():
    """With H-bar overlapping horizons, consecutive differences are correlated: the HAC interval
    must be wider than the naive iid one, and cover the truth (0) about as often as claimed."""
    horizon, n, covered, ratio = 8, 300, 0, []
    for seed in range(400):
        d = overlapping_noise(n, horizon, seed)
        diff = paired_difference(d, np.zeros(n), np.zeros(n), horizon, metric="val_mae")
        covered += diff.lo <= 0 <= diff.hi
        naive_half = 1.645 * d.std(ddof=1) / math.sqrt(n)
        ratio.append((diff.hi - diff.lo) / 2 / naive_half)
    assert np.median(ratio) > 2.0  # iid intervals would be far too narrow here
    assert 0.86 <= covered / 400 <= 0.95  # close to the claimed 90%


def test_series_are_weighted_by_their_origins_and_too_short_ones_give_no_interval():
    a, b = np.array([1.0] * 30 + [3.0] * 10), np.zeros(40)
    groups = np.array(["x"] * 30 + ["y"] * 10)
    d = paired_difference(a, b, groups, 1, metric="val_mae")
    assert d.mean == pytest.approx((30 * 1 + 10 * 3) / 40)
    short = paired_difference(np.ones(11), np.zeros(11), np.zeros(11), 4, metric="val_nll")
    assert not short.has_interval and math.isnan(short.lo) and "needs" in short.reason
    assert "no interval" in short.describe()


def test_the_variance_adds_the_autocovariances_of_overlapping_horizons():
    x = np.array([1.0, -1.0] * 50)  # perfectly anti-correlated neighbours
    assert diebold_mariano_variance_of_mean(x, 1) == pytest.approx(1.0 / 99)  # 1/n, times n/(n-1)
    smooth = overlapping_noise(500, 8, 4)  # positively correlated neighbours
    iid = np.var(smooth) / 500
    assert diebold_mariano_variance_of_mean(smooth, 8) > 3 * iid


def test_a_sharpe_change_gets_a_bootstrap_interval_that_is_reproducible():
    rng = np.random.default_rng(3)
    market = {"BTC": rng.normal(0.001, 0.02, 60)}
    good = {"BTC": np.abs(market["BTC"])}  # always on the right side
    flat = {"BTC": np.zeros(60)}
    per_year = {"BTC": 365 / 4}
    change = sharpe_difference(good, flat, per_year, seed=5)
    assert change.lo > 0 and change.metric == "val_sharpe" and change.origins == 60
    assert sharpe_difference(good, flat, per_year, seed=5) == change
    few = sharpe_difference({"BTC": np.ones(2)}, {"BTC": np.zeros(2)}, per_year)
    assert not few.has_interval
