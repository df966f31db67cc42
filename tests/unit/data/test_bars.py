"""The one bar validator: parsing, checks with their tolerance, one wording, and the strict path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronos_rolling.data.bars import BarsError, check_bars, clean_bars, drop_invalid
from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore


def real_bars(n: int = 24) -> pd.DataFrame:
    """Hours of real Coinbase BTC/USD bars (tz-aware UTC)."""
    return DataStore(BUNDLED_DATA_DIR).load("BTCUSD").iloc[1000:1000 + n].reset_index(drop=True)


def found(frame: pd.DataFrame) -> list[str]:
    return [str(i) for i in check_bars(frame, "bars", first_row=0).issues]


def with_value(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[row, column] = value
    return frame


def test_real_bars_pass_and_come_back_unchanged():
    bars = real_bars()
    assert found(bars) == []
    pd.testing.assert_frame_equal(clean_bars(bars), bars)


@pytest.mark.parametrize("layout", ["upper-case", "unix-seconds", "unix-milliseconds", "offsets", "naive"])
def test_every_layout_parses_to_the_same_utc_bars(layout):
    bars = real_bars()
    seconds = (bars["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    frame = {
        "upper-case": bars.rename(columns=str.upper),
        "unix-seconds": bars.assign(timestamp=seconds),
        "unix-milliseconds": bars.assign(timestamp=seconds * 1000),
        "offsets": bars.assign(timestamp=[t.tz_convert("Asia/Seoul" if i % 3 else "America/New_York").isoformat()
                                          for i, t in enumerate(bars["timestamp"])]),
        "naive": bars.assign(timestamp=bars["timestamp"].dt.tz_localize(None)),
    }[layout]
    pd.testing.assert_frame_equal(clean_bars(frame), bars)


@pytest.mark.parametrize("column,value,expected", [
    ("close", np.nan, "bars, row 4, column 'close': missing value (NaN)"),
    ("volume", np.inf, "bars, row 4, column 'volume': infinite value"),
    ("low", -1.0, "bars, row 4, column 'low': price is not positive: -1"),
    ("open", 0.0, "bars, row 4, column 'open': price is not positive: 0"),
    ("volume", -0.5, "bars, row 4, column 'volume': negative value: -0.5"),
    ("amount", -2.0, "bars, row 4, column 'amount': negative value: -2"),
    ("high", 1.0, "bars, row 4, column 'high': high is below low"),
    ("close", 1e300, "bars, row 4, column 'close': too large for float32 (the model's precision): 1e+300"),
])
def test_each_check_names_the_row_and_the_column(column, value, expected):
    assert any(text.startswith(expected) for text in found(with_value(real_bars(), 4, column, value)))


def test_values_that_overflow_float32_once_normalised_are_refused():
    bars = real_bars()
    bars.loc[7, ["open", "high", "close"]] = 1e25  # each fits float32; their squared spread does not
    assert "bars, row 7, column 'high': too large for float32 once normalised" in " ".join(found(bars))


def test_float_noise_within_1e9_is_clamped_and_more_is_an_error():
    bars = real_bars()
    close = bars.loc[3, "close"]
    noisy = with_value(bars, 3, "high", close * (1 - 5e-10))
    checked = check_bars(noisy, "bars", first_row=0)
    assert checked.issues == [] and checked.frame.loc[3, "high"] == close
    assert "1 bar(s) with high or low within 1e-09" in checked.notes[0]
    low = with_value(bars, 3, "low", bars.loc[3, ["open", "close"]].min() * (1 + 5e-10))
    assert found(low) == [] and clean_bars(low).loc[3, "low"] == bars.loc[3, ["open", "close"]].min()
    wrong = with_value(bars, 3, "high", close * (1 - 2e-9))
    assert any(t.startswith("bars, row 3, column 'high': high is below close") for t in found(wrong))


def test_duplicates_order_and_too_few_bars():
    bars = real_bars(6)
    copy = pd.concat([bars, bars.iloc[[2]]]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    assert found(copy)[0].startswith("bars, row 2, column 'timestamp': duplicate timestamp (identical bar)")
    swapped = bars.iloc[[0, 2, 1, 3, 4, 5]].reset_index(drop=True)
    assert any("row 2, column 'timestamp': timestamp earlier than the row before" in t for t in found(swapped))
    assert found(bars.iloc[:1]) == ["bars: 1 usable bar(s); at least 2 are needed (a series needs a bar spacing)"]


def test_drop_invalid_keeps_the_rest_and_says_why_for_each_row():
    bars = real_bars(10)
    zero = bars.iloc[[4]].assign(**{c: 0.0 for c in ("open", "high", "low", "close", "volume", "amount")})
    table = pd.concat([bars.iloc[:4], zero, bars.iloc[4:]]).reset_index(drop=True)
    table.loc[4, "timestamp"] = bars.loc[3, "timestamp"] + pd.Timedelta(minutes=30)  # a stray zero bar
    table.loc[8, "low"] = table.loc[8, "high"] * 1.1
    kept, dropped = drop_invalid(check_bars(table, "t", first_row=1), table)
    assert kept.issues == [] and len(kept.frame) == 9
    assert list(zip(dropped["row"], dropped["reason"])) == [(5, "all-zero bar"), (9, "inconsistent OHLC")]


def test_the_strict_path_raises_with_every_issue_attached():
    bars = with_value(with_value(real_bars(), 2, "close", -1.0), 9, "volume", -1.0)
    with pytest.raises(BarsError) as caught:
        clean_bars(bars, "series 3")
    assert [(i.row, i.column) for i in caught.value.issues] == [(2, "close"), (9, "volume")]
    assert "series 3: 2 problem(s)" in str(caught.value) and "positions in the frame (0-based" in str(caught.value)
