"""The guard: champion/challenger decisions about `@production`, as pure functions.

They take figures measured by the evaluation on ONE validation span, with paired
differences (candidate - other, per origin, same origins, with an interval) in the
primary metric (`Thresholds.primary_metric`: val_mae, val_nll or val_crps; lower is
better):

decide_promotion (after a retrain):
  1. A candidate whose primary metric is not finite (a diverged run) is refused.
  2. The reference is the pooled production adapter, else the bare base (what the predictor
     would serve instead); with neither there is nothing to beat: refused.
  3. No interval for the difference with the reference, or fewer origins than
     `min_origins`: no evidence, no promotion.
  4. The candidate must beat the reference: mean difference < 0. Exactly 0 is a tie, and a
     tie never promotes. With `min_confidence`, the whole interval must lie below 0.
  5. With a production version (other than the reference), the candidate must also beat it
     the same way: a candidate worse than, or tied with, what serves now does not replace it.
  6. Alerts: `regression` when candidate val_mae exceeds the production's by more than
     `regression_alert_ratio` (refused too with `refuse_on_regression`); `negative_skill`
     when the version about to serve (the candidate if promoted, else production)
     forecasts worse than no change (val_mae_skill < 0); with `refuse_negative_skill` such a
     candidate is refused.

decide_incumbent (every month, also when no retrain is due):
  withdraw @production when its val_mae is more than `withdraw_ratio` above the pooled
  adapter's on the month just closed, or (with `min_confidence`) when it is significantly
  worse on the primary metric (the whole interval of production - pooled above 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from kronos_rolling.evaluation.compare import Difference
from kronos_rolling.settings import Thresholds


@dataclass(frozen=True)
class EvalFigures:
    """One model's figures on the validation span (the evaluation computes them)."""

    val_mae: float
    val_sharpe: float
    val_nll: float = math.nan
    val_crps: float = math.nan
    val_mae_skill: float = math.nan
    origins: int = 0
    val_start: date | None = None  # the span, when known, so mixed spans are caught
    val_end: date | None = None
    version: str | None = None  # the registry version these figures belong to, if any

    def metric(self, name: str) -> float:
        return getattr(self, name)


@dataclass(frozen=True)
class GuardDecision:
    promote: bool
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
    sharpe_change: Difference | None  # candidate - production val_sharpe (the cadence's measure)

    @property
    def sharpe_delta(self) -> float | None:
        return None if self.sharpe_change is None else self.sharpe_change.mean

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
            "guard_decision": "promoted" if self.promote else "refused",
            "guard_reason": self.reason,
            "guard_metric": self.metric,
            "guard_reference": self.reference or "none",
            "regression_alert": str(self.regression_alert).lower(),
            "negative_skill_alert": str(self.negative_skill_alert).lower(),
        })
        for label, figures in (("pooled", self.pooled), ("production", self.production), ("base", self.base)):
            if figures is not None:
                tags.update({f"{label}_{f}": _fmt(getattr(figures, f)) for f in FIGURES})
        for label, difference in (("reference", self.vs_reference), ("production", self.vs_production),
                                  ("sharpe", self.sharpe_change)):
            if difference is not None:
                tags[f"vs_{label}_diff"] = _fmt(difference.mean)
                tags[f"vs_{label}_diff_lo"] = _fmt(difference.lo)
                tags[f"vs_{label}_diff_hi"] = _fmt(difference.hi)
        if self.production is not None and self.production.version is not None:
            tags["production_version"] = self.production.version
        if self.sharpe_delta is not None:
            tags["sharpe_delta"] = _fmt(self.sharpe_delta)
        if self.candidate.val_start and self.candidate.val_end:
            tags["val_span"] = f"{self.candidate.val_start}/{self.candidate.val_end}"
        return tags

    def describe(self) -> str:
        """The decision in one sentence, for the version's description and the audit trail."""
        verdict = "Promoted to @production" if self.promote else "Kept in @staging (refused)"
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
            text += " Negative skill against persistence: alert raised."
        return text


FIGURES = ("val_mae", "val_nll", "val_crps", "val_mae_skill", "val_sharpe")


def decide_promotion(candidate: EvalFigures, *, pooled: EvalFigures | None, production: EvalFigures | None,
                     base: EvalFigures | None, vs_pooled: Difference | None, vs_production: Difference | None,
                     vs_base: Difference | None, sharpe_change: Difference | None = None,
                     thresholds: Thresholds = Thresholds()) -> GuardDecision:
    """Promote or refuse a candidate (see the module docstring for the rule).

    vs_*: candidate - that model in `thresholds.primary_metric`, on the same origins. For the
    pooled adapter's own candidates, `pooled` is its production: pass it as `pooled` and leave
    `production` None.
    """
    _check_same_span(candidate, pooled, production, base)
    metric = thresholds.primary_metric
    reference, vs_reference = (("pooled", vs_pooled) if pooled is not None
                               else ("base", vs_base) if base is not None else (None, None))
    reference_figures = pooled if reference == "pooled" else base

    regression = production is not None and (
        not math.isfinite(candidate.val_mae)
        or candidate.val_mae > production.val_mae * (1 + thresholds.regression_alert_ratio))
    promote, reason = _judge(candidate, reference, reference_figures, vs_reference, production, vs_production,
                             thresholds)
    if promote and regression and thresholds.refuse_on_regression:
        promote, reason = False, (f"{reason}, but val_mae {_fmt(candidate.val_mae)} is more than "
                                  f"{thresholds.regression_alert_ratio:.0%} worse than the prior production's "
                                  f"{_fmt(production.val_mae)}")
    if promote and candidate.val_mae_skill < 0 and thresholds.refuse_negative_skill:
        promote, reason = False, (f"{reason}, but it forecasts worse than no change (val_mae_skill "
                                  f"{_fmt(candidate.val_mae_skill)}) and refuse_negative_skill is on")
    serving = candidate if promote else production
    negative_skill = serving is not None and serving.val_mae_skill < 0
    return GuardDecision(promote, reason, metric, reference, candidate, reference_figures, production, pooled, base,
                         vs_reference, vs_production, regression, negative_skill, sharpe_change)


