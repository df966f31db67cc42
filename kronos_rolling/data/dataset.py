"""Training samples: `lookback` bars of context followed by `horizon` bars to forecast.

A sample belongs to a span [start, end) when all its horizon bars lie inside it; its
lookback is the `lookback` bars just before the first horizon bar, which may precede
`start` (history before a span is known at its start) but never follows it. The
window is z-scored with statistics of the lookback only (`features.normalize_window`),
so no horizon bar reaches the normaliser. Samples whose window crosses a gap of more
than `max_gap` missing bars are skipped and counted.

Per-symbol arrays (features, time features, event ids) are computed once; an item is
a slice plus one normalisation, so loading stays far cheaper than a training step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kronos_rolling.data.assets import classify_asset
from kronos_rolling.data.bars import clean_bars
from kronos_rolling.data.calendars import infer_spacing, missing_bars
from kronos_rolling.data.events import EventCalendar, EventVocabulary
from kronos_rolling.data.features import (
    FEATURE_COLUMNS,
    normalize_window,
    time_features,
)
from kronos_rolling.data.store import DataStore
from kronos_rolling.data.windows import to_utc
from kronos_rolling.errors import ConfigError, DataError
from kronos_rolling.settings import DEFAULT_MAX_GAP


@dataclass
class _Series:
    """One symbol's bars around the span, as arrays ready to slice."""

    values: np.ndarray  # (n, 6) float32
    stamps: np.ndarray  # (n, 5) float32
    event_ids: np.ndarray  # (n,) int64
    times: np.ndarray  # (n,) int64 ns


