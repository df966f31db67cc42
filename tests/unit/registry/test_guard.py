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
    ("better in the mean, min_confidence off", 0.999, 1.0, None, None, {"min_confidence": False}, {"width": 0.01},
     True, "pooled", False),
    ("better in the mean, interval reaches 0 (the default)", 0.999, 1.0, None, None, {}, {"width": 0.01}, False,
     "pooled", False),
    ("too few horizons: pending, not promoted", 0.5, 1.0, None, None, {}, {"horizons": 2.0}, False, "pooled",
     False),
    ("an interval on fewer than min_horizons: pending", 0.5, 1.0, None, None, {}, {"horizons": 2.8}, False,
     "pooled", False),
    ("10% worse than production but not significantly: no alert", 1.2, 1.0, 1.08, None, {}, {"width": 0.2},
     False, "pooled", False),
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
    waiting = judge(f(0.5), f(1.0), horizons=2.8)
    assert waiting.pending and waiting.outcome == "pending" and "min_horizons 3" in waiting.reason
    assert "judged again next month" in waiting.reason and waiting.describe().startswith(
        "Kept in @staging, awaiting evidence")
    confident = judge(f(0.999), f(1.0), width=0.01)
    assert "not significantly better" in confident.reason and "reaches 0" in confident.reason
    decision = judge(f(0.8), None, base=f(0.9))
    assert "beats the base" in decision.reason and "-0.1" in decision.reason


def test_an_interval_that_could_not_be_computed_is_no_evidence_yet():
    candidate, pooled = f(0.5), f(1.0)
    none = Difference("val_mae", -0.5, NAN, NAN, 100, 0.9, "1.3 non-overlapping horizons of data; an interval "
                      "needs 2.5", 1.3)
    decision = decide_promotion(candidate, pooled=pooled, production=None, base=None, vs_pooled=none,
                                vs_production=None, vs_base=None)
    assert decision.pending and not decision.promote and "1.3 non-overlapping horizons" in decision.reason
    assert decision.evidence is none and decision.as_tags()["guard_decision"] == "pending"


@pytest.mark.parametrize("months, outcome", [(1, "pending"), (5, "pending"), (6, "refused"), (9, "refused")])
def test_a_challenger_without_evidence_waits_at_most_max_evidence_months(months, outcome):
    decision = judge(f(0.5), f(1.0), f(0.9, version="2"), horizons=2.0, evidence_months=months)
    assert decision.outcome == outcome and not decision.promote
    if outcome == "refused":
        assert f"no evidence against the pooled after {months} month(s)" in decision.reason
        assert "the incumbent keeps serving" in decision.reason


def test_the_decision_records_the_comparison_that_decided_and_its_horizons():
    promoted = judge(f(0.8), f(1.0), f(0.85, version="2"), horizons=7.5)
    # both beaten: the closer call (against production, -0.05) is the one that decided
    assert promoted.promote and promoted.evidence is promoted.vs_production
    tags = promoted.as_tags()
    assert float(tags["decision_diff"]) == pytest.approx(-0.05) and tags["decision_horizons"] == "7.5"
    refused = judge(f(1.1), f(1.0), horizons=7.5)
    assert refused.evidence is refused.vs_reference and float(refused.as_tags()["decision_diff_lo"]) > 0


def test_the_primary_metric_decides():
    candidate, pooled = f(0.9), f(1.0)
    worse_nll = Difference("val_nll", +0.02, 0.01, 0.03, 100, 0.9, horizons=10, dof=4)
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


@pytest.mark.parametrize("production, fallback, overrides, measured, withdraw", [
    (1.05, 1.0, {}, (0.01, 0.09), False),  # within 10%, even though significantly worse
    (1.11, 1.0, {}, (0.01, 0.21), True),  # more than 10% worse, and significantly
    (1.11, 1.0, {}, (-0.01, 0.23), False),  # more than 10% worse on average, not significantly
    (1.11, 1.0, {}, None, False),  # no interval: no evidence to withdraw on
    (1.11, 1.0, {"withdraw_significant": False}, (-0.01, 0.23), True),  # the bare ratio rule
    (1.11, 1.0, {"withdraw_ratio": 0.2}, (0.01, 0.21), False),
    (NAN, 1.0, {}, None, True),
])
def test_the_incumbent_check(production, fallback, overrides, measured, withdraw):
    diff = (None if measured is None else
            Difference("val_mae", production - fallback, *measured, 100, 0.9, horizons=10, dof=4))
    decision = decide_incumbent(f(production, version="7"), f(fallback), diff, Thresholds(**overrides))
    assert decision.withdraw is withdraw, decision.reason
    assert "v7" in decision.reason
    assert decision.as_tags()["incumbent_decision"] == ("withdrawn" if withdraw else "kept")


def test_the_incumbent_is_judged_against_the_bare_base_when_no_pooled_version_serves():
    """Crypto v6 served through 2019-02 while 18.7% worse than the bare base (0.1110 vs 0.0935):
    with no pooled version serving, the base is what the predictor would fall back to."""
    diff = Difference("val_mae", 0.1110 - 0.0935, 0.004, 0.031, 120, 0.9, horizons=6.2, dof=2)
    decision = decide_incumbent(f(0.1110, version="6"), f(0.0935), diff, fallback_name="base")
    assert decision.withdraw and decision.fallback_name == "base"
    assert "base's 0.0935" in decision.reason and decision.as_tags()["incumbent_fallback"] == "base"


