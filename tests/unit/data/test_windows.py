"""Training windows come from `as_of` alone; coverage shortfalls are reported, not fatal."""

from __future__ import annotations

from dataclasses import replace

import datetime as dt

import pandas as pd
import pytest

from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.data.windows import (
    SeriesCoverage,
    calendar_months,
    TrainingWindow,
    coverage_shortfall,
    shortfall_summary,
    select_training_window,
)
from kronos_rolling.errors import ConfigError

UTC = "UTC"


def ts(text):
    return pd.Timestamp(text, tz=UTC)


def test_default_window_is_two_years_then_one_month():
    w = select_training_window("2019-06-01")
    assert w == TrainingWindow(
        as_of=dt.date(2019, 6, 1), train_start=ts("2017-05-01"), train_end=ts("2019-05-01"),
        val_start=ts("2019-05-01"), val_end=ts("2019-06-01"), inner_val_start=ts("2019-02-17"),
    )
    assert (w.train_end - w.inner_val_start).days == 73  # 10% of 730 days
    assert w.fit_span == (w.train_start, w.inner_val_start)
    assert w.inner_val_span == (w.inner_val_start, w.train_end)
    assert w.val_span == (w.val_start, w.val_end)
    # Spans are half-open and contiguous: nothing is in two of them, nothing after as_of.
    assert w.train_start < w.inner_val_start < w.train_end == w.val_start < w.val_end == ts(w.as_of)
    assert w.to_dict()["val_end"] == "2019-06-01T00:00:00+00:00" and w.to_dict()["as_of"] == "2019-06-01"


@pytest.mark.parametrize("as_of", ["2019-06-01", dt.date(2019, 6, 1), dt.datetime(2019, 6, 1),
                                   pd.Timestamp("2019-06-01 02:00", tz="Europe/Berlin")])
def test_as_of_in_any_form_means_the_same_utc_instant(as_of):
    window = select_training_window(as_of)
    assert window.val_end == ts("2019-06-01") and window.as_of == dt.date(2019, 6, 1)


def test_window_depends_only_on_as_of():
    first = select_training_window("2016-03-01", years=1)
    assert select_training_window("2016-03-01", years=1) == first
    assert first.train_start == ts("2015-02-01") and first.val_start == ts("2016-02-01")
    later = select_training_window("2016-04-01", years=1)
    assert later.val_start == first.val_end  # monthly windows tile the calendar


def test_shorter_and_custom_windows():
    w = select_training_window("2018-01-01", years=0.5, validation=pd.DateOffset(weeks=2),
                               inner_validation_fraction=0.2)
    assert w.val_start == ts("2017-12-18") and w.train_start == ts("2017-06-18")
    assert w.inner_val_start == (w.train_end - (w.train_end - w.train_start) * 0.2).floor("D")
    w = select_training_window("2018-01-01", validation="10D", inner_validation_fraction=0)
    assert w.val_start == ts("2017-12-22") and w.inner_val_start == w.train_end


@pytest.mark.parametrize("kwargs,message", [
    ({"years": 0}, "years must be positive"),
    ({"inner_validation_fraction": 1.0}, "inner_validation_fraction"),
    ({"validation": "soon"}, "cannot read validation span"),
    ({"validation": pd.Timedelta(0)}, "validation span must be positive"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        select_training_window("2019-01-01", **kwargs)
    with pytest.raises(ConfigError, match="not a date|cannot read"):
        select_training_window("someday")


def test_forex_sample_covers_one_year_and_the_shortfall_is_reported():
    store = DataStore(BUNDLED_DATA_DIR)
    w = select_training_window("2018-01-01")
    found = coverage_shortfall(store.coverage(["EURUSD", "^GSPC", "BTCUSD"]), w)
    by_symbol = {s.symbol: s for s in found}
    assert set(by_symbol) == {"EURUSD", "BTCUSD"}  # ^GSPC covers 2015-12..2018-01 completely
    fx = by_symbol["EURUSD"]
    assert fx.missing_after == 0  # the last Friday of 2017 ends the data; the market reopens in 2018
    assert 0.45 < fx.covered_fraction < 0.55
    assert "EURUSD: covers" in str(fx) and "missing before" in str(fx)
    # One short log line, with the count and each series' coverage; the details go to the run.
    summary = shortfall_summary(found, 3)
    assert summary.startswith("2 of 3 series cover part of the window (EURUSD 4") and "\n" not in summary
    assert "BTCUSD" in summary and "window_shortfall" in summary and len(summary) <= 130, summary
    many = [replace(fx, symbol=f"SYMBOL{i:03d}") for i in range(40)]
    assert len(shortfall_summary(many, 40)) <= 160 and "and 37 more" in shortfall_summary(many, 40)
    # A window inside 2017 is fully covered.
    assert coverage_shortfall(store.coverage(["EURUSD"]), select_training_window("2017-12-01", years=0.75)) == []


def test_weekend_and_holiday_ends_are_not_shortfalls():
    friday = SeriesCoverage(ts("2018-01-02"), ts("2018-12-29"), pd.Timedelta("1D"), "equity")  # last bar Fri 28 Dec
    assert coverage_shortfall({"X": friday}, (ts("2018-01-01"), ts("2018-12-31"))) == []  # weekend
    assert coverage_shortfall({"X": friday}, (ts("2018-01-01"), ts("2019-01-01")))[0].missing_after == 1  # Mon 31st
    equity = SeriesCoverage(ts("2018-01-02"), ts("2019-01-01"), pd.Timedelta("1D"), "equity")  # last bar Mon 31 Dec
    assert coverage_shortfall({"X": equity}, (ts("2018-01-01"), ts("2019-01-02"))) == []  # Jan 1: holiday
    short = coverage_shortfall({"X": equity}, (ts("2018-01-01"), ts("2019-01-04")))
    assert short[0].missing_after == 2 and short[0].missing_before == 0
    crypto = SeriesCoverage(ts("2018-01-01 05:00"), ts("2018-01-02"), pd.Timedelta("1h"), "crypto")
    (gap,) = coverage_shortfall({"C": crypto}, (ts("2018-01-01"), ts("2018-01-02")))
    assert (gap.missing_before, gap.missing_after, gap.expected) == (5, 0, 24)


def test_calendar_months_counts_month_boundaries_from_any_date_type():
    assert calendar_months(dt.date(2018, 1, 1), dt.date(2018, 4, 1)) == 3
    assert calendar_months(pd.Timestamp("2017-11-01", tz="UTC"), dt.date(2018, 2, 1)) == 3
    assert calendar_months("2018-01-31", "2018-02-01") == 1 and calendar_months("2018-03-01", "2018-03-31") == 0
