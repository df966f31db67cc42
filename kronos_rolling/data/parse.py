"""Turn a bar table as users have it (CSV or parquet, any common layout) into our frame.

Our frame: a tz-aware UTC `timestamp` column (ns) followed by open, high, low, close
and, when present, volume and amount, all float64. Conversion never drops or mends a
row: rows it cannot read become `Issue`s, and everything it changed on purpose
(order reversed, epoch unit, time zone, ignored columns) is listed in `notes`.

Timestamps must lie in a sane range: not before 1970-01-01 and not more than a year
after `now` (the caller's clock, passed in: every entry point takes it when the request
or command starts). Outside it, or beyond what pandas can hold, a timestamp is a row's
problem like any other. A column of unix times is in one unit: seconds, milliseconds,
microseconds or nanoseconds, told by size; a column that mixes them is refused, naming
the first row of the other unit (no drop mends it: the rows around it are suspect too).
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kronos_rolling.data.features import FEATURE_COLUMNS
from kronos_rolling.data.issues import Issue, row_issues
from kronos_rolling.errors import DataError

TIMESTAMP_NAMES = ("timestamp", "datetime", "date_time", "date", "time", "ts", "open_time", "time_stamp", "unix")
COLUMN_ALIASES = {
    "open": ("open", "o", "open_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "close_price", "last"),
    "volume": ("volume", "vol", "v"),
    "amount": ("amount", "turnover", "quote_volume", "value"),
}
_CLOCK_TIME = re.compile(r"^\s*\d{1,2}:\d{2}")
_DIGITS = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")
_MIDNIGHT_TEXT = re.compile(r"^\s*\d{4}-\d{2}-\d{2}([T ]00:00(:00(\.0+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?\s*$")
# Exports that name volume by currency ("Volume BTC", "Volume USD"): the quote currency's is the amount.
_VOLUME_IN = re.compile(r"^volume_([a-z]{3,5})$")
QUOTE_CURRENCIES = ("usd", "usdt", "usdc", "busd", "eur", "gbp", "jpy", "krw", "btc")


EARLIEST_TIMESTAMP = pd.Timestamp("1970-01-01", tz="UTC")
FUTURE_LIMIT = pd.DateOffset(years=1)
"""Timestamps later than `now` + this are refused: no market data comes from the future."""

EPOCH_UNITS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


@dataclass
class ParsedBars:
    frame: pd.DataFrame
    rows: np.ndarray  # 1-based row of the source file for each frame row
    notes: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)  # row problems: leaving out the row mends them
    column_issues: list[Issue] = field(default_factory=list)  # named at a row, but no drop mends them


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) or parquet file as it is, all CSV cells as text."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz", ".txt")):
            banner = _banner_lines(path)
            table = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False, na_values=[""],
                                skiprows=banner)
            if banner:
                table.attrs["notes"] = ["skipped the banner line above the header"]
            return table
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the file ({exc}); expected a CSV with a header line "
                        "or a parquet file") from exc
    raise DataError(f"{path}: unsupported file type; use .csv, .csv.gz or .parquet")


def _banner_lines(path: Path) -> int:
    """1 when the first line is a banner (a vendor's URL or note, no comma) above a CSV header."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", errors="replace") as handle:
        first, second = handle.readline(), handle.readline()
    return int("," not in first and second.count(",") >= 4)


def canonical_name(name) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().strip("<>").strip().lower())


