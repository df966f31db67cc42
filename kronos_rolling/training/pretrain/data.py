"""What a pre-training reads: bars strictly before `until`, cut right after loading.

Each symbol's bars are cut at `until` before windows, normalisation or the data digest
see them, so every window the base is later evaluated on (from `until` on) is unseen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.events import EventCalendar
from kronos_rolling.data.features import FEATURE_COLUMNS
from kronos_rolling.data.store import DataStore
from kronos_rolling.data.windows import to_utc
from kronos_rolling.errors import DataError


def bars_between(store: DataStore, symbols: Sequence[str], start=None, end=None) -> dict[str, pd.DataFrame]:
    """Each symbol's bars with start <= timestamp < end (either bound optional); symbols without any are left out."""
    lower = to_utc(start) if start is not None else None
    upper = to_utc(end) if end is not None else None
    found = {}
    for symbol in symbols:
        bars = store.load(symbol)
        keep = np.ones(len(bars), dtype=bool)
        if lower is not None:
            keep &= (bars["timestamp"] >= lower).to_numpy()
        if upper is not None:
            keep &= (bars["timestamp"] < upper).to_numpy()
        if keep.any():
            found[symbol] = bars[keep].reset_index(drop=True)
    return found


def window_dataset(store: DataStore, bars: Mapping[str, pd.DataFrame], lookback: int, horizon: int,
                   stride: int = 1) -> BarWindowDataset:
    """All (lookback + horizon)-bar windows that lie wholly inside the given bars (no events)."""
    return BarWindowDataset(
        bars, list(bars), start=min(frame["timestamp"].iloc[0] for frame in bars.values()),
        end=max(frame["timestamp"].iloc[-1] for frame in bars.values()) + pd.Timedelta(1, "ns"),
        lookback=lookback, horizon=horizon, stride=stride, calendar=EventCalendar(),
        asset_classes={s: store.asset_class(s) for s in bars},
    )


def held_out_windows(store: DataStore, since, lookback: int, horizon: int, symbols: Sequence[str] | None = None,
                     stride: int = 1) -> BarWindowDataset:
    """Windows made only of bars at or after `since`: what a base pretrained until `since` has never seen."""
    bars = bars_between(store, list(symbols) if symbols is not None else store.symbols(), start=since)
    if not bars:
        raise DataError(f"no bars at or after {to_utc(since):%Y-%m-%d} in {store.root} to evaluate on")
    return window_dataset(store, bars, lookback, horizon, stride)


def bars_digest(bars: Mapping[str, pd.DataFrame]) -> str:
    """sha256 of exactly the bars a pre-training reads: symbols, timestamps and features."""
    digest = hashlib.sha256()
    for symbol in sorted(bars):
        frame = bars[symbol]
        digest.update(symbol.encode() + b"\0")
        digest.update(pd.DatetimeIndex(frame["timestamp"]).asi8.tobytes())
        digest.update(np.ascontiguousarray(frame[FEATURE_COLUMNS].to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()


def batch_indices(n_samples: int, steps: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """`steps` batches of sample indices: seeded shuffles, one after another, no repeat within a pass."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_samples)
    position = 0
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if position == len(order):
                order, position = rng.permutation(n_samples), 0
            take = min(batch_size - len(batch), len(order) - position)
            batch.extend(order[position:position + take])
            position += take
        yield np.asarray(batch, dtype=np.int64)


def collate(dataset: BarWindowDataset, indices: np.ndarray) -> dict[str, torch.Tensor]:
    items = [dataset[int(i)] for i in indices]
    return {key: torch.stack([item[key] for item in items]) for key in ("x", "stamp")}
