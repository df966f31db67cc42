"""The guard as tables of cases (pure: no registry, no clock): champion/challenger on measured
differences, ties keep the incumbent, no evidence means no promotion, and the incumbent check."""

from __future__ import annotations

import math
from datetime import date

import pytest
from support.registry import difference, figures, judge

from kronos_rolling.errors import ConfigError
from kronos_rolling.evaluation.compare import Difference
from kronos_rolling.registry.guard import (
    EvalFigures,
    decide_incumbent,
    decide_promotion,
)
from kronos_rolling.settings import Thresholds

NAN, INF = float("nan"), float("inf")


def f(mae, sharpe=0.5, version=None, skill=0.1):
    return None if mae is None else figures(mae, sharpe, version, skill)


# candidate, pooled, production, base, thresholds, measured with (width, origins), promote, reference, regression
CASES = [
    ("first beats pooled", 0.9, 1.0, None, None, {}, {}, True, "pooled", False),
    ("first ties pooled: the incumbent stays", 1.0, 1.0, None, None, {}, {}, False, "pooled", False),
    ("first loses to pooled", 1.01, 1.0, None, None, {}, {}, False, "pooled", False),
    ("beats pooled and production", 0.9, 1.0, 0.95, None, {}, {}, True, "pooled", False),
    ("beats pooled, worse than production", 0.96, 1.0, 0.95, None, {}, {}, False, "pooled", False),
    ("beats pooled, ties production", 0.95, 1.0, 0.95, None, {}, {}, False, "pooled", False),
    ("loses to pooled and regresses", 1.2, 1.0, 1.0, None, {}, {}, False, "pooled", True),
    ("better in the mean, interval reaches 0, min_confidence", 0.999, 1.0, None, None,
     {"min_confidence": True}, {"width": 0.01}, False, "pooled", False),
    ("better, interval below 0, min_confidence", 0.98, 1.0, None, None,
     {"min_confidence": True}, {"width": 0.01}, True, "pooled", False),
    ("better in the mean, no min_confidence", 0.999, 1.0, None, None, {}, {"width": 0.01}, True, "pooled", False),
    ("too few origins: no evidence", 0.5, 1.0, None, None, {}, {"origins": 12}, False, "pooled", False),
    ("no pooled, beats base", 0.9, None, None, 1.0, {}, {}, True, "base", False),
    ("no pooled, loses to base", 1.1, None, None, 1.0, {}, {}, False, "base", False),
    ("pooled wins over base as reference", 0.95, 0.9, None, 1.0, {}, {}, False, "pooled", False),
    ("nothing to compare with", 0.5, None, None, None, {}, {}, False, None, False),
    ("diverged candidate", NAN, 1.0, None, None, {}, {}, False, "pooled", False),
    ("diverged candidate vs production", NAN, 1.0, 1.0, None, {}, {}, False, "pooled", True),
    ("infinite candidate", INF, 1.0, None, None, {}, {}, False, "pooled", False),
    ("pooled not finite", 0.5, NAN, None, None, {}, {}, False, "pooled", False),
]


@pytest.mark.parametrize("case, cand, pooled, prod, base, overrides, measured, promote, reference, alert",
                         CASES, ids=[c[0] for c in CASES])
def test_decide_promotion(case, cand, pooled, prod, base, overrides, measured, promote, reference, alert):
    decision = judge(f(cand), f(pooled), f(prod, version="4"), f(base), Thresholds(**overrides), **measured)
    assert decision.promote is promote, decision.reason
    assert decision.reference == reference
    assert decision.regression_alert is alert
    assert decision.reason  # always says why
    assert decision.describe().startswith("Promoted" if promote else "Kept in @staging")


def test_reasons_name_the_rule_that_decided():
    assert "a tie keeps the incumbent" in judge(f(1.0), f(1.0)).reason
    assert "worse than the production v4" in judge(f(0.96), f(1.0), f(0.95, version="4")).reason
    # higher on average but the interval includes 0: not called worse, and still no promotion
    unclear = judge(f(1.001), f(1.0), width=0.01)
    assert not unclear.promote and unclear.reason.startswith("does not beat the pooled")
    assert "not significantly" in unclear.reason and "worse" not in unclear.reason
    assert "no evidence" in judge(f(0.5), f(1.0), origins=12).reason and "min_origins 30" in judge(
        f(0.5), f(1.0), origins=12).reason
    confident = judge(f(0.999), f(1.0), thresholds=Thresholds(min_confidence=True), width=0.01)
    assert "not significantly better" in confident.reason and "reaches 0" in confident.reason
    decision = judge(f(0.8), None, base=f(0.9))
    assert "beats the base" in decision.reason and "-0.1" in decision.reason


def test_an_interval_that_could_not_be_computed_is_no_evidence():
    candidate, pooled = f(0.5), f(1.0)
    none = Difference("val_mae", -0.5, NAN, NAN, 100, 0.9, "no series has the 12 an interval needs")
    decision = decide_promotion(candidate, pooled=pooled, production=None, base=None, vs_pooled=none,
                                vs_production=None, vs_base=None)
    assert not decision.promote and "no series has the 12" in decision.reason


