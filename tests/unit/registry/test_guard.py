"""The regression guard as a table of cases (pure: no registry, no clock)."""

from __future__ import annotations

import math
from datetime import date

import pytest

from kronos_rolling.errors import ConfigError
from kronos_rolling.registry.guard import EvalFigures, decide_promotion
from kronos_rolling.settings import Thresholds

NAN = float("nan")


INF = float("inf")


def f(mae, sharpe=0.5, version=None):
    return None if mae is None else EvalFigures(mae, sharpe, version=version)


# candidate, pooled, production, base, thresholds, promote, reference, regression_alert
CASES = [
    # first version of a class: pooled alone decides
    ("first beats pooled", 0.9, 1.0, None, None, {}, True, "pooled", False),
    ("first ties pooled", 1.0, 1.0, None, None, {}, True, "pooled", False),
    ("first loses to pooled", 1.01, 1.0, None, None, {}, False, "pooled", False),
    # tolerance from the thresholds
    ("within tolerance", 1.019, 1.0, None, None, {"promote_mae_tolerance": 0.02}, True, "pooled", False),
    ("beyond tolerance", 1.021, 1.0, None, None, {"promote_mae_tolerance": 0.02}, False, "pooled", False),
    # production present: never the reference, drives the alert
    ("beats pooled, better than production", 0.9, 1.0, 0.95, None, {}, True, "pooled", False),
    ("beats pooled, 10% worse than production: no alert", 0.99, 1.0, 0.9, None, {}, True, "pooled", False),
    ("beats pooled, >10% worse than production: alert", 0.99, 1.0, 0.89, None, {}, True, "pooled", True),
    ("loses to pooled and regresses", 1.2, 1.0, 1.0, None, {}, False, "pooled", True),
    ("loses to pooled, no regression", 1.05, 1.0, 1.0, None, {}, False, "pooled", False),
    ("custom alert ratio", 1.04, 1.1, 1.0, None, {"regression_alert_ratio": 0.03}, True, "pooled", True),
    ("refuse on regression", 0.99, 1.0, 0.89, None, {"refuse_on_regression": True}, False, "pooled", True),
    ("refuse on regression, none", 0.95, 1.0, 0.9, None, {"refuse_on_regression": True}, True, "pooled", False),
    # no pooled production: the bare base is the reference
    ("no pooled, beats base", 0.9, None, None, 1.0, {}, True, "base", False),
    ("no pooled, loses to base", 1.1, None, None, 1.0, {}, False, "base", False),
    ("pooled wins over base as reference", 0.95, 0.9, None, 1.0, {}, False, "pooled", False),
    ("nothing to compare with", 0.5, None, None, None, {}, False, None, False),
    # figures that are not numbers
    ("diverged candidate", NAN, 1.0, None, None, {}, False, "pooled", False),
    ("diverged candidate vs production", NAN, 1.0, 1.0, None, {}, False, "pooled", True),
    ("infinite candidate", INF, 1.0, None, None, {}, False, "pooled", False),
    ("pooled not finite", 0.5, NAN, None, None, {}, False, "pooled", False),
    ("production zero mae", 0.1, 1.0, 0.0, None, {}, True, "pooled", True),
]


@pytest.mark.parametrize("case, cand, pooled, prod, base, overrides, promote, reference, alert",
                         CASES, ids=[c[0] for c in CASES])
def test_decide_promotion(case, cand, pooled, prod, base, overrides, promote, reference, alert):
    decision = decide_promotion(f(cand), f(pooled), f(prod), Thresholds(**overrides), base=f(base))
    assert decision.promote is promote, decision.reason
    assert decision.reference == reference
    assert decision.regression_alert is alert
    assert decision.reason  # always says why
    assert decision.describe().startswith("Promoted" if promote else "Kept in @staging")


def test_reason_names_the_figures_compared():
    decision = decide_promotion(f(1.25), f(1.2), None)
    assert "1.25" in decision.reason and "1.2" in decision.reason and "pooled" in decision.reason
    decision = decide_promotion(f(0.8), None, None, base=f(0.9))
    assert "base" in decision.reason and "0.9" in decision.reason


@pytest.mark.parametrize("cand_sharpe, prod_sharpe, delta", [
    (0.60, 0.50, 0.10), (0.50, 0.60, -0.10), (0.5, 0.5, 0.0)])
def test_sharpe_delta_against_production(cand_sharpe, prod_sharpe, delta):
    decision = decide_promotion(f(1.0, cand_sharpe), f(1.1), f(1.0, prod_sharpe))
    assert decision.sharpe_delta == pytest.approx(delta)


def test_no_production_has_no_delta():
    decision = decide_promotion(f(1.0, 0.7), f(1.1), None)
    assert decision.sharpe_delta is None and decision.mae_change_vs_production is None


def test_tags_record_every_figure_and_the_decision():
    decision = decide_promotion(EvalFigures(0.99, 0.61, date(2024, 1, 1), date(2024, 2, 1)),
                                EvalFigures(1.0, 0.4, date(2024, 1, 1), date(2024, 2, 1)),
                                EvalFigures(0.8, 0.6, date(2024, 1, 1), date(2024, 2, 1), "3"),
                                base=EvalFigures(1.3, 0.1, date(2024, 1, 1), date(2024, 2, 1)))
    tags = decision.as_tags()
    assert tags["guard_decision"] == "promoted"
    assert tags["regression_alert"] == "true"
    assert float(tags["val_mae"]) == 0.99 and float(tags["val_sharpe"]) == 0.61
    assert float(tags["pooled_val_mae"]) == 1.0 and float(tags["production_val_mae"]) == 0.8
    assert float(tags["base_val_mae"]) == 1.3 and tags["production_version"] == "3"
    assert float(tags["sharpe_delta"]) == pytest.approx(0.01)
    assert tags["val_span"] == "2024-01-01/2024-02-01"
    assert all(isinstance(v, str) for v in tags.values())
    assert "+23.7%" in decision.describe() and "Regression alert" in decision.describe()


def test_figures_from_different_spans_are_a_bug_not_a_verdict():
    a = EvalFigures(1.0, 0.5, date(2024, 1, 1), date(2024, 2, 1))
    b = EvalFigures(1.1, 0.5, date(2024, 2, 1), date(2024, 3, 1))
    with pytest.raises(ValueError, match="one validation span"):
        decide_promotion(a, b, None)


@pytest.mark.parametrize("overrides", [
    {"promote_mae_tolerance": -0.1}, {"regression_alert_ratio": math.nan},
    {"stall_retrains": 0}, {"keep_versions": 0}, {"quarterly_interval_months": 1.5}])
def test_bad_thresholds_are_refused(overrides):
    with pytest.raises(ConfigError, match=list(overrides)[0]):
        Thresholds(**overrides)
