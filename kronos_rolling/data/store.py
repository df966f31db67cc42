"""The data folder: one bar file per symbol, plus events and asset-class overrides.

    DATA_DIR/
      SYMBOL.parquet | SYMBOL.csv   timestamp, open, high, low, close[, volume, amount]
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
from kronos_rolling.data.calendars import DEFAULT_MAX_GAP, infer_spacing
from kronos_rolling.data.events import EventCalendar
from kronos_rolling.data.features import FEATURE_COLUMNS, fill_volume_amount
from kronos_rolling.data.issues import Issue
from kronos_rolling.data.parse import parse_bars, read_table
from kronos_rolling.data.validate import (
    EVENTS_FILE,
    KNOWN_GAPS_FILE,
    SIDE_FILES,
    KnownGap,
    is_bar_file,
    read_known_gaps,
    symbol_of,
    validate_parsed,
)
from kronos_rolling.data.windows import SeriesCoverage
from kronos_rolling.errors import DataError
from kronos_rolling.settings import BUNDLED_DATA_DIR

BAR_COLUMNS = ["timestamp"] + FEATURE_COLUMNS
_FILE_SAFE_SYMBOL = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9^=._\-]{0,63}$")
MAX_ISSUES_IN_ERROR = 8


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


def prepare_bars(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Our bar frame from any frame of bars: UTC ns timestamps, all six features float64.

    Raises DataError naming the first problems when the bars are unusable (gaps are
    fine here; the dataset skips samples across them).
    """
    parsed = parse_bars(frame, name)
    issues = validate_parsed(parsed, name, max_gap=None)
    if issues:
        hint = f"run `kronos-rolling data validate {name}` for all of them"
        raise DataError(_issues_message(name, issues, hint=hint))
    bars = fill_volume_amount(parsed.frame)
    bars = bars[BAR_COLUMNS].copy()
    bars[FEATURE_COLUMNS] = bars[FEATURE_COLUMNS].astype("float64")
    return bars


def _issues_message(name: str, issues: list[Issue], hint: str) -> str:
    shown = "\n  ".join(str(i) for i in issues[:MAX_ISSUES_IN_ERROR])
    more = f"\n  ... and {len(issues) - MAX_ISSUES_IN_ERROR} more" if len(issues) > MAX_ISSUES_IN_ERROR else ""
    return f"{name}: {len(issues)} problem(s):\n  {shown}{more}\n{hint}"


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
            cached = (key, prepare_bars(read_table(path), str(path)))
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
    ) -> ImportReport:
        """Convert a user's bar file into `SYMBOL.parquet` here. All or nothing: any
        problem raises DataError and leaves the folder exactly as it was."""
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
        parsed = parse_bars(read_table(src), name, time_format=time_format, tz=tz)
        problems = validate_parsed(parsed, name, max_gap=None)
        if problems:
            hint = "Nothing was imported; fix the file and import again."
            raise DataError(_issues_message(name, problems, hint=hint))
        gaps = [] if max_gap is None else validate_parsed(parsed, name, max_gap, asset_class, self.known_gaps(symbol))

        bars = parsed.frame
        target = self.root / f"{symbol}.parquet"
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        temps: list[Path] = []
        done = False
        try:
            temps.append(_temp_path(self.root, target.name))
            bars.to_parquet(temps[-1], index=False, compression="zstd")
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
                            infer_spacing(stamps), parsed.notes, gaps)


def _check_symbol_name(symbol: str) -> None:
    if not _FILE_SAFE_SYMBOL.match(symbol):
        raise DataError(
            f"symbol {symbol!r} cannot name a file: use letters, digits and ^ = . _ - only "
            "(write BTC/USDT as BTCUSDT or BTC-USDT, EUR/USD as EURUSD)"
        )
    if f"{symbol.lower()}.csv" in SIDE_FILES:
        raise DataError(f"symbol {symbol!r} is reserved for a side file of the data folder; choose another name")


def _temp_path(folder: Path, name: str) -> Path:
    handle, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    return Path(temp)
