"""Scale-free forecast metrics: return errors and the Sharpe ratio of a sign rule.

Pure numpy, no model: evaluation feeds these forecast and actual closes, so the same
numbers come out whichever model produced the forecasts.

Conventions
- Returns are cumulative close returns over the horizon, relative to the last close of
  the lookback: r[h] = close[h] / last_close - 1. They compare across symbols, classes
  and months, unlike price errors.
- `val_mae` is the mean |forecast return - actual return| over every origin and step.
- The evaluation strategy holds sign(forecast return over the next `hold` bars) for those
  bars, pays `cost` per unit of position change, and is annualised with the number of
  holding periods per year for the series' market and bar spacing. `val_sharpe` is the
  mean of the per-series Sharpe ratios, so one busy series cannot drown the others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Trading days per year and trading hours per day by market. Crypto never closes; forex
# trades around the clock on weekdays (~260 days); equities keep exchange hours.
TRADING_DAYS = {"crypto": 365, "forex_commodity": 260, "equity": 252}
SESSION_HOURS = {"crypto": 24.0, "forex_commodity": 24.0, "equity": 6.5}


def cumulative_returns(closes: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """closes (..., H) and last_close (...,) -> cumulative returns (..., H)."""
    closes = np.asarray(closes, dtype=np.float64)
    last_close = np.asarray(last_close, dtype=np.float64)
    return closes / last_close[..., None] - 1.0


def mean_absolute_return_error(forecast_returns: np.ndarray, actual_returns: np.ndarray) -> float:
    forecast_returns = np.asarray(forecast_returns, dtype=np.float64)
    actual_returns = np.asarray(actual_returns, dtype=np.float64)
    if forecast_returns.shape != actual_returns.shape:
        raise ValueError(f"shapes differ: {forecast_returns.shape} vs {actual_returns.shape}")
    if forecast_returns.size == 0:
        raise ValueError("no forecasts to score")
    return float(np.mean(np.abs(forecast_returns - actual_returns)))


def bars_per_year(asset_class: str, spacing: pd.Timedelta) -> float:
    """How many bars of this spacing a market produces in a year."""
    if asset_class not in TRADING_DAYS:
        raise ValueError(f"unknown asset class {asset_class!r}; expected one of {sorted(TRADING_DAYS)}")
    spacing = pd.Timedelta(spacing)
    if spacing <= pd.Timedelta(0):
        raise ValueError(f"bar spacing must be positive, got {spacing}")
    day = pd.Timedelta(days=1)
    if spacing < day:
        return TRADING_DAYS[asset_class] * SESSION_HOURS[asset_class] * pd.Timedelta(hours=1) / spacing
    if spacing == day:
        return float(TRADING_DAYS[asset_class])
    # Weekly or coarser bars: calendar time is what matters.
    return pd.Timedelta(days=365.25) / spacing


def strategy_returns(forecast_returns: np.ndarray, actual_returns: np.ndarray, cost: float = 0.0) -> np.ndarray:
    """Per-period returns of holding sign(forecast) over consecutive, non-overlapping periods.

    forecast_returns, actual_returns: (N,) returns over each holding period, in time order.
    `cost` is charged per unit of position change (going long to short costs 2 x cost);
    the first period pays for opening its position.
    """
    position = np.sign(np.asarray(forecast_returns, dtype=np.float64))
    turnover = np.abs(np.diff(position, prepend=0.0))
    return position * np.asarray(actual_returns, dtype=np.float64) - cost * turnover


def annualized_sharpe(period_returns: np.ndarray, periods_per_year: float) -> float:
    """Sharpe ratio (zero risk-free rate) scaled to a year; 0 when it is undefined."""
    period_returns = np.asarray(period_returns, dtype=np.float64)
    if period_returns.size < 2:
        return 0.0
    std = period_returns.std(ddof=1)
    if not np.isfinite(std) or std < 1e-12:
        return 0.0
    return float(period_returns.mean() / std * np.sqrt(periods_per_year))
