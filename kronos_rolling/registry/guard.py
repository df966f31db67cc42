"""The guard: champion/challenger decisions about `@production`, as pure functions.

They take figures measured by the evaluation on ONE evidence span (the candidate's
validation month, or the months a pending challenger has accumulated since), with paired
differences (candidate - other, time-weighted over the same origins, with an interval
whose coverage is measured: evaluation/compare.py) in the primary metric
(`Thresholds.primary_metric`: val_mae, val_nll or val_crps, lower is better; or
val_crps_skill, higher is better: "beats" then means an interval above 0):

decide_promotion (after a retrain, and each month a challenger waits for evidence):
  1. A candidate whose primary metric is not finite (a diverged run) is refused.
  2. The reference is the pooled production adapter, else the bare base (what the predictor
     would serve instead); with neither there is nothing to beat: refused.
  3. Evidence: the difference with the reference needs an interval resting on at least
     `min_horizons` non-overlapping horizons. Short of that the candidate is PENDING: it
     stays at @staging and is judged again next month on a longer span (daily bars at
     H=16 hold about 2 horizons a month). After `max_evidence_months` without enough,
     it is refused and the incumbent keeps serving.
  4. The candidate must beat the reference: with `min_confidence` (the default) the
     whole interval lies below 0; without it the mean difference must be below 0. Exactly
     0 is a tie, and a tie never promotes.
  5. With a production version (other than the reference), the candidate must also beat it
     the same way: a candidate worse than, or tied with, what serves now does not replace it.
  6. Alerts: `regression` when candidate val_mae exceeds the production's by more than
     `regression_alert_ratio` AND the difference is significant (its interval above 0);
     refused too with `refuse_on_regression`. `negative_skill` when the version about to
     serve (the candidate if promoted, else production) is significantly worse than no
     change (its interval against persistence above 0); with `refuse_negative_skill` such
     a candidate is refused. `miscalibrated` when the version about to serve covers a share of
     outcomes with its 80% intervals, as it would serve them, that is off 80% by more than
     `miscalibration_points` (a candidate: with the calibration just fitted, on its validation
     month; production: with the calibration it carries, out of sample).

decide_calibration (each month, for every version that serves a class with a calibration):
  its calibration keeps being served unless, out of sample, it made coverage worse: the mean
  over the 50/80/90% intervals of |coverage - level| is larger calibrated than uncalibrated.

decide_incumbent (every month, also when no retrain is due):
  @production is withdrawn when its val_mae is more than `withdraw_ratio` above what the
  predictor would serve instead (pooled, else the bare base), on the months since it was
  chosen, AND (with `withdraw_significant`, the default) that difference is significant:
  the whole interval of production - fallback above 0. Without an interval there is no
  evidence to withdraw on, and it stays.

docs/evaluation.md gives the rules, and the error rates measured for the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from kronos_rolling.evaluation.compare import Difference
from kronos_rolling.settings import Thresholds

PROMOTED, REFUSED, PENDING = "promoted", "refused", "pending"


@dataclass(frozen=True)
class EvalFigures:
    """One model's figures on the evidence span (the evaluation computes them)."""

    val_mae: float
    val_sharpe: float
    val_nll: float = math.nan
    val_crps: float = math.nan
    val_mae_skill: float = math.nan
    origins: int = 0
    val_start: date | None = None  # the span, when known, so mixed spans are caught
    val_end: date | None = None
    version: str | None = None  # the registry version these figures belong to, if any
    vs_persistence: Difference | None = None  # this model - no change, in val_mae (negative skill, measured)
    val_crps_skill: float = math.nan  # 1 - val_crps / naive_val_crps
    coverage_80: float = math.nan  # share of outcomes inside its 80% intervals as it would serve them

    def metric(self, name: str) -> float:
        return getattr(self, name)

    @property
    def significantly_worse_than_no_change(self) -> bool:
        d = self.vs_persistence
        return d is not None and d.has_interval and d.lo > 0


