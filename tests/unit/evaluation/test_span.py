"""One span, several models, the same origins: on bundled data with a small random model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import DataError
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.span import PERSISTENCE, evaluate_span
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.tracking.adapters import load_base_forecast_model

SETTINGS = EvalSettings(lookback=16, horizon=4, samples=2, max_origins=40, batch_size=64)
JUNE_2018 = (pd.Timestamp("2018-06-01", tz="UTC"), pd.Timestamp("2018-07-01", tz="UTC"))


@pytest.fixture(scope="module")
def model(tiny_base):
    return load_base_forecast_model(BaseModelRef.resolve(str(tiny_base)))


def test_classes_and_symbols_without_bars_in_the_span_are_left_out_with_a_note(model):
    # June 2018: EURUSD (forex) ended in 2017, the four stocks in 2013; the indices and crypto go on.
    evaluation = evaluate_span(DataStore(), ["crypto", "forex_commodity", "equity"], JUNE_2018,
                               {"base": model}, SETTINGS, None)
    assert evaluation.classes == ["crypto", "equity"]
    notes = " ".join(evaluation.notes)
    assert "forex_commodity: left out" in notes and "EURUSD" in notes
    assert "equity: AAPL, GOOG, IBM, MSFT left out: no origin" in notes
    assert set(evaluation.samples["equity"].symbols) == {"^GSPC", "^IXIC"}


def test_no_data_at_all_is_a_data_error_naming_the_classes(model):
    with pytest.raises(DataError, match="no data for forex_commodity"):
        evaluate_span(DataStore(), ["forex_commodity"], JUNE_2018, {"base": model}, SETTINGS, None)


def test_every_model_is_scored_on_the_same_origins_and_a_model_under_two_names_once(model):
    evaluation = evaluate_span(DataStore(), ["crypto"], JUNE_2018, {"base": model, "again": model}, SETTINGS, None)
    assert evaluation.models == ["base", "again"]
    assert evaluation.scores("base") is not None and evaluation.origins == SETTINGS.max_origins
    np.testing.assert_array_equal(evaluation.scores("base").mae, evaluation.scores("again").mae)
    same = evaluation.difference("base", "again", "val_mae")
    assert same.mean == 0 and same.lo == 0 and same.hi == 0
    # Persistence is scored beside every model, on the same origins, and has no likelihood.
    assert len(evaluation.scores(PERSISTENCE).mae) == evaluation.origins
    assert np.isnan(evaluation.figures(PERSISTENCE)["val_nll"])
    assert evaluation.figures("base")["val_mae_skill"] == pytest.approx(
        1 - evaluation.figures("base")["val_mae"] / evaluation.figures(PERSISTENCE)["val_mae"])


def test_a_gap_inside_the_span_no_origin_spans_it_and_lags_follow_the_calendar(tmp_path):
    """^GSPC with ten trading days missing in the middle of March 2018: no sample's window
    (lookback and horizon) crosses the gap, and the interval's evidence is counted in calendar
    time, so the missing days do not pass for contiguous origins."""
    from kronos_rolling.data.events import EventVocabulary
    from kronos_rolling.evaluation.compare import CalendarLayout
    from kronos_rolling.evaluation.samples import build_samples

    bars = DataStore().load("^GSPC")
    gap = (bars["timestamp"] >= "2018-03-08") & (bars["timestamp"] < "2018-03-22")
    bars[~gap].to_parquet(tmp_path / "^GSPC.parquet", index=False)
    store = DataStore(tmp_path)
    settings = EvalSettings(lookback=8, horizon=4, samples=1)
    span = (pd.Timestamp("2018-02-01", tz="UTC"), pd.Timestamp("2018-05-01", tz="UTC"))
    samples = build_samples(store, ["^GSPC"], span, settings, EventVocabulary.from_types([]))
    assert samples.dataset.skipped_gap > 0
    times = pd.DatetimeIndex(store.load("^GSPC")["timestamp"]).asi8
    at = np.searchsorted(times, samples.origin)
    first, last = times[at - settings.lookback], samples.horizon_end
    spans_gap = (first < pd.Timestamp("2018-03-22", tz="UTC").value) & (last > pd.Timestamp("2018-03-08", tz="UTC").value)
    assert not spans_gap.any()
    layout = CalendarLayout.of(samples.symbols, samples.origin, settings.horizon, samples.horizon_end)
    assert layout.slots == (samples.origin.max() - samples.origin.min()) // pd.Timedelta(days=1).value + 1


def test_the_naive_baseline_is_scored_beside_every_model_with_coverage_and_skill(model):
    """naive: K seeded random-walk paths with the lookback's volatility, on the same origins; every
    model gets val_crps_skill against it and the coverage of its 50/80/90% intervals."""
    from kronos_rolling.evaluation.span import NAIVE, naive_paths

    settings = EvalSettings(lookback=16, horizon=4, samples=8, max_origins=60, batch_size=64)
    evaluation = evaluate_span(DataStore(), ["crypto"], JUNE_2018, {"base": model}, settings, None)
    assert evaluation.models == ["base"]  # the baselines are not models
    samples = evaluation.samples["crypto"]
    paths = naive_paths(samples)
    assert paths.shape == (evaluation.origins, 8, 4)
    np.testing.assert_array_equal(paths, naive_paths(samples))  # seeded: the same figures every time
    # Its spread is the lookback's: sigma * sqrt(h) in log returns, median the last close.
    sigma = np.diff(np.log(samples.lookback_close), axis=1).std(axis=1, ddof=1)
    steps = np.log(paths / samples.last_close[:, None, None])
    assert np.median(np.abs(steps[:, :, 3]) / (sigma[:, None] * 2)) == pytest.approx(0.674, abs=0.15)
    base, naive = evaluation.figures("base"), evaluation.figures(NAIVE)
    assert naive["val_crps_skill"] == 0 and base["val_crps_skill"] == pytest.approx(
        1 - base["val_crps"] / naive["val_crps"])
    for figures in (base, naive):
        for level in ("50", "80", "90"):
            assert 0 <= figures[f"val_coverage_{level}"] <= 1 and 0 <= figures[f"val_coverage_{level}_steps"] <= 1
        assert figures["val_coverage_50"] <= figures["val_coverage_80"] <= figures["val_coverage_90"]
    assert np.isnan(evaluation.figures(PERSISTENCE)["val_coverage_80"])  # a point forecast has no interval
    skill_diff = evaluation.difference("base", NAIVE, "val_crps_skill")
    assert skill_diff.mean == pytest.approx(base["val_crps_skill"] - naive["val_crps_skill"])
    crps_diff = evaluation.difference("base", NAIVE, "val_crps")
    assert crps_diff.mean == pytest.approx(base["val_crps"] - naive["val_crps"])


def test_a_calibration_is_fitted_per_class_and_scored_out_of_sample_only_after_its_span(model):
    settings = EvalSettings(lookback=16, horizon=4, samples=8, max_origins=120, batch_size=64)
    may = (pd.Timestamp("2018-05-01", tz="UTC"), pd.Timestamp("2018-06-01", tz="UTC"))
    fitted_on = evaluate_span(DataStore(), ["crypto", "equity"], may, {"base": model}, settings, None)
    calibration = fitted_on.fit_calibration("base", min_outcomes=100)
    assert set(calibration.classes) == {"crypto"} and calibration.fitted_on == ("2018-05-01", "2018-06-01")
    assert "fewer than the minimum 100" in calibration.not_fitted["equity"]
    entry = calibration.classes["crypto"]
    assert entry.coverage["calibrated_val_coverage_80"] == pytest.approx(0.8, abs=0.05)  # in sample
    # On its own span: calibrated (in sample) figures, never "served" ones.
    fitted_on.calibrations["base"] = calibration
    assert "calibrated_val_coverage_80" in fitted_on.figures("base")
    assert "served_val_coverage_80" not in fitted_on.figures("base")
    # The next month: out of sample, served as the version carries it; withheld, the served
    # intervals are the model's own.
    june = evaluate_span(DataStore(), ["crypto"], JUNE_2018, {"base": model}, settings, None, {"base": calibration})
    figures = june.figures("base")
    assert figures["served_val_coverage_80"] == figures["calibrated_val_coverage_80"]
    assert june.class_coverage("base", "crypto", calibration)[0.8] == pytest.approx(figures["calibrated_val_coverage_80"])
    june.calibrations["base"] = calibration.with_withheld({"crypto"})
    assert june.figures("base")["served_val_coverage_80"] == figures["val_coverage_80"]
