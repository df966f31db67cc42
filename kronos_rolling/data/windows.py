"""Which span of history a fine-tune trains on and which span judges it.

Everything is computed from `as_of` (the decision date), never from the clock, and
every span is half-open, [start, end):

    train_start ............ inner_val_start ...... train_end = val_start ...... val_end = as_of
    |---- fit (gradient steps) ----|-- inner val --|------- guard validation -------|
    |<-------------------- `years` --------------->|<------ `validation` --------->|

The inner validation slice, the end of the training span, is for early stopping; the
guard's validation span stays unseen by training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import pandas as pd

from kronos_rolling.data.calendars import expected_bars
from kronos_rolling.errors import ConfigError, DataError
from kronos_rolling.settings import parse_as_of


def to_utc(moment) -> pd.Timestamp:
    """A UTC Timestamp from a date, datetime, string or Timestamp (naive means UTC)."""
    try:
        stamp = pd.Timestamp(moment)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read {moment!r} as a date; use ISO 8601 such as 2019-01-01") from exc
    if pd.isna(stamp):
        raise ConfigError(f"{moment!r} is not a date; use ISO 8601 such as 2019-01-01")
    return (stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")).as_unit("ns")



def calendar_months(start, end) -> int:
    """Calendar months from `start`'s month to `end`'s (2018-01-01 .. 2018-04-01: 3)."""
    start, end = to_utc(start), to_utc(end)
    return (end.year - start.year) * 12 + end.month - start.month

@dataclass(frozen=True)
class TrainingWindow:
    as_of: date  # the decision date; the spans below are UTC timestamps (val_end: as_of's midnight)
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    val_start: pd.Timestamp
    val_end: pd.Timestamp
    inner_val_start: pd.Timestamp

    @property
    def train_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """All training history, including the inner validation slice."""
        return self.train_start, self.train_end

    @property
    def fit_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """What gradient steps see."""
        return self.train_start, self.inner_val_start

    @property
    def inner_val_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Early-stopping slice at the end of training."""
        return self.inner_val_start, self.train_end

    @property
    def val_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The guard's held-out validation span."""
        return self.val_start, self.val_end

    def to_dict(self) -> dict[str, str]:
        """ISO strings, e.g. for run parameters."""
        return {name: getattr(self, name).isoformat() for name in self.__dataclass_fields__}


def select_training_window(
    as_of,
    years: float = 2,
    validation: pd.DateOffset | pd.Timedelta | str = pd.DateOffset(months=1),
    inner_validation_fraction: float = 0.1,
) -> TrainingWindow:
    """The training span is the `years` before the validation span; the validation span
    is the `validation` period just before `as_of`. `inner_validation_fraction` of the
    training span, at its end, is kept for early stopping."""
    day = parse_as_of(as_of)
    as_of = to_utc(day)
    if not years > 0:
        raise ConfigError(f"years must be positive, got {years}")
    if not 0 <= inner_validation_fraction < 1:
        raise ConfigError(f"inner_validation_fraction must be in [0, 1), got {inner_validation_fraction}")
    if isinstance(validation, str):
        try:
            validation = pd.Timedelta(validation)
        except ValueError as exc:
            raise ConfigError(f"cannot read validation span {validation!r}; use e.g. '30D' or "
                              "pd.DateOffset(months=1)") from exc
    val_end = as_of
    val_start = as_of - validation
    if not val_start < val_end:
        raise ConfigError(f"validation span must be positive, got {validation!r}")
    months = round(years * 12)
    train_span = pd.DateOffset(months=months) if abs(years * 12 - months) < 1e-9 else pd.Timedelta(days=365.25 * years)
    train_end = val_start
    train_start = train_end - train_span
    inner_val_start = train_end - (train_end - train_start) * inner_validation_fraction
    if inner_val_start.floor("D") > train_start:
        inner_val_start = inner_val_start.floor("D")  # whole days read better in run parameters
    return TrainingWindow(day, train_start, train_end, val_start, val_end, inner_val_start)


@dataclass(frozen=True)
class SeriesCoverage:
    """Where one series has bars: [first bar start, last bar end), on a `spacing` grid."""

    first: pd.Timestamp
    end: pd.Timestamp
    spacing: pd.Timedelta
    asset_class: str | None