def parse_bars(table: pd.DataFrame, source: str, time_format: str | None = None, tz: str = "UTC",
               first_row: int = 1, now: pd.Timestamp | None = None) -> ParsedBars:
    """Map columns (any case), read timestamps into UTC and prices into floats.

    `tz` is the zone of timestamps that carry no offset; `time_format` a strftime
    pattern for timestamps pandas cannot infer. Rows are numbered from `first_row`
    (1 for a file's data rows, 0 for a DataFrame's positions). `now`: timestamps more
    than a year after it are refused (None: no upper bound, for data already checked
    when it was imported). Raises DataError when a required column is missing (nothing
    else can be checked without it).
    """
    _check_time_zone(tz)
    names = {canonical_name(c): c for c in reversed(list(table.columns))}
    notes: list[str] = list(table.attrs.get("notes", []))
    issues: list[Issue] = []

    used: dict[str, str] = {}
    for target, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in names:
                used[target] = names[alias]
                break
    notes += _volume_by_currency(names, used)
    time_source = _timestamp_source(table, names)
    missing = [c for c in ("open", "high", "low", "close") if c not in used]
    if time_source is None:
        missing.insert(0, "timestamp")
    if missing:
        index_hint = (" (the timestamps are the index: call reset_index() first)"
                      if "timestamp" in missing and isinstance(table.index, pd.DatetimeIndex) else "")
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, table.columns))}. "
            "Bars need timestamp (or date/datetime/time), open, high, low, close "
            f"and may add volume and amount; names are matched in any case{index_hint}."
        )
    ignored = [str(c) for c in table.columns if c not in used.values() and c not in time_source[1]]
    if ignored:
        notes.append(f"ignored column(s): {', '.join(ignored)}")

    rows = np.arange(first_row, first_row + len(table))
    timestamps, time_notes, unreadable, not_local, units = _parse_timestamps(time_source[0], time_format, tz)
    notes += time_notes
    issues += row_issues(source, rows[unreadable], "timestamp", "missing or unreadable timestamp"
                         + (f" (expected format {time_format!r})" if time_format else
                            "; pass --time-format if the layout is unusual"))
    issues += row_issues(source, rows[not_local], "timestamp",
                         f"local time does not exist or is ambiguous in {tz} (daylight-saving change); "
                         "export the data in UTC or with UTC offsets")
    timestamps, range_issues = _in_range(timestamps, source, rows, now)
    issues += range_issues
    column_issues = _mixed_units(units, source, rows)

    frame = pd.DataFrame({"timestamp": timestamps})
    for target in FEATURE_COLUMNS:
        if target not in used:
            continue
        raw = table[used[target]]
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        unreadable = np.flatnonzero(values.isna().to_numpy() & raw.notna().to_numpy())
        issues += row_issues(source, rows[unreadable], target, "not a number",
                             [f": {raw.iloc[r]!r}" for r in unreadable])
        frame[target] = values.to_numpy()

    steps = np.diff(pd.DatetimeIndex(frame["timestamp"].dropna()).asi8)
    if len(steps) and (steps <= 0).all() and (steps < 0).any():  # repeated bars do not hide the order
        frame, rows = frame.iloc[::-1].reset_index(drop=True), rows[::-1].copy()
        notes.append("rows were newest-first; stored oldest-first")
    return ParsedBars(frame.reset_index(drop=True), rows, notes, issues, column_issues)


def _in_range(timestamps: pd.DatetimeIndex, source: str, rows: np.ndarray,
              now: pd.Timestamp | None) -> tuple[pd.DatetimeIndex, list[Issue]]:
    """The timestamps in nanoseconds, those outside the sane range set to NaT, and an issue for each."""
    latest = None if now is None else _utc(now) + FUTURE_LIMIT
    values = timestamps.as_unit("us") if timestamps.unit in ("s", "ms") else timestamps
    early = np.asarray(values < EARLIEST_TIMESTAMP)
    late = np.asarray(values > latest) if latest is not None else np.zeros(len(values), bool)
    # What nanoseconds cannot hold (after 2262-04-11) is refused whatever the clock says.
    late |= np.asarray(values > pd.Timestamp.max.tz_localize("UTC"))
    issues = row_issues(source, rows[early], "timestamp", "timestamp before 1970-01-01 (unix time 0)",
                        [f": {values[i]}; check the date or its unit" for i in np.flatnonzero(early)])
    if latest is not None:
        limit = f"more than a year after now ({_utc(now).strftime('%Y-%m-%d')})"
    else:
        limit = "after 2262-04-11 (beyond what the data store can hold)"
    issues += row_issues(source, rows[late], "timestamp", f"timestamp {limit}",
                         [f": {values[i]}; check the date or its unit" for i in np.flatnonzero(late)])
    bad = early | late
    if bad.any():
        values = values.where(~bad, pd.NaT)
    return values.as_unit("ns"), issues