def test_the_primary_metric_decides():
    candidate, pooled = f(0.9), f(1.0)
    worse_nll = Difference("val_nll", +0.02, 0.01, 0.03, 100, 0.9)
    thresholds = Thresholds(primary_metric="val_nll")
    candidate = EvalFigures(0.9, 0.5, val_nll=2.02, origins=100, val_mae_skill=0.1)
    pooled = EvalFigures(1.0, 0.5, val_nll=2.0, origins=100)
    decision = decide_promotion(candidate, pooled=pooled, production=None, base=None, vs_pooled=worse_nll,
                                vs_production=None, vs_base=None, thresholds=thresholds)
    assert not decision.promote and decision.metric == "val_nll" and "val_nll" in decision.reason


def test_negative_skill_of_what_serves_is_alerted_and_can_be_refused():
    promoted = judge(f(0.9, skill=-0.05), f(1.0))
    assert promoted.promote and promoted.negative_skill_alert
    refused = judge(f(0.9, skill=-0.05), f(1.0), thresholds=Thresholds(refuse_negative_skill=True))
    assert not refused.promote and "worse than no change" in refused.reason
    # refused: the production that keeps serving is the one judged
    kept = judge(f(1.2), f(1.0), f(1.1, version="3", skill=-0.2))
    assert not kept.promote and kept.negative_skill_alert
    assert not judge(f(1.2), f(1.0), f(1.1, version="3", skill=0.2)).negative_skill_alert


def test_sharpe_change_is_recorded_with_its_interval():
    change = Difference("val_sharpe", 0.1, -0.2, 0.4, 20, 0.9)
    candidate, pooled = f(0.9), f(1.0)
    decision = decide_promotion(candidate, pooled=pooled, production=None, base=None,
                                vs_pooled=difference(candidate, pooled), vs_production=None, vs_base=None,
                                sharpe_change=change)
    assert decision.sharpe_delta == pytest.approx(0.1)
    assert decision.as_tags()["vs_sharpe_diff_lo"] == "-0.2"
    assert judge(f(1.0), f(1.1)).sharpe_delta is None and judge(f(1.0), f(1.1)).mae_change_vs_production is None


def test_tags_record_every_figure_the_intervals_and_the_decision():
    span = dict(val_start=date(2024, 1, 1), val_end=date(2024, 2, 1))
    candidate = EvalFigures(0.79, 0.61, 2.1, 0.01, 0.2, 100, **span)
    pooled = EvalFigures(1.0, 0.4, 2.2, 0.012, 0.1, 100, **span)
    production = EvalFigures(0.8, 0.6, 2.15, 0.011, 0.15, 100, **span, version="3")
    base = EvalFigures(1.3, 0.1, 2.4, 0.02, -0.1, 100, **span)
    decision = decide_promotion(candidate, pooled=pooled, production=production, base=base,
                                vs_pooled=difference(candidate, pooled), vs_production=difference(candidate, production),
                                vs_base=difference(candidate, base))
    tags = decision.as_tags()
    assert tags["guard_decision"] == "promoted" and tags["guard_metric"] == "val_mae"
    assert float(tags["val_mae"]) == 0.79 and float(tags["val_nll"]) == 2.1 and float(tags["val_mae_skill"]) == 0.2
    assert float(tags["pooled_val_mae"]) == 1.0 and float(tags["production_val_crps"]) == 0.011
    assert float(tags["base_val_mae_skill"]) == -0.1 and tags["production_version"] == "3"
    assert float(tags["vs_reference_diff"]) == pytest.approx(-0.21)
    assert float(tags["vs_production_diff_hi"]) == pytest.approx(-0.009)
    assert tags["val_span"] == "2024-01-01/2024-02-01"
    assert all(isinstance(v, str) for v in tags.values())
    assert "-1.2%" in decision.describe()


def test_figures_from_different_spans_are_a_bug_not_a_verdict():
    a = EvalFigures(1.0, 0.5, val_start=date(2024, 1, 1), val_end=date(2024, 2, 1))
    b = EvalFigures(1.1, 0.5, val_start=date(2024, 2, 1), val_end=date(2024, 3, 1))
    with pytest.raises(ValueError, match="one validation span"):
        judge(a, b)


@pytest.mark.parametrize("production, pooled, overrides, measured, withdraw", [
    (1.05, 1.0, {}, None, False),  # within 10%
    (1.11, 1.0, {}, None, True),  # more than 10% worse
    (1.11, 1.0, {"withdraw_ratio": 0.2}, None, False),
    (1.05, 1.0, {"min_confidence": True}, (0.01, 0.09), True),  # significantly worse
    (1.05, 1.0, {"min_confidence": True}, (-0.01, 0.09), False),  # not significantly
    (NAN, 1.0, {}, None, True),
])
def test_the_incumbent_check(production, pooled, overrides, measured, withdraw):
    diff = None if measured is None else Difference("val_mae", production - pooled, *measured, 100, 0.9)
    decision = decide_incumbent(f(production, version="7"), f(pooled), diff, Thresholds(**overrides))
    assert decision.withdraw is withdraw, decision.reason
    assert "v7" in decision.reason
    assert decision.as_tags()["incumbent_decision"] == ("withdrawn" if withdraw else "kept")


@pytest.mark.parametrize("overrides", [
    {"regression_alert_ratio": -0.1}, {"regression_alert_ratio": math.nan}, {"primary_metric": "val_sharpe"},
    {"stall_retrains": 0}, {"keep_versions": 0}, {"quarterly_interval_months": 1.5}, {"min_origins": 0}])
def test_bad_thresholds_are_refused(overrides):
    with pytest.raises(ConfigError, match=list(overrides)[0]):
        Thresholds(**overrides)
