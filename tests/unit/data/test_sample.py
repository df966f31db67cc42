"""The bundled real sample data matches its provenance and known market history."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kronos_rolling.data.calendars import format_spacing
from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore

PROVENANCE = json.loads((BUNDLED_DATA_DIR / "provenance.json").read_text())


def test_every_series_has_provenance_and_matches_it():
    store = DataStore(BUNDLED_DATA_DIR)
    assert sorted(PROVENANCE) == store.symbols()
    for symbol, entry in PROVENANCE.items():
        frame = store.load(symbol)
        assert len(frame) == entry["rows"], symbol
        assert frame["timestamp"].iloc[0] == pd.Timestamp(entry["first"]), symbol
        assert frame["timestamp"].iloc[-1] == pd.Timestamp(entry["last"]), symbol
        assert format_spacing(store.bar_spacing(symbol)) == entry["bar_spacing"], symbol
        assert store.asset_class(symbol) == entry["asset_class"], symbol
        source = entry["source"]
        for field in ("package", "version", "file", "licence", "archive_sha256", "file_sha256"):
            assert source[field], (symbol, field)
        assert (BUNDLED_DATA_DIR / f"{symbol}.parquet").stat().st_size == entry["bytes"]
    documented = (BUNDLED_DATA_DIR / "PROVENANCE.md").read_text()
    assert all(f"| {symbol} |" in documented for symbol in PROVENANCE)


def test_sample_data_stays_compact():
    total = sum(p.stat().st_size for p in BUNDLED_DATA_DIR.iterdir())
    assert total < 3_000_000


@pytest.mark.parametrize("symbol,day,column,low,high", [
    ("BTCUSD", "2017-12-17 12:00", "high", 19_800, 19_900),  # Coinbase all-time high of 2017
    ("BTCUSD-1D", "2017-12-17", "high", 19_000, 20_000),
    ("^GSPC", "2009-03-09", "close", 676.5, 676.6),         # crisis low
    ("^GSPC", "2015-06-01", "close", 2_000, 2_150),
    ("^IXIC", "2000-03-10", "close", 5_048.6, 5_048.7),     # dot-com peak
    ("AAPL", "2012-09-19", "close", 702.0, 702.2),
    ("AAPL", "2000-03-01", "close", 32.5, 32.7),            # 130.31 before two 2:1 splits
    ("MSFT", "2003-02-14", "close", 24.1, 24.2),            # 48.30 before the 2:1 split of 2003-02-18
    ("EURUSD", "2017-01-03 12:00", "close", 1.03, 1.05),
    ("EURUSD", "2017-12-29 12:00", "close", 1.19, 1.21),
])
def test_values_match_known_history(symbol, day, column, low, high):
    frame = DataStore(BUNDLED_DATA_DIR).load(symbol).set_index("timestamp")
    assert low <= frame.loc[pd.Timestamp(day, tz="UTC"), column] <= high


def test_split_adjustment_leaves_no_jumps_and_is_documented():
    store = DataStore(BUNDLED_DATA_DIR)
    for symbol in ("AAPL", "MSFT"):
        returns = store.load(symbol)["close"].pct_change().abs().dropna()
        assert returns.max() < 0.6, symbol
    assert [c["date"] for c in PROVENANCE["AAPL"]["changes"]] == ["2000-06-21", "2005-02-28"]
    assert [c["date"] for c in PROVENANCE["MSFT"]["changes"]] == ["2003-02-18"]
    unchanged = {"BTCUSD-1D", "ETHUSD", "LTCUSD", "EURUSD", "GOOG", "IBM", "^GSPC", "^IXIC"}
    assert all(PROVENANCE[s]["changes"] == [] for s in unchanged)


def test_coinbase_hours_are_utc_after_the_relabelling():
    """The source labelled 2017-09-22 .. 2017-11-12 in US Eastern time; the bundle holds UTC."""
    store = DataStore(BUNDLED_DATA_DIR)
    hourly = store.load("BTCUSD").set_index("timestamp")
    daily = store.load("BTCUSD-1D").set_index("timestamp")
    days = daily.loc["2017-09-25":"2017-11-10"].index
    def mismatch(shift):
        opens = hourly["open"].reindex(days + pd.Timedelta(hours=shift)).to_numpy()
        return np.nanmedian(np.abs(np.log(opens / daily.loc[days, "open"].to_numpy())))
    assert mismatch(0) < min(mismatch(-4), mismatch(-5), mismatch(4)) and mismatch(0) < 0.003
    # Every open follows the previous close except at the hours the source lacks.
    bars = store.load("BTCUSD")
    breaks = bars["timestamp"][(bars["open"] / bars["close"].shift() - 1).abs() > 0.003]
    assert {"2017-09-23 00:00", "2017-11-05 06:00"} <= set(breaks.dt.strftime("%Y-%m-%d %H:%M"))
    assert not bars["timestamp"].duplicated().any()
    changes = {c["change"].split(" ")[0]: c["bars"] for c in PROVENANCE["BTCUSD"]["changes"]}
    assert changes == {"relabelled": 1208, "removed:": 5, "hours": 5}
