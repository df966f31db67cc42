"""Market events (rate decisions, splits, halvings) as one integer id per bar.

`events.csv` in the data folder holds one event per line:
`timestamp,event_type,symbol,asset_class`, where `symbol` and `asset_class` are
optional (both empty: the event concerns every series). A three-column file
`timestamp,event_type,scope` also works: the scope is an asset class name or a symbol.
Lines starting with `#` are comments. Timestamps without an offset are UTC.

An event applies to the bar that contains its timestamp, [bar start, bar start +
spacing). When several land in one bar the most specific wins (symbol, then asset
class, then global), then the earliest, then the first type name in sort order.

Event types map to ids through an `EventVocabulary`; 0 means "no event". The
vocabulary is saved with a model (a plain dict) so ids never shift under it: new types
are appended, and types a model never saw map to 0 with a warning.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.data.assets import normalise_symbol
from kronos_rolling.data.calendars import future_bar_times, infer_spacing
from kronos_rolling.errors import DataError

NO_EVENT = 0
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:\-]+$")
EVENT_COLUMNS = ["timestamp", "event_type", "symbol", "asset_class"]
GLOBAL, CLASS_WIDE, ONE_SYMBOL = 0, 1, 2  # scope ranks: a more specific event wins a bar


class EventVocabulary:
    """A stable mapping from event type to id (1, 2, ...); id 0 is "no event"."""

    def __init__(self, ids: Mapping[str, int]):
        ids = {str(k): int(v) for k, v in ids.items()}
        values = sorted(ids.values())
        if any(v <= NO_EVENT for v in values) or len(set(values)) != len(values):
            raise DataError(f"event vocabulary ids must be distinct integers >= 1 (0 is 'no event'), got {ids}")
        self._ids = ids
        self._warned: set[str] = set()

    @classmethod
    def from_types(cls, types: Iterable[str]) -> EventVocabulary:
        """Ids 1..n for the distinct types in sort order."""
        return cls({t: i for i, t in enumerate(sorted(set(types)), start=1)})

    def extended(self, types: Iterable[str]) -> EventVocabulary:
        """This vocabulary plus any new types, appended in sort order; old ids unchanged."""
        ids, next_id = dict(self._ids), self.size
        for event_type in sorted(set(types) - set(ids)):
            ids[event_type], next_id = next_id, next_id + 1
        return EventVocabulary(ids)

    @property
    def size(self) -> int:
        """Rows an embedding table needs: the largest id plus one."""
        return max(self._ids.values(), default=NO_EVENT) + 1

    @property
    def types(self) -> list[str]:
        return sorted(self._ids, key=self._ids.get)

    def id_of(self, event_type: str) -> int:
        """The id of `event_type`; an unknown type is 0 and warns once."""
        found = self._ids.get(event_type)
        if found is None:
            if event_type not in self._warned:
                self._warned.add(event_type)
                warnings.warn(
                    f"event type {event_type!r} is not in the model's event vocabulary "
                    f"({', '.join(self.types) or 'empty'}); it is treated as no event (id 0)",
                    stacklevel=2,
                )
            return NO_EVENT
        return found

    def to_dict(self) -> dict[str, int]:
        return dict(self._ids)

    @classmethod
    def from_dict(cls, ids: Mapping[str, int]) -> EventVocabulary:
        return cls(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_type: str) -> bool:
        return event_type in self._ids

    def __eq__(self, other) -> bool:
        return isinstance(other, EventVocabulary) and self._ids == other._ids

    def __repr__(self) -> str:
        return f"EventVocabulary({self._ids})"


class EventCalendar:
    """Events with their scope; turns them into per-bar ids for one series."""

    def __init__(self, events: pd.DataFrame | None = None):
        if events is None:
            events = pd.DataFrame({c: pd.Series(dtype="object") for c in EVENT_COLUMNS})
            events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)
        missing = [c for c in EVENT_COLUMNS if c not in events.columns]
        if missing:
            raise DataError(f"events need columns {EVENT_COLUMNS}; missing {missing}")
        events = events[EVENT_COLUMNS].copy()
        events["timestamp"] = pd.DatetimeIndex(events["timestamp"]).as_unit("ns")
        events["symbol"] = events["symbol"].map(lambda s: normalise_symbol(s) if isinstance(s, str) and s else None)
        events["asset_class"] = events["asset_class"].map(lambda c: c if isinstance(c, str) and c else None)
        events["rank"] = np.where(events["symbol"].notna(), ONE_SYMBOL,
                                  np.where(events["asset_class"].notna(), CLASS_WIDE, GLOBAL))
        self.events = events.sort_values(["timestamp", "event_type"], kind="stable").reset_index(drop=True)

    @classmethod
    def from_csv(cls, path: str | Path) -> EventCalendar:
        path = Path(path)
        try:
            text = path.read_text()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise DataError(f"{path}: no such events file") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not a text file ({exc})") from exc
        # csv, not pandas: pandas forgets which line a row came from once comments are skipped.
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
                 if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise DataError(f"{path}: empty; expected the header `timestamp,event_type,symbol,asset_class`")
        header = [c.strip().lower() for c in next(csv.reader([lines[0][1]]))]
        allowed = {"timestamp", "event_type", "symbol", "asset_class", "scope"}
        if header[:2] != ["timestamp", "event_type"] or not set(header) <= allowed or len(set(header)) != len(header):
            raise DataError(f"{path}, line {lines[0][0]}: header must be `timestamp,event_type,symbol,asset_class` "
                            f"(symbol and asset_class optional) or `timestamp,event_type,scope`; "
                            f"found `{','.join(header)}`")
        records = []
        for n, line in lines[1:]:
            cells = next(csv.reader([line]))
            if len(cells) > len(header):
                raise DataError(f"{path}, line {n}: {len(cells)} fields but the header has {len(header)}")
            row = dict(zip(header, cells))
            records.append(_event_record(row, f"{path}, line {n}"))
        frame = pd.DataFrame(records, columns=EVENT_COLUMNS)
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
        return cls(frame)

    def event_types(self) -> list[str]:
        return sorted(self.events["event_type"].unique())

    def __len__(self) -> int:
        return len(self.events)

    def applicable(self, symbol: str, asset_class: str | None) -> pd.DataFrame:
        """The events that concern one series: its own, its class's and global ones."""
        e = self.events
        mask = (e["rank"] == GLOBAL) | (e["symbol"] == normalise_symbol(symbol))
        if asset_class is not None:
            mask |= e["asset_class"] == asset_class
        return e[mask]

    def event_ids(self, symbol: str, asset_class: str | None, timestamps, bar_spacing: pd.Timedelta,
                  vocabulary: EventVocabulary) -> np.ndarray:
        """One id per bar (int64, 0 = no event) for bars starting at sorted `timestamps`."""
        starts = pd.DatetimeIndex(timestamps)
        starts = (starts.tz_localize("UTC") if starts.tz is None else starts.tz_convert("UTC")).as_unit("ns").asi8
        ids = np.zeros(len(starts), dtype=np.int64)
        events = self.applicable(symbol, asset_class)
        if len(events) == 0 or len(starts) == 0:
            return ids
        # Best first: most specific scope, then earliest, then type name.
        events = events.sort_values(["rank", "timestamp", "event_type"], ascending=[False, True, True], kind="stable")
        when = pd.DatetimeIndex(events["timestamp"]).asi8
        bar = np.searchsorted(starts, when, side="right") - 1
        inside = (bar >= 0) & (when < starts[np.maximum(bar, 0)] + pd.Timedelta(bar_spacing).value)
        bar, types = bar[inside], events["event_type"].to_numpy()[inside]
        first_bars, first = np.unique(bar, return_index=True)
        ids[first_bars] = [vocabulary.id_of(t) for t in types[first]]
        return ids

    def forecast_event_ids(self, symbol: str, asset_class: str | None, timestamps, pred_len: int,
                           vocabulary: EventVocabulary) -> np.ndarray:
        """Event ids of the bars at `timestamps` and of the `pred_len` bars a forecast adds, at the
        future times the forecaster gives them (`calendars.future_bar_times`)."""
        stamps = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True))
        future = future_bar_times(stamps, pred_len, asset_class)
        return self.event_ids(symbol, asset_class, stamps.append(future), infer_spacing(stamps), vocabulary)