@dataclass(frozen=True)
class GuardDecision:
    outcome: str  # promoted | refused | pending
    reason: str
    metric: str  # the primary metric the decision used
    reference: str | None  # "pooled" | "base" | None
    candidate: EvalFigures
    reference_figures: EvalFigures | None
    production: EvalFigures | None
    pooled: EvalFigures | None
    base: EvalFigures | None
    vs_reference: Difference | None  # candidate - reference
    vs_production: Difference | None  # candidate - production
    regression_alert: bool
    negative_skill_alert: bool
    sharpe_change: Difference | None  # candidate - what served, val_sharpe (the cadence's measure)
    evidence: Difference | None = None  # the comparison that decided (the closer call when both passed)
    miscalibrated_alert: bool = False  # what serves next covers far from 80% with its 80% intervals

    @property
    def promote(self) -> bool:
        return self.outcome == PROMOTED

    @property
    def pending(self) -> bool:
        return self.outcome == PENDING

    @property
    def sharpe_delta(self) -> float | None:
        if self.sharpe_change is None or not math.isfinite(self.sharpe_change.mean):
            return None
        return self.sharpe_change.mean

    @property
    def mae_change_vs_production(self) -> float | None:
        """candidate / production val_mae - 1."""
        if self.production is None or not self.production.val_mae > 0 or not math.isfinite(self.candidate.val_mae):
            return None
        return self.candidate.val_mae / self.production.val_mae - 1

    def as_tags(self) -> dict[str, str]:
        """Version tags that record the decision, its intervals and every figure it used."""
        tags = {f: _fmt(getattr(self.candidate, f)) for f in FIGURES}
        tags.update({
            "guard_decision": self.outcome,
            "guard_reason": self.reason,
            "guard_metric": self.metric,
            "guard_reference": self.reference or "none",
            "regression_alert": str(self.regression_alert).lower(),
            "negative_skill_alert": str(self.negative_skill_alert).lower(),
            "miscalibrated_alert": str(self.miscalibrated_alert).lower(),
        })
        for label, figures in (("pooled", self.pooled), ("production", self.production), ("base", self.base)):
            if figures is not None:
                tags.update({f"{label}_{f}": _fmt(getattr(figures, f)) for f in FIGURES})
        for label, difference in (("reference", self.vs_reference), ("production", self.vs_production),
                                  ("sharpe", self.sharpe_change), ("decision", self.evidence)):
            if difference is not None:
                prefix = "decision" if label == "decision" else f"vs_{label}"
                tags[f"{prefix}_diff"] = _fmt(difference.mean)
                tags[f"{prefix}_diff_lo"] = _fmt(difference.lo)
                tags[f"{prefix}_diff_hi"] = _fmt(difference.hi)
        if self.evidence is not None:
            tags["decision_horizons"] = _fmt(self.evidence.horizons)
        if self.production is not None and self.production.version is not None:
            tags["production_version"] = self.production.version
        if self.sharpe_delta is not None:
            tags["sharpe_delta"] = _fmt(self.sharpe_delta)
        if self.candidate.val_start and self.candidate.val_end:
            tags["val_span"] = f"{self.candidate.val_start}/{self.candidate.val_end}"
        return tags

    def describe(self) -> str:
        """The decision in one sentence, for the version's description and the audit trail."""
        verdict = {PROMOTED: "Promoted to @production", REFUSED: "Kept in @staging (refused)",
                   PENDING: "Kept in @staging, awaiting evidence"}[self.outcome]
        text = f"{verdict}: {self.reason}."
        if self.production is not None:
            change = ("" if self.mae_change_vs_production is None
                      else f" (candidate {self.mae_change_vs_production:+.1%})")
            text += f" Prior production val_mae {_fmt(self.production.val_mae)}{change}"
            if self.sharpe_change is not None:
                text += f", val_sharpe change {self.sharpe_change.describe()}"
            text += "."
        if self.regression_alert:
            text += " Regression alert raised."
        if self.negative_skill_alert:
            text += " Significantly worse than no change: negative_skill alert raised."
        if self.miscalibrated_alert:
            serving = self.candidate if self.promote else self.production
            text += (f" Its 80% intervals cover {serving.coverage_80:.0%} of outcomes as served: miscalibrated "
                     "alert raised.")
        return text


