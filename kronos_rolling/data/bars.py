"""The one bar validator: every way bars come in (an import, `data validate`, `forecast
--csv`, a DataFrame given to the `Forecaster`, the pyfunc model, the HTTP service) is
checked here, so a bar accepted by one is accepted by all.

Parsing is `parse.parse_bars` (column names in any case; text, unix seconds or
milliseconds; UTC offsets converted to UTC). The checks, per row:

- values are finite (no NaN, no infinity, nothing unreadable) and timestamps readable;
- prices are positive (a bar of zeros is called an all-zero bar);
- high >= max(open, close) and low <= min(open, close), up to a relative tolerance of
  1e-9: vendor files carry float noise (3395.85 vs 3395.8499999999995) that is no error,
  so such a high or low is set to the open or close it missed (and counted in a note);
- volume and amount are not negative;
- no value overflows float32 once the series is normalised, as the model reads it;
- timestamps are unique and ascending, and there are at least two bars;
- timestamps lie between 1970-01-01 and a year after `now`, and unix times are in one unit
  (`parse`); `now` is the caller's clock, taken where the request or command starts.

`check_bars` reports every problem as an `Issue` (row and column named, one wording for
all entry points); `drop_invalid` removes the rows a careful import may drop, each with its
reason; `clean_bars` is the strict path for frames given in code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kronos_rolling.data.features import (
    FEATURE_COLUMNS,
    PRICE_COLUMNS,
    fill_volume_amount,
    normalize_window,
)
from kronos_rolling.data.issues import (
    MAX_ROWS_PER_PROBLEM,
    Issue,
    listing,
    row_issues,
    summary,
)
from kronos_rolling.data.parse import parse_bars, read_table
from kronos_rolling.errors import DataError

TOLERANCE = 1e-9
"""Relative difference under which two prices are the same price (float noise)."""

MIN_BARS = 2
"""A series needs a bar spacing (and the normaliser a spread)."""

FLOAT32_MAX = float(np.finfo(np.float32).max)

# Why a row is dropped by `drop_invalid`: the `reason` column of SYMBOL.dropped.csv.
UNREADABLE_TIME = "unreadable timestamp"
TIME_OUT_OF_RANGE = "timestamp out of range"
MISSING_VALUE = "missing or unreadable value"
ALL_ZERO = "all-zero bar"
NOT_POSITIVE = "non-positive price"
NEGATIVE_VOLUME = "negative volume or amount"
TOO_LARGE = "value too large"
INCONSISTENT = "inconsistent OHLC"
IDENTICAL_DUPLICATE = "identical duplicate"
CONFLICTING_DUPLICATE = "conflicting duplicate"


class BarsError(DataError):
    """Bars with problems; `issues` holds every one (row and column named)."""

    def __init__(self, message: str, issues: list[Issue]):
        super().__init__(message)
        self.issues = issues


@dataclass
class CheckedBars:
    """Parsed bars and everything wrong with them.

    frame: timestamp (UTC) + the feature columns present, float64, oldest first, with float
    noise in high/low clamped. rows: each frame row's source row. reasons: source row ->
    why that row could be dropped (rows absent are fine or have a problem no drop mends,
    such as timestamps out of order).
    """

    source: str
    frame: pd.DataFrame
    rows: np.ndarray
    issues: list[Issue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    undroppable: list[Issue] = field(default_factory=list)  # problems of the whole column (mixed unix units)


def check_bars(table: pd.DataFrame, source: str, *, time_format: str | None = None, tz: str = "UTC",
               first_row: int = 1, now: pd.Timestamp | None = None) -> CheckedBars:
    """Parse a table of bars as users have it and find every problem (nothing is dropped).

    `now`: timestamps more than a year after it are problems (None: no upper bound, for
    data checked when it was imported)."""
    parsed = parse_bars(table, source, time_format=time_format, tz=tz, first_row=first_row, now=now)
    checked = CheckedBars(source, parsed.frame, parsed.rows, list(parsed.issues) + list(parsed.column_issues),
                          list(parsed.notes), undroppable=list(parsed.column_issues))
    for issue in parsed.issues:
        if issue.row is not None:
            if issue.column != "timestamp":
                reason = MISSING_VALUE
            else:
                reason = TIME_OUT_OF_RANGE if issue.problem.startswith("timestamp ") else UNREADABLE_TIME
            checked.reasons.setdefault(issue.row, reason)
    _check_values(checked)
    _check_order(checked)
    return checked


def _check_values(checked: CheckedBars) -> None:
    frame, rows, source = checked.frame, checked.rows, checked.source
    reported = {(i.row, i.column) for i in checked.issues}
    found: list[tuple[Issue, str]] = []

    def add(mask: np.ndarray, column: str | None, problem: str, reason: str, detail=None) -> None:
        where = np.flatnonzero(mask)
        details = [detail(i) for i in where] if detail is not None else None
        for issue in row_issues(source, rows[where], column, problem, details):
            if (issue.row, issue.column) not in reported:
                found.append((issue, reason))

    add(frame["timestamp"].isna().to_numpy(), "timestamp", "missing timestamp", UNREADABLE_TIME)
    present = [c for c in FEATURE_COLUMNS if c in frame.columns]
    values = {c: frame[c].to_numpy(dtype="float64") for c in present}
    for column in present:
        v = values[column]
        add(np.isnan(v), column, "missing value (NaN)", MISSING_VALUE)
        add(np.isinf(v), column, "infinite value", MISSING_VALUE)
        add(np.isfinite(v) & (np.abs(v) > FLOAT32_MAX), column, "too large for float32 (the model's precision)",
            TOO_LARGE, lambda i, v=v: f": {v[i]:g}; check the units")
    zero = np.all([values[c] == 0 for c in present], axis=0)
    add(zero, None, "all-zero bar (no prices, no volume)", ALL_ZERO)
    for column in PRICE_COLUMNS:
        v = values[column]
        add((v <= 0) & ~zero, column, "price is not positive", NOT_POSITIVE, lambda i, v=v: f": {v[i]:g}")
    for column in [c for c in ("volume", "amount") if c in present]:
        v = values[column]
        add(v < 0, column, "negative value", NEGATIVE_VOLUME, lambda i, v=v: f": {v[i]:g}")

    p = {c: values[c] for c in PRICE_COLUMNS}
    usable = np.all([np.isfinite(v) & (v > 0) & (v <= FLOAT32_MAX) for v in p.values()], axis=0)
    checks = (("high", "below", "low"), ("high", "below", "open"), ("high", "below", "close"),
              ("low", "above", "open"), ("low", "above", "close"))
    for column, relation, other in checks:
        a, b = p[column], p[other]
        wrong = (a < b) if relation == "below" else (a > b)
        beyond = wrong & (np.abs(a - b) > TOLERANCE * np.maximum(np.abs(a), np.abs(b)))
        add(beyond & usable, column, f"{column} is {relation} {other}", INCONSISTENT,
            lambda i, a=a, b=b: f" ({float(a[i])!r} vs {float(b[i])!r})")

    for issue, reason in found:
        checked.reasons.setdefault(issue.row, reason)
    checked.issues += [issue for issue, _ in found]

    ok = ~np.isin(rows, list(checked.reasons))
    noisy = ok & ((p["high"] < np.maximum(p["open"], p["close"])) | (p["low"] > np.minimum(p["open"], p["close"])))
    if noisy.any():
        frame = checked.frame = frame.copy()
        frame.loc[noisy, "high"] = np.maximum.reduce([p["high"], p["open"], p["close"]])[noisy]
        frame.loc[noisy, "low"] = np.minimum.reduce([p["low"], p["open"], p["close"]])[noisy]
        checked.notes.append(f"{int(noisy.sum())} bar(s) with high or low within {TOLERANCE:g} of the open or close "
                             "(float noise): set equal to it")
    _check_float32(checked, ok)


def _check_float32(checked: CheckedBars, ok: np.ndarray) -> None:
    """Normalise the good rows as the model will, in float32: a column that overflows is named."""
    if ok.sum() < MIN_BARS:
        return
    present = [c for c in FEATURE_COLUMNS if c in checked.frame.columns]
    values = checked.frame.loc[ok, present].to_numpy(dtype="float64")
    with np.errstate(over="ignore", invalid="ignore"):
        normalised, mean, std = normalize_window(values, len(values))
    for j, column in enumerate(present):
        if np.isfinite(mean[j]) and np.isfinite(std[j]) and np.isfinite(normalised[:, j]).all():
            continue
        largest = int(np.argmax(np.abs(values[:, j])))
        row = int(checked.rows[np.flatnonzero(ok)[largest]])
        checked.issues.append(Issue(checked.source, row, column, "too large for float32 once normalised",
                                    f": {values[largest, j]:g} is the largest value of the column; check the units"))
        checked.reasons.setdefault(row, TOO_LARGE)


def _check_order(checked: CheckedBars) -> None:
    """Duplicate and descending timestamps among the rows without other problems; fewer than 2 bars."""
    frame, rows, source = checked.frame, checked.rows, checked.source
    ok = np.flatnonzero(~np.isin(rows, list(checked.reasons)))
    stamps = pd.DatetimeIndex(frame["timestamp"].iloc[ok])
    values = frame.drop(columns="timestamp").iloc[ok].to_numpy(dtype="float64")
    kept_at: dict[int, int] = {}  # timestamp -> position (in ok) of the row kept so far: the file's later one
    for k in np.flatnonzero(pd.Index(stamps.asi8).duplicated(keep=False)):
        stamp = stamps.asi8[k]
        if stamp not in kept_at:
            kept_at[stamp] = k
            continue
        loser, keeper = sorted((kept_at[stamp], k), key=lambda i: rows[ok[i]])
        kept_row = int(rows[ok[keeper]])
        if np.array_equal(values[loser], values[keeper], equal_nan=True):
            problem, reason = "duplicate timestamp (identical bar)", IDENTICAL_DUPLICATE
            detail = f" {stamps[k]}: the same bar as row {kept_row}, which is kept"
        else:
            problem, reason = "duplicate timestamp (conflicting values)", CONFLICTING_DUPLICATE
            detail = (f" {stamps[k]}: this row has {_values(frame, ok[loser])}, row {kept_row} "
                      f"{_values(frame, ok[keeper])}; the later row is kept")
        checked.issues.append(Issue(source, int(rows[ok[loser]]), "timestamp", problem, detail))
        checked.reasons[int(rows[ok[loser]])] = reason
        kept_at[stamp] = keeper
    keep = np.array([checked.reasons.get(int(rows[i])) is None for i in ok], dtype=bool)
    kept = stamps[keep]
    backwards = np.flatnonzero(np.diff(kept.asi8) < 0) + 1
    kept_rows = rows[ok][keep]
    for i in backwards:
        checked.issues.append(Issue(source, int(kept_rows[i]), "timestamp",
                                    "timestamp earlier than the row before; rows must be in ascending time order",
                                    f" ({kept[i]} after {kept[i - 1]})"))
    if len(kept) < MIN_BARS:
        checked.issues.append(Issue(source, None, None, f"{len(kept)} usable bar(s); at least {MIN_BARS} are needed "
                                    "(a series needs a bar spacing)"))


def _values(frame: pd.DataFrame, position: int) -> str:
    row = frame.iloc[position]
    return "(" + ", ".join(f"{c} {row[c]:.10g}" for c in FEATURE_COLUMNS if c in frame.columns) + ")"


def drop_invalid(checked: CheckedBars, table: pd.DataFrame) -> tuple[CheckedBars, pd.DataFrame]:
    """(the bars without every droppable row, those rows as the source had them + `reason`).

    Problems a drop cannot mend (timestamps out of order, too few bars left) stay in
    the result's issues.
    """
    dropped_rows = np.array(sorted(checked.reasons), dtype=np.int64)
    keep = ~np.isin(checked.rows, dropped_rows)
    kept = CheckedBars(checked.source, checked.frame[keep].reset_index(drop=True), checked.rows[keep],
                       issues=list(checked.undroppable), notes=list(checked.notes),
                       undroppable=list(checked.undroppable))
    first_row = int(checked.rows.min()) if len(checked.rows) else 1
    dropped = table.iloc[dropped_rows - first_row].copy()
    dropped.insert(0, "row", dropped_rows)
    dropped["reason"] = [checked.reasons[int(r)] for r in dropped_rows]
    _check_order(kept)  # what no drop mends: timestamps out of order, too few bars left
    return kept, dropped


def bars_error(checked: CheckedBars, hint: str) -> BarsError:
    """An error that counts every kind of problem and lists the first rows of each."""
    lines = "\n  ".join(listing(checked.issues, MAX_ROWS_PER_PROBLEM))
    return BarsError(f"{checked.source}: {summary(checked.issues)}\n  {lines}\n{hint}", checked.issues)


FRAME_HINT = "Rows are positions in the frame (0-based, as iloc); fix or drop those bars."


def clean_bars(frame: pd.DataFrame, source: str = "bars", *, first_row: int = 0, hint: str = FRAME_HINT,
               now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Bars checked strictly: timestamp (UTC) + all six features as float64 (volume and
    amount filled as the reference predictor does when absent).

    Rows are named from `first_row` (0: positions of a frame given in code; 1: a file's
    data rows). `now`: as for `check_bars`. Raises BarsError naming every problem.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame of bars, got {type(frame).__name__}")
    checked = check_bars(frame, source, first_row=first_row, now=now)
    if checked.issues:
        raise bars_error(checked, hint)
    bars = fill_volume_amount(checked.frame)[["timestamp", *FEATURE_COLUMNS]].copy()
    bars[FEATURE_COLUMNS] = bars[FEATURE_COLUMNS].astype("float64")
    return bars


def read_bars_file(path, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """The bars of a CSV or parquet file, read and checked as every entry point does (rows: the file's data rows)."""
    return clean_bars(read_table(path), str(path), first_row=1, now=now,
                      hint=f"Run `kronos-rolling data validate {path}` to list them all.")
