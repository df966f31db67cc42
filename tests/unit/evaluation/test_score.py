from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronos_rolling.evaluation.score import (
    annualized_sharpe,
    bars_per_year,
    cumulative_returns,
    mean_absolute_return_error,
    strategy_returns,
)


def test_cumulative_returns_are_relative_to_the_last_observed_close():
    got = cumulative_returns(np.array([[110.0, 99.0]]), np.array([100.0]))
    np.testing.assert_allclose(got, [[0.10, -0.01]])


def test_mae_is_scale_free():
    def mae_at(level):
        last = np.array([level])
        actual = cumulative_returns(np.array([[1.01, 1.02]]) * level, last)
        forecast = cumulative_returns(np.array([[1.00, 1.04]]) * level, last)
        return mean_absolute_return_error(forecast, actual)

    assert mae_at(100.0) == pytest.approx(0.015)
    assert mae_at(20_000.0) == pytest.approx(mae_at(100.0))


def test_mae_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="shapes differ"):
        mean_absolute_return_error(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no forecasts"):
        mean_absolute_return_error(np.zeros((0, 3)), np.zeros((0, 3)))


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
    got = strategy_returns(forecast, actual, cost=0.001)
    # open long (1 unit), stay long, flip to short (2 units), stay short
    np.testing.assert_allclose(got, [0.02 - 0.001, -0.01, 0.02 - 0.002, -0.01])


def test_a_zero_forecast_holds_no_position():
    got = strategy_returns(np.zeros(3), np.array([0.05, -0.02, 0.01]), cost=0.01)
    np.testing.assert_allclose(got, np.zeros(3))


def test_sharpe_annualises_and_is_zero_when_undefined():
    rets = np.array([0.01, 0.02, 0.0, 0.01])
    expected = rets.mean() / rets.std(ddof=1) * np.sqrt(252)
    assert annualized_sharpe(rets, 252) == pytest.approx(expected)
    assert annualized_sharpe(np.zeros(10), 252) == 0.0
    assert annualized_sharpe(np.array([0.01]), 252) == 0.0
