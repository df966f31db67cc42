"""Check bar files and data folders and say exactly where they are wrong.

The bars themselves are checked by `bars.check_bars`, the one validator every entry
point shares. Here: gaps, side files and folders. `validate_frame` checks one frame of
bars; `validate_file` one file; `validate_path` files or a whole data folder (bar files
plus `events.csv`, `asset_classes.csv` and `known_gaps.csv`). Every problem is an
`Issue` naming file, row, column and what is wrong; an issue marked `warning` does not
make the data unusable. Nothing is mended here.

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
from kronos_rolling.data.bars import CheckedBars, check_bars
from kronos_rolling.data.calendars import format_spacing, infer_spacing, missing_bars
from kronos_rolling.data.events import EventCalendar
from kronos_rolling.data.issues import Issue, row_issues
from kronos_rolling.data.parse import read_table
from kronos_rolling.errors import DataError
from kronos_rolling.settings import DEFAULT_MAX_GAP

__all__ = ["Issue", "KnownGap", "validate_frame", "gap_issues", "validate_file", "validate_path",
           "read_known_gaps", "DEFAULT_MAX_GAP", "REQUIRED_COLUMNS", "KNOWN_GAPS_FILE", "EVENTS_FILE", "SIDE_FILES",
           "DROPPED_SUFFIX"]

REQUIRED_COLUMNS = ("timestamp", "open", "high", "low", "close")
KNOWN_GAPS_FILE = "known_gaps.csv"
EVENTS_FILE = "events.csv"
SIDE_FILES = (EVENTS_FILE, OVERRIDES_FILE, KNOWN_GAPS_FILE)
BAR_FILE_SUFFIXES = (".parquet", ".csv")
DROPPED_SUFFIX = ".dropped.csv"
"""`SYMBOL.dropped.csv`: the rows an import with --drop-invalid left out, with their reason."""


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
    now: pd.Timestamp | None = None,
) -> list[Issue]:
    """All problems in a frame of bars (`timestamp`, open, high, low, close[, volume, amount]).

    `max_gap`: most missing bars tolerated between consecutive bars (None: no gap check).
    `asset_class` selects the trading calendar (None: the market never closes). Rows are
    numbered 1, 2, ... as in a file. `now`: timestamps more than a year after it are
    problems (None: no upper bound).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        return [Issue(source_name, None, c, "missing column (a bar file needs timestamp, open, high, low, "
                      "close and may add volume and amount)") for c in missing]
    if len(frame) == 0:
        return [Issue(source_name, None, None, "no bars")]
    checked = check_bars(frame, source_name, now=now)
    return checked.issues + gap_issues(checked, max_gap, asset_class, known_gaps)


def gap_issues(checked: CheckedBars, max_gap: int | None, asset_class: str | None,
               known_gaps: list[KnownGap] | tuple = ()) -> list[Issue]:
    """Mixed spacing and gaps among the usable bars (none when their order is wrong)."""
    if any("ascending" in i.problem for i in checked.issues):
        return []
    usable = ~np.isin(checked.rows, list(checked.reasons))
    stamps = pd.DatetimeIndex(checked.frame["timestamp"][usable]).as_unit("ns")
    if len(stamps) < 2:
        return []
    return _spacing_issues(stamps, checked.source, checked.rows[usable], max_gap, asset_class, known_gaps)


def _spacing_issues(stamps, source, rows, max_gap, asset_class, known_gaps) -> list[Issue]:
    spacing = infer_spacing(stamps)
    steps = np.diff(stamps.asi8)
    off_grid = np.flatnonzero(steps % spacing.value != 0) + 1
    issues = row_issues(source, rows[off_grid], "timestamp",
                        f"mixed bar spacing: the bar spacing is {spacing} but this bar comes",
                        [f" {pd.Timedelta(int(steps[i - 1]))} after the previous one" for i in off_grid])
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
    symbol: str | None = None,
    class_required: bool = True,
    now: pd.Timestamp | None = None,
) -> list[Issue]:
    """All problems in one bar file.

    `symbol` names the series (default: the file name without its suffix); the asset
    class and known gaps default to what the file's folder says for it (overrides, rules,
    `known_gaps.csv`). A symbol no rule classifies is a problem when `class_required`
    (a file of the data folder), else a warning: the content is checked all the same,
    gaps as if the market never closed. `now`: as for `validate_frame`.
    """
    path = Path(path)
    name = str(path)
    symbol = symbol or symbol_of(path)
    issues: list[Issue] = []
    if asset_class is None:
        try:
            asset_class = classify_asset(symbol, read_overrides(path.parent / OVERRIDES_FILE))
        except DataError as exc:
            issues.append(Issue(name, None, None, f"{exc} (gaps are checked as if the market never closed)",
                                warning=not class_required))
    if known_gaps is None:
        try:
            known_gaps = [g for g in read_known_gaps(path.parent / KNOWN_GAPS_FILE)
                          if g.symbol == normalise_symbol(symbol)]
        except DataError:
            known_gaps = []  # the side file's own problem is reported when it is checked
    try:
        checked = check_bars(read_table(path), name, time_format=time_format, now=now)
    except DataError as exc:
        return issues + [Issue(name, None, None, str(exc).removeprefix(f"{name}: "))]
    return issues + checked.issues + gap_issues(checked, max_gap, asset_class, known_gaps)


def validate_path(path: str | Path, max_gap: int | None = DEFAULT_MAX_GAP, symbol: str | None = None,
                  time_format: str | None = None, now: pd.Timestamp | None = None) -> list[Issue]:
    """All problems in a bar file, a side file or a whole data folder.

    A file named on its own may hold any series (`symbol` names it): an unknown asset
    class is then only a warning. In a data folder every symbol needs a class.
    """
    path = Path(path)
    if path.is_dir():
        issues = []
        stems = [symbol_of(f).upper() for f in path.iterdir() if is_bar_file(f)]
        for stem in sorted({s for s in stems if stems.count(s) > 1}):
            issues.append(Issue(str(path), None, None, f"symbol {stem} has more than one bar file "
                                "(e.g. .csv and .parquet, or names differing in case); keep one"))
        for file in sorted(path.iterdir()):
            if file.name in SIDE_FILES:
                issues += validate_path(file, max_gap, now=now)
            elif is_bar_file(file):
                issues += validate_file(file, max_gap, now=now)
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
    return validate_file(path, max_gap, symbol=symbol, time_format=time_format, class_required=False, now=now)


def is_bar_file(path: Path) -> bool:
    """A series of the data folder: SYMBOL.parquet or SYMBOL.csv, not a side file or a dropped-rows file."""
    return (path.is_file() and path.suffix.lower() in BAR_FILE_SUFFIXES and path.name not in SIDE_FILES
            and not path.name.lower().endswith(DROPPED_SUFFIX))


def symbol_of(path: Path) -> str:
    """The symbol a bar file holds: its name without the suffix."""
    return Path(path).name[: -len(Path(path).suffix)] if Path(path).suffix else Path(path).name
