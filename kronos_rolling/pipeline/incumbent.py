"""The monthly incumbent check: is the class's @production still worth serving?

Every month, also when no retrain is due, the class's @production and the pooled adapter
are evaluated on the month just closed (the same origins, the same figures as a retrain's
evaluation). A month that retrained already measured both, so its figures are reused;
otherwise this is an evaluation-only MLflow run in `kronos-rolling/<class>` (tag
`kronos.run_kind=incumbent_check`, no training). The pure rule, `registry.guard.
decide_incumbent`, says whether @production is withdrawn: then the predictor falls back to
the pooled adapter, the audit trail and an alert say why, a later retrain may promote
again, and `rollback` puts the withdrawn version back.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from kronos_rolling.data.windows import select_training_window
from kronos_rolling.errors import DataError
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.report import log_evaluation
from kronos_rolling.evaluation.span import SpanEvaluation, evaluate_span
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.references import figures_of, production_source
from kronos_rolling.registry.alerts import DeliveryResult
from kronos_rolling.registry.guard import IncumbentDecision, decide_incumbent
from kronos_rolling.registry.names import POOLED, registered_model_name
from kronos_rolling.registry.promotion import AliasMove, withdraw_production
from kronos_rolling.tracking.adapters import load_forecast_model
from kronos_rolling.tracking.runs import experiment_name, start_run
from kronos_rolling.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class IncumbentCheck:
    decision: IncumbentDecision | None  # None: nothing to check (no production or no pooled, or no data)
    note: str
    evaluation: SpanEvaluation | None = None
    run_id: str | None = None  # the evaluation-only run, when one was made
    move: AliasMove | None = None  # the withdrawal, when there was one
    deliveries: list[DeliveryResult] | None = None


def check_incumbent(label: str, ctx: JobContext, evaluation: SpanEvaluation, versions: dict[str, str]
                    ) -> IncumbentCheck:
    """Apply the rule to figures already measured (production and pooled evaluated on one span)."""
    if "production" not in evaluation.models or "pooled" not in evaluation.models:
        return IncumbentCheck(None, "no production or no pooled adapter to compare", evaluation)
    production = figures_of(evaluation, "production", versions.get("production"))
    pooled = figures_of(evaluation, "pooled", versions.get("pooled"))
    difference = evaluation.difference("production", "pooled", ctx.thresholds.primary_metric)
    decision = decide_incumbent(production, pooled, difference, ctx.thresholds)
    check = IncumbentCheck(decision, decision.reason, evaluation)
    log.info("%s: incumbent check: %s", registered_model_name(label), decision.reason)
    if decision.withdraw:
        check.move = withdraw_production(
            ctx.client, label, f"incumbent check: {decision.reason}", lock_dir=ctx.lock_dir, actor=ctx.actor,
            webhook=ctx.webhook, alert_fields={"production_val_mae": production.val_mae,
                                               "pooled_val_mae": pooled.val_mae})
        check.deliveries = list(check.move.deliveries)
    return check


def incumbent_step(label: str, ctx: JobContext, as_of: date, eval_settings: EvalSettings | None = None
                   ) -> IncumbentCheck:
    """The check on its own: an evaluation-only run on the month before `as_of`."""
    if label == POOLED:
        return IncumbentCheck(None, "the pooled adapter is the fallback itself")
    with tempfile.TemporaryDirectory(prefix="kronos-adapter-") as scratch:  # removed however this ends
        return _incumbent(label, ctx, as_of, eval_settings, Path(scratch))


def _incumbent(label: str, ctx: JobContext, as_of: date, eval_settings: EvalSettings | None,
               scratch: Path) -> IncumbentCheck:
    production = production_source(ctx.tracking, label, scratch)
    pooled = production_source(ctx.tracking, POOLED, scratch)
    if production is None or pooled is None:
        return IncumbentCheck(None, f"{'no production' if production is None else 'no pooled adapter'} to check")
    window = select_training_window(as_of)
    # The adapter's own lookback and horizon, as trained; else the evaluation's, else the training defaults.
    fallback = eval_settings or TrainConfig
    lookback = int(production.metadata.get("lookback", 0)) or fallback.lookback
    horizon = int(production.metadata.get("horizon", 0)) or fallback.horizon
    settings = replace(eval_settings, lookback=lookback, horizon=horizon) if eval_settings else EvalSettings(
        lookback=lookback, horizon=horizon)
    production_model = load_forecast_model(production)
    models = {"production": production_model, "pooled": load_forecast_model(pooled)}
    try:
        evaluation = evaluate_span(ctx.store, [label], window.val_span, models, settings, production_model.vocabulary)
    except DataError as exc:
        return IncumbentCheck(None, f"no data to check on: {exc}")
    versions = {"production": production.version, "pooled": pooled.version}
    with start_run(ctx.tracking, experiment_name(label), run_name=f"{label}-{as_of}-incumbent-check") as run:
        run.set_tags({"kronos.run_kind": "incumbent_check", "asset_class": label, "as_of": str(as_of),
                      "production_version": production.version, "pooled_version": pooled.version})
        run.log_params({"as_of": str(as_of), "val_start": window.val_start.isoformat(),
                        "val_end": window.val_end.isoformat(), "production": production.describe(),
                        "pooled": pooled.describe()})
        log_evaluation(run, evaluation, name="production", primary=ctx.thresholds.primary_metric)
        check = check_incumbent(label, ctx, evaluation, versions)
        check.run_id = run.run_id
        if check.decision is not None:
            run.set_tags(check.decision.as_tags())
    return check