@pytest.mark.parametrize("overrides", [
    {"regression_alert_ratio": -0.1}, {"regression_alert_ratio": math.nan}, {"primary_metric": "val_sharpe"},
    {"stall_retrains": 0}, {"keep_versions": 0}, {"quarterly_interval_months": 1.5}, {"min_horizons": -1.0},
    {"max_evidence_months": 0}])
def test_bad_thresholds_are_refused(overrides):
    with pytest.raises(ConfigError, match=list(overrides)[0]):
        Thresholds(**overrides)


def skill_difference(candidate: float, other: float, width: float = 0.01) -> Difference:
    """candidate - other in val_crps_skill (higher is better), +/- width on 10 horizons."""
    mean = candidate - other
    return Difference("val_crps_skill", mean, mean - width, mean + width, 100, 0.9, horizons=10, dof=4)


@pytest.mark.parametrize("candidate_skill, pooled_skill, promote, words", [
    (0.20, 0.10, True, "beats the pooled (val_crps_skill difference +0.1"),
    (0.10, 0.20, False, "is worse than the pooled"),
    (0.105, 0.10, False, "is not significantly better than the pooled"),
    (0.10, 0.10, False, "ties the pooled"),
    (0.095, 0.10, False, "lower on average, not significantly"),
])
def test_val_crps_skill_as_the_primary_metric_is_higher_is_better(candidate_skill, pooled_skill, promote, words):
    candidate = EvalFigures(1.0, 0.5, val_crps_skill=candidate_skill, origins=100)
    pooled = EvalFigures(1.0, 0.5, val_crps_skill=pooled_skill, origins=100)
    decision = decide_promotion(candidate, pooled=pooled, production=None, base=None,
                                vs_pooled=skill_difference(candidate_skill, pooled_skill), vs_production=None,
                                vs_base=None, thresholds=Thresholds(primary_metric="val_crps_skill"))
    assert decision.promote is promote and words in decision.reason, decision.reason
    assert decision.metric == "val_crps_skill"


def test_with_a_skill_the_closer_call_against_production_is_the_evidence():
    candidate = EvalFigures(1.0, 0.5, val_crps_skill=0.3, origins=100)
    pooled = EvalFigures(1.0, 0.5, val_crps_skill=0.1, origins=100)
    production = EvalFigures(1.0, 0.5, val_crps_skill=0.25, origins=100, version="4")
    decision = decide_promotion(candidate, pooled=pooled, production=production, base=None,
                                vs_pooled=skill_difference(0.3, 0.1), vs_production=skill_difference(0.3, 0.25),
                                vs_base=None, thresholds=Thresholds(primary_metric="val_crps_skill"))
    assert decision.promote and decision.evidence.mean == pytest.approx(0.05)


@pytest.mark.parametrize("promoted, candidate_coverage, production_coverage, points, alert", [
    (True, 0.79, 0.5, 0.10, False),  # the candidate serves next: its own coverage counts
    (True, 0.65, 0.8, 0.10, True),
    (False, 0.8, 0.69, 0.10, True),  # refused: production keeps serving, off by 11 points
    (False, 0.8, 0.71, 0.10, False),
    (False, 0.8, 0.88, 0.05, True),  # a tighter setting
    (False, 0.8, NAN, 0.10, False),  # not measured: no alert
])
def test_miscalibrated_alert_for_what_serves_next(promoted, candidate_coverage, production_coverage, points, alert):
    candidate = EvalFigures(0.9 if promoted else 1.1, 0.5, origins=100, coverage_80=candidate_coverage)
    pooled = EvalFigures(1.0, 0.5, origins=100)
    production = EvalFigures(0.95 if promoted else 1.0, 0.5, origins=100, version="2", coverage_80=production_coverage)
    decision = decide_promotion(candidate, pooled=pooled, production=production, base=None,
                                vs_pooled=difference(candidate, pooled), vs_production=difference(candidate, production),
                                vs_base=None, thresholds=Thresholds(miscalibration_points=points))
    assert decision.promote is promoted
    assert decision.miscalibrated_alert is alert
    assert decision.as_tags()["miscalibrated_alert"] == str(alert).lower()
    assert ("miscalibrated alert raised" in decision.describe()) is alert


def test_a_calibration_that_made_coverage_worse_out_of_sample_is_not_served():
    from kronos_rolling.registry.guard import decide_calibration

    worse = decide_calibration({0.5: 0.45, 0.8: 0.75, 0.9: 0.86}, {0.5: 0.62, 0.8: 0.93, 0.9: 0.98},
                               span="2018-02-01..2018-03-01")
    assert not worse.served and "made coverage worse" in worse.reason and "2018-02-01..2018-03-01" in worse.reason
    assert "80%: 93.0% calibrated vs 75.0% uncalibrated" in worse.reason
    better = decide_calibration({0.5: 0.25, 0.8: 0.46, 0.9: 0.46}, {0.5: 0.49, 0.8: 0.81, 0.9: 0.91}, span="s")
    assert better.served and "it is served" in better.reason
    unknown = decide_calibration({0.5: NAN, 0.8: NAN, 0.9: NAN}, {0.5: NAN, 0.8: NAN, 0.9: NAN}, span="s")
    assert unknown.served
