"""When each asset class trades, so that closed-market time is never called a gap.

A gap is measured in *missing bars*: bar slots between two consecutive bars at which
the market was open but no bar exists.

- Crypto trades around the clock.
- Forex and commodities close from Friday 17:00 to Sunday 17:00 New York time and for
  the trading days of 25 December and 1 January (each from 17:00 New York the evening
  before); daily bars count Monday to Friday.
- Equities trade on business days except NYSE holidays and closures (a simplification
  for other exchanges: their own holidays show up as short gaps, well inside the
  default limit). Intraday equity bars are counted per session, so the overnight break
  is not a gap and a missing trading day counts as a whole session.

`future_bar_times` continues a series into the future on the same calendar: the asset
class's open market, and what the series itself shows (no weekend bars in, none out;
intraday bars only within the session the series trades).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from pandas.tseries.holiday import (
    AbstractHolidayCalendar,
    GoodFriday,
    Holiday,
    USLaborDay,
    USMartinLutherKingJr,
    USMemorialDay,
    USPresidentsDay,
    USThanksgivingDay,
    nearest_workday,
    sunday_to_monday,
)

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.errors import DataError

CRYPTO, FOREX_COMMODITY, EQUITY = ASSET_CLASSES

FOREX_TZ = "America/New_York"
FOREX_HOLIDAYS = ((12, 25), (1, 1))  # (month, day): the interbank market is shut
US_SESSION = pd.Timedelta(hours=6, minutes=30)

# Whole-day NYSE closures that no yearly rule produces.
NYSE_SPECIAL_CLOSURES = (
    "1994-04-27",  # President Nixon's funeral
    "2001-09-11", "2001-09-12", "2001-09-13", "2001-09-14",  # September 11 attacks
    "2004-06-11",  # President Reagan's funeral
    "2007-01-02",  # President Ford's funeral
    "2012-10-29", "2012-10-30",  # Hurricane Sandy
    "2018-12-05",  # President G. H. W. Bush's funeral
    "2025-01-09",  # President Carter's funeral
)


class NYSEHolidayCalendar(AbstractHolidayCalendar):
    """Regular NYSE full-day holidays (New Year falling on a Saturday is not moved)."""

    rules = [
        Holiday("New Year's Day", month=1, day=1, observance=sunday_to_monday),
        USMartinLutherKingJr,
        USPresidentsDay,
        GoodFriday,
        USMemorialDay,
        Holiday("Juneteenth", month=6, day=19, start_date="2022-01-01", observance=nearest_workday),
        Holiday("Independence Day", month=7, day=4, observance=nearest_workday),
        USLaborDay,
        USThanksgivingDay,
        Holiday("Christmas Day", month=12, day=25, observance=nearest_workday),
    ]


@lru_cache(maxsize=1)
def nyse_holidays() -> np.ndarray:
    """All NYSE full-day closures 1990-2040 as datetime64[D]."""
    regular = NYSEHolidayCalendar().holidays(start="1990-01-01", end="2040-12-31")
    special = pd.DatetimeIndex(NYSE_SPECIAL_CLOSURES)
    return np.unique(utc_days(regular.append(special)))


def utc_days(stamps: pd.DatetimeIndex) -> np.ndarray:
    """The UTC calendar date of each timestamp as datetime64[D]."""
    stamps = pd.DatetimeIndex(stamps)
    if stamps.tz is not None:
        stamps = stamps.tz_convert("UTC").tz_localize(None)
    return stamps.to_numpy().astype("datetime64[D]")


def trading_days_between(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """NYSE trading days strictly between each pair of dates (datetime64[D] arrays)."""
    return np.maximum(np.busday_count(first + 1, last, holidays=nyse_holidays()), 0)


def forex_open(slots: pd.DatetimeIndex, spacing: pd.Timedelta) -> np.ndarray:
    """Whether the forex/commodity market is open at each bar slot (UTC)."""
    if spacing >= pd.Timedelta(days=1):
        # Daily bars are labelled by their UTC date: Monday to Friday, bar holidays.
        weekday, month, day = slots.day_of_week, slots.month, slots.day
        open_ = np.asarray(weekday < 5)
    else:
        local = slots.tz_convert(FOREX_TZ)
        weekday, hour = local.day_of_week, local.hour
        weekend = ((weekday == 4) & (hour >= 17)) | (weekday == 5) | ((weekday == 6) & (hour < 17))
        open_ = ~np.asarray(weekend)
        # A forex trading day runs 17:00 to 17:00 New York time: it is dated by its end.
        trading_day = local + pd.Timedelta(hours=7)
        month, day = trading_day.month, trading_day.day
    for m, d in FOREX_HOLIDAYS:
        open_ &= ~np.asarray((month == m) & (day == d))
    return open_


def missing_bars(
    timestamps: pd.DatetimeIndex,
    spacing: pd.Timedelta,
    asset_class: str | None,
    bars_per_session: int | None = None,
) -> np.ndarray:
    """Missing bars before each bar (0 for the first): open-market slots with no bar.

    `timestamps` must be sorted, UTC and on the spacing grid. `asset_class` None means
    the market never closes. For intraday equities `bars_per_session` is how many bars
    a missing trading day counts as (default: the median number of bars per day).
    """
    timestamps = pd.DatetimeIndex(timestamps).as_unit("ns")
    out = np.zeros(len(timestamps), dtype=np.int64)
    if len(timestamps) < 2:
        return out
    steps = np.asarray(np.diff(timestamps.asi8) // spacing.value) - 1
    later = np.flatnonzero(steps > 0) + 1  # only bars after a hole need a closer look
    if len(later) == 0:
        return out
    if asset_class in (None, CRYPTO):
        out[later] = steps[later - 1]
    elif asset_class == FOREX_COMMODITY:
        for i in later:
            slots = pd.date_range(timestamps[i - 1] + spacing, timestamps[i] - spacing, freq=spacing)
            out[i] = int(forex_open(slots, spacing).sum())
    elif asset_class == EQUITY:
        prev_day = utc_days(timestamps[later - 1])
        next_day = utc_days(timestamps[later])
        days = trading_days_between(prev_day, next_day)
        if spacing >= pd.Timedelta(days=1):
            out[later] = days
        else:
            per_session = bars_per_session or int(pd.Series(utc_days(timestamps)).value_counts().median())
            same_day = prev_day == next_day
            out[later] = np.where(same_day, steps[later - 1], days * per_session)
    else:
        raise ValueError(f"unknown asset class {asset_class!r}; expected one of {ASSET_CLASSES}")
    return out


def infer_spacing(timestamps) -> pd.Timedelta | None:
    """The bar spacing: the most common step between consecutive bars (smallest on ties)."""
    values = pd.DatetimeIndex(timestamps).as_unit("ns").asi8
    if len(values) < 2:
        return None
    steps = np.diff(values)
    steps = steps[steps > 0]
    if len(steps) == 0:
        return None
    uniques, counts = np.unique(steps, return_counts=True)
    return pd.Timedelta(int(uniques[np.argmax(counts)]), unit="ns")


def expected_bars(start: pd.Timestamp, end: pd.Timestamp, spacing: pd.Timedelta, asset_class: str | None,
                  anchor: pd.Timestamp | None = None) -> int:
    """Bar slots in [start, end) at which the market is open.

    Slots lie on the grid anchor + k * spacing (default: start), so a series' own bars
    can serve as anchor when counting what is missing before or after them.
    """
    if end <= start:
        return 0
    anchor = start if anchor is None else anchor
    first = anchor + spacing * int(np.ceil((start - anchor) / spacing))
    slots = pd.date_range(first, end - pd.Timedelta(1, "ns"), freq=spacing)
    if asset_class in (None, CRYPTO):
        return len(slots)
    if asset_class == FOREX_COMMODITY:
        return int(forex_open(slots, spacing).sum())
    if asset_class == EQUITY:
        days = utc_days(slots)
        trading = np.is_busday(days, holidays=nyse_holidays())
        if spacing >= pd.Timedelta(days=1):
            return int(trading.sum())
        # Intraday: count whole trading days at a US session's length.
        per_session = max(1, int(np.ceil(US_SESSION / spacing)))
        return int(np.unique(days[trading]).size * per_session)
    raise ValueError(f"unknown asset class {asset_class!r}; expected one of {ASSET_CLASSES}")


def format_spacing(spacing: pd.Timedelta | None) -> str:
    """A short label for a bar spacing: 1min, 1h, 4h, 1D, 1W, or pandas' form otherwise."""
    if spacing is None:
        return "?"
    for unit, label in ((pd.Timedelta(weeks=1), "W"), (pd.Timedelta(days=1), "D"),
                        (pd.Timedelta(hours=1), "h"), (pd.Timedelta(minutes=1), "min"), (pd.Timedelta(seconds=1), "s")):
        if spacing >= unit and spacing % unit == pd.Timedelta(0):
            return f"{spacing // unit}{label}"
    return str(spacing)


