"""Events: a stable vocabulary, and each event on the bar that contains it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from kronos_rolling.data.events import EventCalendar, EventVocabulary
from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.errors import DataError


def write(path, text):
    path.write_text(text)
    return path


def test_vocabulary_is_stable_and_round_trips_as_plain_dict():
    vocab = EventVocabulary.from_types(["fomc", "split", "fomc", "halving"])
    assert vocab.to_dict() == {"fomc": 1, "halving": 2, "split": 3}
    assert vocab.size == 4 and len(vocab) == 3
    assert EventVocabulary.from_types(["split", "halving", "fomc"]) == vocab  # order of discovery is irrelevant
    saved = json.loads(json.dumps(vocab.to_dict()))
    assert EventVocabulary.from_dict(saved) == vocab
    grown = vocab.extended(["cpi", "fomc", "zeta"])
    assert grown.to_dict() == {"fomc": 1, "halving": 2, "split": 3, "cpi": 4, "zeta": 5}
    assert EventVocabulary.from_types([]).size == 1
    with pytest.raises(DataError, match="0 is 'no event'"):
        EventVocabulary({"a": 0})
    with pytest.raises(DataError, match="distinct"):
        EventVocabulary({"a": 1, "b": 1})


def test_unknown_type_maps_to_zero_with_a_warning():
    vocab = EventVocabulary.from_types(["fomc"])
    with pytest.warns(UserWarning, match="'cpi' is not in the model's event vocabulary"):
        assert vocab.id_of("cpi") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vocab.id_of("cpi") == 0  # warned once already
        assert vocab.id_of("fomc") == 1


def test_event_applies_to_the_bar_containing_it(tmp_path):
    calendar = EventCalendar.from_csv(write(tmp_path / "events.csv", (
        "timestamp,event_type,symbol,asset_class\n"
        "2021-01-05T19:00:00Z,fomc,,\n"           # inside the 19:00 hourly bar / the Jan 5 daily bar
        "2021-01-05T20:59:59Z,cpi,,\n"            # last instant of the 20:00 bar
        "2021-01-05T22:00:00+01:00,late,,\n"      # 21:00 UTC: start of the 21:00 bar
        "2021-01-09T12:00:00Z,weekend,,\n"        # no hourly bar contains it in the frame below
    )))
    vocab = EventVocabulary.from_types(calendar.event_types())
    hours = pd.date_range("2021-01-05 18:00", periods=5, freq="h", tz="UTC")
    ids = calendar.event_ids("EURUSD", "forex_commodity", hours, pd.Timedelta("1h"), vocab)
    assert ids.tolist() == [0, vocab.id_of("fomc"), vocab.id_of("cpi"), vocab.id_of("late"), 0]
    days = pd.date_range("2021-01-04", periods=3, freq="D", tz="UTC")
    ids = calendar.event_ids("AAPL", "equity", days, pd.Timedelta("1D"), vocab)
    # Three global events share the Jan 5 daily bar: the earliest (fomc) wins.
    assert ids.tolist() == [0, vocab.id_of("fomc"), 0]


def test_scope_precedence_and_filtering(tmp_path):
    calendar = EventCalendar.from_csv(write(tmp_path / "events.csv", (
        "# comment line\n"
        "timestamp,event_type,symbol,asset_class\n"
        "2021-01-05T10:00:00Z,global_early,,\n"
        "2021-01-05T15:00:00Z,class_event,,equity\n"
        "2021-01-05T18:00:00Z,split,aapl,\n"
        "2021-01-06T10:00:00Z,halving,,crypto\n"
    )))
    vocab = EventVocabulary.from_types(calendar.event_types())
    days = pd.date_range("2021-01-05", periods=2, freq="D", tz="UTC")
    assert calendar.event_ids("AAPL", "equity", days, pd.Timedelta("1D"), vocab).tolist() == [vocab.id_of("split"), 0]
    assert calendar.event_ids("MSFT", "equity", days, pd.Timedelta("1D"), vocab).tolist() == [vocab.id_of("class_event"), 0]
    assert calendar.event_ids("BTCUSD", "crypto", days, pd.Timedelta("1D"), vocab).tolist() == [
        vocab.id_of("global_early"), vocab.id_of("halving")]


def test_three_column_scope_form(tmp_path):
    calendar = EventCalendar.from_csv(write(tmp_path / "e.csv", "timestamp,event_type,scope\n"
                                            "2021-01-05,a,crypto\n2021-01-05,b,AAPL\n2021-01-05,c,\n"))
    rows = calendar.events.set_index("event_type")
    assert rows.loc["a", "asset_class"] == "crypto" and rows.loc["b", "symbol"] == "AAPL"
    assert rows.loc["c", "rank"] == 0


@pytest.mark.parametrize("text,message", [
    ("timestamp,event_type\nsoon,fomc\n", r"line 2: cannot read timestamp 'soon'"),
    ("timestamp,event_type\n2021-01-01,\n", r"line 2: event_type '' must be"),
    ("timestamp,event_type,symbol,asset_class\n2021-01-01,x,,bonds\n", r"line 2: asset_class 'bonds'"),
    ("timestamp,event_type,symbol,asset_class\n2021-01-01,x,AAPL,equity\n", r"line 2: give a symbol or an asset class"),
    ("when,what\n2021-01-01,x\n", r"line 1: header must be"),
    ("# only a comment\n\n# x\ntimestamp,event_type\n2021-01-01,ok\nbad,x\n", r"line 6: cannot read"),
])
def test_bad_event_files_name_the_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        EventCalendar.from_csv(write(tmp_path / "events.csv", text))


def test_bundled_events_are_real_fomc_dates():
    calendar = DataStore(BUNDLED_DATA_DIR).events()
    fomc = calendar.events[calendar.events["event_type"] == "fomc_decision"]["timestamp"]
    per_year = fomc.dt.year.value_counts().sort_index()
    assert per_year.loc[2014:2019].tolist() == [8] * 6 and per_year.loc[2020] == 9  # + two emergency cuts, - March
    scheduled = fomc[~fomc.isin(pd.DatetimeIndex(["2020-03-03 15:00", "2020-03-15 21:00"], tz="UTC"))]
    assert set(scheduled.dt.day_name()) <= {"Wednesday", "Thursday"}
    # 14:00 New York: 18:00 UTC in summer time, 19:00 in winter.
    assert set(scheduled.dt.tz_convert("America/New_York").dt.strftime("%H:%M")) == {"14:00"}
    for day in ["2015-12-16", "2016-12-14", "2017-03-15", "2018-12-19", "2019-07-31", "2020-03-15"]:
        assert (fomc.dt.strftime("%Y-%m-%d") == day).sum() == 1, day
    assert sorted(calendar.event_types()) == ["btc_halving", "fomc_decision", "stock_split"]


def test_bundled_events_land_on_bundled_bars():
    store = DataStore(BUNDLED_DATA_DIR)
    calendar = store.events()
    vocab = EventVocabulary.from_types(calendar.event_types())
    fx = store.load("EURUSD")
    ids = calendar.event_ids("EURUSD", "forex_commodity", fx["timestamp"], store.bar_spacing("EURUSD"), vocab)
    hits = fx["timestamp"][ids == vocab.id_of("fomc_decision")]
    assert len(hits) == 8 and pd.Timestamp("2017-12-13 19:00", tz="UTC") in set(hits)
    spx = store.load("^GSPC")
    ids = calendar.event_ids("^GSPC", "equity", spx["timestamp"], pd.Timedelta("1D"), vocab)
    days = set(spx["timestamp"][ids > 0].dt.strftime("%Y-%m-%d"))
    assert "2015-12-16" in days and "2018-12-19" in days and len(days) == 40  # 5 years x 8, 2014-2018
    aapl = store.load("AAPL")
    ids = calendar.event_ids("AAPL", "equity", aapl["timestamp"], pd.Timedelta("1D"), vocab)
    assert list(aapl["timestamp"][ids == vocab.id_of("stock_split")].dt.strftime("%Y-%m-%d")) == ["2000-06-21", "2005-02-28"]
    btc = store.load("BTCUSD-1D")
    ids = calendar.event_ids("BTCUSD-1D", "crypto", btc["timestamp"], pd.Timedelta("1D"), vocab)
    assert "2016-07-09" in set(btc["timestamp"][ids == vocab.id_of("btc_halving")].dt.strftime("%Y-%m-%d"))
    assert np.count_nonzero(ids == vocab.id_of("stock_split")) == 0


def test_fomc_times_match_the_eurusd_reaction():
    """Independent check of event times and of the forex data's UTC clock: on FOMC days the
    statement hour is the day's widest EUR/USD hourly range (7 of the 8 meetings of 2017)."""
    store = DataStore(BUNDLED_DATA_DIR)
    fx = store.load("EURUSD").set_index("timestamp")
    events = store.events().events
    fomc = events[(events["event_type"] == "fomc_decision") & (events["timestamp"].dt.year == 2017)]["timestamp"]
    widest = []
    for moment in fomc:
        day = fx.loc[moment.floor("D"):moment.floor("D") + pd.Timedelta(hours=23)]
        widest.append((day["high"] - day["low"]).idxmax() == moment.floor("h"))
    assert len(widest) == 8 and sum(widest) >= 7