def _event_record(row: dict, where: str) -> dict:
    text = (row.get("timestamp") or "").strip()
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        stamp = pd.NaT
    if pd.isna(stamp):
        raise DataError(f"{where}: cannot read timestamp {text!r}; use ISO 8601 such as 2015-12-16T19:00:00Z")
    stamp = stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")
    event_type = (row.get("event_type") or "").strip()
    if not _EVENT_TYPE.match(event_type):
        raise DataError(f"{where}: event_type {event_type!r} must be a non-empty word "
                        "(letters, digits, _ . : -), e.g. fomc_decision")
    symbol = (row.get("symbol") or "").strip() or None
    asset_class = (row.get("asset_class") or "").strip() or None
    scope = (row.get("scope") or "").strip()
    if scope:
        if scope in ASSET_CLASSES:
            asset_class = asset_class or scope
        else:
            symbol = symbol or scope
    if symbol and asset_class:
        raise DataError(f"{where}: give a symbol or an asset class, not both (an event for one symbol "
                        "already applies only to it)")
    if asset_class and asset_class not in ASSET_CLASSES:
        raise DataError(f"{where}: asset_class {asset_class!r} is not one of {', '.join(ASSET_CLASSES)}")
    return {"timestamp": stamp, "event_type": event_type,
            "symbol": symbol, "asset_class": asset_class}