@dataclass(frozen=True)
class CoverageShortfall:
    """A series that lacks bars the market had in a span."""

    symbol: str
    span_start: pd.Timestamp
    span_end: pd.Timestamp
    first: pd.Timestamp
    end: pd.Timestamp
    expected: int  # open-market bars in the span
    missing_before: int  # of those, before the series starts
    missing_after: int  # of those, after the series ends

    @property
    def covered_fraction(self) -> float:
        return 1 - (self.missing_before + self.missing_after) / self.expected if self.expected else 0.0

    def __str__(self) -> str:
        parts = []
        if self.missing_before:
            parts.append(f"starts {self.first} ({self.missing_before} bars missing before)")
        if self.missing_after:
            parts.append(f"ends {self.end} ({self.missing_after} bars missing after)")
        return (f"{self.symbol}: covers {self.covered_fraction:.0%} of [{self.span_start}, {self.span_end}): "
                + "; ".join(parts))


def coverage_shortfall(
    coverage: Mapping[str, SeriesCoverage],
    window: TrainingWindow | tuple[pd.Timestamp, pd.Timestamp],
) -> list[CoverageShortfall]:
    """Series that do not cover the whole window (train_start to val_end) or span.

    Bars are counted on each series' own trading calendar, so a weekend or holiday at
    either end is not a shortfall. Series that cover everything are left out.
    """
    start, end = (window.train_start, window.val_end) if isinstance(window, TrainingWindow) else map(to_utc, window)
    found = []
    for symbol, series in coverage.items():
        def count(a, b):
            return expected_bars(a, b, series.spacing, series.asset_class, anchor=series.first)

        expected = count(start, end)
        before = count(start, min(series.first, end))
        after = count(max(series.end, start), end)
        if before or after:
            found.append(CoverageShortfall(symbol, start, end, series.first, series.end, expected,
                                           min(before, expected), min(after, expected - min(before, expected))))
    return found


SUMMARY_SYMBOLS = 3  # symbols a shortfall summary names; the rest are counted


def shortfall_summary(shortfalls: list[CoverageShortfall], series: int) -> str:
    """One short line for all of a window's shortfalls (a log line): how many series of how many,
    which ones and how much of the window each covers; each one's details go to the run (str of
    each CoverageShortfall, the `window_shortfall` tag and artifact)."""
    named = ", ".join(f"{s.symbol} {s.covered_fraction:.0%}" for s in shortfalls[:SUMMARY_SYMBOLS])
    more = f" and {len(shortfalls) - SUMMARY_SYMBOLS} more" if len(shortfalls) > SUMMARY_SYMBOLS else ""
    return (f"{len(shortfalls)} of {series} series cover part of the window ({named}{more}), "
            "trained on what they have; details: run tag window_shortfall")


def check_data_reaches(coverage_by_class: Mapping[str, Mapping[str, SeriesCoverage]], window: TrainingWindow) -> None:
    """DataError (exit code 2) when no series of a class has a bar in the validation span: the
    decision date lies past the data. The message names each class's last bar and the fix."""
    late = {}
    for asset_class, coverage in coverage_by_class.items():
        if coverage and all(c.end <= window.val_start or c.first >= window.val_end for c in coverage.values()):
            symbol, last = max(((s, c.end) for s, c in coverage.items()), key=lambda item: item[1])
            late[asset_class] = (symbol, last)
    if late and len(late) == len([c for c in coverage_by_class.values() if c]):
        bars = "; ".join(f"{asset_class}'s last bar ends {last:%Y-%m-%d %H:%M} ({symbol})"
                         for asset_class, (symbol, last) in late.items())
        latest = max(last for _, last in late.values())
        example = (latest - pd.DateOffset(days=1)).floor("D").replace(day=1) if latest.day > 1 else latest.floor("D")
        raise DataError(
            f"as_of {window.as_of:%Y-%m-%d} is later than the data: the validation month "
            f"{window.val_start:%Y-%m-%d}..{window.val_end:%Y-%m-%d} has no bars ({bars}). Pass an earlier "
            f"decision date, e.g. --as-of {example:%Y-%m-%d} (-P as_of={example:%Y-%m-%d} with mlflow run), "
            "or import newer data (kronos-rolling data import)"
        )
