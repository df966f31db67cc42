"""Validation names file, row, column and problem; closed markets are not gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kronos_rolling.cli.main import main
from kronos_rolling.data.calendars import missing_bars
from kronos_rolling.data.store import BUNDLED_DATA_DIR
from kronos_rolling.data.validate import (
    KnownGap,
    validate_file,
    validate_frame,
    validate_path,
)


def bars(timestamps, close=100.0) -> pd.DataFrame:
    stamps = pd.DatetimeIndex(timestamps, tz="UTC")
    close = np.full(len(stamps), close, dtype=float) if np.isscalar(close) else np.asarray(close, float)
    return pd.DataFrame({"timestamp": stamps, "open": close, "high": close + 1, "low": close - 1,
                         "close": close, "volume": 10.0})


def hourly(n=48, start="2021-03-01"):
    return bars(pd.date_range(start, periods=n, freq="h"))


def problems(issues, column=None):
    return [(i.row, i.problem) for i in issues if column is None or i.column == column]


def test_clean_frame_has_no_issues():
    assert validate_frame(hourly(), "x.csv", asset_class="crypto") == []


def test_missing_columns_are_named():
    issues = validate_frame(hourly().drop(columns=["high", "close"]), "x.csv")
    assert {(i.column, i.file) for i in issues} == {("high", "x.csv"), ("close", "x.csv")}
    assert all("missing column" in i.problem for i in issues)


def test_bad_values_name_row_and_column():
    frame = hourly(10)
    frame.loc[2, "open"] = np.nan
    frame.loc[3, "close"] = np.inf
    frame.loc[4, "low"] = -1.0
    frame.loc[5, "volume"] = -5.0
    frame.loc[6, "high"] = frame.loc[6, "low"] - 0.5  # high below low (and below open/close)
    frame.loc[7, "low"] = frame.loc[7, "close"] + 0.5  # low above close, still below high
    frame.loc[7, "high"] = frame.loc[7, "low"] + 2
    issues = validate_frame(frame, "x.csv")
    found = {(i.row, i.column, i.problem.split(":")[0].split(" (")[0]) for i in issues}
    assert (3, "open", "missing value") in found
    assert (4, "close", "infinite value") in found
    assert (5, "low", "price is not positive") in found
    assert (6, "volume", "negative value") in found
    assert (7, "high", "high is below low") in found
    assert (8, "low", "low is above close") in found and (8, "low", "low is above open") in found
    assert "x.csv, row 5, column 'low': price is not positive: -1" in [str(i) for i in issues]
    assert not any(i.row == 4 and i.column == "high" for i in issues)  # inf is reported once, as inf


def test_duplicate_and_unordered_timestamps():
    frame = hourly(6)
    frame.loc[3, "timestamp"] = frame.loc[2, "timestamp"]
    issues = validate_frame(frame, "x.csv")
    # Named at the row a clean-up drops: the earlier one (rows 3 and 4 hold the same hour).
    assert [r for r, p in problems(issues) if p.startswith("duplicate timestamp")] == [3]
    frame = hourly(6)
    frame.loc[[2, 3], "timestamp"] = frame.loc[[3, 2], "timestamp"].to_numpy()
    issues = validate_frame(frame, "x.csv")
    assert [r for r, p in problems(issues) if "ascending" in p] == [4]


def test_mixed_spacing():
    stamps = list(pd.date_range("2021-03-01", periods=10, freq="h"))
    stamps[5] = stamps[5] + pd.Timedelta(minutes=30)
    issues = validate_frame(bars(stamps), "x.csv")
    assert [r for r, p in problems(issues) if p.startswith("mixed bar spacing")] == [6, 7]


def test_crypto_gap_beyond_limit_is_reported_and_limit_is_configurable():
    frame = hourly(48).drop(index=range(10, 17)).reset_index(drop=True)  # 7 hours missing
    issues = validate_frame(frame, "x.csv", asset_class="crypto")
    assert len(issues) == 1 and issues[0].row == 11 and "gap: 7 missing bars" in issues[0].problem
    assert validate_frame(frame, "x.csv", asset_class="crypto", max_gap=7) == []
    assert validate_frame(frame, "x.csv", asset_class="crypto", max_gap=None) == []
    gap = KnownGap("X", frame["timestamp"][9], frame["timestamp"][10], "exchange outage")
    assert validate_frame(frame, "x.csv", asset_class="crypto", known_gaps=[gap]) == []


def test_forex_weekend_is_not_a_gap_but_a_weekday_hole_is():
    # Hourly EUR/USD across a weekend: Friday 21:00 UTC is the last bar, Sunday 22:00 the next (winter).
    stamps = pd.date_range("2021-01-04", "2021-01-15", freq="h")
    local = stamps.tz_localize("UTC").tz_convert("America/New_York")
    closed = ((local.day_of_week == 4) & (local.hour >= 17)) | (local.day_of_week == 5) | ((local.day_of_week == 6) & (local.hour < 17))
    frame = bars(stamps[~closed])
    assert validate_frame(frame, "EURUSD.csv", asset_class="forex_commodity") == []
    # Seen as crypto (always open), the weekend is a gap.
    assert any("gap" in i.problem for i in validate_frame(frame, "EURUSD.csv", asset_class="crypto"))
    holed = frame.drop(index=range(30, 40)).reset_index(drop=True)
    issues = validate_frame(holed, "EURUSD.csv", asset_class="forex_commodity")
    assert len(issues) == 1 and "10 missing bars" in issues[0].problem


def test_equity_holidays_and_closures_are_not_gaps():
    # NYSE days around Good Friday 2018, Thanksgiving 2001 and the 9/11 closure.
    days = pd.bdate_range("2001-09-04", "2001-12-31").append(pd.bdate_range("2018-03-26", "2018-04-06"))
    closed = pd.DatetimeIndex(["2001-09-11", "2001-09-12", "2001-09-13", "2001-09-14", "2001-11-22",
                               "2001-12-25", "2018-03-30"])
    frame = bars(days.difference(closed))
    frame = frame[frame["timestamp"].dt.year == 2001].reset_index(drop=True)  # one contiguous stretch
    assert validate_frame(frame, "AAPL.csv", asset_class="equity", max_gap=0) == []
    missing = missing_bars(pd.DatetimeIndex(bars(days.difference(closed))["timestamp"]), pd.Timedelta("1D"), "equity")
    assert missing.max() > 0  # the jump from 2001 to 2018 is a (huge) gap
    holed = frame[frame["timestamp"] != pd.Timestamp("2001-10-10", tz="UTC")].reset_index(drop=True)
    issues = validate_frame(holed, "AAPL.csv", asset_class="equity", max_gap=0)
    assert len(issues) == 1 and "1 missing bars" in issues[0].problem


def test_validate_file_reads_csv_and_reports_unreadable_cells(tmp_path):
    path = tmp_path / "BTCUSDT.csv"
    path.write_text("Date,Open,High,Low,Close\n2021-01-01,1,2,0.5,1.5\nnot a date,1,2,0.5,1.5\n"
                    "2021-01-03,abc,2,0.5,1.5\n2021-01-04,1,2,0.5,1.5\n")
    issues = validate_file(path)
    texts = [str(i) for i in issues]
    assert f"{path}, row 2, column 'timestamp': missing or unreadable timestamp; pass --time-format if the layout is unusual" in texts
    assert f"{path}, row 3, column 'open': not a number: 'abc'" in texts
    assert sum(1 for i in issues if i.row == 3 and i.column == "open") == 1  # not reported twice


def test_folder_validation_covers_side_files(tmp_path):
    hourly(30).to_parquet(tmp_path / "BTCUSDT.parquet")
    assert validate_path(tmp_path) == []
    (tmp_path / "events.csv").write_text("timestamp,event_type\nnot-a-time,fomc\n")
    (tmp_path / "asset_classes.csv").write_text("symbol,asset_class\nX,nonsense\n")
    hourly(30).to_csv(tmp_path / "btcusdt.csv", index=False)
    texts = "\n".join(str(i) for i in validate_path(tmp_path))
    assert "events.csv" in texts and "not-a-time" in texts
    assert "asset_classes.csv" in texts and "nonsense" in texts
    assert "more than one bar file" in texts


def test_bundled_sample_data_is_clean_and_strict_limit_finds_its_known_gap():
    assert validate_path(BUNDLED_DATA_DIR) == []
    # Without known_gaps.csv the Bitstamp hole of March 2019 is reported.
    issues = validate_file(BUNDLED_DATA_DIR / "ETHUSD.parquet", known_gaps=[])
    assert len(issues) == 1 and "12 missing bars" in issues[0].problem


def test_cli_validate_exit_codes(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    hourly(30).to_parquet(good / "ETHUSD.parquet")
    runner = CliRunner()
    result = runner.invoke(main, ["data", "validate", str(good)])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "SOLUSDT.csv"
    frame = hourly(30)
    frame.loc[4, "high"] = 1.0
    frame.to_csv(bad, index=False)
    result = runner.invoke(main, ["data", "validate", str(good), str(bad)])
    assert result.exit_code != 0
    assert f"{bad}, row 5, column 'high': high is below low" in result.stdout
    assert "problem(s)" in result.stderr
    gappy = tmp_path / "gap" / "ADAUSDT.csv"
    gappy.parent.mkdir()
    hourly(48).drop(index=range(10, 14)).to_csv(gappy, index=False)
    assert runner.invoke(main, ["data", "validate", str(gappy)]).exit_code == 0
    assert runner.invoke(main, ["data", "validate", "--max-gap", "3", str(gappy)]).exit_code != 0
    assert runner.invoke(main, ["data", "validate", str(tmp_path / "nope.csv")]).exit_code != 0


@pytest.mark.parametrize("spacing", ["15min", "4h"])
def test_other_spacings_are_inferred(spacing):
    frame = bars(pd.date_range("2021-03-01", periods=40, freq=spacing))
    assert validate_frame(frame, "x.csv", asset_class="crypto") == []


def test_intraday_equity_overnight_is_not_a_gap_but_a_missing_day_is_a_session():
    days = pd.bdate_range("2021-01-04", "2021-01-29").difference(pd.DatetimeIndex(["2021-01-18"]))  # MLK day
    stamps = [day + pd.Timedelta(hours=14, minutes=30) + k * pd.Timedelta("30min") for day in days for k in range(13)]
    frame = bars(stamps)
    assert validate_frame(frame, "AAPL.csv", asset_class="equity", max_gap=0) == []
    without_day = frame[frame["timestamp"].dt.strftime("%Y-%m-%d") != "2021-01-12"].reset_index(drop=True)
    (issue,) = validate_frame(without_day, "AAPL.csv", asset_class="equity")
    assert "13 missing bars" in issue.problem  # one whole session
    holed = frame.drop(index=[20, 21]).reset_index(drop=True)
    (issue,) = validate_frame(holed, "AAPL.csv", asset_class="equity", max_gap=1)
    assert "2 missing bars" in issue.problem and issue.row == 21
