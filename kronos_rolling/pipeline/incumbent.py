"""The monthly incumbent check: is the class's @production still worth serving?

Every month, also when no retrain is due, the class's @production is evaluated beside what
the predictor would serve without it (the pooled adapter, else the bare base) on the months
since it was chosen: the month just closed, extended back month by month until the origins
hold `min_horizons` non-overlapping horizons (daily bars at H=16 hold about two a month),
but never back into the month that selected it, nor into the fallback's own training, and
at most `max_evidence_months`:

    as_of - k months ............................................. as_of
    |<-- evidence span: out of sample for production and for the fallback -->|
    never before production's as_of (its validation month chose it) or pooled's

A month that retrained already measured both on its validation month; when that is the
evidence span, its figures are reused. Otherwise this is an evaluation-only MLflow run in
`kronos-rolling/<class>/evaluations` (tag `kronos.run_kind=incumbent_check`, no training), apart
from the class's retrains. The pure
rule, `registry.guard.decide_incumbent`, says whether @production is withdrawn: then the
predictor falls back, the audit trail and an alert say why, a later retrain may promote
again, and `rollback` puts the withdrawn version back.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from kronos_rolling.data.windows import to_utc
from kronos_rolling.errors import DataError
from kronos_rolling.evaluation.config import EvalSettings, settings_for
from kronos_rolling.evaluation.report import log_evaluation
from kronos_rolling.evaluation.span import SpanEvaluation, evaluate_span, span_horizons
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.references import fallback_name, figures_of, production_source
from kronos_rolling.registry.alerts import DeliveryResult
from kronos_rolling.registry.guard import IncumbentDecision, decide_incumbent
from kronos_rolling.names import POOLED, registered_model_name
from kronos_rolling.registry.promotion import AliasMove, withdraw_production
from kronos_rolling.tracking.adapters import base_of, calibration_of, load_base_forecast_model, load_forecast_model
from kronos_rolling.tracking.runs import evaluations_experiment_name, start_run
from kronos_rolling.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class IncumbentCheck:
    decision: IncumbentDecision | None  # None: nothing to check (no production, or no data)
    note: str
    evaluation: SpanEvaluation | None = None
    run_id: str | None = None  # the evaluation-only run, when one was made
    move: AliasMove | None = None  # the withdrawal, when there was one
    deliveries: list[DeliveryResult] | None = None
    versions: dict[str, str] = field(default_factory=dict)  # production / pooled -> the registry versions evaluated


def check_incumbent(label: str, ctx: JobContext, evaluation: SpanEvaluation, versions: dict[str, str]
                    ) -> IncumbentCheck:
    """Apply the rule to figures already measured: production and its fallback on one span."""
    fallback = fallback_name(evaluation)
    if "production" not in evaluation.models or fallback is None:
        return IncumbentCheck(None, "no production, or nothing it would fall back to, to compare", evaluation,
                              versions=versions)
    production = figures_of(evaluation, "production", versions.get("production"))
    fallback_figures = figures_of(evaluation, fallback, versions.get(fallback))
    difference = evaluation.difference("production", fallback, "val_mae")  # the phase rule is about val_mae
    decision = decide_incumbent(production, fallback_figures, difference, ctx.thresholds, fallback_name=fallback)
    check = IncumbentCheck(decision, decision.reason, evaluation, versions=versions)
    log.info("%s: incumbent check: %s", registered_model_name(label), decision.reason)
    if decision.withdraw:
        check.move = withdraw_production(
            ctx.client, label, f"incumbent check: {decision.reason}", lock_dir=ctx.lock_dir, actor=ctx.actor,
            webhook=ctx.webhook, alert_fields={"production_val_mae": production.val_mae,
                                               f"{fallback}_val_mae": fallback_figures.val_mae,
                                               "fallback": fallback})
        check.deliveries = list(check.move.deliveries)
    return check


def evidence_span(ctx: JobContext, label: str, as_of: date, earliest: pd.Timestamp,
                  settings: EvalSettings, vocabulary) -> tuple[tuple[pd.Timestamp, pd.Timestamp], int]:
    """([start, as_of), months): the month just closed, extended back a month at a time until its
    origins hold `min_horizons` horizons, but not before `earliest` nor past `max_evidence_months`."""
    thresholds, end = ctx.thresholds, to_utc(as_of)
    for months in range(1, thresholds.max_evidence_months + 1):
        span = (max(end - pd.DateOffset(months=months), earliest), end)
        if span[0] <= earliest or span_horizons(ctx.store, [label], span, settings,
                                                vocabulary) >= thresholds.min_horizons:
            break
    return span, months


def incumbent_step(label: str, ctx: JobContext, as_of: date, eval_settings: EvalSettings | None = None, *,
                   measured: SpanEvaluation | None = None, versions: dict[str, str] | None = None
                   ) -> IncumbentCheck:
    """The check for `as_of`; `measured` (with `versions`): an evaluation this month already
    made (a refused retrain's), reused when its span is the evidence span."""
    if label == POOLED:
        return IncumbentCheck(None, "the pooled adapter is the fallback itself")
    with tempfile.TemporaryDirectory(prefix="kronos-adapter-") as scratch:  # removed however this ends
        return _incumbent(label, ctx, as_of, eval_settings, measured, versions, Path(scratch))


def _incumbent(label: str, ctx: JobContext, as_of: date, eval_settings: EvalSettings | None,
               measured: SpanEvaluation | None, versions: dict[str, str] | None, scratch: Path) -> IncumbentCheck:
    production = production_source(ctx.tracking, label, scratch)
    if production is None:
        return IncumbentCheck(None, "no production to check")
    pooled = production_source(ctx.tracking, POOLED, scratch)
    fallback = "pooled" if pooled is not None else "base"
    end = to_utc(as_of)
    chosen = [to_utc(s.metadata["as_of"]) for s in (production, pooled) if s is not None and s.metadata.get("as_of")]
    earliest = max(chosen, default=end - pd.DateOffset(months=1))
    if earliest >= end:
        return IncumbentCheck(None, f"{registered_model_name(label)}@production was chosen as of {as_of}: "
                                    "no month since to check it on")
    # The adapter's own lookback and horizon, as trained; else the evaluation's, else the training defaults.
    defaults = eval_settings or TrainConfig
    lookback = int(production.metadata.get("lookback", 0)) or defaults.lookback
    horizon = int(production.metadata.get("horizon", 0)) or defaults.horizon
    settings = settings_for(lookback, horizon, eval_settings, ctx.thresholds)
    production_model = load_forecast_model(production)
    span, months = evidence_span(ctx, label, as_of, earliest, settings, production_model.vocabulary)
    if measured is not None and tuple(measured.span) == span and fallback in measured.models \
            and "production" in measured.models:
        return check_incumbent(label, ctx, measured, versions or {})
    fallback_model = (load_forecast_model(pooled) if pooled is not None
                      else load_base_forecast_model(base_of(production)))
    models = {"production": production_model, fallback: fallback_model}
    calibrations = {name: c for name, c in (("production", calibration_of(production)),
                                            ("pooled", calibration_of(pooled) if pooled is not None else None))
                    if c is not None}
    try:
        evaluation = evaluate_span(ctx.store, [label], span, models, settings, production_model.vocabulary,
                                   calibrations)
    except DataError as exc:
        return IncumbentCheck(None, f"no data to check on: {exc}")
    versions = {"production": production.version, **({"pooled": pooled.version} if pooled is not None else {})}
    with start_run(ctx.tracking, evaluations_experiment_name(label),
                   run_name=f"{label}-{as_of}-incumbent-check") as run:
        run.set_tags({"kronos.run_kind": "incumbent_check", "asset_class": label, "as_of": str(as_of),
                      "production_version": production.version, "fallback": fallback,
                      **({"pooled_version": pooled.version} if pooled is not None else {})})
        run.log_params({"as_of": str(as_of), "val_start": span[0].isoformat(), "val_end": span[1].isoformat(),
                        "evidence_months": months, "production": production.describe(),
                        "fallback": pooled.describe() if pooled is not None else "the bare base"})
        log_evaluation(run, evaluation, name="production", primary=ctx.thresholds.primary_metric)
        check = check_incumbent(label, ctx, evaluation, versions)
        check.run_id = run.run_id
        if check.decision is not None:
            run.set_tags(check.decision.as_tags())
    return check