def _utc(moment) -> pd.Timestamp:
    moment = pd.Timestamp(moment)
    return moment.tz_localize("UTC") if moment.tz is None else moment.tz_convert("UTC")


def _mixed_units(units: np.ndarray | None, source: str, rows: np.ndarray) -> list[Issue]:
    """One issue at the first unix time whose unit differs from the column's first."""
    if units is None:
        return []
    present = np.flatnonzero(units != "")
    if not len(present):
        return []
    first = units[present[0]]
    other = present[units[present] != first]
    if not len(other):
        return []
    at, unit = int(other[0]), units[other[0]]
    return [Issue(source, int(rows[at]), "timestamp", "unix times in more than one unit",
                  f": this row is the first in unix {EPOCH_UNITS[unit]} ({int(np.sum(units == unit))} row(s)), the "
                  f"column starts in unix {EPOCH_UNITS[first]} (row {int(rows[present[0]])}); export every "
                  "timestamp in one unit")]


def _volume_by_currency(names: dict[str, str], used: dict[str, str]) -> list[str]:
    """Map `Volume BTC` / `Volume USD` style columns: the quote currency's is the amount."""
    by_currency = {m.group(1): names[n] for n in names if (m := _VOLUME_IN.match(n))}
    if "volume" in used or not by_currency:
        return []
    quote = next((c for c in QUOTE_CURRENCIES if c in by_currency and len(by_currency) == 2), None)
    base = [c for c in by_currency if c != quote]
    if len(base) != 1:
        return []
    used["volume"] = by_currency[base[0]]
    mapped = [f"{by_currency[base[0]]} -> volume"]
    if quote is not None and "amount" not in used:
        used["amount"] = by_currency[quote]
        mapped.append(f"{by_currency[quote]} -> amount")
    return [f"volume columns by currency: {', '.join(mapped)}"]


def _timestamp_source(table: pd.DataFrame, names: dict[str, str]) -> tuple[pd.Series, tuple[str, ...]] | None:
    """The timestamp values and the column(s) they came from (date + time are joined)."""
    if "date" in names and "time" in names and "timestamp" not in names and "datetime" not in names:
        time_values = table[names["time"]].dropna().astype(str)
        if len(time_values) and _CLOCK_TIME.match(time_values.iloc[0]):
            joined = table[names["date"]].astype(str) + " " + table[names["time"]].astype(str)
            return joined.where(table[names["date"]].notna()), (names["date"], names["time"])
    for name in TIMESTAMP_NAMES:
        if name in names:
            return table[names[name]], (names[name],)
    return None


