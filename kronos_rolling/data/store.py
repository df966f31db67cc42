"""The data folder: one bar file per symbol, plus events and asset-class overrides.

    DATA_DIR/
      SYMBOL.parquet | SYMBOL.csv   timestamp, open, high, low, close[, volume, amount]
      SYMBOL.dropped.csv            rows an import with --drop-invalid left out, with a `reason`
      events.csv                    optional, see `events`
      asset_classes.csv             optional overrides, see `assets`
      known_gaps.csv                optional understood gaps, see `validate`

The folder is `--data DIR`, else `$KRONOS_DATA_DIR`, else the real sample data bundled
with the package (read-only). Timestamps are bar *start* times in UTC; daily bars are
labelled by their trading date at 00:00 UTC.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.data.assets import (
    OVERRIDES_FILE,
    classify_asset,
    normalise_symbol,
    read_overrides,
    write_overrides,
)
from kronos_rolling.data.bars import bars_error, check_bars, clean_bars, drop_invalid
from kronos_rolling.data.calendars import infer_spacing
from kronos_rolling.data.events import EventCalendar
from kronos_rolling.data.issues import SPREADSHEET_QUOTING, Issue, spreadsheet_safe, write_report
from kronos_rolling.data.parse import read_table
from kronos_rolling.data.validate import (
    DROPPED_SUFFIX,
    EVENTS_FILE,
    KNOWN_GAPS_FILE,
    SIDE_FILES,
    KnownGap,
    gap_issues,
    is_bar_file,
    read_known_gaps,
    symbol_of,
)
from kronos_rolling.data.windows import SeriesCoverage
from kronos_rolling.errors import DataError
from kronos_rolling.settings import BUNDLED_DATA_DIR, DEFAULT_MAX_GAP

_FILE_SAFE_SYMBOL = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9^=._\-]{0,63}$")
_TEMP_FILE = re.compile(r"^\..+\.pid(\d+)\.[^.]+\.tmp$")


@dataclass(frozen=True)
class SeriesSummary:
    """What `data list` shows for one symbol."""

    symbol: str
    asset_class: str | None  # None when no rule or override covers the symbol
    bar_spacing: pd.Timedelta | None
    first: pd.Timestamp
    last: pd.Timestamp
    rows: int
    path: Path


@dataclass
class ImportReport:
    """What an import stored and what it changed or noticed on the way."""

    symbol: str
    path: Path
    asset_class: str
    rows: int
    first: pd.Timestamp
    last: pd.Timestamp
    bar_spacing: pd.Timedelta | None
    notes: list[str] = field(default_factory=list)
    gaps: list[Issue] = field(default_factory=list)  # reported, not fatal: real data has outages
    dropped: Counter = field(default_factory=Counter)  # reason -> rows left out (--drop-invalid)
    dropped_path: Path | None = None  # SYMBOL.dropped.csv, when rows were left out
    removed_temps: list[Path] = field(default_factory=list)  # left by an import that was killed


class DataStore:
    """Bars, asset classes and events of one data folder."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else BUNDLED_DATA_DIR
        self._cache: dict[Path, tuple[tuple[int, int], pd.DataFrame]] = {}

    def __repr__(self) -> str:
        return f"DataStore({str(self.root)!r})"

    # --- reading -----------------------------------------------------------------
    def _files(self) -> dict[str, list[Path]]:
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist; pass --data DIR or set KRONOS_DATA_DIR "
                            "to a folder of SYMBOL.parquet / SYMBOL.csv files")
        files: dict[str, list[Path]] = {}
        for path in sorted(self.root.iterdir()):
            if is_bar_file(path):
                files.setdefault(normalise_symbol(symbol_of(path)), []).append(path)
        return files

    def symbols(self) -> list[str]:
        """Symbols in the folder, as their file names spell them, sorted."""
        return sorted(symbol_of(paths[0]) for paths in self._files().values())

    def path_of(self, symbol: str) -> Path:
        paths = self._files().get(normalise_symbol(symbol))
        if not paths:
            known = ", ".join(self.symbols()) or "none"
            raise DataError(f"no data for symbol {symbol!r} in {self.root} (symbols: {known}); "
                            "add it with `kronos-rolling data import FILE --symbol SYMBOL`")
        if len(paths) > 1:
            raise DataError(f"symbol {symbol!r} has several files in {self.root}: "
                            f"{', '.join(p.name for p in paths)}; keep one")
        return paths[0]

    def load(self, symbol: str) -> pd.DataFrame:
        """Bars of `symbol`: UTC `timestamp` and open, high, low, close, volume, amount."""
        path = self.path_of(symbol)
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            hint = f"Run `kronos-rolling data validate {path}` to list them."
            cached = (key, clean_bars(read_table(path), str(path), first_row=1, hint=hint))
            self._cache[path] = cached
        return cached[1].copy()

    def overrides(self) -> dict[str, str]:
        return read_overrides(self.root / OVERRIDES_FILE)

    def asset_class(self, symbol: str) -> str:
        return classify_asset(symbol, self.overrides())

    def symbols_for(self, asset_class: str) -> list[str]:
        if asset_class not in ASSET_CLASSES:
            raise DataError(f"asset class {asset_class!r} is not one of {', '.join(ASSET_CLASSES)}")
        overrides = self.overrides()
        return [s for s in self.symbols() if classify_asset(s, overrides) == asset_class]

    def bar_spacing(self, symbol: str) -> pd.Timedelta:
        spacing = infer_spacing(self.load(symbol)["timestamp"])
        if spacing is None:
            raise DataError(f"{self.path_of(symbol)}: fewer than two bars, so it has no bar spacing")
        return spacing

    def events(self) -> EventCalendar:
        path = self.root / EVENTS_FILE
        return EventCalendar.from_csv(path) if path.exists() else EventCalendar()

    def known_gaps(self, symbol: str | None = None) -> list[KnownGap]:
        gaps = read_known_gaps(self.root / KNOWN_GAPS_FILE)
        return gaps if symbol is None else [g for g in gaps if g.symbol == normalise_symbol(symbol)]

    def summary(self, symbol: str) -> SeriesSummary:
        bars = self.load(symbol)
        try:
            asset_class = self.asset_class(symbol)
        except DataError:
            asset_class = None
        stamps = bars["timestamp"]
        return SeriesSummary(symbol_of(self.path_of(symbol)), asset_class, infer_spacing(stamps),
                             stamps.iloc[0], stamps.iloc[-1], len(bars), self.path_of(symbol))

    def coverage(self, symbols: list[str]) -> dict[str, SeriesCoverage]:
        """Where each symbol has bars, for `windows.coverage_shortfall`."""
        found = {}
        for symbol in symbols:
            stamps = self.load(symbol)["timestamp"]
            spacing = self.bar_spacing(symbol)
            found[symbol] = SeriesCoverage(stamps.iloc[0], stamps.iloc[-1] + spacing, spacing, self.asset_class(symbol))
        return found

    # --- writing -----------------------------------------------------------------
    def import_csv(
        self,
        src: str | Path,
        symbol: str,
        asset_class: str | None = None,
        *,
        time_format: str | None = None,
        tz: str = "UTC",
        replace: bool = False,
        max_gap: int | None = DEFAULT_MAX_GAP,
        drop_invalid_rows: bool = False,
        report: str | Path | None = None,
        now: pd.Timestamp | None = None,
    ) -> ImportReport:
        """Convert a user's bar file into `SYMBOL.parquet` here. All or nothing: any
        problem raises DataError (counting every kind) and leaves the folder as it was.

        `drop_invalid_rows`: leave out what a careful clean-up would (duplicate timestamps,
        keeping the file's later row; all-zero or non-positive bars; inconsistent OHLC;
        unreadable values) and write those rows with their `reason` to
        `SYMBOL.dropped.csv`. `report`: a CSV of every problem found (with drop_invalid_rows,
        the dropped rows' problems too). `now`: timestamps more than a year after it are
        problems (the command passes its clock). Temporary files of an import that was
        killed are removed first.
        """
        if self.root.resolve() == BUNDLED_DATA_DIR.resolve():
            raise DataError(f"the bundled sample data ({self.root}) is read-only; import into your own "
                            "folder with --data DIR or KRONOS_DATA_DIR=DIR")
        symbol = str(symbol).strip()
        _check_symbol_name(symbol)
        existing = self._files().get(normalise_symbol(symbol), []) if self.root.is_dir() else []
        if existing and not replace:
            raise DataError(f"symbol {symbol} already exists ({existing[0]}); pass --replace to overwrite it")

        overrides = self.overrides()
        write_override = False
        if asset_class is not None:
            asset_class = asset_class.strip().lower()
            if asset_class not in ASSET_CLASSES:
                raise DataError(f"asset class {asset_class!r} is not one of {', '.join(ASSET_CLASSES)}")
            try:
                write_override = classify_asset(symbol, overrides) != asset_class
            except DataError:
                write_override = True
        else:
            try:
                asset_class = classify_asset(symbol, overrides)
            except DataError as exc:
                raise DataError(f"{exc} Nothing was imported.") from exc

        name = str(src)
        table = read_table(src)
        checked = check_bars(table, name, time_format=time_format, tz=tz, now=now)
        found = list(checked.issues)
        dropped = table.iloc[:0]
        if drop_invalid_rows:
            checked, dropped = drop_invalid(checked, table)
        if report is not None:  # every problem found, those of the rows left out included
            write_report(report, found + [issue for issue in checked.issues if issue not in found])
        if checked.issues:
            listed = f" Every problem is listed in {report}." if report is not None else \
                " --report FILE lists every problem."
            fix = "" if drop_invalid_rows else " or pass --drop-invalid to leave the bad rows out"
            raise bars_error(checked, f"Nothing was imported; fix the file{fix}.{listed}")
        gaps = [] if max_gap is None else gap_issues(checked, max_gap, asset_class, self.known_gaps(symbol))

        bars = checked.frame
        target = self.root / f"{symbol}.parquet"
        dropped_path = self.root / f"{symbol}{DROPPED_SUFFIX}"
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temps(self.root)
        temps: list[Path] = []
        done = False
        try:
            temps.append(_temp_path(self.root, target.name))
            bars.to_parquet(temps[-1], index=False, compression="zstd")
            if len(dropped):
                temps.append(_temp_path(self.root, dropped_path.name))
                safe = dropped.map(spreadsheet_safe).rename(columns=lambda name: spreadsheet_safe(str(name)))
                safe.to_csv(temps[-1], index=False, quoting=SPREADSHEET_QUOTING)
                os.replace(temps[-1], dropped_path)
            elif drop_invalid_rows or replace:
                dropped_path.unlink(missing_ok=True)  # an earlier import's left-outs no longer apply
            if write_override:
                temps.append(_temp_path(self.root, OVERRIDES_FILE))
                write_overrides(temps[-1], {**overrides, normalise_symbol(symbol): asset_class})
                os.replace(temps[-1], self.root / OVERRIDES_FILE)
            os.replace(temps[0], target)
            done = True
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)
            if created and not done:
                self.root.rmdir()
        for old in existing:
            if old != target:
                old.unlink()
        stamps = bars["timestamp"]
        return ImportReport(symbol, target, asset_class, len(bars), stamps.iloc[0], stamps.iloc[-1],
                            infer_spacing(stamps), checked.notes, gaps, Counter(dropped.get("reason", [])),
                            dropped_path if len(dropped) else None, removed)


def _check_symbol_name(symbol: str) -> None:
    if not _FILE_SAFE_SYMBOL.match(symbol):
        raise DataError(
            f"symbol {symbol!r} cannot name a file: use letters, digits and ^ = . _ - only "
            "(write BTC/USDT as BTCUSDT or BTC-USDT, EUR/USD as EURUSD)"
        )
    if f"{symbol.lower()}.csv" in SIDE_FILES:
        raise DataError(f"symbol {symbol!r} is reserved for a side file of the data folder; choose another name")


def _temp_path(folder: Path, name: str) -> Path:
    """A temporary file beside `name`, named with this process id so a later import can tell it is stale."""
    handle, temp = tempfile.mkstemp(prefix=f".{name}.pid{os.getpid()}.", suffix=".tmp", dir=folder)
    os.close(handle)
    return Path(temp)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files of imports whose process no longer runs (killed mid-write)."""
    removed = []
    for path in folder.iterdir():
        match = _TEMP_FILE.match(path.name)
        if match and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
