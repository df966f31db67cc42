"""Intervals from sample paths, their coverage, the conformal spread calibration and its file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kronos_rolling.errors import ConfigError
from kronos_rolling.evaluation.calibration import (
    CALIBRATION_FILE,
    GRID,
    Calibration,
    CalibrationError,
    ClassCalibration,
    apply_calibration,
    calibrated_inside,
    calibrated_quantiles,
    fit_class,
    inside,
    pit_values,
    spread_scores,
)
from kronos_rolling.model.quantiles import (
    LEGACY_LEVELS,
    MIN_QUANTILE_PATHS,
    path_quantiles,
    paths_for,
    quantile_levels,
    quantile_name,
)


def test_weibull_intervals_of_k_true_draws_cover_their_level_whatever_k():
    """Paths and outcome drawn from one distribution: the central c interval of K paths covers
    a share c on average (numpy's default plotting position would cover 71% at 80% with K=16)."""
    rng = np.random.default_rng(0)
    for k in (16, 32):
        returns = rng.standard_normal((40_000, k, 1))
        actual = rng.standard_normal((40_000, 1))
        for level in (0.5, 0.8):
            assert inside(returns, actual, level).mean() == pytest.approx(level, abs=0.015)
        default = np.quantile(returns, [0.1, 0.9], axis=1)
        narrow = ((actual >= default[0]) & (actual <= default[1])).mean()
        assert narrow < 0.8 - 0.02 * (32 / k)  # the bias the plotting position removes


def test_the_pit_of_exchangeable_outcomes_is_flat_and_a_narrow_ensemble_is_u_shaped():
    rng = np.random.default_rng(1)
    truth = rng.standard_normal(20_000)
    calibrated = pit_values(rng.standard_normal((20_000, 8)), truth)
    counts = np.histogram(calibrated, bins=np.linspace(0, 1, 10))[0] / len(truth)
    np.testing.assert_allclose(counts, 1 / 9, atol=0.01)
    narrow = pit_values(0.3 * rng.standard_normal((20_000, 8)), truth)
    edges = np.histogram(narrow, bins=np.linspace(0, 1, 10))[0] / len(truth)
    assert edges[0] > 0.25 and edges[-1] > 0.25 and edges[4] < 0.05


def scores_of(spread: float, n: int, steps: int = 2, seed: int = 0, k: int = 16):
    """(N, K, H) paths too narrow by `spread` (the truth has spread 1) and the outcomes."""
    rng = np.random.default_rng(seed)
    returns = spread * rng.standard_normal((n, k, steps))
    actual = rng.standard_normal((n, steps))
    return returns, actual


def test_a_calibration_fitted_on_one_month_restores_coverage_on_the_next():
    before_returns, before_actual = scores_of(0.4, 3000, seed=2)
    fitted = fit_class(spread_scores(before_returns, before_actual), np.full(3000, 1 / 3000), 100)
    assert isinstance(fitted, ClassCalibration) and fitted.outcomes == 3000
    returns, actual = scores_of(0.4, 3000, seed=3)  # out of sample
    z = spread_scores(returns, actual)
    for level in (0.5, 0.8, 0.9):
        assert inside(returns, actual, level).mean() < level - 0.2  # too narrow
        assert calibrated_inside(z, fitted, level).mean() == pytest.approx(level, abs=0.025)


def test_too_few_outcomes_fit_nothing_and_say_why():
    returns, actual = scores_of(1.0, 40)
    z = spread_scores(returns, actual)
    assert fit_class(z, np.full(40, 1 / 40), 100) == "40 outcomes, fewer than the minimum 100"
    z[:5] = np.inf  # paths without spread that missed: not fitted on
    assert fit_class(z, np.full(40, 1 / 40), 30).outcomes == 35
    assert fit_class(z, np.full(40, 1 / 40), 36) == ("35 outcomes, fewer than the minimum 36 (5 origin(s) whose "
                                                     "paths had no spread left out)")


def test_calibrated_quantiles_never_reorder_and_keep_the_median():
    returns, actual = scores_of(0.5, 500, steps=3, seed=4)
    fitted = fit_class(spread_scores(returns, actual), np.full(500, 1 / 500), 100)
    paths = np.random.default_rng(5).standard_normal((32, 3)) * 0.02 + 100.0
    levels = np.array([0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999])
    quantiles = calibrated_quantiles(paths, fitted, levels)
    assert quantiles.shape == (len(levels), 3)
    assert (np.diff(quantiles, axis=0) >= 0).all()
    np.testing.assert_allclose(quantiles[levels == 0.5][0], np.median(paths, axis=0))
    # Wider than the paths' own, as fitted on paths too narrow by half.
    own = path_quantiles(paths, [0.05, 0.95])
    assert (quantiles[levels == 0.05][0] < own[0]).all() and (quantiles[levels == 0.95][0] > own[1]).all()
    # Steps beyond the fitted horizon use its last step's scales.
    longer = calibrated_quantiles(np.tile(paths[:, -1:], (1, 5)), fitted, [0.1, 0.9])
    np.testing.assert_allclose(longer[:, 3], longer[:, 2])


def test_the_file_round_trips_and_a_bad_one_is_refused_naming_the_field(tmp_path):
    returns, actual = scores_of(0.5, 200)
    fitted = fit_class(spread_scores(returns, actual), np.full(200, 1 / 200), 100)
    calibration = Calibration({"crypto": fitted}, {"equity": "32 outcomes, fewer than the minimum 100"},
                              ("2018-01-01", "2018-02-01"), 100)
    calibration.write(tmp_path)
    read = Calibration.read(tmp_path)
    assert read.fitted_on == ("2018-01-01", "2018-02-01") and read.not_fitted == calibration.not_fitted
    np.testing.assert_allclose(read.classes["crypto"].table([0.8], 2), fitted.table([0.8], 2), rtol=1e-5)
    assert read.entry("equity") is None and "32 outcomes" in read.why_not("equity")
    assert read.with_withheld({"crypto"}).entry("crypto") is None
    assert "withheld" in read.with_withheld({"crypto"}).why_not("crypto")
    assert Calibration.read(tmp_path / "none") is None

    raw = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    for mutate, field in [
        (lambda r: r["classes"]["crypto"]["scales"][0].__setitem__(50, -1.0), "classes.crypto.scales"),
        (lambda r: r["classes"]["crypto"]["scales"][1].__setitem__(60, 0.0), "classes.crypto.scales"),
        (lambda r: r["classes"]["crypto"].__setitem__("outcomes", 12), "classes.crypto.outcomes"),
        (lambda r: r.__setitem__("levels", [0.5]), "levels"),
        (lambda r: r.__setitem__("method", "magic"), "format/method"),
    ]:
        bad = json.loads(json.dumps(raw))
        mutate(bad)
        with pytest.raises(CalibrationError, match=field.replace(".", r"\.")) as caught:
            Calibration.from_dict(bad, "kronos-lora-crypto v3: calibration.json")
        assert "kronos-lora-crypto v3: calibration.json" in str(caught.value)
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        Calibration.read(tmp_path)


def test_quantile_levels_the_old_form_and_the_paths_behind_a_request():
    assert quantile_levels(True) == LEGACY_LEVELS and quantile_levels(False) == () and quantile_levels([]) == ()
    assert quantile_levels([0.95, 0.05, 0.5, 0.5]) == (0.05, 0.5, 0.95)
    assert quantile_levels("0.05,0.5,0.95") == (0.05, 0.5, 0.95) and quantile_levels("true") == LEGACY_LEVELS
    assert [quantile_name(q) for q in (0.05, 0.1, 0.5, 0.025)] == ["p5", "p10", "p50", "p2.5"]
    for bad in ([0.0, 0.5], [1.5], ["x"], [float("nan")]):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            quantile_levels(bad)
    assert paths_for(None, ()) == 1 and paths_for(4, (0.5,)) == MIN_QUANTILE_PATHS == 32
    assert paths_for(64, (0.5,)) == 64


def forecast_result(close_paths, levels):
    """A model.forecast.ForecastResult of (K, H) close paths (each bar's high 1% above its close,
    its low 1% below), with quantiles at `levels`, as the forecaster builds it."""
    import pandas as pd

    from kronos_rolling.model.forecast import FEATURE_COLUMNS, ForecastResult

    ones = np.ones_like(close_paths)
    bars = np.stack([close_paths, close_paths * 1.01, close_paths * 0.99, close_paths, ones, ones], axis=-1)

    def frame(values):
        return pd.DataFrame(values, columns=FEATURE_COLUMNS)

    return ForecastResult(mean=frame(bars.mean(axis=0)), point=frame(np.median(bars, axis=0)),
                          quantiles={quantile_name(q): frame(b) for q, b in zip(levels, path_quantiles(bars, levels))},
                          close_paths=close_paths, price_floor=1e-3)


def test_apply_calibration_says_what_it_did_and_keeps_every_quantile_a_valid_bar_in_order():
    returns, actual = scores_of(0.5, 300)
    fitted = fit_class(spread_scores(returns, actual), np.full(300, 1 / 300), 100)
    calibration = Calibration({"crypto": fitted}, {"equity": "too few"}, ("2018-01-01", "2018-02-01"), 100)
    paths = np.random.default_rng(0).standard_normal((32, 2)) + 50
    levels = (0.05, 0.5, 0.95)
    result = forecast_result(paths, levels)
    before = result.quantiles["p95"]["close"].to_numpy().copy()
    note = apply_calibration(result, levels, calibration, "crypto", "kronos-lora-crypto v3")
    assert note.applied and note.source == "kronos-lora-crypto v3"
    assert str(note) == "applied: kronos-lora-crypto v3's crypto calibration, fitted on 2018-01-01..2018-02-01"
    assert (result.quantiles["p95"]["close"].to_numpy() > before).all()  # too narrow paths: widened
    closes = np.stack([result.quantiles[quantile_name(q)]["close"].to_numpy() for q in levels])
    assert (np.diff(closes, axis=0) >= 0).all(), "p5 <= p50 <= p95"
    np.testing.assert_allclose(result.quantiles["p50"]["close"], np.median(paths, axis=0))  # the point stays
    for band in result.quantiles.values():  # the high and the low widened to hold the calibrated close
        assert (band["high"] >= band[["open", "close"]].max(axis=1)).all()
        assert (band["low"] <= band[["open", "close"]].min(axis=1)).all()
    refused = apply_calibration(forecast_result(paths, levels), levels, calibration, "equity", "v3")
    assert not refused.applied and str(refused) == "not applied: v3: too few"
    withheld = apply_calibration(forecast_result(paths, levels), levels, calibration.with_withheld({"crypto"}),
                                 "crypto", "v3")
    assert not withheld.applied and "withheld" in str(withheld)
    assert str(apply_calibration(forecast_result(paths, levels), levels, None, "crypto", "the bare base")) == \
        "not applied: the bare base carries no calibration"


def test_the_grid_is_the_documented_one():
    assert GRID[0] == 0 and GRID[-1] == 0.99 and len(GRID) == 100
