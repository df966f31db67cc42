"""Future timestamps follow the series' own calendar: one test per asset class on the bundled data,
and the forecast's rows and calendar features use them."""

from __future__ import annotations

import pandas as pd

from kronos_rolling.data.calendars import future_bar_times
from kronos_rolling.data.features import time_features
from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.model.forecast import prepare_series


def history(symbol: str, until: str, bars: int = 128) -> pd.DataFrame:
    frame = DataStore(BUNDLED_DATA_DIR).load(symbol)
    return frame[frame["timestamp"] <= pd.Timestamp(until, tz="UTC")].tail(bars).reset_index(drop=True)


def utc(*stamps: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(s, tz="UTC") for s in stamps]


def test_crypto_keeps_every_day_and_hour():
    hourly = history("BTCUSD", "2018-01-12 22:00")  # a Friday night
    assert list(future_bar_times(hourly["timestamp"], 3, "crypto")) == utc(
        "2018-01-12 23:00", "2018-01-13 00:00", "2018-01-13 01:00")
    daily = history("BTCUSD-1D", "2018-01-12")
    assert list(future_bar_times(daily["timestamp"], 3, "crypto")) == utc("2018-01-13", "2018-01-14", "2018-01-15")


def test_forex_skips_the_weekend_close():
    # EUR/USD's last bar before the weekend starts Friday 16:00 New York (21:00 UTC in winter);
    # the market opens again Sunday 17:00 New York, which after that night's clock change is 21:00 UTC.
    bars = history("EURUSD", "2017-03-10 21:00")
    future = future_bar_times(bars["timestamp"], 3, "forex_commodity")
    assert list(future) == utc("2017-03-12 21:00", "2017-03-12 22:00", "2017-03-12 23:00")
    following = DataStore(BUNDLED_DATA_DIR).load("EURUSD")["timestamp"]
    assert set(future) <= set(following)  # the bars the source really has


def test_equity_skips_weekends_and_nyse_holidays():
    bars = history("^GSPC", "2018-01-12")  # Friday; Monday 15 January 2018 was Martin Luther King Jr. Day
    future = future_bar_times(bars["timestamp"], 4, "equity")
    assert list(future) == utc("2018-01-16", "2018-01-17", "2018-01-18", "2018-01-19")
    following = DataStore(BUNDLED_DATA_DIR).load("^GSPC")["timestamp"]
    assert list(following[following > bars["timestamp"].iloc[-1]].iloc[:4]) == list(future)
    # Without its class the series' own calendar still has no weekends (holidays need the class).
    assert list(future_bar_times(bars["timestamp"], 2, None)) == utc("2018-01-15", "2018-01-16")


def test_intraday_sessions_resume_at_the_next_session_open():
    days = pd.bdate_range("2021-01-04", "2021-01-15")
    opens = [day + pd.Timedelta(hours=14, minutes=30) for day in days]  # 09:30 New York in winter
    stamps = pd.DatetimeIndex([o + k * pd.Timedelta("30min") for o in opens for k in range(13)], tz="UTC")
    # Friday's session ends 20:30 UTC; Monday 18 January is a holiday: Tuesday's open is next.
    assert list(future_bar_times(stamps, 3, "equity")) == utc("2021-01-19 14:30", "2021-01-19 15:00",
                                                              "2021-01-19 15:30")


def test_the_forecast_rows_and_calendar_features_use_them():
    bars = history("^GSPC", "2018-01-12")
    prepared = prepare_series(bars, 2, asset_class="equity")
    assert list(prepared.future) == utc("2018-01-16", "2018-01-17")
    assert (prepared.y_stamp == time_features(pd.Series(utc("2018-01-16", "2018-01-17")))).all()
    assert set(prepared.y_stamp[:, 2]) == {1, 2}  # Tuesday, Wednesday: no weekend features
