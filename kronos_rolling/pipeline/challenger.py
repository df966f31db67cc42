"""A challenger waiting for evidence, judged again each month on a longer span.

One month of daily bars at H=16 holds about two non-overlapping horizons: too few for an
interval, so the guard cannot decide a daily class's candidate on its validation month.
Such a candidate stays at @staging as a *pending* challenger (tag guard_decision=pending)
and, instead of retraining, each later month's job evaluates it again beside the class's
@production, the pooled adapter and the bare base, on everything since its validation
month began, all of it out of sample for every model compared:

    challenger's val_start ........ as_of (1st month) ........ as_of (2nd month) ...
    |<-------------------- the evidence span grows by a month -------------------->|

The guard decides once the interval rests on `min_horizons` horizons (one look, so the
error rates are those of a single test); after `max_evidence_months` without enough it
refuses, the incumbent keeps serving, and the audit trail says so. The next month retrains.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from kronos_rolling.data.windows import calendar_months, to_utc
from kronos_rolling.evaluation.config import EvalSettings, settings_for
from kronos_rolling.evaluation.report import log_evaluation
from kronos_rolling.evaluation.span import SpanEvaluation, evaluate_span
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.references import reference_models
from kronos_rolling.pipeline.steps import evaluation_classes, judge_candidate
from kronos_rolling.registry import alerts
from kronos_rolling.registry.alerts import DeliveryResult
from kronos_rolling.registry.client import call, find_version, is_missing
from kronos_rolling.registry.guard import PENDING, GuardDecision
from kronos_rolling.tracking.integrity import fetch_verified
from kronos_rolling.names import STAGING, registered_model_name
from kronos_rolling.registry.promotion import GUARD_DECISION_TAG, AliasMove, apply_guard_decision
from kronos_rolling.tracking.adapters import base_of, calibration_of, load_forecast_model
from kronos_rolling.tracking.runs import evaluations_experiment_name, start_run

log = logging.getLogger(__name__)

JUDGED_AS_OF_TAG = "guard_judged_as_of"  # the last month a pending challenger was judged in


@dataclass
class ChallengerCheck:
    version: str
    decision: GuardDecision
    evaluation: SpanEvaluation
    versions: dict[str, str]  # pooled / production -> the registry versions compared with
    months: int  # calendar months of evidence
    run_id: str
    move: AliasMove
    deliveries: list[DeliveryResult]


def pending_challenger(client, label: str) -> ModelVersion | None:
    """The class's @staging version when the guard left it pending; else None."""
    name = registered_model_name(label)
    try:
        staging = call(f"read {name}", client.get_registered_model, name).aliases.get(STAGING)
    except MlflowException as exc:
        if is_missing(exc):  # no registered model yet: no challenger
            return None
        raise
    version = find_version(client, name, staging) if staging else None
    return version if version is not None and version.tags.get(GUARD_DECISION_TAG) == PENDING else None


def judged_this_month(version: ModelVersion, as_of: date) -> bool:
    return version.tags.get(JUDGED_AS_OF_TAG) == str(as_of)


def challenger_step(label: str, ctx: JobContext, as_of: date, version: ModelVersion) -> ChallengerCheck:
    """Evaluate the pending `version` on [its val_start, as_of) and let the guard decide again."""
    with tempfile.TemporaryDirectory(prefix="kronos-adapter-") as scratch:  # removed however this ends
        return _judge(label, ctx, as_of, version, Path(scratch))


def _judge(label: str, ctx: JobContext, as_of: date, version: ModelVersion, scratch: Path) -> ChallengerCheck:
    name = registered_model_name(label)
    source = fetch_verified(f"models:/{name}/{version.version}", ctx.tracking, scratch / "challenger")
    metadata = source.metadata
    chosen = EvalSettings(**metadata["eval"])  # exactly how its validation month was scored
    settings = settings_for(chosen.lookback, chosen.horizon, chosen, ctx.thresholds)
    span = (to_utc(metadata["val_start"]), to_utc(as_of))
    months = calendar_months(span[0], as_of)
    challenger = load_forecast_model(source)
    refs = reference_models(ctx.tracking, label, base_of(source), scratch)
    classes = [c for c in evaluation_classes(label) if ctx.store.symbols_for(c)]
    calibrations = {**refs.calibrations, **({"candidate": own} if (own := calibration_of(source)) else {})}
    evaluation = evaluate_span(ctx.store, classes, span, {"candidate": challenger, **refs.models}, settings,
                               challenger.vocabulary, calibrations)
    decision = judge_candidate(evaluation, label, refs.versions, ctx.thresholds, evidence_months=months)
    with start_run(ctx.tracking, evaluations_experiment_name(label),
                   run_name=f"{label}-{as_of}-challenger-v{version.version}") as run:
        run.set_tags({"kronos.run_kind": "challenger_check", "asset_class": label, "as_of": str(as_of),
                      "challenger_version": version.version, **decision.as_tags()})
        run.log_params({"as_of": str(as_of), "val_start": span[0].isoformat(), "val_end": span[1].isoformat(),
                        "evidence_months": months, "challenger": source.describe()})
        log_evaluation(run, evaluation, primary=ctx.thresholds.primary_metric)
    move = apply_guard_decision(ctx.client, name, version.version, decision, lock_dir=ctx.lock_dir,
                                actor=ctx.actor)
    ctx.client.set_model_version_tag(name, version.version, JUDGED_AS_OF_TAG, str(as_of))
    deliveries = alerts.send_guard_alerts(decision, name, version.version, ctx.webhook)
    log.info("%s v%s (challenger, %d month(s) of evidence): %s", name, version.version, months, decision.describe())
    return ChallengerCheck(version.version, decision, evaluation, refs.versions, months, run.run_id, move, deliveries)