def _judge(candidate, reference, reference_figures, vs_reference, production, vs_production,
           thresholds: Thresholds) -> tuple[bool, str]:
    metric = thresholds.primary_metric
    if not math.isfinite(candidate.metric(metric)):
        return False, f"candidate {metric} is {candidate.metric(metric)} (training diverged?)"
    if reference is None:
        return False, "no pooled adapter and no base figures to compare with"
    if not math.isfinite(reference_figures.metric(metric)):
        return False, f"the {reference} {metric} is {reference_figures.metric(metric)}; cannot judge"
    if vs_reference is None or not vs_reference.has_interval or vs_reference.origins < thresholds.min_origins:
        why = (vs_reference.reason if vs_reference is not None and vs_reference.reason
               else f"{vs_reference.origins if vs_reference else 0} origins, fewer than min_origins "
                    f"{thresholds.min_origins}")
        return False, f"no evidence against the {reference}: {why}"
    beats, why = _beats(vs_reference, reference, thresholds)
    if not beats:
        return False, why
    reasons = [why]
    if production is not None and vs_production is not None:
        beats, why = _beats(vs_production, f"production v{production.version or '?'}", thresholds)
        if not beats:
            return False, f"{reasons[0]}, but {why}"
        reasons.append(why)
    return True, "; ".join(reasons)


def _beats(difference: Difference, other: str, thresholds: Thresholds) -> tuple[bool, str]:
    interval = (f" [{difference.lo:+.3g}, {difference.hi:+.3g}]" if difference.has_interval else "")
    shown = f"{difference.metric} difference {difference.mean:+.3g}{interval}"
    if not math.isfinite(difference.mean):
        return False, f"no {difference.metric} difference with the {other}"
    if difference.mean == 0:
        return False, f"ties the {other} ({shown}): a tie keeps the incumbent"
    if difference.mean > 0:
        if difference.has_interval and difference.lo > 0:
            return False, f"is worse than the {other} ({shown})"
        return False, f"does not beat the {other} ({shown}: higher on average, not significantly)"
    if thresholds.min_confidence and not (difference.has_interval and difference.hi < 0):
        return False, f"is not significantly better than the {other} ({shown} reaches 0; min_confidence is on)"
    return True, f"beats the {other} ({shown})"


@dataclass(frozen=True)
class IncumbentDecision:
    withdraw: bool
    reason: str
    production: EvalFigures
    pooled: EvalFigures
    difference: Difference | None  # production - pooled, primary metric

    def as_tags(self) -> dict[str, str]:
        tags = {"incumbent_decision": "withdrawn" if self.withdraw else "kept", "incumbent_reason": self.reason}
        if self.difference is not None:
            tags.update({"vs_pooled_diff": _fmt(self.difference.mean), "vs_pooled_diff_lo": _fmt(self.difference.lo),
                         "vs_pooled_diff_hi": _fmt(self.difference.hi)})
        return tags


def decide_incumbent(production: EvalFigures, pooled: EvalFigures, difference: Difference | None,
                     thresholds: Thresholds = Thresholds()) -> IncumbentDecision:
    """Keep or withdraw the serving @production, judged against pooled on the month just closed."""
    _check_same_span(production, pooled)
    version = f"v{production.version}" if production.version else "production"
    limit = pooled.val_mae * (1 + thresholds.withdraw_ratio)
    if not math.isfinite(production.val_mae):
        return IncumbentDecision(True, f"{version} val_mae is {production.val_mae}", production, pooled, difference)
    if production.val_mae > limit:
        return IncumbentDecision(True, (
            f"{version} val_mae {_fmt(production.val_mae)} is more than {thresholds.withdraw_ratio:.0%} above "
            f"pooled's {_fmt(pooled.val_mae)} on {production.val_start}..{production.val_end}"),
            production, pooled, difference)
    if (thresholds.min_confidence and difference is not None and difference.has_interval
            and difference.lo > 0):
        return IncumbentDecision(True, (
            f"{version} is significantly worse than pooled: {difference.describe()} (min_confidence is on)"),
            production, pooled, difference)
    return IncumbentDecision(False, (
        f"{version} val_mae {_fmt(production.val_mae)} is within {thresholds.withdraw_ratio:.0%} of pooled's "
        f"{_fmt(pooled.val_mae)}"), production, pooled, difference)


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
