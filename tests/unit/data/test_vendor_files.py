"""Real vendor files through `data import` and `data validate`: Yahoo-style daily Samsung with float
noise, Coinbase daily BTC/ETH with duplicate timestamps and all-zero bars, and what an import leaves.

The files are small CSVs built here in each vendor's layout, with values taken from the bundled
real data (S&P 500 days of 2000 scaled to Samsung's adjusted price level; Bitstamp's 2019 BTC and
ETH days) and the quirks those vendors' downloads really have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kronos_rolling.cli.main import main
from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.errors import DataError

SAMSUNG = "005930.KS"
NOISY_ROWS = 16


def samsung_yahoo_csv(path: Path) -> tuple[Path, int, list[int]]:
    """Yahoo's daily layout (Date,Open,High,Low,Close,Adj Close,Volume) for 005930.KS.

    Yahoo's split-adjusted prices carry float noise: on 16 days the close is the day's high, yet
    the High column holds the close minus one unit in the last place (3395.85 vs
    3395.8499999999995). One row is really wrong: its high lies 4% below its close.
    Returns (path, the wrong row, the noisy rows) as 1-based data rows.
    """
    gspc = DataStore(BUNDLED_DATA_DIR).load("^GSPC")
    days = gspc[gspc["timestamp"] >= "2000-01-03"].head(60).reset_index(drop=True)
    scale = 3395.85 / days["close"].iloc[0]
    prices = {c: (days[c] * scale).round(2) for c in ("open", "high", "low", "close")}
    noisy = list(range(0, 2 * NOISY_ROWS, 2))  # every other day closes at its high
    high = prices["high"].to_numpy().copy()
    high[noisy] = np.nextafter(prices["close"].to_numpy()[noisy], 0)
    prices["open"].iloc[noisy] = np.minimum(prices["open"].iloc[noisy], prices["close"].iloc[noisy])
    wrong = 45
    high[wrong] = round(prices["close"].iloc[wrong] * 0.96, 2)
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    for i, day in enumerate(days["timestamp"]):
        o, lo, c = (float(prices[k].iloc[i]) for k in ("open", "low", "close"))
        lo = float(min(lo, o, c, high[i]))
        lines.append(f"{day:%Y-%m-%d},{o!r},{float(high[i])!r},{lo!r},{c!r},{c * 0.71!r},{int(days['volume'][i] / 9000)}")
    path.write_text("\n".join(lines) + "\n")
    return path, wrong + 1, [n + 1 for n in noisy]


def coinbase_daily_csv(path: Path, symbol: str, zero_days: int = 2) -> tuple[Path, dict]:
    """CryptoDataDownload's Coinbase daily layout: a banner line, unix seconds and a date, newest row
    first, volume in the base and the quote currency. Quirks as downloaded: a day repeated
    identically (twice), a day repeated with different values, and all-zero bars.
    """
    source = {"BTC": "BTCUSD-1D", "ETH": "ETHUSD"}[symbol]
    bars = DataStore(BUNDLED_DATA_DIR).load(source)
    days = bars[bars["timestamp"] >= "2019-05-01"].head(40).reset_index(drop=True)
    rows = []
    for bar in days.itertuples(index=False):
        unix = int((bar.timestamp - pd.Timestamp(0, tz="UTC")).total_seconds())
        rows.append([unix, f"{bar.timestamp:%Y-%m-%d}", f"{symbol}/USD", bar.open, bar.high, bar.low, bar.close,
                     bar.volume, round(bar.amount, 2)])
    identical = [rows[5], rows[5], rows[12]]  # day 5 appears three times, day 12 twice
    conflicting = list(rows[20])
    conflicting[6] = round(conflicting[6] * 1.01, 2)  # another close for day 20 ...
    conflicting[4] = max(conflicting[4], conflicting[6])  # ... within that row's own range
    zeros = []
    for k in range(zero_days):  # the days after the last one, as zeros
        unix = rows[-1][0] + 86400 * (k + 1)
        zeros.append([unix, f"{pd.Timestamp(unix, unit='s'):%Y-%m-%d}", f"{symbol}/USD", 0, 0, 0, 0, 0, 0])
    table = rows[:21] + [conflicting] + rows[21:] + identical + zeros
    table.sort(key=lambda r: -r[0])  # newest first; a later copy of a day stays below the earlier one
    lines = ["https://www.CryptoDataDownload.com",
             f"unix,date,symbol,open,high,low,close,Volume {symbol},Volume USD"]
    lines += [",".join(str(v) for v in r) for r in table]
    path.write_text("\n".join(lines) + "\n")
    return path, {"days": len(rows), "conflicting_close": conflicting[6], "conflicting_day": rows[20][1]}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_samsung_imports_with_only_the_really_wrong_row_reported(tmp_path):
    src, wrong, noisy = samsung_yahoo_csv(tmp_path / "005930.KS.csv")
    store = tmp_path / "store"
    refused = invoke("data", "import", src, "--symbol", SAMSUNG, "--data", store, "--report", tmp_path / "r.csv")
    assert refused.exit_code == 2
    assert f"row {wrong}, column 'high': high is below close" in refused.stderr and "--drop-invalid" in refused.stderr
    assert set(pd.read_csv(tmp_path / "r.csv")["row"]) == {wrong}  # the noise is no problem
    assert not store.exists()

    result = invoke("data", "import", src, "--symbol", SAMSUNG, "--data", store, "--drop-invalid")
    assert result.exit_code == 0, result.output
    assert f"{NOISY_ROWS} bar(s) with high or low within 1e-09 of the open or close (float noise)" in result.stderr
    assert "dropped 1 row(s) (inconsistent OHLC: 1)" in result.stderr
    assert f"imported {SAMSUNG} (equity): 59 bars of 1D" in result.stdout
    dropped = pd.read_csv(store / f"{SAMSUNG}.dropped.csv")
    assert list(dropped["row"]) == [wrong] and list(dropped["reason"]) == ["inconsistent OHLC"]
    assert list(dropped.columns) == ["row", "Date", "Open", "High", "Low", "Close", "Adj Close", "Volume", "reason"]
    bars = DataStore(store).load(SAMSUNG)
    source = pd.read_csv(src)
    noisy_days = pd.to_datetime(source["Date"].iloc[[n - 1 for n in noisy]], utc=True)
    stored = bars.set_index("timestamp").loc[noisy_days]
    assert (stored["high"] == stored["close"]).all()  # the noise is gone, the close kept
    assert (stored["close"].to_numpy() == source["Close"].iloc[[n - 1 for n in noisy]].to_numpy()).all()
    assert invoke("data", "validate", "--data", store).exit_code == 0  # the dropped-rows file is no series


@pytest.mark.parametrize("symbol", ["BTC", "ETH"])
def test_coinbase_daily_drops_duplicates_and_zero_bars_keeping_the_later_row(tmp_path, symbol):
    src, facts = coinbase_daily_csv(tmp_path / f"Coinbase_{symbol}USD_d.csv", symbol)
    store = tmp_path / "store"
    result = invoke("data", "import", src, "--symbol", f"{symbol}USD", "--data", store, "--drop-invalid")
    assert result.exit_code == 0, result.output
    assert ("dropped 6 row(s) (all-zero bar: 2, conflicting duplicate: 1, identical duplicate: 3)"
            in result.stderr)
    assert "skipped the banner line above the header" in result.stderr
    assert f"volume columns by currency: Volume {symbol} -> volume, Volume USD -> amount" in result.stderr
    assert f"imported {symbol}USD (crypto): {facts['days']} bars of 1D" in result.stdout
    bars = DataStore(store).load(f"{symbol}USD")
    assert bars["timestamp"].is_unique and bars["timestamp"].is_monotonic_increasing
    kept = bars.set_index("timestamp").loc[pd.Timestamp(facts["conflicting_day"], tz="UTC")]
    assert kept["close"] == facts["conflicting_close"]  # the later row of the file
    dropped = pd.read_csv(store / f"{symbol}USD.dropped.csv")
    assert sorted(dropped["reason"]) == ["all-zero bar", "all-zero bar", "conflicting duplicate",
                                         "identical duplicate", "identical duplicate", "identical duplicate"]


def test_without_drop_invalid_every_kind_is_counted_and_the_report_lists_every_row(tmp_path):
    src, _ = coinbase_daily_csv(tmp_path / "Coinbase_BTCUSD_d.csv", "BTC", zero_days=13)
    report = tmp_path / "problems.csv"
    result = invoke("data", "import", src, "--symbol", "BTCUSD", "--data", tmp_path / "store", "--report", report)
    assert result.exit_code == 2
    error = result.stderr
    assert "17 problem(s)" in error
    assert "duplicate timestamp (identical bar) (column 'timestamp'): 3" in error
    assert "duplicate timestamp (conflicting values) (column 'timestamp'): 1" in error
    assert "all-zero bar (no prices, no volume): 13" in error
    assert "all-zero bar (no prices, no volume): 3 more rows (13 in all)" in error  # 10 listed, all counted
    assert "has (open" in error and "the later row is kept" in error  # both values of the conflict
    listed = pd.read_csv(report)
    assert len(listed) == 17 and (listed["problem"] == "all-zero bar (no prices, no volume)").sum() == 13
    assert not (tmp_path / "store").exists()


def test_a_single_bar_is_refused(tmp_path):
    src = tmp_path / "one.csv"
    src.write_text("date,open,high,low,close\n2021-01-04,1,2,0.5,1.5\n")
    with pytest.raises(DataError, match="1 usable bar"):
        DataStore(tmp_path / "store").import_csv(src, "AAPL")
    src.write_text("date,open,high,low,close\n2021-01-04,1,2,0.5,1.5\n2021-01-05,0,0,0,0\n")
    with pytest.raises(DataError, match="1 usable bar"):
        DataStore(tmp_path / "store").import_csv(src, "AAPL", drop_invalid_rows=True)
    assert not (tmp_path / "store").exists()


def test_validate_checks_a_file_of_any_name_and_only_warns_about_the_class(tmp_path):
    src, _ = coinbase_daily_csv(tmp_path / "export.csv", "BTC", zero_days=0)
    clean = tmp_path / "download.csv"
    table = pd.read_csv(src, skiprows=1).drop_duplicates(subset="unix", keep="last")
    table.to_csv(clean, index=False)
    result = invoke("data", "validate", clean)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "cannot tell the asset class of symbol 'download'" in result.stderr
    assert result.stdout.strip() == f"ok: {clean}"
    named = invoke("data", "validate", clean, "--symbol", "BTCUSD")
    assert named.exit_code == 0 and "warning" not in named.stderr
    dirty = invoke("data", "validate", src, "--symbol", "BTCUSD", "--report", tmp_path / "all.csv")
    assert dirty.exit_code == 2 and "duplicate timestamp (identical bar)" in dirty.stdout
    assert len(pd.read_csv(tmp_path / "all.csv")) == 4
    both = invoke("data", "validate", clean, src, "--symbol", "BTCUSD")
    assert both.exit_code == 2 and "--symbol names the series of one FILE" in both.stderr
