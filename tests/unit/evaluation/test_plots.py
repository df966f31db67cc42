"""The run's forecast plot is readable at the horizon the run used: the axis spans a few
consecutive forecasts, not the whole month."""

from __future__ import annotations

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
import pytest

from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.plots import BLOCKS_SHOWN, forecast_vs_actual
from kronos_rolling.evaluation.samples import build_samples

JUNE_2018 = (pd.Timestamp("2018-06-01", tz="UTC"), pd.Timestamp("2018-07-01", tz="UTC"))


@pytest.mark.parametrize("horizon", [4, 16])
def test_the_forecast_plot_spans_a_few_horizons_of_consecutive_forecasts(horizon):
    samples = build_samples(DataStore(), ["BTCUSD"], JUNE_2018, EvalSettings(lookback=32, horizon=horizon), None)
    closes = {"candidate": samples.actual_close * 1.01, "pooled": samples.actual_close * 0.99}
    fig = forecast_vs_actual(samples, closes)
    [ax] = fig.axes
    lo, hi = (mdates.num2date(x) for x in ax.get_xlim())
    hours = (hi - lo).total_seconds() / 3600
    shown = BLOCKS_SHOWN * horizon
    assert shown <= hours <= 1.3 * (shown + 1), (hours, shown)  # a few horizons of hourly bars, not June
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == horizon + 1]
    assert len(lines) == BLOCKS_SHOWN * 3, "actual + two models per forecast, each from the last close seen"
    assert all(line.get_marker() == "o" for line in lines), "every forecast bar is marked"
    starts = sorted(line.get_xdata()[0] for line in lines if line.get_label() != "actual")
    assert len(set(starts)) == BLOCKS_SHOWN
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"actual", "candidate", "pooled"}
    assert np.isfinite([line.get_ydata() for line in lines]).all()