FIGURES = ("val_mae", "val_nll", "val_crps", "val_mae_skill", "val_crps_skill", "val_sharpe", "coverage_80")
HIGHER_IS_BETTER = ("val_crps_skill",)  # every other primary metric is a loss


def decide_promotion(candidate: EvalFigures, *, pooled: EvalFigures | None, production: EvalFigures | None,
                     base: EvalFigures | None, vs_pooled: Difference | None, vs_production: Difference | None,
                     vs_base: Difference | None, sharpe_change: Difference | None = None,
                     thresholds: Thresholds = Thresholds(), evidence_months: int = 1) -> GuardDecision:
    """Promote, refuse, or keep waiting for evidence (see the module docstring for the rule).

    vs_*: candidate - that model in `thresholds.primary_metric`, on the same origins. For the
    pooled adapter's own candidates, `pooled` is its production: pass it as `pooled` and leave
    `production` None. evidence_months: calendar months the evidence span covers (a pending
    challenger's grows by one each month).
    """
    _check_same_span(candidate, pooled, production, base)
    metric = thresholds.primary_metric
    reference, vs_reference = (("pooled", vs_pooled) if pooled is not None
                               else ("base", vs_base) if base is not None else (None, None))
    reference_figures = pooled if reference == "pooled" else base

    outcome, reason, evidence = _judge(candidate, reference, reference_figures, vs_reference, production,
                                       vs_production, thresholds, evidence_months)
    regression = production is not None and (
        not math.isfinite(candidate.val_mae)
        or (candidate.val_mae > production.val_mae * (1 + thresholds.regression_alert_ratio)
            and _significantly_above_zero(vs_production)))
    if outcome == PROMOTED and regression and thresholds.refuse_on_regression:
        outcome, reason = REFUSED, (f"{reason}, but val_mae {_fmt(candidate.val_mae)} is more than "
                                    f"{thresholds.regression_alert_ratio:.0%} worse than the prior production's "
                                    f"{_fmt(production.val_mae)}")
    if outcome == PROMOTED and candidate.significantly_worse_than_no_change and thresholds.refuse_negative_skill:
        outcome, reason = REFUSED, (f"{reason}, but it forecasts significantly worse than no change "
                                    f"({candidate.vs_persistence.describe()}) and refuse_negative_skill is on")
    serving = candidate if outcome == PROMOTED else production
    negative_skill = serving is not None and serving.significantly_worse_than_no_change
    miscalibrated = serving is not None and miscalibrated_80(serving.coverage_80, thresholds)
    return GuardDecision(outcome, reason, metric, reference, candidate, reference_figures, production, pooled, base,
                         vs_reference, vs_production, regression, negative_skill, sharpe_change, evidence,
                         miscalibrated)


def miscalibrated_80(coverage_80: float, thresholds: Thresholds) -> bool:
    """80% intervals that cover a share off 80% by more than `miscalibration_points` (NaN: unknown, no)."""
    return math.isfinite(coverage_80) and abs(coverage_80 - 0.8) > thresholds.miscalibration_points + 1e-12


def _as_loss(difference: Difference) -> tuple[float, float, float]:
    """(mean, lo, hi) of `difference` oriented as a loss (below 0: the first is better)."""
    if difference.metric not in HIGHER_IS_BETTER:
        return difference.mean, difference.lo, difference.hi
    return -difference.mean, -difference.hi, -difference.lo


def _significantly_above_zero(difference: Difference | None) -> bool:
    return difference is not None and difference.has_interval and difference.lo > 0


