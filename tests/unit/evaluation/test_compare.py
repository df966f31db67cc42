"""Paired differences on the same origins: intervals whose coverage is measured, not assumed.

The simulation grid below plants a true mean difference (0.3) in loss differences shaped
like ours and counts how often the 90% interval of `paired_difference` covers it:

- overlapping horizons: each origin's difference is the sum of the H bar shocks of its
  horizon, so consecutive origins share H - 1 of them (or |forecast - outcome| losses of
  two equally good forecasts of those H-bar returns);
- correlated series: every bar shock is sqrt(rho) x a common market shock + the rest;
- volatility clustering: one shared, persistent volatility scales every shock (`sv`);
- short and long series side by side, series that start later, a gap of missing bars
  (no origin spans it), weekday-only calendars (horizon ends passed as `ends`);
- H from 1 to 16 bars, 1 to 20 series, 3 to 45 non-overlapping horizons of data.

Every cell's coverage must lie in 85-95% wherever an interval is given, and an interval
must be given whenever the data hold at least 8 non-overlapping horizons. The coverage
each cell measured (seeded, so exactly what this test computes) is in docs/evaluation.md.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kronos_rolling.evaluation.compare import (
    CalendarLayout,
    paired_difference,
    sharpe_difference,
    time_weights,
)

TRUE_MEAN = 0.3
DAY = np.timedelta64(1, "D")
START = np.datetime64("2018-01-01T00:00", "ns")


def simulate(rng, lengths, horizon, rho, dgp="ma", gap=False, stagger=False, weekdays=False):
    """One draw: per-origin loss differences, series names, origin times and horizon ends."""
    longest = max(lengths)
    total = 2 * longest + horizon + 2
    market = rng.standard_normal(total)
    volatility = np.ones(total)
    if dgp == "sv":
        log_vol = np.zeros(total)
        shocks = rng.standard_normal(total)
        for k in range(1, total):
            log_vol[k] = 0.98 * log_vol[k - 1] + 0.2 * shocks[k]
        volatility = np.exp(log_vol)
    bar_times = START + np.arange(total) * DAY
    if weekdays:  # Monday to Friday bars only: a horizon of H bars spans more calendar days
        days = pd.bdate_range("2018-01-01", periods=total).to_numpy(dtype="datetime64[ns]")
        bar_times = days
    d, names, times, ends = [], [], [], []
    for index, n in enumerate(lengths):
        start = int(rng.integers(0, longest - n + 1)) if stagger else 0
        shocks = (math.sqrt(rho) * market + math.sqrt(1 - rho) * rng.standard_normal(total)) * volatility
        horizon_sum = np.convolve(shocks, np.ones(horizon), mode="valid")[start:start + n]
        if dgp == "loss":  # two forecasts of the H-bar return, equally noisy: E[d] = 0, plus the planted mean
            noise = math.sqrt(horizon) * 0.7
            diff = (np.abs(rng.standard_normal(n) * noise - horizon_sum)
                    - np.abs(rng.standard_normal(n) * noise - horizon_sum))
        else:
            diff = horizon_sum / math.sqrt(horizon)
        keep = np.ones(n, dtype=bool)
        if gap and n > 6:  # missing bars: the origins whose windows would span them are gone
            at = int(rng.integers(1, n - 3))
            keep[at:at + max(n // 5, 2) + horizon] = False
        positions = np.arange(start, start + n)[keep]
        d.append(TRUE_MEAN + diff[keep])
        names.append(np.full(keep.sum(), f"S{index}"))
        times.append(bar_times[positions])
        ends.append(bar_times[positions + horizon - 1] + DAY)
    return (np.concatenate(d), np.concatenate(names), np.concatenate(times), np.concatenate(ends))


def horizons_of(length: int, horizon: int) -> int:
    return length - horizon + 1


# name, series lengths (origins), H, rho, dgp, gap, stagger, weekdays
GRID = [
    ("one series, H=1, 8 horizons", [8], 1, 0.0, "ma", False, False, False),
    ("one series, H=4, 3 horizons", [horizons_of(12, 4)], 4, 0.0, "ma", False, False, False),
    ("one series, H=16, 8 horizons", [horizons_of(128, 16)], 16, 0.0, "ma", False, False, False),
    ("one series, H=16, 45 horizons", [horizons_of(720, 16)], 16, 0.0, "sv", False, False, False),
    ("one series, H=16, gap", [horizons_of(320, 16)], 16, 0.0, "ma", True, False, False),
    ("one series, H=16, weekdays", [horizons_of(160, 16)], 16, 0.0, "loss", False, False, True),
    ("3 series, rho 0.6, H=4", [horizons_of(60, 4)] * 3, 4, 0.6, "ma", False, False, False),
    ("3 series, rho 0.9, H=16, sv", [horizons_of(256, 16)] * 3, 16, 0.9, "sv", False, False, False),
    ("8 series, rho 0.6, H=16, 700 origins", [700] * 8, 16, 0.6, "ma", False, False, False),
    ("8 series, rho 0.9, H=4, gaps", [horizons_of(100, 4)] * 8, 4, 0.9, "ma", True, False, False),
    ("20 series, rho 0.6, H=1", [40] * 20, 1, 0.6, "loss", False, False, False),
    ("20 series, rho 0.9, H=16, weekdays", [horizons_of(192, 16)] * 20, 16, 0.9, "ma", False, False, True),
    ("200 beside ten of 40, rho 0.6, H=16", [200] + [40] * 10, 16, 0.6, "ma", False, False, False),
    ("200 beside ten of 40, staggered, sv", [200] + [40] * 10, 16, 0.6, "sv", False, True, False),
    ("one long, ten shorter than H, H=4", [29] + [3] * 10, 4, 0.6, "ma", False, True, False),
    ("2 series, rho 0.9, H=16, 4 horizons", [horizons_of(64, 16)] * 2, 16, 0.9, "loss", False, False, False),
]
REPS = 400


def coverage(lengths, horizon, rho, dgp, gap, stagger, weekdays, seed=20261207):
    rng = np.random.default_rng(seed)
    covered = given = 0
    least = math.inf
    for _ in range(REPS):
        d, names, times, ends = simulate(rng, lengths, horizon, rho, dgp, gap, stagger, weekdays)
        diff = paired_difference(d, np.zeros_like(d), series=names, times=times, horizon=horizon,
                                 ends=ends if weekdays else None)
        least = min(least, diff.horizons)
        if diff.has_interval:
            given += 1
            covered += diff.lo <= TRUE_MEAN <= diff.hi
        else:
            assert diff.horizons < 8, f"no interval with {diff.horizons:.1f} horizons: {diff.reason}"
    return covered / max(given, 1), given / REPS, least


@pytest.mark.parametrize("name, lengths, horizon, rho, dgp, gap, stagger, weekdays", GRID, ids=[g[0] for g in GRID])
def test_the_90_percent_interval_covers_the_planted_mean_85_to_95_percent_of_the_time(
        name, lengths, horizon, rho, dgp, gap, stagger, weekdays):
    covered, given, least = coverage(lengths, horizon, rho, dgp, gap, stagger, weekdays)
    assert given > 0.99, f"{name}: an interval in only {given:.0%} of draws"
    assert 0.85 <= covered <= 0.95, f"{name}: coverage {covered:.3f}"


def test_an_interval_needs_horizons_not_origins():
    """700 origins of 8 series at rho 0.6 and H=16 were 'covered' 47.5% of the time when the
    series counted as independent: their interval now rests on 45 horizons of time, not 5600."""
    rng = np.random.default_rng(1)
    d, names, times, _ = simulate(rng, [700] * 8, 16, 0.6)
    diff = paired_difference(d, np.zeros_like(d), series=names, times=times, horizon=16)
    assert diff.horizons == pytest.approx((699 + 16) / 16) and diff.dof == 17 and diff.origins == 5600
    one = paired_difference(d[:700], np.zeros(700), series=names[:700], times=times[:700], horizon=16)
    # Eight series moving together carry little more than one: the interval narrows far less than sqrt(8).
    assert (one.hi - one.lo) / (diff.hi - diff.lo) < 2.0


def test_six_daily_origins_of_a_month_give_no_interval_and_say_why():
    times = START + np.arange(6) * DAY
    diff = paired_difference(np.ones(6), np.zeros(6), series=np.full(6, "GSPC"), times=times, horizon=16)
    assert not diff.has_interval and math.isnan(diff.lo) and math.isnan(diff.hi)
    assert diff.mean == pytest.approx(1.0)
    assert "1.3 non-overlapping horizons of data; an interval needs 2.5" in diff.reason
    assert "no interval" in diff.describe() and diff.dof == 0


def test_identical_losses_are_an_exact_tie_with_a_zero_width_interval():
    losses = np.abs(np.random.default_rng(0).normal(size=200))
    times = START + np.arange(200) * DAY
    d = paired_difference(losses, losses.copy(), series=np.zeros(200), times=times, horizon=4)
    assert (d.mean, d.lo, d.hi) == (0.0, 0.0, 0.0) and d.has_interval


def test_a_clear_improvement_lies_below_zero_and_noise_straddles_it():
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(size=400))
    times = START + np.arange(400) * DAY
    better = paired_difference(base * 0.8, base, series=np.zeros(400), times=times, horizon=4)
    assert better.hi < 0 and better.mean == pytest.approx(-0.2 * base.mean())
    noise = paired_difference(base + rng.normal(size=400) * 0.01, base, series=np.zeros(400), times=times,
                              horizon=4)
    assert noise.lo < 0 < noise.hi


def test_lags_follow_time_not_the_index_of_the_origins():
    """Dropping half the origins (a seeded cap, as `eval_max_origins` does) must not make the
    survivors look independent: they stay on calendar time, over the same span of horizons."""
    rng = np.random.default_rng(2)
    d, names, times, ends = simulate(rng, [horizons_of(320, 16)], 16, 0.0)
    full = paired_difference(d, np.zeros_like(d), series=names, times=times, horizon=16)
    kept = np.sort(rng.choice(len(d), len(d) // 2, replace=False))
    kept[0], kept[-1] = 0, len(d) - 1  # the same first and last origin: the same span
    capped = paired_difference(d[kept], np.zeros(len(kept)), series=names[kept], times=times[kept], horizon=16)
    assert capped.horizons == pytest.approx(full.horizons) and capped.dof == full.dof == 8
    # With the horizon ends known (as the evaluation passes them), even a regular cap cannot fool it.
    every_other = paired_difference(d[::2], np.zeros(len(d[::2])), series=names[::2], times=times[::2],
                                    horizon=16, ends=ends[::2])
    assert every_other.horizons == pytest.approx(full.horizons, abs=1 / 16)


def test_every_origin_time_counts_once_in_the_mean_and_in_the_figures():
    # x has 30 origins, y only the first 10 of the same days: each of those days averages x and y.
    times = np.concatenate([START + np.arange(30) * DAY, START + np.arange(10) * DAY])
    names = np.array(["x"] * 30 + ["y"] * 10)
    a = np.array([1.0] * 30 + [3.0] * 10)
    diff = paired_difference(a, np.zeros(40), series=names, times=times, horizon=1)
    assert diff.mean == pytest.approx((10 * (1 + 3) / 2 + 20 * 1) / 30)
    weights = time_weights(names, times)
    assert weights.sum() == pytest.approx(1.0) and diff.mean == pytest.approx(weights @ a)


def test_a_weekday_calendar_counts_its_horizons_in_bars_when_the_ends_are_known():
    days = pd.bdate_range("2018-01-01", periods=80).to_numpy(dtype="datetime64[ns]")
    times, ends = days[:65], days[15:80] + DAY  # H = 16 trading days ~ 22 calendar days
    layout = CalendarLayout.of(np.zeros(65), times, 16, ends)
    assert 4 < layout.horizons < 80 / 16 + 0.5  # not 112 days / 16 days = 7


def test_the_contract_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="1-D of one length"):
        paired_difference(np.zeros(3), np.zeros(3), series=np.zeros(2), times=START + np.arange(3) * DAY, horizon=1)


def test_a_sharpe_change_resamples_the_same_calendar_blocks_of_every_series_reproducibly():
    rng = np.random.default_rng(3)
    market = rng.normal(0.001, 0.02, 60)
    starts = START + np.arange(60) * 4 * DAY
    good = {"BTC": np.abs(market), "ETH": np.abs(market * 1.1)}  # always on the right side
    flat = {"BTC": np.zeros(60), "ETH": np.zeros(60)}
    per_year = {"BTC": 365 / 4, "ETH": 365 / 4}
    block_starts = {"BTC": starts, "ETH": starts}
    length = {"BTC": 4 * DAY / np.timedelta64(1, "ns"), "ETH": 4 * DAY / np.timedelta64(1, "ns")}
    change = sharpe_difference(good, flat, per_year, block_starts, length, seed=5)
    assert change.lo > 0 and change.metric == "val_sharpe" and change.origins == 120 and not change.notes
    assert sharpe_difference(good, flat, per_year, block_starts, length, seed=5) == change


def test_a_series_with_too_few_blocks_is_left_out_of_the_sharpe_change_with_a_note_not_the_interval():
    rng = np.random.default_rng(4)
    long_run = rng.normal(0.001, 0.02, 40)
    first = {"BTC": long_run, "LTC": np.array([0.01, 0.02])}
    second = {"BTC": np.zeros(40), "LTC": np.zeros(2)}
    starts = {"BTC": START + np.arange(40) * DAY, "LTC": START + np.arange(2) * DAY}
    length = {"BTC": float(DAY / np.timedelta64(1, "ns")), "LTC": float(DAY / np.timedelta64(1, "ns"))}
    change = sharpe_difference(first, second, {"BTC": 365.0, "LTC": 365.0}, starts, length)
    assert change.has_interval and change.origins == 40
    assert change.notes == ("LTC left out of the Sharpe change: 2 block(s), fewer than 3",)
    none = sharpe_difference({"LTC": np.ones(2)}, {"LTC": np.zeros(2)}, {"LTC": 365.0}, {"LTC": starts["LTC"]},
                             {"LTC": length["LTC"]})
    assert not none.has_interval and "no series has 3" in none.reason
