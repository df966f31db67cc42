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
)

CLOSE = 3  # index of `close` in FEATURE_COLUMNS


@dataclass
class EvaluationSamples:
    """Rolling-origin samples of one span, with the raw prices needed to score them."""

    dataset: BarWindowDataset
    vocabulary: EventVocabulary
    symbols: list[str]  # per sample
    last_close: np.ndarray  # (N,) close of the last lookback bar
    actual_close: np.ndarray  # (N, horizon)
    origin: np.ndarray  # (N,) ns timestamp of the first horizon bar
    periods_per_year: dict[str, float]  # per symbol, for the holding period
    settings: EvalSettings

    def __len__(self) -> int:
        return len(self.last_close)


def build_samples(store: DataStore, symbols: list[str], span: tuple, settings: EvalSettings,
                  vocabulary: EventVocabulary) -> EvaluationSamples:
    """Origins every `hold` bars whose whole horizon lies inside `span`."""
    start, end = span
    dataset = BarWindowDataset(
        store, symbols, start, end, lookback=settings.lookback, horizon=settings.horizon,
        vocabulary=vocabulary, stride=settings.hold, seed=settings.seed, max_samples=settings.max_origins,
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
    actual = np.empty((len(refs), settings.horizon))
    for symbol, rows in refs.groupby("symbol").indices.items():
        bars = store.load(symbol)
        times = pd.DatetimeIndex(bars["timestamp"]).asi8
        close = bars["close"].to_numpy(dtype=np.float64)
        at = np.searchsorted(times, origins[rows])
        last_close[rows] = close[at - 1]
        actual[rows] = close[at[:, None] + np.arange(settings.horizon)]
    per_year = {
        s: bars_per_year(store.asset_class(s), store.bar_spacing(s)) / settings.hold for s in dataset.symbols
    }
    return EvaluationSamples(dataset, vocabulary, refs["symbol"].tolist(), last_close, actual, origins,
                             per_year, settings)