DAY = pd.Timedelta(days=1)
MAX_FUTURE_SEARCH = pd.Timedelta(days=400)
"""How far ahead `future_bar_times` looks for open slots before it gives up."""


def market_time_zone(asset_class: str | None, spacing: pd.Timedelta) -> str:
    """Where a market's days and sessions are told: New York for intraday forex and
    equities, UTC otherwise (crypto, and daily bars, which are labelled by UTC date)."""
    return FOREX_TZ if asset_class in (FOREX_COMMODITY, EQUITY) and spacing < DAY else "UTC"


def market_open(slots: pd.DatetimeIndex, spacing: pd.Timedelta, asset_class: str | None) -> np.ndarray:
    """Whether the asset class's market trades at each bar slot (UTC); None: it never closes.

    Equities: NYSE trading days (their sessions come from the series itself).
    """
    if asset_class in (None, CRYPTO):
        return np.ones(len(slots), dtype=bool)
    if asset_class == FOREX_COMMODITY:
        return forex_open(slots, spacing)
    if asset_class == EQUITY:
        local = slots.tz_convert(market_time_zone(asset_class, spacing)).tz_localize(None)
        return np.is_busday(local.to_numpy().astype("datetime64[D]"), holidays=nyse_holidays())
    raise ValueError(f"unknown asset class {asset_class!r}; expected one of {ASSET_CLASSES}")


