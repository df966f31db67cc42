"""The regression guard: should a candidate version take over `@production`?

A pure function of figures measured by the evaluation on ONE validation span:

- Reference: the pooled production adapter. When a class has no pooled adapter in
  production yet, the reference is the bare base model (zero-shot), which is exactly
  what the predictor would serve instead (its fallback chain ends at the base). With
  neither figure there is nothing to beat, and the guard refuses: promoting an
  unjudged adapter is worse than serving none.
- Promote when candidate val_mae <= reference val_mae * (1 + promote_mae_tolerance).
  The class's current production version never decides promotion (so the first version
  of a class, which has none, is judged exactly like later ones); it drives the
  regression alert: candidate val_mae more than `regression_alert_ratio` above the
  prior production's. With `refuse_on_regression` that alert also refuses.
- A candidate whose val_mae is not a finite number (a diverged run) is refused; a
  reference that is not finite cannot be beaten, so that refuses too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from kronos_rolling.settings import Thresholds


@dataclass(frozen=True)
class EvalFigures:
    """One model's figures on the validation span (the evaluation computes them)."""

    val_mae: float
    val_sharpe: float
    val_start: date | None = None  # the span, when known, so mixed spans are caught
    val_end: date | None = None
    version: str | None = None  # the registry version these figures belong to, if any


@dataclass(frozen=True)
class GuardDecision:
    promote: bool
    reason: str
    regression_alert: bool
    reference: str | None  # "pooled" | "base" | None
    candidate: EvalFigures
    reference_figures: EvalFigures | None
    production: EvalFigures | None
    pooled: EvalFigures | None
    base: EvalFigures | None
    sharpe_delta: float | None  # candidate - production val_sharpe; None without production
    mae_change_vs_production: float | None  # candidate / production val_mae - 1

    def as_tags(self) -> dict[str, str]:
        """Version tags that record the decision and every figure it used."""
        tags = {
            "val_mae": _fmt(self.candidate.val_mae),
            "val_sharpe": _fmt(self.candidate.val_sharpe),
            "guard_decision": "promoted" if self.promote else "refused",
            "guard_reason": self.reason,
            "guard_reference": self.reference or "none",
            "regression_alert": str(self.regression_alert).lower(),
        }
        for label, figures in (("pooled", self.pooled), ("production", self.production),
                               ("base", self.base)):
            if figures is not None:
                tags[f"{label}_val_mae"] = _fmt(figures.val_mae)
                tags[f"{label}_val_sharpe"] = _fmt(figures.val_sharpe)
        if self.production is not None and self.production.version is not None:
            tags["production_version"] = self.production.version
        if self.sharpe_delta is not None:
            tags["sharpe_delta"] = _fmt(self.sharpe_delta)
        if self.candidate.val_start and self.candidate.val_end:
            tags["val_span"] = f"{self.candidate.val_start}/{self.candidate.val_end}"
        return tags

    def describe(self) -> str:
        """The decision in one sentence, for the version's description."""
        verdict = "Promoted to @production" if self.promote else "Kept in @staging (refused)"
        text = f"{verdict}: {self.reason}."
        if self.production is not None:
            change = ("" if self.mae_change_vs_production is None
                      else f" (candidate {self.mae_change_vs_production:+.1%})")
            text += (f" Prior production val_mae {_fmt(self.production.val_mae)}{change},"
                     f" val_sharpe change {self.sharpe_delta:+.4f}.")
        if self.regression_alert:
            text += " Regression alert raised."
        return text


def decide_promotion(candidate: EvalFigures, pooled: EvalFigures | None,
                     production: EvalFigures | None, thresholds: Thresholds = Thresholds(),
                     base: EvalFigures | None = None) -> GuardDecision:
    _check_same_span(candidate, pooled, production, base)
    reference_name, reference = ("pooled", pooled) if pooled is not None else (
        ("base", base) if base is not None else (None, None))

    sharpe_delta = mae_change = None
    regression = False
    if production is not None:
        sharpe_delta = candidate.val_sharpe - production.val_sharpe
        if production.val_mae > 0 and math.isfinite(candidate.val_mae):
            mae_change = candidate.val_mae / production.val_mae - 1
        # A non-finite candidate is a regression against any finite production.
        regression = not math.isfinite(candidate.val_mae) or (
            candidate.val_mae > production.val_mae * (1 + thresholds.regression_alert_ratio))

    promote, reason = _judge(candidate, reference_name, reference, thresholds)
    if promote and regression and thresholds.refuse_on_regression:
        promote = False
        reason = (f"{reason}, but val_mae {_fmt(candidate.val_mae)} is more than "
                  f"{thresholds.regression_alert_ratio:.0%} worse than the prior production's "
                  f"{_fmt(production.val_mae)}")
    return GuardDecision(
        promote=promote, reason=reason, regression_alert=regression,
        reference=reference_name, candidate=candidate, reference_figures=reference,
        production=production, pooled=pooled, base=base,
        sharpe_delta=sharpe_delta, mae_change_vs_production=mae_change,
    )


def _judge(candidate: EvalFigures, reference_name: str | None, reference: EvalFigures | None,
           thresholds: Thresholds) -> tuple[bool, str]:
    if not math.isfinite(candidate.val_mae):
        return False, f"candidate val_mae is {candidate.val_mae} (training diverged?)"
    if reference is None:
        return False, "no pooled adapter and no base figures to compare with"
    if not math.isfinite(reference.val_mae):
        return False, f"the {reference_name} val_mae is {reference.val_mae}; cannot judge"
    limit = reference.val_mae * (1 + thresholds.promote_mae_tolerance)
    tolerance = (f" + {thresholds.promote_mae_tolerance:.1%} tolerance"
                 if thresholds.promote_mae_tolerance else "")
    if candidate.val_mae <= limit:
        return True, (f"val_mae {_fmt(candidate.val_mae)} <= {reference_name} "
                      f"{_fmt(reference.val_mae)}{tolerance}")
    return False, (f"val_mae {_fmt(candidate.val_mae)} > {reference_name} "
                   f"{_fmt(reference.val_mae)}{tolerance}")


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
