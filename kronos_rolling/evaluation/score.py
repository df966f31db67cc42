"""Scale-free forecast scores, per origin, and the Sharpe ratio of a sign rule.

Pure numpy, no model: the evaluation feeds these forecast paths and actual closes, so the
same numbers come out whichever model produced the forecasts.

Conventions (docs/evaluation.md has the formulas):
- Returns are cumulative close returns over the horizon, relative to the last close of
  the lookback: r[h] = close[h] / last_close - 1, h = 1..H. They compare across symbols,
  classes and months, unlike price errors.
- The point forecast is the median of the K sampled paths, step by step: absolute error
  is minimised by the median (the mean of the paths would minimise squared error); an
  origin's MAE is the mean over the H steps of |point - actual| returns.
- CRPS scores the K paths' returns at the horizon's end against the actual one, in the
  fair (unbiased) ensemble form: mean_k |x_k - y| - 1/(2K(K-1)) sum_{j != k} |x_j - x_k|.
  The 1/(2K^2) form would favour ensembles that are too narrow. Persistence (a point at 0)
  scores |y|.
- The sign rule holds sign(forecast return over the horizon) for the horizon, on
  non-overlapping blocks of H bars, pays `cost` per unit of position change (going long
  to short costs 2 x cost, the first block pays for opening), and is annualised with the
  number of blocks per year for the series' market and bar spacing. Buy-and-hold holds +1
  on the same blocks. A series' Sharpe is computed on its own blocks; a model's val_sharpe
  is the mean over the series with at least MIN_SHARPE_BLOCKS blocks (NaN when none has),
  so one busy series cannot drown the others.
- A model's val_mae, val_nll and val_crps weight the origins so that every origin time
  counts once (`Scores.weights`, see evaluation/compare.time_weights): with one series, or
  series on the same times, that is the plain mean over origins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Trading days per year and trading hours per day by market. Crypto never closes; forex
# trades around the clock on weekdays (~260 days); equities keep exchange hours.
TRADING_DAYS = {"crypto": 365, "forex_commodity": 260, "equity": 252}
SESSION_HOURS = {"crypto": 24.0, "forex_commodity": 24.0, "equity": 6.5}
MIN_SHARPE_BLOCKS = 3  # a Sharpe ratio from fewer non-overlapping blocks says nothing


def cumulative_returns(closes: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """closes (..., H) and last_close (leading dims of closes) -> cumulative returns (..., H)."""
    closes = np.asarray(closes, dtype=np.float64)
    last_close = np.asarray(last_close, dtype=np.float64)
    return closes / last_close.reshape(last_close.shape + (1,) * (closes.ndim - last_close.ndim)) - 1.0


def origin_mae(forecast_returns: np.ndarray, actual_returns: np.ndarray) -> np.ndarray:
    """(N, H) point forecasts and actuals -> (N,) mean absolute error over the horizon."""
    forecast_returns = np.asarray(forecast_returns, dtype=np.float64)
    actual_returns = np.asarray(actual_returns, dtype=np.float64)
    if forecast_returns.shape != actual_returns.shape:
        raise ValueError(f"shapes differ: {forecast_returns.shape} vs {actual_returns.shape}")
    return np.abs(forecast_returns - actual_returns).mean(axis=-1)


def crps(sample_returns: np.ndarray, actual_returns: np.ndarray) -> np.ndarray:
    """(N, K) sampled returns and (N,) actual returns -> (N,) fair CRPS of each origin's ensemble."""
    x = np.asarray(sample_returns, dtype=np.float64)
    y = np.asarray(actual_returns, dtype=np.float64)
    k = x.shape[1]
    if k == 1:  # a point forecast: |x - y|
        return np.abs(x[:, 0] - y)
    spread = np.abs(x[:, :, None] - x[:, None, :]).sum(axis=(1, 2)) / (k * (k - 1))  # over j != k
    return np.abs(x - y[:, None]).mean(axis=1) - 0.5 * spread


def skill(mae: float, reference_mae: float) -> float:
    """1 - mae / reference: above 0 beats the reference (persistence), 0 ties, below 0 loses."""
    return float(1.0 - mae / reference_mae) if reference_mae > 0 else float("nan")


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