def future_bar_times(timestamps, count: int, asset_class: str | None = None) -> pd.DatetimeIndex:
    """The next `count` bar times (UTC) after a series, on the series' own calendar.

    Steps of the bar spacing, keeping a slot only when
    - the asset class's market is open then (`market_open`);
    - it is not a Saturday (or Sunday) when the series spans one without a bar on it:
      no weekend bars in, no weekend bars out;
    - for intraday bars, its time of day lies within the series' session (its earliest
      to latest bar time of day), so after a session's last bar the next session's
      open follows.
    Days and times of day are told in the market's time zone (`market_time_zone`), so a
    session keeps its local hours across daylight-saving changes. Bars a day or more
    apart that are not daily (weekly, monthly) simply step on.
    """
    stamps = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True)).as_unit("ns")
    spacing = infer_spacing(stamps)
    if spacing is None:
        raise DataError("future bar times need at least two bars with different timestamps")
    last = stamps[-1]
    if spacing > DAY:
        return pd.DatetimeIndex([last + spacing * (i + 1) for i in range(count)])
    allowed = _series_calendar(stamps, spacing, asset_class)
    found: list[pd.DatetimeIndex] = []
    start, chunk, have = last + spacing, max(64, 4 * count), 0
    while have < count:
        if start - last > max(MAX_FUTURE_SEARCH, spacing * count * 4):
            raise DataError(f"no open market slot within {MAX_FUTURE_SEARCH.days} days after {last}; the series' "
                            "calendar (its weekdays and session hours) leaves none")
        slots = pd.date_range(start, periods=chunk, freq=spacing)
        kept = slots[allowed(slots)]
        found.append(kept)
        have += len(kept)
        start, chunk = slots[-1] + spacing, chunk * 2
    return found[0].append(found[1:])[:count] if len(found) > 1 else found[0][:count]


def _series_calendar(stamps: pd.DatetimeIndex, spacing: pd.Timedelta, asset_class: str | None):
    """A function telling which future slots the series would have a bar at."""
    local = stamps.tz_convert(market_time_zone(asset_class, spacing)).tz_localize(None)
    days = local.to_numpy().astype("datetime64[D]")
    spanned = np.arange(days[0], days[-1] + 1)
    spanned_weekdays = set(((spanned.astype("int64") + 3) % 7).tolist())  # 1970-01-01 was a Thursday
    seen_weekdays = set(local.day_of_week)
    skipped = {d for d in (5, 6) if d in spanned_weekdays and d not in seen_weekdays}
    session = None
    if spacing < DAY and len(np.unique(days)) >= 2:
        time_of_day = (local - local.normalize()).asi8
        earliest, latest = int(time_of_day.min()), int(time_of_day.max())
        if latest - earliest + spacing.value < DAY.value:
            session = (earliest, latest)

    def allowed(slots: pd.DatetimeIndex) -> np.ndarray:
        keep = market_open(slots, spacing, asset_class)
        slot_local = slots.tz_convert(market_time_zone(asset_class, spacing)).tz_localize(None)
        if skipped:
            keep &= ~np.isin(slot_local.day_of_week, list(skipped))
        if session is not None:
            time_of_day = (slot_local - slot_local.normalize()).asi8
            keep &= (time_of_day >= session[0]) & (time_of_day <= session[1])
        return keep

    return allowed
