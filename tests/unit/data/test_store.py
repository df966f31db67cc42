"""The data folder: loading, listing, and imports that are all or nothing."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kronos_rolling.cli.main import main
from kronos_rolling.data.bars import clean_bars
from kronos_rolling.data.features import FEATURE_COLUMNS
from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import DataError
from kronos_rolling.settings import BUNDLED_DATA_DIR, load_settings

BUNDLED = ["AAPL", "BTCUSD", "BTCUSD-1D", "ETHUSD", "EURUSD", "GOOG", "IBM", "LTCUSD", "MSFT", "^GSPC", "^IXIC"]


def folder_state(path):
    return sorted((p.name, p.stat().st_size, p.read_bytes()) for p in path.iterdir()) if path.exists() else None


def _write(path, text):
    path.write_text(text)
    return path


def test_the_data_folder_is_the_setting_else_the_bundled_data(tmp_path):
    assert load_settings({}).data_dir is None
    assert DataStore(load_settings({}).data_dir).root == BUNDLED_DATA_DIR
    assert DataStore(load_settings({"KRONOS_DATA_DIR": str(tmp_path)}).data_dir).root == tmp_path


def test_bundled_store_loads_every_symbol_as_utc_bars():
    store = DataStore(BUNDLED_DATA_DIR)
    assert store.symbols() == BUNDLED
    for symbol in store.symbols():
        frame = store.load(symbol)
        assert list(frame.columns) == ["timestamp"] + FEATURE_COLUMNS
        assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
        assert frame["timestamp"].is_monotonic_increasing and frame["timestamp"].is_unique
        assert np.isfinite(frame[FEATURE_COLUMNS].to_numpy()).all()
    assert store.symbols_for("crypto") == ["BTCUSD", "BTCUSD-1D", "ETHUSD", "LTCUSD"]
    assert store.symbols_for("forex_commodity") == ["EURUSD"]
    assert store.symbols_for("equity") == ["AAPL", "GOOG", "IBM", "MSFT", "^GSPC", "^IXIC"]
    assert store.bar_spacing("BTCUSD") == pd.Timedelta(hours=1)
    assert store.bar_spacing("BTCUSD-1D") == pd.Timedelta(days=1)
    assert store.bar_spacing("EURUSD") == pd.Timedelta(hours=1)
    # amount: the source's USD volume for Coinbase, volume x mean price elsewhere.
    btc = store.load("BTCUSD")
    assert btc["amount"].iloc[0] != pytest.approx(btc["volume"].iloc[0] * btc[["open", "high", "low", "close"]].iloc[0].mean(), rel=1e-9)
    ibm = store.load("IBM")
    assert ibm["amount"].to_numpy() == pytest.approx(
        (ibm["volume"] * ibm[["open", "high", "low", "close"]].mean(axis=1)).to_numpy())


def test_load_returns_a_copy_and_unknown_symbol_lists_the_known_ones():
    store = DataStore(BUNDLED_DATA_DIR)
    frame = store.load("ibm")  # symbols match in any case
    frame.loc[0, "close"] = -1
    assert store.load("IBM").loc[0, "close"] > 0
    with pytest.raises(DataError, match=r"no data for symbol 'NOPE'.*AAPL, BTCUSD.*data import"):
        store.load("NOPE")


def test_load_refuses_broken_files_with_the_row(tmp_path):
    frame = pd.DataFrame({"timestamp": pd.date_range("2021-01-01", periods=5, freq="D", tz="UTC"),
                          "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5})
    frame.loc[3, "low"] = 3.0
    frame.to_parquet(tmp_path / "AAPL.parquet")
    with pytest.raises(DataError, match=r"row 4, column 'low': low is above"):
        DataStore(tmp_path).load("AAPL")


def test_import_layouts_are_normalised_to_utc(tmp_path):
    store = DataStore(tmp_path / "store")
    src = tmp_path / "in.csv"
    layouts = {
        # Exchange export: unix milliseconds, upper-case names, newest first.
        "SOLUSDT": ("OPEN_TIME,OPEN,HIGH,LOW,CLOSE,VOLUME\n1609462800000,2,3,1,2.5,10\n1609459200000,1,2,0.5,1.5,10\n",
                    ["2021-01-01 00:00", "2021-01-01 01:00"]),
        # Unix seconds.
        "ADAUSDT": ("time,open,high,low,close\n1609459200,1,2,0.5,1.5\n1609462800,2,3,1,2.5\n",
                    ["2021-01-01 00:00", "2021-01-01 01:00"]),
        # Offsets in the text (New York, across a DST change) are converted to UTC.
        "EURUSD": ("Datetime,Open,High,Low,Close\n2021-03-12 16:00:00-05:00,1,2,0.5,1.5\n"
                   "2021-03-15 09:00:00-04:00,1,2,0.5,1.5\n", ["2021-03-12 21:00", "2021-03-15 13:00"]),
        # Separate date and time columns.
        "GBPUSD": ("Date,Time,Open,High,Low,Close\n2021.01.04,10:00,1,2,0.5,1.5\n2021.01.04,11:00,1,2,0.5,1.5\n",
                   ["2021-01-04 10:00", "2021-01-04 11:00"]),
        # Daily bars keep their dates.
        "AAPL": ("date,open,high,low,close,volume,adj close\n2021-01-04,1,2,0.5,1.5,100,1.4\n"
                 "2021-01-05,1,2,0.5,1.5,100,1.4\n", ["2021-01-04 00:00", "2021-01-05 00:00"]),
    }
    for symbol, (text, expected) in layouts.items():
        src.write_text(text)
        report = store.import_csv(src, symbol)
        frame = store.load(symbol)
        assert list(frame["timestamp"]) == [pd.Timestamp(t, tz="UTC") for t in expected], symbol
        assert report.rows == 2 and report.path == store.root / f"{symbol}.parquet"
    newest_first = _write(tmp_path / "s.csv", layouts["SOLUSDT"][0])
    assert "rows were newest-first; stored oldest-first" in store.import_csv(newest_first, "DOTUSDT").notes
    assert store.symbols() == sorted(list(layouts) + ["DOTUSDT"])


def test_import_with_local_time_zone_and_format(tmp_path):
    store = DataStore(tmp_path)
    src = _write(tmp_path / "fx.csv", "Time,Open,High,Low,Close,Volume\n04.01.2021 10:00:00.000,1,2,0.5,1.5,5\n"
                 "04.01.2021 11:00:00.000,1,2,0.5,1.5,5\n")
    store.import_csv(src, "EURJPY", time_format="%d.%m.%Y %H:%M:%S.%f", tz="Europe/Berlin")
    assert store.load("EURJPY")["timestamp"].iloc[0] == pd.Timestamp("2021-01-04 09:00", tz="UTC")


@pytest.mark.parametrize("text,symbol,kwargs,message", [
    ("date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n2021-01-02,1,0.1,0.5,1.5\n", "AAPL", {}, "row 2, column 'high'"),
    ("date,open,high,low\n2021-01-01,1,2,0.5\n", "AAPL", {}, "missing column"),
    ("date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n2021-01-01,1,2,0.5,1.5\n", "AAPL", {}, "duplicate timestamp"),
    ("date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n2021-01-04,1,1e300,0.5,1.5\n", "AAPL", {},
     r"row 2, column 'high': too large for float32"),
    ("date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n2021-01-04,-1,2,0.5,1.5\n", "AAPL", {},
     r"row 2, column 'open': price is not positive: -1"),
    ("date,open,high,low,close,volume\n2021-01-01,1,2,0.5,1.5,3\n2021-01-04,1,2,0.5,1.5,-3\n", "AAPL", {},
     r"row 2, column 'volume': negative value: -3"),
    ("date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n", "MYSTERY1", {}, "asset_classes.csv"),
    ("date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n", "BTC/USDT", {}, "cannot name a file"),
    ("date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n", "AAPL", {"asset_class": "bonds"}, "not one of"),
    ("date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n", "AAPL", {"tz": "Mars/Olympus"}, "unknown time zone"),
])
def test_failed_import_writes_nothing(tmp_path, text, symbol, kwargs, message):
    root = tmp_path / "store"
    root.mkdir()
    (root / "asset_classes.csv").write_text("symbol,asset_class\nGLD,forex_commodity\n")
    before = folder_state(root)
    with pytest.raises(DataError, match=message):
        DataStore(root).import_csv(_write(tmp_path / "in.csv", text), symbol, **kwargs)
    assert folder_state(root) == before
    assert not any(p.name.startswith(".") for p in root.iterdir())


def test_failed_import_does_not_create_the_folder(tmp_path):
    with pytest.raises(DataError):
        DataStore(tmp_path / "new").import_csv(_write(tmp_path / "in.csv", "date,open\n2021-01-01,1\n"), "AAPL")
    assert not (tmp_path / "new").exists()


def test_existing_symbol_needs_replace_and_bundled_data_is_read_only(tmp_path):
    store = DataStore(tmp_path)
    src = _write(tmp_path / "in.csv", "date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n2021-01-04,1,2,0.5,1.5\n")
    store.import_csv(src, "AAPL")
    before = folder_state(tmp_path)
    with pytest.raises(DataError, match="--replace"):
        store.import_csv(src, "aapl")
    assert folder_state(tmp_path) == before
    _write(src, "date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n2021-01-04,1,2,0.5,1.5\n2021-01-05,1,2,0.5,1.5\n")
    assert store.import_csv(src, "AAPL", replace=True).rows == 3 and len(store.load("AAPL")) == 3
    with pytest.raises(DataError, match="read-only"):
        DataStore(BUNDLED_DATA_DIR).import_csv(src, "ZZZ")


def test_asset_class_given_at_import_is_saved_as_override(tmp_path):
    store = DataStore(tmp_path)
    src = _write(tmp_path / "in.csv", "date,open,high,low,close\n2021-01-01,1,2,0.5,1.5\n2021-01-02,1,2,0.5,1.5\n")
    report = store.import_csv(src, "MYTOKEN1", asset_class="crypto")
    assert report.asset_class == "crypto"
    assert store.asset_class("MYTOKEN1") == "crypto"
    assert (tmp_path / "asset_classes.csv").read_text() == "symbol,asset_class\nMYTOKEN1,crypto\n"
    store.import_csv(src, "SPY", asset_class="equity")  # the rules agree: no override written
    assert "SPY" not in (tmp_path / "asset_classes.csv").read_text()


def test_import_reports_gaps_without_failing(tmp_path):
    stamps = list(pd.date_range("2021-01-01", periods=30, freq="h")[:10]) + list(pd.date_range("2021-01-02", periods=10, freq="h"))
    frame = pd.DataFrame({"timestamp": [t.isoformat() for t in stamps], "open": 1, "high": 2, "low": 0.5, "close": 1.5})
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    report = DataStore(tmp_path / "s").import_csv(src, "BTCUSDT")
    assert len(report.gaps) == 1 and "14 missing bars" in report.gaps[0].problem


def test_clean_bars_accepts_frames_from_code():
    frame = pd.DataFrame({"Timestamp": pd.date_range("2021-01-01", periods=3, freq="D"),
                          "Open": [1, 2, 3], "High": [2, 3, 4], "Low": [0.5, 1, 2], "Close": [1.5, 2, 3]})
    bars = clean_bars(frame, "mine")
    assert str(bars["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert (bars["volume"] == 0).all() and (bars["amount"] == 0).all()


def test_cli_import_list_and_errors(tmp_path, monkeypatch):
    runner = CliRunner()
    src = _write(tmp_path / "in.csv", "Date,Open,High,Low,Close,Volume\n2021-01-04,1,2,0.5,1.5,7\n"
                 "2021-01-05,1,2,0.5,1.5,7\n2021-01-06,1,2,0.5,1.5,7\n")
    store = tmp_path / "store"
    result = runner.invoke(main, ["data", "import", str(src), "--symbol", "IBM", "--data", str(store)])
    assert result.exit_code == 0, result.output
    assert "imported IBM (equity): 3 bars of 1D" in result.stdout
    monkeypatch.setenv("KRONOS_DATA_DIR", str(store))
    result = runner.invoke(main, ["data", "list"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SYMBOL", "CLASS", "SPACING", "FIRST", "LAST", "ROWS"]
    assert lines[1].split() == ["IBM", "equity", "1D", "2021-01-04", "2021-01-06", "3"]
    result = runner.invoke(main, ["data", "import", str(src), "--symbol", "IBM"])
    assert result.exit_code != 0 and "--replace" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(main, ["data", "import", str(tmp_path / "missing.csv"), "--symbol", "MSFT"])
    assert result.exit_code != 0 and "no such file" in result.stderr
    result = runner.invoke(main, ["data", "import", str(src), "--symbol", "ODD1", "--asset-class", "crypto"])
    assert result.exit_code == 0 and "ODD1 (crypto)" in result.stdout
    assert "ODD1" in runner.invoke(main, ["data", "list"]).stdout


def test_cli_list_of_bundled_data(monkeypatch):
    monkeypatch.delenv("KRONOS_DATA_DIR", raising=False)
    result = CliRunner().invoke(main, ["data", "list"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert set(rows) == set(BUNDLED)
    assert rows["BTCUSD"][1:3] == ["crypto", "1h"] and rows["BTCUSD"][-1] == "20106"
    assert rows["EURUSD"][1:4] == ["forex_commodity", "1h", "2017-01-01"]
    assert rows["^GSPC"][1:5] == ["equity", "1D", "1999-01-04", "2018-12-31"]


def test_missing_data_folder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["data", "list", "--data", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "does not exist" in result.stderr
    assert os.listdir(tmp_path) == []


def test_unclassifiable_symbol_is_listed_as_unknown_and_fails_validation(tmp_path):
    frame = pd.DataFrame({"timestamp": pd.date_range("2021-01-01", periods=3, freq="D", tz="UTC"),
                          "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5})
    frame.to_parquet(tmp_path / "WEIRD1.parquet")
    runner = CliRunner()
    listed = runner.invoke(main, ["data", "list", "--data", str(tmp_path)])
    assert listed.exit_code == 0 and "unknown (add to asset_classes.csv)" in listed.stdout
    checked = runner.invoke(main, ["data", "validate", "--data", str(tmp_path)])
    assert checked.exit_code != 0 and "WEIRD1" in checked.stdout and "asset_classes.csv" in checked.stdout
    with pytest.raises(DataError, match="WEIRD1"):
        DataStore(tmp_path).symbols_for("crypto")
    (tmp_path / "asset_classes.csv").write_text("symbol,asset_class\nWEIRD1,crypto\n")
    assert runner.invoke(main, ["data", "validate", "--data", str(tmp_path)]).exit_code == 0
    assert DataStore(tmp_path).symbols_for("crypto") == ["WEIRD1"]