def _parse_timestamps(values: pd.Series, time_format: str | None, tz: str):
    """(UTC DatetimeIndex, notes, unreadable rows, rows whose local time does not exist, unix unit
    per row or None).

    Rows of both masks hold NaT; the second covers daylight-saving changes in `tz`. The
    unit per row ("" where none) is given for unix times only.
    """
    notes: list[str] = []
    present = values.notna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.DatetimeIndex(values)
    elif pd.api.types.is_numeric_dtype(values) or (
        time_format is None and present.any() and values[present].astype(str).str.match(_DIGITS).all()
    ):
        return _parse_epoch(pd.to_numeric(values, errors="coerce"), notes)
    else:
        text = values.astype("string")
        try:
            parsed = pd.DatetimeIndex(pd.to_datetime(text, format=time_format, errors="coerce"))
        except (ValueError, TypeError):
            # Offsets differ between rows (daylight saving): only UTC can hold them all.
            parsed = pd.DatetimeIndex(pd.to_datetime(text, format=time_format, errors="coerce", utc=True))
            notes.append("timestamps carry different UTC offsets; converted each to UTC")
            valid = ~parsed.isna()
            if valid.sum() >= 2 and text[valid].str.match(_MIDNIGHT_TEXT).all():
                # Daily bars labelled by local date: keep the date, not the evening before.
                parsed = pd.DatetimeIndex(pd.to_datetime(text.str.slice(0, 10), errors="coerce")).tz_localize("UTC")
                notes.append("daily bars at local midnight keep their calendar date (00:00 UTC)")
            return parsed, notes, np.asarray(parsed.isna()), np.zeros(len(parsed), bool), None

    unreadable = np.asarray(parsed.isna())
    if parsed.tz is None:
        parsed = parsed.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
        if tz != "UTC":
            notes.append(f"timestamps without offset read as {tz} and converted to UTC")
    elif str(parsed.tz) != "UTC":
        notes.append(f"timestamps in {parsed.tz} converted to UTC")
    valid = ~parsed.isna()
    at_midnight = (parsed.hour == 0) & (parsed.minute == 0) & (parsed.second == 0) & (parsed.nanosecond == 0)
    if str(parsed.tz) != "UTC" and valid.sum() >= 2 and np.asarray(at_midnight)[valid].all():
        # Daily bars labelled by local date: keep the date, not the evening before in UTC.
        parsed = parsed.tz_localize(None).tz_localize("UTC")
        notes.append("daily bars at local midnight keep their calendar date (00:00 UTC)")
    parsed = parsed.tz_convert("UTC")
    return parsed, notes, unreadable, np.asarray(parsed.isna()) & ~unreadable, None


def _check_time_zone(tz: str) -> None:
    try:
        pd.Timestamp(0).tz_localize(tz)
    except Exception as exc:  # pandas raises several types for unknown zone names
        raise DataError(f"unknown time zone {tz!r}; use an IANA name such as UTC, Europe/London "
                        "or America/New_York") from exc


def _parse_epoch(numbers: pd.Series, notes: list[str]):
    present = numbers.notna().to_numpy()
    largest = float(numbers.abs().max()) if present.any() else 0.0
    if present.any() and numbers[present].between(19000101, 21001231).all() and largest < 1e8:
        parsed = pd.to_datetime(numbers.astype("Int64").astype("string"), format="%Y%m%d", errors="coerce")
        notes.append("timestamps read as YYYYMMDD dates")
        parsed = pd.DatetimeIndex(parsed).tz_localize("UTC")
        return parsed, notes, np.asarray(parsed.isna()), np.zeros(len(parsed), bool), None
    # Each number's unit by its size: unix seconds below 1e11 (year 5138), then ms, us, ns.
    size = numbers.abs().to_numpy(dtype="float64", na_value=np.nan)
    units = np.select([size < 1e11, size < 1e14, size < 1e17, size >= 1e17], ["s", "ms", "us", "ns"], "")
    # In microseconds (what holds every year of the sane range exactly): whole numbers stay whole.
    scale = np.select([units == "s", units == "ms", units == "us", units == "ns"], [1e6, 1e3, 1.0, 1e3], np.nan)
    values = numbers.to_numpy(dtype="float64", na_value=np.nan)
    micros = np.where(units == "ns", values / scale, values * scale)
    parsed = pd.DatetimeIndex(pd.to_datetime(micros, unit="us", utc=True, errors="coerce"))
    found = [EPOCH_UNITS[u] for u in EPOCH_UNITS if (units == u).any()]
    if found:
        notes.append(f"timestamps read as unix {' and '.join(found)}")
    return parsed, notes, np.asarray(parsed.isna()), np.zeros(len(parsed), bool), units
