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
from torch.utils.data import DataLoader, Sampler

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


class PassSampler(Sampler[int]):
    """`count` sample indices: seeded shuffles of the `n` samples, one pass after another
    (no repeat within a pass), for a stage measured in steps rather than epochs."""

    def __init__(self, n: int, count: int, seed: int):
        self.n, self.count, self.seed = n, count, seed

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed)
        produced = 0
        while produced < self.count:
            order = rng.permutation(self.n)[: self.count - produced]
            produced += len(order)
            yield from order.tolist()

    def __len__(self) -> int:
        return self.count


def stage_batches(dataset: BarWindowDataset, steps: int, batch_size: int, seed: int) -> DataLoader:
    """`steps` batches of `batch_size` windows in a seeded order (a DataLoader over `PassSampler`)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=PassSampler(len(dataset), steps * batch_size, seed),
                      collate_fn=stack_bars, num_workers=0)


def stack_bars(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch of windows' bars and calendar features."""
    return {key: torch.stack([item[key] for item in items]) for key in ("x", "stamp")}


def collate(dataset: BarWindowDataset, indices: np.ndarray) -> dict[str, torch.Tensor]:
    return stack_bars([dataset[int(i)] for i in indices])