class BarWindowDataset(Dataset):
    """(lookback + horizon)-bar samples over several symbols within [start, end).

    Item: `x` (T, 6) float32 normalised features, `stamp` (T, 5) float32 time features,
    `event_ids` (T,) int64, `mean` and `std` (6,) float32 of the lookback (to undo the
    normalisation), `symbol_index` int64 into `symbols`, `origin` int64 (ns UTC of the
    first horizon bar); T = lookback + horizon.
    """

    def __init__(
        self,
        source: DataStore | Mapping[str, pd.DataFrame],
        symbols: Sequence[str],
        start,
        end,
        lookback: int,
        horizon: int,
        vocabulary: EventVocabulary | None = None,
        *,
        stride: int = 1,
        max_samples: int | None = None,
        seed: int = 0,
        calendar: EventCalendar | None = None,
        asset_classes: Mapping[str, str] | None = None,
        max_gap: int = DEFAULT_MAX_GAP,
    ):
        if lookback < 1 or horizon < 1 or stride < 1:
            raise ConfigError(f"lookback, horizon and stride must be >= 1, got {lookback}, {horizon}, {stride}")
        if max_samples is not None and max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1 or None, got {max_samples}")
        self.start, self.end = to_utc(start), to_utc(end)
        if not self.start < self.end:
            raise ConfigError(f"empty span: start {self.start} is not before end {self.end}")
        if not symbols:
            raise ConfigError("no symbols given for the dataset")
        self.symbols = list(symbols)
        self.lookback, self.horizon = lookback, horizon
        if calendar is None:
            calendar = source.events() if isinstance(source, DataStore) else EventCalendar()
        self.vocabulary = vocabulary if vocabulary is not None else EventVocabulary.from_types(calendar.event_types())

        self._series: list[_Series] = []
        symbol_of, position_of = [], []
        self.skipped_gap = 0  # in-span samples dropped because their window crosses a gap
        self.skipped_history = 0  # in-span samples dropped for lack of `lookback` earlier bars
        self.samples_per_symbol: dict[str, int] = {}
        for index, symbol in enumerate(self.symbols):
            if isinstance(source, DataStore):
                bars, asset_class = source.load(symbol), source.asset_class(symbol)
            else:
                if symbol not in source:
                    raise DataError(f"no bars given for symbol {symbol!r} (have {', '.join(source)})")
                bars = clean_bars(source[symbol], symbol)
                asset_class = (asset_classes or {}).get(symbol) or classify_asset(symbol)
            series, origins = self._prepare(symbol, bars, asset_class, calendar, stride, max_gap)
            self._series.append(series)
            symbol_of.append(np.full(len(origins), index, dtype=np.int64))
            position_of.append(origins)
            self.samples_per_symbol[symbol] = len(origins)

        self._symbol_of = np.concatenate(symbol_of)
        self._position_of = np.concatenate(position_of)
        self.candidates = len(self._symbol_of)
        if max_samples is not None and self.candidates > max_samples:
            keep = np.sort(np.random.default_rng(seed).choice(self.candidates, max_samples, replace=False))
            self._symbol_of, self._position_of = self._symbol_of[keep], self._position_of[keep]

    def _prepare(self, symbol, bars, asset_class, calendar, stride, max_gap):
        times = pd.DatetimeIndex(bars["timestamp"]).asi8
        L, H = self.lookback, self.horizon
        first_in = int(np.searchsorted(times, self.start.value, side="left"))
        end_at = int(np.searchsorted(times, self.end.value, side="left"))
        last_origin = end_at - H  # its horizon ends on the last bar before `end`
        if last_origin < first_in:
            return self._empty_series(), np.zeros(0, dtype=np.int64)

        origins = np.arange(first_in, last_origin + 1, stride, dtype=np.int64)
        self.skipped_history += int((origins < L).sum())
        origins = origins[origins >= L]
        spacing = infer_spacing(bars["timestamp"])
        if spacing is not None and len(origins):
            gaps = missing_bars(pd.DatetimeIndex(bars["timestamp"]), spacing, asset_class) > max_gap
            crossed = np.concatenate([[0], np.cumsum(gaps)])  # crossed[j + 1]: gaps at bars <= j
            # A gap sits before bar j; the window [i - L, i + H - 1] crosses it when i - L < j <= i + H - 1.
            clean = crossed[origins + H] - crossed[origins - L + 1] == 0
            self.skipped_gap += int((~clean).sum())
            origins = origins[clean]
        if len(origins) == 0:
            return self._empty_series(), origins

        # Keep only the bars some sample touches; positions shift by the offset.
        lo, hi = int(origins[0]) - L, int(origins[-1]) + H
        stamps = pd.DatetimeIndex(bars["timestamp"].iloc[lo:hi])
        series = _Series(
            values=bars[FEATURE_COLUMNS].iloc[lo:hi].to_numpy(dtype=np.float32),
            stamps=time_features(stamps),
            event_ids=calendar.event_ids(symbol, asset_class, stamps, spacing, self.vocabulary),
            times=times[lo:hi].copy(),
        )
        return series, origins - lo

    @staticmethod
    def _empty_series() -> _Series:
        return _Series(np.zeros((0, 6), np.float32), np.zeros((0, 5), np.float32),
                       np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self._symbol_of)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        symbol_index = int(self._symbol_of[index])
        origin = int(self._position_of[index])
        series = self._series[symbol_index]
        window = slice(origin - self.lookback, origin + self.horizon)
        x, mean, std = normalize_window(series.values[window], self.lookback)
        return {
            "x": torch.from_numpy(x),
            "stamp": torch.from_numpy(series.stamps[window].copy()),
            "event_ids": torch.from_numpy(series.event_ids[window].copy()),
            "mean": torch.from_numpy(np.asarray(mean, dtype=np.float32)),
            "std": torch.from_numpy(np.asarray(std, dtype=np.float32)),
            "symbol_index": torch.tensor(symbol_index, dtype=torch.int64),
            "origin": torch.tensor(int(series.times[origin]), dtype=torch.int64),
        }

    def calendar_item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`stamp` and `event_ids` of item `index` (what training reads besides the cached tokens)."""
        series = self._series[int(self._symbol_of[index])]
        origin = int(self._position_of[index])
        window = slice(origin - self.lookback, origin + self.horizon)
        return torch.from_numpy(series.stamps[window].copy()), torch.from_numpy(series.event_ids[window].copy())

    def window_digest(self) -> str:
        """sha256 of what the tokens of every sample depend on: the window shape, each
        symbol's feature values and the samples' (symbol, position) in index order."""
        digest = hashlib.sha256(f"windows {self.lookback}+{self.horizon} of {len(self)}".encode())
        for symbol, series in zip(self.symbols, self._series):
            digest.update(symbol.encode() + b"\0")
            digest.update(np.ascontiguousarray(series.values, dtype=np.float32).tobytes())
        digest.update(self._symbol_of.astype(np.int64).tobytes())
        digest.update(self._position_of.astype(np.int64).tobytes())
        return digest.hexdigest()

    def positions(self) -> np.ndarray:
        """Each sample's first horizon bar, as a bar number within its symbol's series (index order)."""
        return self._position_of.copy()

    def origins(self) -> pd.DataFrame:
        """Symbol and first-horizon-bar time of every sample, in index order."""
        times = np.zeros(len(self), dtype=np.int64)
        for index, series in enumerate(self._series):
            mine = self._symbol_of == index
            times[mine] = series.times[self._position_of[mine]]
        return pd.DataFrame({
            "symbol": np.asarray(self.symbols, dtype=object)[self._symbol_of],
            "origin": pd.to_datetime(times, utc=True),
        })

    def __repr__(self) -> str:
        return (f"BarWindowDataset({len(self)} samples of {self.lookback}+{self.horizon} bars, "
                f"[{self.start}, {self.end}), symbols={self.symbols}, skipped_gap={self.skipped_gap}, "
                f"skipped_history={self.skipped_history})")
