"""Check bar data and say exactly where it is wrong.

`validate_frame` checks one frame of bars; `validate_path` checks files or a whole data
folder (bar files plus `events.csv`, `asset_classes.csv` and `known_gaps.csv`). Every
problem is an `Issue` naming file, row, column and what is wrong. Nothing is mended
here: a clean-up, where one exists, happens elsewhere and reports what it changed.

Gaps are counted in missing bars of the asset class's trading calendar (`calendars`),
so weekends and exchange holidays are not gaps. A gap that is real and understood (an
exchange outage, a hole in the source) can be listed in `known_gaps.csv` in the data
folder (`symbol,start,end,reason`: the bars before and after the hole); it is then no
longer a problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kronos_rolling.data.assets import (
    OVERRIDES_FILE,
    classify_asset,
    normalise_symbol,
    read_overrides,
)
from kronos_rolling.data.calendars import (
    DEFAULT_MAX_GAP,
    format_spacing,
    infer_spacing,
    missing_bars,
)
from kronos_rolling.data.events import EventCalendar
from kronos_rolling.data.features import PRICE_COLUMNS
from kronos_rolling.data.issues import Issue, row_issues
from kronos_rolling.data.parse import ParsedBars, parse_bars, read_table
from kronos_rolling.errors import DataError

__all__ = ["Issue", "KnownGap", "validate_frame", "validate_parsed", "validate_file", "validate_path",
           "read_known_gaps", "DEFAULT_MAX_GAP", "REQUIRED_COLUMNS", "KNOWN_GAPS_FILE", "EVENTS_FILE", "SIDE_FILES"]

REQUIRED_COLUMNS = ("timestamp", "open", "high", "low", "close")
KNOWN_GAPS_FILE = "known_gaps.csv"
EVENTS_FILE = "events.csv"
SIDE_FILES = (EVENTS_FILE, OVERRIDES_FILE, KNOWN_GAPS_FILE)
BAR_FILE_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class KnownGap:
    """An understood hole in one series: bars `start` and `end` are the ones around it."""

    symbol: str
    start: pd.Timestamp
    end: pd.Timestamp
    reason: str


def validate_frame(
    frame: pd.DataFrame,
    source_name: str,
    max_gap: int | None = DEFAULT_MAX_GAP,
    asset_class: str | None = None,
    known_gaps: list[KnownGap] | tuple = (),
    rows: np.ndarray | None = None,
) -> list[Issue]:
    """All problems in a frame of bars (`timestamp`, open, high, low, close[, volume, amount]).

    `max_gap`: most missing bars tolerated between consecutive bars (None: no gap check).
    `asset_class` selects the trading calendar (None: the market never closes).
    `rows`: the source row number of each frame row (default 1, 2, ...).
    """
    rows = np.arange(1, len(frame) + 1) if rows is None else np.asarray(rows)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        return [Issue(source_name, None, c, "missing column (a bar file needs timestamp, open, high, low, "
                      "close and may add volume and amount)") for c in missing]
    if len(frame) == 0:
        return [Issue(source_name, None, None, "no bars")]
    issues: list[Issue] = []
    issues += _value_issues(frame, source_name, rows)
    issues += _price_issues(frame, source_name, rows)

    stamps = frame["timestamp"]
    if not pd.api.types.is_datetime64_any_dtype(stamps):
        issues.append(Issue(source_name, None, "timestamp", f"holds {stamps.dtype}, not timestamps"))
        return issues
    stamps = pd.DatetimeIndex(stamps)
    stamps = (stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")).as_unit("ns")
    known = ~stamps.isna()
    issues += row_issues(source_name, rows[~known], "timestamp", "missing timestamp")
    order_issues = _order_issues(stamps[known], source_name, rows[known])
    issues += order_issues
    if order_issues or known.sum() < 2:
        return issues
    issues += _spacing_issues(stamps[known], source_name, rows[known], max_gap, asset_class, known_gaps)
    return issues


def _value_issues(frame: pd.DataFrame, source: str, rows: np.ndarray) -> list[Issue]:
    issues: list[Issue] = []
    for column in PRICE_COLUMNS + [c for c in ("volume", "amount") if c in frame.columns]:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64")
        nan = np.isnan(values) & pd.notna(frame[column]).to_numpy()
        issues += row_issues(source, rows[nan], column, "not a number")
        issues += row_issues(source, rows[pd.isna(frame[column]).to_numpy()], column, "missing value (NaN)")
        issues += row_issues(source, rows[np.isinf(values)], column, "infinite value")
        if column in PRICE_COLUMNS:
            bad = np.flatnonzero(values <= 0)
            issues += row_issues(source, rows[bad], column, "price is not positive",
                                 [f": {values[i]:g}" for i in bad[:10]])
        else:
            bad = np.flatnonzero(values < 0)
            issues += row_issues(source, rows[bad], column, "negative value", [f": {values[i]:g}" for i in bad[:10]])
    return issues


def _price_issues(frame: pd.DataFrame, source: str, rows: np.ndarray) -> list[Issue]:
    issues: list[Issue] = []
    p = {c: pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype="float64") for c in PRICE_COLUMNS}
    finite = np.all([np.isfinite(v) for v in p.values()], axis=0)  # bad values are reported already
    checks = (
        ("high", p["high"] < p["low"], "low"),
        ("high", p["high"] < p["open"], "open"),
        ("high", p["high"] < p["close"], "close"),
        ("low", p["low"] > p["open"], "open"),
        ("low", p["low"] > p["close"], "close"),
    )
    for column, bad, other in checks:
        where = np.flatnonzero(bad & finite)
        relation = "below" if column == "high" else "above"
        issues += row_issues(source, rows[where], column, f"{column} is {relation} {other}",
                             [f" ({p[column][i]:g} vs {p[other][i]:g})" for i in where[:10]])
    return issues


def _order_issues(stamps: pd.DatetimeIndex, source: str, rows: np.ndarray) -> list[Issue]:
    values = stamps.asi8
    issues: list[Issue] = []
    duplicated = np.flatnonzero(pd.Index(values).duplicated())
    issues += row_issues(source, rows[duplicated], "timestamp", "duplicate timestamp",
                         [f" {stamps[i]} (seen in an earlier row)" for i in duplicated[:10]])
    backwards = np.flatnonzero(np.diff(values) < 0) + 1
    issues += row_issues(source, rows[backwards], "timestamp", "timestamp earlier than the row before; "
                         "rows must be in ascending time order",
                         [f" ({stamps[i]} after {stamps[i - 1]})" for i in backwards[:10]])
    return issues


def _spacing_issues(stamps, source, rows, max_gap, asset_class, known_gaps) -> list[Issue]:
    spacing = infer_spacing(stamps)
    steps = np.diff(stamps.asi8)
    off_grid = np.flatnonzero(steps % spacing.value != 0) + 1
    issues = row_issues(source, rows[off_grid], "timestamp",
                        f"mixed bar spacing: the bar spacing is {spacing} but this bar comes",
                        [f" {pd.Timedelta(int(steps[i - 1]))} after the previous one" for i in off_grid[:10]])
    if issues or max_gap is None:
        return issues
    missing = missing_bars(stamps, spacing, asset_class)
    for i in np.flatnonzero(missing > max_gap):
        prev, this = stamps[i - 1], stamps[i]
        if any(g.start <= prev and this <= g.end for g in known_gaps):
            continue
        issues.append(Issue(
            source, int(rows[i]), "timestamp",
            f"gap: {missing[i]} missing bars of {format_spacing(spacing)} between {prev} and {this} "
            f"(limit {max_gap}{'' if asset_class else ', market assumed always open'}); "
            f"raise the limit (--max-gap) or list the gap in {KNOWN_GAPS_FILE}",
        ))
    return issues


def read_known_gaps(path: str | Path) -> list[KnownGap]:
    """Read `known_gaps.csv` (symbol,start,end,reason); a missing file means none."""
    path = Path(path)
    if not path.exists():
        return []
    table = _read_side_file(path, ["symbol", "start", "end", "reason"])
    gaps = []
    for offset, record in enumerate(table.itertuples(index=False)):
        line = offset + 2
        try:
            start, end = (pd.Timestamp(v) for v in (record.start, record.end))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}, line {line}: cannot read start/end ({exc}); use ISO times "
                            "such as 2019-03-19 or 2019-03-19T00:00:00Z") from exc
        start, end = (t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC") for t in (start, end))
        if not (start < end) or not str(record.symbol).strip():
            raise DataError(f"{path}, line {line}: need a symbol and start before end")
        gaps.append(KnownGap(normalise_symbol(record.symbol), start, end, str(record.reason or "")))
    return gaps


def _read_side_file(path: Path, header: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, comment="#", skipinitialspace=True, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it ({exc}); expected the header `{','.join(header)}`") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    if list(table.columns) != header:
        raise DataError(f"{path}: header must be `{','.join(header)}`, found `{','.join(table.columns)}`")
    return table


def validate_file(
    path: str | Path,
    max_gap: int | None = DEFAULT_MAX_GAP,
    asset_class: str | None = None,
    known_gaps: list[KnownGap] | None = None,
    time_format: str | None = None,
) -> list[Issue]:
    """All problems in one bar file. The asset class and known gaps default to what the
    file's folder says (overrides, rules, `known_gaps.csv`) for the symbol in its name."""
    path = Path(path)
    name = str(path)
    symbol = symbol_of(path)
    issues: list[Issue] = []
    if asset_class is None:
        try:
            asset_class = classify_asset(symbol, read_overrides(path.parent / OVERRIDES_FILE))
        except DataError as exc:
            issues.append(Issue(name, None, None, f"{exc} (gaps are checked as if the market never closed)"))
    if known_gaps is None:
        try:
            known_gaps = [g for g in read_known_gaps(path.parent / KNOWN_GAPS_FILE)
                          if g.symbol == normalise_symbol(symbol)]
        except DataError:
            known_gaps = []  # the side file's own problem is reported when it is checked
    try:
        parsed = parse_bars(read_table(path), name, time_format=time_format)
    except DataError as exc:
        return issues + [Issue(name, None, None, str(exc).removeprefix(f"{name}: "))]
    return issues + validate_parsed(parsed, name, max_gap, asset_class, known_gaps)


