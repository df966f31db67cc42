"""Training samples: inside their span, normalised over the lookback only, never fed the future."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.events import EventCalendar, EventVocabulary
from kronos_rolling.data.features import (
    FEATURE_COLUMNS,
    normalize_window,
    time_features,
)
from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.data.windows import select_training_window
from kronos_rolling.errors import ConfigError

L, H = 24, 6


def random_walk(n=300, start="2021-01-01", freq="h", seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    return pd.DataFrame({
        "timestamp": pd.date_range(start, periods=n, freq=freq, tz="UTC"),
        "open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
        "close": close, "volume": rng.uniform(1, 10, n),
    })


def frames():
    return {"BTCUSDT": random_walk(seed=1), "ETHUSDT": random_walk(seed=2)}


def make(data=None, start="2021-01-03", end="2021-01-12", **kwargs) -> BarWindowDataset:
    return BarWindowDataset(data if data is not None else frames(), ["BTCUSDT", "ETHUSDT"], start, end, L, H, **kwargs)


def test_item_layout():
    ds = make()
    item = ds[0]
    assert item["x"].shape == (L + H, 6) and item["x"].dtype == torch.float32
    assert item["stamp"].shape == (L + H, 5) and item["stamp"].dtype == torch.float32
    assert item["event_ids"].shape == (L + H,) and item["event_ids"].dtype == torch.int64
    assert item["mean"].shape == (6,) and item["std"].shape == (6,) and item["mean"].dtype == torch.float32
    assert item["symbol_index"].dtype == torch.int64 and item["symbol_index"].ndim == 0
    assert item["origin"].dtype == torch.int64 and item["origin"].ndim == 0
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["x"].shape == (4, L + H, 6) and batch["origin"].shape == (4,)


def test_horizon_inside_span_and_lookback_just_before():
    data = frames()
    start, end = pd.Timestamp("2021-01-03", tz="UTC"), pd.Timestamp("2021-01-12", tz="UTC")
    ds = make(data, start, end)
    times = {s: f["timestamp"] for s, f in data.items()}
    for k in range(0, len(ds), 3):
        item = ds[k]
        symbol = ds.symbols[int(item["symbol_index"])]
        origin = pd.Timestamp(int(item["origin"]), tz="UTC")
        i = int(np.flatnonzero(times[symbol] == origin)[0])
        assert start <= times[symbol][i] and times[symbol][i + H - 1] < end
        window = data[symbol].iloc[i - L:i + H]
        amount = window["volume"] * window[["open", "high", "low", "close"]].mean(axis=1)  # filled as documented
        bars = np.c_[window[FEATURE_COLUMNS[:5]].to_numpy(), amount.to_numpy()]
        expected, mean, std = normalize_window(bars, L)
        np.testing.assert_allclose(item["x"].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(item["mean"].numpy(), mean, rtol=1e-5)
        np.testing.assert_array_equal(item["stamp"].numpy(), time_features(times[symbol][i - L:i + H]))
    # Every in-span origin with enough history is present (stride 1): 9 days x 24 h - (H - 1) per symbol.
    assert ds.samples_per_symbol == {"BTCUSDT": 9 * 24 - H + 1, "ETHUSDT": 9 * 24 - H + 1}
    # Origins earlier than `lookback` bars into the data cannot have a lookback.
    early = make(data, "2021-01-01", "2021-01-05")
    assert early.skipped_history == 2 * L and early.samples_per_symbol["BTCUSDT"] == 4 * 24 - H + 1 - L


def test_changing_a_future_bar_changes_no_input_of_an_earlier_sample():
    data = frames()
    before = make(data)
    changed_at = 150  # a bar in the middle of the span
    altered = {s: f.copy() for s, f in data.items()}
    for column in ("open", "high", "low", "close", "volume"):
        altered["BTCUSDT"].loc[changed_at, column] *= 7.0
    after = make(altered)
    assert len(before) == len(after)
    changed_time = data["BTCUSDT"]["timestamp"][changed_at].value
    bar_ns = pd.Timedelta("1h").value
    checked_inputs = checked_whole = 0
    for k in range(len(before)):
        a, b = before[k], after[k]
        assert int(a["origin"]) == int(b["origin"])
        window_end = int(a["origin"]) + (H - 1) * bar_ns  # last horizon bar
        if int(a["symbol_index"]) != 0 or window_end < changed_time:
            for key in a:  # the change is after the whole window: nothing differs
                assert torch.equal(a[key], b[key]), key
            checked_whole += 1
        elif int(a["origin"]) <= changed_time:
            # The changed bar is in this sample's horizon: its inputs and normaliser are untouched.
            assert torch.equal(a["x"][:L], b["x"][:L])
            assert torch.equal(a["mean"], b["mean"]) and torch.equal(a["std"], b["std"])
            assert torch.equal(a["stamp"], b["stamp"]) and torch.equal(a["event_ids"], b["event_ids"])
            assert not torch.equal(a["x"][L:], b["x"][L:])  # ...only its target moved
            checked_inputs += 1
    assert checked_inputs == H and checked_whole > 100


def test_gaps_are_skipped_and_counted():
    data = frames()
    data["BTCUSDT"] = data["BTCUSDT"].drop(index=range(120, 130)).reset_index(drop=True)  # 10 hours missing
    ds = make(data)
    # Samples whose window [i - L, i + H - 1] straddles the hole: L + H - 1 of them.
    assert ds.skipped_gap == L + H - 1
    assert ds.samples_per_symbol["BTCUSDT"] == 9 * 24 - H + 1 - 10 - (L + H - 1)
    assert make(data, max_gap=10).skipped_gap == 0


def test_weekend_closure_is_not_a_gap_for_forex():
    fx = random_walk(24 * 14, start="2021-01-04")
    local = fx["timestamp"].dt.tz_convert("America/New_York")
    weekend = ((local.dt.day_of_week == 4) & (local.dt.hour >= 17)) | (local.dt.day_of_week == 5) | (
        (local.dt.day_of_week == 6) & (local.dt.hour < 17))
    fx = fx[~weekend.to_numpy()].reset_index(drop=True)
    ds = BarWindowDataset({"EURUSD": fx}, ["EURUSD"], "2021-01-06", "2021-01-16", L, H)
    assert ds.skipped_gap == 0 and len(ds) > 100
    as_crypto = BarWindowDataset({"EURUSD": fx}, ["EURUSD"], "2021-01-06", "2021-01-16", L, H,
                                 asset_classes={"EURUSD": "crypto"})
    assert as_crypto.skipped_gap == L + H - 1


def test_deterministic_subsampling_and_stride():
    full = make()
    a, b = make(max_samples=50, seed=7), make(max_samples=50, seed=7)
    assert len(a) == 50 and a.candidates == len(full)
    assert a.origins().equals(b.origins())
    assert not a.origins().equals(make(max_samples=50, seed=8).origins())
    assert set(map(tuple, a.origins().to_numpy())) <= set(map(tuple, full.origins().to_numpy()))
    strided = make(stride=5)
    origins = strided.origins()
    first = origins[origins["symbol"] == "BTCUSDT"]["origin"]
    assert (first.diff().dropna() == pd.Timedelta("5h")).all()
    assert len(strided) == sum(-(-n // 5) for n in full.samples_per_symbol.values())


def test_event_ids_follow_the_vocabulary(tmp_path):
    (tmp_path / "events.csv").write_text("timestamp,event_type,symbol,asset_class\n"
                                         "2021-01-06T19:30:00Z,fomc_decision,,\n2021-01-06T19:00:00Z,listing,ETHUSDT,\n")
    calendar = EventCalendar.from_csv(tmp_path / "events.csv")
    vocab = EventVocabulary.from_dict({"fomc_decision": 3, "listing": 1})
    ds = make(calendar=calendar, vocabulary=vocab)
    origin = pd.Timestamp("2021-01-06 19:00", tz="UTC").value
    for k in range(len(ds)):
        item = ds[k]
        if int(item["origin"]) == origin:
            expected = 1 if ds.symbols[int(item["symbol_index"])] == "ETHUSDT" else 3
            assert int(item["event_ids"][L]) == expected
            assert int(item["event_ids"].sum()) == expected  # no other event in the window
    assert make(calendar=calendar).vocabulary.to_dict() == {"fomc_decision": 1, "listing": 2}


def test_bundled_store_samples_for_a_window():
    store = DataStore(BUNDLED_DATA_DIR)
    w = select_training_window("2018-01-01", years=1)
    ds = BarWindowDataset(store, store.symbols_for("crypto"), *w.fit_span, lookback=64, horizon=8,
                          max_samples=500, seed=0)
    assert len(ds) == 500
    origins = ds.origins()
    assert origins["origin"].min() >= w.train_start and origins["origin"].max() < w.inner_val_start
    assert ds.vocabulary.to_dict() == {"btc_halving": 1, "fomc_decision": 2, "stock_split": 3}
    assert set(origins["symbol"]) <= {"BTCUSD", "BTCUSD-1D", "ETHUSD", "LTCUSD"}
    # FOMC of 2017-12-13 19:00 UTC lies in the BTCUSD hourly bar starting then.
    inner = BarWindowDataset(store, ["BTCUSD"], "2017-12-13 19:00", "2017-12-13 20:00", 64, 1)
    assert len(inner) == 1 and int(inner[0]["event_ids"][-1]) == ds.vocabulary.id_of("fomc_decision")


@pytest.mark.parametrize("kwargs,message", [
    ({"start": "2021-01-05", "end": "2021-01-05"}, "empty span"),
    ({"stride": 0}, "must be >= 1"),
    ({"max_samples": 0}, "max_samples"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make(**kwargs)