def non_overlapping(positions: np.ndarray, horizon: int) -> np.ndarray:
    """Indices (into time-ordered `positions`, bar numbers of one series) of origins whose
    horizons do not overlap: the first, then each one at least `horizon` bars after the last kept."""
    kept, next_free = [], None
    for index, position in enumerate(np.asarray(positions)):
        if next_free is None or position >= next_free:
            kept.append(index)
            next_free = position + horizon
    return np.asarray(kept, dtype=np.int64)


def position_returns(positions: np.ndarray, actual_returns: np.ndarray, cost: float) -> np.ndarray:
    """Per-block returns of holding `positions` (+1 / 0 / -1) over consecutive blocks, net of
    `cost` per unit of position change; the first block pays for opening its position."""
    positions = np.asarray(positions, dtype=np.float64)
    turnover = np.abs(np.diff(positions, prepend=0.0))
    return positions * np.asarray(actual_returns, dtype=np.float64) - cost * turnover


def annualized_sharpe(period_returns: np.ndarray, periods_per_year: float) -> float:
    """Sharpe ratio (zero risk-free rate) scaled to a year; 0 when it is undefined."""
    period_returns = np.asarray(period_returns, dtype=np.float64)
    if period_returns.size < 2:
        return 0.0
    std = period_returns.std(ddof=1)
    if not np.isfinite(std) or std < 1e-12:
        return 0.0
    return float(period_returns.mean() / std * np.sqrt(periods_per_year))


@dataclass
class Scores:
    """One model's scores on a span's origins (every array is per origin, in the samples' order).

    `nll` is None for a model without token probabilities (persistence). `weights` (sum 1)
    make every origin time count once. `block_returns` holds, per series, the sign rule's
    net returns on its non-overlapping blocks, and `blocks_per_year` how to annualise them.
    A model with sample paths also has, per origin: `inside` (level -> (N, H) bool, the outcome
    inside the paths' central interval at each step), `pit` (the outcome's rank among the paths
    at the horizon's end) and `z` ((N, H) its distance from the median in spreads, what a
    calibration scales; evaluation/calibration.py). A point forecast (persistence) has none.
    """

    mae: np.ndarray
    crps: np.ndarray
    nll: np.ndarray | None
    block_returns: dict[str, np.ndarray]
    blocks_per_year: dict[str, float]
    weights: np.ndarray
    inside: dict[float, np.ndarray] | None = None
    pit: np.ndarray | None = None
    z: np.ndarray | None = None

    @property
    def origins(self) -> int:
        return len(self.mae)

    @property
    def val_mae(self) -> float:
        return float(self.weights @ self.mae)

    @property
    def val_crps(self) -> float:
        return float(self.weights @ self.crps)

    @property
    def val_nll(self) -> float:
        return float("nan") if self.nll is None else float(self.weights @ self.nll)

    @property
    def val_sharpe(self) -> float:
        return sharpe_of(self.block_returns, self.blocks_per_year)

    def losses(self, metric: str) -> np.ndarray | None:
        """The per-origin losses of `val_mae`, `val_nll` or `val_crps`."""
        return {"val_mae": self.mae, "val_nll": self.nll, "val_crps": self.crps}[metric]

    def coverage(self, level: float, inside: np.ndarray | None = None) -> tuple[float, float]:
        """(at the horizon's end, averaged over the steps): the weighted share of outcomes inside
        the central `level` interval (`inside`: another (N, H) verdict, e.g. calibrated); NaN
        for a point forecast."""
        inside = self.inside[level] if inside is None and self.inside is not None else inside
        if inside is None:
            return float("nan"), float("nan")
        inside = np.asarray(inside, dtype=np.float64)
        return float(self.weights @ inside[:, -1]), float(self.weights @ inside.mean(axis=1))


def sharpe_of(block_returns: dict[str, np.ndarray], blocks_per_year: dict[str, float]) -> float:
    """The mean over series (those with MIN_SHARPE_BLOCKS blocks or more) of each series'
    annualised Sharpe ratio; NaN when no series has that many."""
    values = [annualized_sharpe(r, blocks_per_year[s]) for s, r in block_returns.items()
              if len(r) >= MIN_SHARPE_BLOCKS]
    return float(np.mean(values)) if values else float("nan")