def _judge(candidate, reference, reference_figures, vs_reference, production, vs_production,
           thresholds: Thresholds, evidence_months: int) -> tuple[str, str, Difference | None]:
    metric = thresholds.primary_metric
    if not math.isfinite(candidate.metric(metric)):
        return REFUSED, f"candidate {metric} is {candidate.metric(metric)} (training diverged?)", None
    if reference is None:
        return REFUSED, "no pooled adapter and no base figures to compare with", None
    if not math.isfinite(reference_figures.metric(metric)):
        return REFUSED, f"the {reference} {metric} is {reference_figures.metric(metric)}; cannot judge", vs_reference
    enough = (vs_reference is not None and vs_reference.has_interval
              and vs_reference.horizons >= thresholds.min_horizons)
    if not enough:
        why = (vs_reference.reason if vs_reference is not None and vs_reference.reason
               else f"{vs_reference.horizons if vs_reference else 0:.1f} non-overlapping horizons, fewer than "
                    f"min_horizons {thresholds.min_horizons:g}")
        if evidence_months < thresholds.max_evidence_months:
            return PENDING, (f"not enough evidence against the {reference} yet ({why}) after {evidence_months} "
                             f"month(s); judged again next month on a longer span (at most "
                             f"{thresholds.max_evidence_months})"), vs_reference
        return REFUSED, (f"no evidence against the {reference} after {evidence_months} month(s) ({why}): "
                         "the incumbent keeps serving"), vs_reference
    beats, why = _beats(vs_reference, reference, thresholds)
    if not beats:
        return REFUSED, why, vs_reference
    reasons, evidence = [why], vs_reference
    if production is not None and vs_production is not None:
        beats, why = _beats(vs_production, f"production v{production.version or '?'}", thresholds)
        if not beats:
            return REFUSED, f"{reasons[0]}, but {why}", vs_production
        reasons.append(why)
        if _as_loss(vs_production)[2] > _as_loss(vs_reference)[2]:  # the closer call is the one that decided
            evidence = vs_production
    return PROMOTED, "; ".join(reasons), evidence


def _beats(difference: Difference, other: str, thresholds: Thresholds) -> tuple[bool, str]:
    interval = (f" [{difference.lo:+.3g}, {difference.hi:+.3g}] on {difference.horizons:.1f} horizons"
                if difference.has_interval else "")
    shown = f"{difference.metric} difference {difference.mean:+.3g}{interval}"
    worse_side = "lower" if difference.metric in HIGHER_IS_BETTER else "higher"
    mean, lo, hi = _as_loss(difference)  # below 0: the candidate is better
    if not math.isfinite(mean):
        return False, f"no {difference.metric} difference with the {other}"
    if mean == 0:
        return False, f"ties the {other} ({shown}): a tie keeps the incumbent"
    if mean > 0:
        if difference.has_interval and lo > 0:
            return False, f"is worse than the {other} ({shown})"
        return False, f"does not beat the {other} ({shown}: {worse_side} on average, not significantly)"
    if thresholds.min_confidence and not (difference.has_interval and hi < 0):
        return False, f"is not significantly better than the {other} ({shown} reaches 0)"
    return True, f"beats the {other} ({shown})"


@dataclass(frozen=True)
class IncumbentDecision:
    withdraw: bool
    reason: str
    production: EvalFigures
    fallback: EvalFigures
    fallback_name: str  # "pooled" | "base": what the predictor would serve instead
    difference: Difference | None  # production - fallback, primary metric

    def as_tags(self) -> dict[str, str]:
        tags = {"incumbent_decision": "withdrawn" if self.withdraw else "kept", "incumbent_reason": self.reason,
                "incumbent_fallback": self.fallback_name}
        if self.difference is not None:
            tags.update({"vs_fallback_diff": _fmt(self.difference.mean),
                         "vs_fallback_diff_lo": _fmt(self.difference.lo),
                         "vs_fallback_diff_hi": _fmt(self.difference.hi),
                         "vs_fallback_horizons": _fmt(self.difference.horizons)})
        return tags


