"""Rolling-origin samples of one held-out span, shared by every model a decision compares.

One `EvaluationSamples` is built per span and reused, so the candidate, the pooled and
production adapters, the bare base and the naive baselines are scored on the very same
origins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import DataError
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.score import (
    bars_per_year,
    cumulative_returns,
    non_overlapping,
)

CLOSE = 3  # index of `close` in FEATURE_COLUMNS


@dataclass
class EvaluationSamples:
    """Rolling-origin samples of one span, with the raw prices needed to score them.

    Samples are ordered by symbol, then time; every array is per sample.
    """

    dataset: BarWindowDataset
    vocabulary: EventVocabulary
    symbols: np.ndarray  # (N,) symbol of each sample
    position: np.ndarray  # (N,) bar number of the first horizon bar within its symbol's series
    last_close: np.ndarray  # (N,) close of the last lookback bar
    lookback_close: np.ndarray  # (N, lookback) the lookback's closes (the naive baseline's volatility)
    actual_close: np.ndarray  # (N, horizon)
    origin: np.ndarray  # (N,) ns timestamp of the first horizon bar
    horizon_end: np.ndarray  # (N,) ns timestamp where the horizon ends: its last bar's start + the bar spacing
    blocks_per_year: dict[str, float]  # per symbol: horizon-long blocks in a year of its market
    settings: EvalSettings
    candidates: int  # origins in the span before any cap

    def __len__(self) -> int:
        return len(self.last_close)

    @property
    def actual_returns(self) -> np.ndarray:
        """(N, horizon) cumulative returns that happened."""
        return cumulative_returns(self.actual_close, self.last_close)

    def blocks(self) -> dict[str, np.ndarray]:
        """Per symbol, the samples (indices) whose horizons do not overlap, in time order."""
        found = {}
        for symbol in dict.fromkeys(self.symbols.tolist()):
            rows = np.flatnonzero(self.symbols == symbol)
            found[symbol] = rows[non_overlapping(self.position[rows], self.settings.horizon)]
        return found


def build_samples(store: DataStore, symbols: list[str], span: tuple, settings: EvalSettings,
                  vocabulary: EventVocabulary) -> EvaluationSamples:
    """Every origin (each bar) whose whole horizon lies inside `span`, or a seeded subset of
    `settings.max_origins`. Symbols with no origin in the span are left out (the caller says so)."""
    start, end = span
    dataset = BarWindowDataset(
        store, symbols, start, end, lookback=settings.lookback, horizon=settings.horizon,
        vocabulary=vocabulary, stride=1, seed=settings.seed, max_samples=settings.max_origins,
    )
    if len(dataset) == 0:
        raise DataError(
            f"no evaluation samples for {', '.join(symbols)} in [{start}, {end}): each needs "
            f"{settings.lookback} bars of lookback before and {settings.horizon} bars inside the span; "
            "use a longer validation span, a shorter horizon, or data that covers it"
        )
    refs = dataset.origins()
    origins = refs["origin"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    last_close = np.empty(len(refs))
    lookback_close = np.empty((len(refs), settings.lookback))
    actual = np.empty((len(refs), settings.horizon))
    horizon_end = np.empty(len(refs), dtype=np.int64)
    for symbol, rows in refs.groupby("symbol").indices.items():
        bars = store.load(symbol)
        times = pd.DatetimeIndex(bars["timestamp"]).asi8
        close = bars["close"].to_numpy(dtype=np.float64)
        at = np.searchsorted(times, origins[rows])
        last_close[rows] = close[at - 1]
        lookback_close[rows] = close[at[:, None] - settings.lookback + np.arange(settings.lookback)]
        actual[rows] = close[at[:, None] + np.arange(settings.horizon)]
        horizon_end[rows] = times[at + settings.horizon - 1] + pd.Timedelta(store.bar_spacing(symbol)).value
    per_year = {s: bars_per_year(store.asset_class(s), store.bar_spacing(s)) / settings.horizon
                for s in dataset.symbols if dataset.samples_per_symbol[s]}
    return EvaluationSamples(dataset, vocabulary, refs["symbol"].to_numpy(dtype=object), dataset.positions(),
                             last_close, lookback_close, actual, origins, horizon_end, per_year, settings, dataset.candidates)
