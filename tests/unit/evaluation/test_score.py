from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronos_rolling.evaluation.score import (
    annualized_sharpe,
    bars_per_year,
    crps,
    cumulative_returns,
    non_overlapping,
    origin_mae,
    position_returns,
    sharpe_of,
    skill,
)


def test_cumulative_returns_are_relative_to_the_last_observed_close():
    got = cumulative_returns(np.array([[110.0, 99.0]]), np.array([100.0]))
    np.testing.assert_allclose(got, [[0.10, -0.01]])


def test_mae_is_scale_free():
    def mae_at(level):
        last = np.array([level])
        actual = cumulative_returns(np.array([[1.01, 1.02]]) * level, last)
        forecast = cumulative_returns(np.array([[1.00, 1.04]]) * level, last)
        return origin_mae(forecast, actual)

    assert mae_at(100.0) == pytest.approx([0.015])
    assert mae_at(20_000.0) == pytest.approx(mae_at(100.0))


def test_mae_is_per_origin_and_rejects_mismatched_inputs():
    got = origin_mae(np.array([[0.0, 0.0], [0.1, 0.1]]), np.array([[0.02, 0.04], [0.1, 0.0]]))
    np.testing.assert_allclose(got, [0.03, 0.05])
    with pytest.raises(ValueError, match="shapes differ"):
        origin_mae(np.zeros((2, 3)), np.zeros((2, 4)))


def test_crps_rewards_a_sharp_ensemble_around_the_outcome_and_equals_mae_for_a_point():
    y = np.array([0.01])
    sharp = crps(np.array([[0.009, 0.011, 0.010, 0.012]]), y)
    wide = crps(np.array([[-0.05, 0.07, 0.01, -0.02]]), y)
    assert sharp < wide
    np.testing.assert_allclose(crps(np.zeros((1, 1)), y), [0.01])  # persistence: |y|
    # the fair form for two members: (|x1-y| + |x2-y|)/2 - |x1-x2|/2 (pairs j != k only)
    np.testing.assert_allclose(crps(np.array([[0.0, 0.04]]), np.array([0.05])), [(0.05 + 0.01) / 2 - 0.04 / 2])


def test_the_fair_crps_is_lowest_for_the_true_spread_where_the_biased_form_favours_a_narrow_one():
    """Outcomes ~ N(0, 1); ensembles of K=4 drawn with spread s. The fair CRPS is minimised at
    the true spread; the 1/(2K^2) form would have preferred s = 0.7."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal(40_000)

    def expected(spread):
        return crps(rng.standard_normal((len(y), 4)) * spread, y).mean()

    at_truth = expected(1.0)
    assert at_truth < expected(0.7) and at_truth < expected(0.85) and at_truth < expected(1.25)


def test_sharpe_of_leaves_out_series_with_fewer_than_three_blocks():
    returns = {"BTC": np.array([0.01, -0.02, 0.03, 0.01]), "LTC": np.array([0.5, 0.6])}
    per_year = {"BTC": 365.0, "LTC": 365.0}
    assert sharpe_of(returns, per_year) == pytest.approx(annualized_sharpe(returns["BTC"], 365.0))
    assert np.isnan(sharpe_of({"LTC": returns["LTC"]}, per_year))


def test_skill_against_persistence():
    assert skill(0.8, 1.0) == pytest.approx(0.2)
    assert skill(1.0, 1.0) == 0.0 and skill(1.25, 1.0) == pytest.approx(-0.25)


def test_non_overlapping_blocks_keep_horizons_apart_also_across_gaps_in_the_origins():
    np.testing.assert_array_equal(non_overlapping(np.arange(10), 4), [0, 4, 8])
    np.testing.assert_array_equal(non_overlapping(np.array([0, 1, 5, 6, 7, 12]), 4), [0, 2, 5])


@pytest.mark.parametrize(
    "asset_class, spacing, expected",
    [
        ("crypto", "1D", 365),
        ("equity", "1D", 252),
        ("forex_commodity", "1D", 260),
        ("crypto", "1h", 365 * 24),
        ("forex_commodity", "1h", 260 * 24),
        ("equity", "30min", 252 * 13),
        ("equity", "7D", 365.25 / 7),
    ],
)
def test_bars_per_year_follows_market_hours(asset_class, spacing, expected):
    assert bars_per_year(asset_class, pd.Timedelta(spacing)) == pytest.approx(expected)


def test_bars_per_year_rejects_unknown_class_and_bad_spacing():
    with pytest.raises(ValueError, match="unknown asset class"):
        bars_per_year("bonds", pd.Timedelta("1D"))
    with pytest.raises(ValueError, match="positive"):
        bars_per_year("crypto", pd.Timedelta(0))


def test_strategy_goes_with_the_sign_of_the_forecast_and_pays_for_turnover():
    forecast = np.array([0.01, 0.02, -0.01, -0.03])
    actual = np.array([0.02, -0.01, -0.02, 0.01])
    got = position_returns(np.sign(forecast), actual, cost=0.001)
    # open long (1 unit), stay long, flip to short (2 units), stay short
    np.testing.assert_allclose(got, [0.02 - 0.001, -0.01, 0.02 - 0.002, -0.01])


def test_a_zero_forecast_holds_no_position():
    got = position_returns(np.zeros(3), np.array([0.05, -0.02, 0.01]), cost=0.01)
    np.testing.assert_allclose(got, np.zeros(3))


def test_sharpe_annualises_and_is_zero_when_undefined():
    rets = np.array([0.01, 0.02, 0.0, 0.01])
    expected = rets.mean() / rets.std(ddof=1) * np.sqrt(252)
    assert annualized_sharpe(rets, 252) == pytest.approx(expected)
    assert annualized_sharpe(np.zeros(10), 252) == 0.0
    assert annualized_sharpe(np.array([0.01]), 252) == 0.0