def decide_incumbent(production: EvalFigures, fallback: EvalFigures, difference: Difference | None,
                     thresholds: Thresholds = Thresholds(), *, fallback_name: str = "pooled") -> IncumbentDecision:
    """Keep or withdraw the serving @production, judged against what would serve instead."""
    _check_same_span(production, fallback)
    version = f"v{production.version}" if production.version else "production"
    span = f"{production.val_start}..{production.val_end}"

    def decided(withdraw: bool, reason: str) -> IncumbentDecision:
        return IncumbentDecision(withdraw, reason, production, fallback, fallback_name, difference)

    if not math.isfinite(production.val_mae):
        return decided(True, f"{version} val_mae is {production.val_mae}")
    limit = fallback.val_mae * (1 + thresholds.withdraw_ratio)
    shown = f"{version} val_mae {_fmt(production.val_mae)} vs {fallback_name}'s {_fmt(fallback.val_mae)} on {span}"
    if production.val_mae <= limit:
        return decided(False, f"{shown}: within {thresholds.withdraw_ratio:.0%}")
    if not thresholds.withdraw_significant:
        return decided(True, f"{shown}: more than {thresholds.withdraw_ratio:.0%} worse")
    if difference is None or not difference.has_interval:
        why = difference.reason if difference is not None else "no paired difference"
        return decided(False, f"{shown}: more than {thresholds.withdraw_ratio:.0%} worse, but no evidence to "
                              f"withdraw on ({why}); it stays")
    if difference.lo > 0:
        return decided(True, f"{shown}: more than {thresholds.withdraw_ratio:.0%} worse, and significantly "
                             f"({difference.describe()})")
    return decided(False, f"{shown}: more than {thresholds.withdraw_ratio:.0%} worse on average, but not "
                          f"significantly ({difference.describe()}); it stays")


@dataclass(frozen=True)
class CalibrationDecision:
    served: bool
    reason: str


def decide_calibration(uncalibrated: dict[float, float], calibrated: dict[float, float], *, span: str
                       ) -> CalibrationDecision:
    """Serve a calibration unless, out of sample (`span`), it moved the coverage of the central
    intervals (level -> share of outcomes inside) further from their levels on average than
    the uncalibrated intervals were. Unknown coverage (NaN) keeps it served."""
    def error(coverage: dict[float, float]) -> float:
        return sum(abs(value - level) for level, value in coverage.items()) / len(coverage)

    shown = ", ".join(f"{level:.0%}: {calibrated[level]:.1%} calibrated vs {uncalibrated[level]:.1%} uncalibrated"
                      for level in sorted(calibrated))
    before, after = error(uncalibrated), error(calibrated)
    if not (math.isfinite(before) and math.isfinite(after)):
        return CalibrationDecision(True, f"coverage on {span} not measured ({shown}); the calibration stays served")
    if after > before:
        return CalibrationDecision(False, f"out of sample on {span} the calibration made coverage worse (mean "
                                          f"error {after:.1%} vs {before:.1%} uncalibrated; {shown}); it is not served")
    return CalibrationDecision(True, f"out of sample on {span} the calibration kept or improved coverage (mean "
                                     f"error {after:.1%} vs {before:.1%} uncalibrated; {shown}); it is served")


def _check_same_span(candidate: EvalFigures, *others: EvalFigures | None) -> None:
    """Figures from different spans are a wiring bug upstream, never a verdict."""
    span = (candidate.val_start, candidate.val_end)
    for other in others:
        if other is None or None in span or None in (other.val_start, other.val_end):
            continue
        if (other.val_start, other.val_end) != span:
            raise ValueError(
                f"guard needs figures from one validation span: candidate {span[0]}..{span[1]}"
                f" vs {other.val_start}..{other.val_end}"
            )


def _fmt(value: float) -> str:
    return f"{value:.6g}"