def validate_parsed(
    parsed: ParsedBars,
    source_name: str,
    max_gap: int | None = DEFAULT_MAX_GAP,
    asset_class: str | None = None,
    known_gaps: list[KnownGap] | tuple = (),
) -> list[Issue]:
    """Conversion problems plus `validate_frame`'s, each cell reported once."""
    already = {(i.row, i.column) for i in parsed.issues}  # cells conversion could not read
    found = validate_frame(parsed.frame, source_name, max_gap, asset_class, known_gaps, parsed.rows)
    return parsed.issues + [i for i in found if i.row is None or (i.row, i.column) not in already]


def validate_path(path: str | Path, max_gap: int | None = DEFAULT_MAX_GAP) -> list[Issue]:
    """All problems in a bar file, a side file or a whole data folder."""
    path = Path(path)
    if path.is_dir():
        issues = []
        stems = [symbol_of(f).upper() for f in path.iterdir() if is_bar_file(f)]
        for stem in sorted({s for s in stems if stems.count(s) > 1}):
            issues.append(Issue(str(path), None, None, f"symbol {stem} has more than one bar file "
                                "(e.g. .csv and .parquet, or names differing in case); keep one"))
        for file in sorted(path.iterdir()):
            if file.name in SIDE_FILES or is_bar_file(file):
                issues += validate_path(file, max_gap)
        if not any(is_bar_file(f) for f in path.iterdir()):
            issues.append(Issue(str(path), None, None, "no bar files (SYMBOL.parquet or SYMBOL.csv) in this folder"))
        return issues
    if not path.exists():
        return [Issue(str(path), None, None, "no such file or folder")]
    try:
        if path.name == EVENTS_FILE:
            EventCalendar.from_csv(path)
            return []
        if path.name == OVERRIDES_FILE:
            read_overrides(path)
            return []
        if path.name == KNOWN_GAPS_FILE:
            read_known_gaps(path)
            return []
    except DataError as exc:
        return [Issue(str(path), None, None, str(exc).removeprefix(f"{path}: "))]
    return validate_file(path, max_gap)


def is_bar_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in BAR_FILE_SUFFIXES and path.name not in SIDE_FILES


def symbol_of(path: Path) -> str:
    """The symbol a bar file holds: its name without the suffix."""
    return Path(path).name[: -len(Path(path).suffix)] if Path(path).suffix else Path(path).name
