"""The monthly job for one class (or pooled): due? -> train -> register -> guard -> retention.

One job per class at a time: a job takes the class lock (locks.class_lock) and, once it
holds it, checks again whether the class already has a version as of this month or is no
longer due; then it exits 0 and says so, instead of training the same month twice.

A class whose last candidate is still pending (the guard had too little evidence, as daily
bars at long horizons do) does not retrain: the month judges the challenger again on a
longer span (pipeline/challenger.py), then checks the incumbent. The pooled adapter is not
retrained monthly, so a pending pooled candidate is judged by the month's first class job.

A refusal is a decision, not a failure. A failure sends a `job_failed` alert and is
raised again, after the registry has been left as it was.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import date
from dataclasses import dataclass, field


from mlflow.exceptions import MlflowException

from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.locks import class_lock
from kronos_rolling.pipeline.challenger import (
    ChallengerCheck,
    challenger_step,
    judged_this_month,
    pending_challenger,
)
from kronos_rolling.pipeline.calibrate import CalibrationCheck, calibration_step
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.incumbent import IncumbentCheck, incumbent_step
from kronos_rolling.evaluation.config import settings_for
from kronos_rolling.pipeline.steps import (
    TrainOutcome,
    device_lock,
    evaluate_step,
    guard_step,
    log_model_step,
    register_step,
    retention_step,
    train_step,
)
from kronos_rolling.registry import alerts
from kronos_rolling.registry.alerts import DeliveryResult
from kronos_rolling.registry.cleanup import (
    RetentionReport,
)
from kronos_rolling.registry.guard import GuardDecision
from kronos_rolling.registry.client import is_missing, list_versions
from kronos_rolling.names import POOLED, registered_model_name
from kronos_rolling.registry.schedule import retrain_due
from kronos_rolling.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    label: str
    as_of: date
    due: bool
    reason: str
    version: str | None = None
    decision: GuardDecision | None = None
    retention: RetentionReport | None = None
    outcome: TrainOutcome | None = None
    alerts: list[DeliveryResult] = field(default_factory=list)  # deliveries of the guard's alerts
    incumbent: IncumbentCheck | None = None  # the monthly check of @production against its fallback
    challenger: ChallengerCheck | None = None  # a pending challenger judged again instead of a retrain
    pooled_challenger: ChallengerCheck | None = None  # a pending pooled candidate this job judged first
    calibration: list[CalibrationCheck] = field(default_factory=list)  # serving calibrations checked out of sample

    @property
    def promoted(self) -> bool:
        return self.decision is not None and self.decision.promote


def monthly_job(config: TrainConfig, ctx: JobContext, *, warm_start: str | None = "auto",
                eval_settings: EvalSettings | None = None, check_due: bool = True, progress: bool = True,
                wait_for_lock: bool = True, launcher_run_id: str | None = None, register: bool = True) -> JobResult:
    """One class (or pooled), one month: due? -> train -> evaluate -> register -> guard ->
    incumbent check -> retention. Not due: the incumbent check alone (an evaluation-only run).
    A pending challenger: judged again instead of a retrain. register=False: train and
    evaluate only (one run, nothing registered).

    eval_settings: the evaluation's choices (paths, cap, cost); its window is the model's.

    A refusal is a decision, not a failure. A failure sends a `job_failed` alert and is
    raised again, after the registry has been left as it was.
    """
    as_of, label = config.as_of, config.label
    try:
        pooled_check = None
        if check_due and label != POOLED and ctx.distributed.is_main and pending_challenger(ctx.client, POOLED):
            pooled_check = _judge_challenger(POOLED, as_of, ctx, eval_settings, wait_for_lock).challenger
        if check_due and ctx.distributed.is_main and pending_challenger(ctx.client, label):
            result = _judge_challenger(label, as_of, ctx, eval_settings, wait_for_lock)
            result.pooled_challenger = pooled_check
            return result
        if check_due and label != POOLED:
            due = retrain_due(ctx.client, label, as_of, ctx.thresholds)
            if not due.due:
                log.info("%s: not due on %s: %s", label, as_of, due.reason)
                incumbent = incumbent_step(label, ctx, as_of, eval_settings)
                checks = (calibration_step(label, ctx, incumbent.evaluation, incumbent.versions)
                          if incumbent.evaluation is not None else [])
                return JobResult(label, as_of, False, due.reason, incumbent=incumbent,
                                 pooled_challenger=pooled_check, calibration=checks)
            reason = due.reason
        else:
            reason = "pooled adapter (trained on demand)" if label == POOLED else "due check skipped"
        lock = (class_lock(ctx.lock_dir, label, wait=wait_for_lock, job=f"run {label} {as_of}")
                if ctx.distributed.is_main else contextlib.nullcontext())
        with lock:
            if check_due and label != POOLED and ctx.distributed.is_main:
                done = already_done(ctx, label, as_of)
                if done is not None:  # another job did this month while we waited for the lock
                    log.info("%s as of %s: nothing to do: %s", label, as_of, done)
                    return JobResult(label, as_of, False, done)
            result = _train_and_decide(config, ctx, reason, warm_start=warm_start,
                                       eval_settings=eval_settings, progress=progress, wait_for_lock=wait_for_lock,
                                       launcher_run_id=launcher_run_id, register=register)
            result.pooled_challenger = pooled_check
            return result
    except Exception as exc:
        alert_job_failed(label, as_of, exc, ctx.webhook)
        raise


def already_done(ctx: JobContext, label: str, as_of: date) -> str | None:
    """Why this class and month need no job any more (read under the class lock), or None."""
    name = registered_model_name(label)
    same_month = [v.version for v in list_versions_if_any(ctx.client, name) if v.tags.get("as_of") == str(as_of)]
    if same_month:
        return (f"another job already registered {name} v{max(same_month, key=int)} as of {as_of}; "
                "this one exits without training")
    due = retrain_due(ctx.client, label, as_of, ctx.thresholds)
    if not due.due:
        return f"no longer due (another job retrained meanwhile): {due.reason}; this one exits without training"
    return None


def _judge_challenger(label: str, as_of: date, ctx: JobContext, eval_settings, wait_for_lock) -> JobResult:
    """The pending challenger judged again (under the class lock, once a month), then the incumbent check."""
    with class_lock(ctx.lock_dir, label, wait=wait_for_lock, job=f"judge {label} challenger {as_of}"):
        version = pending_challenger(ctx.client, label)
        if version is None or judged_this_month(version, as_of):
            why = ("another job judged the challenger meanwhile" if version is None
                   else f"challenger v{version.version} was judged as of {as_of} already")
            return JobResult(label, as_of, False, f"{why}; this one exits")
        check = challenger_step(label, ctx, as_of, version)
        incumbent = None
        if not check.decision.promote:
            incumbent = incumbent_step(label, ctx, as_of, eval_settings, measured=check.evaluation,
                                       versions=check.versions)
    reason = f"challenger v{check.version} pending: judged again on {check.months} month(s) of evidence"
    return JobResult(label, as_of, False, reason, check.version, check.decision, alerts=check.deliveries,
                     incumbent=incumbent, challenger=check,
                     calibration=calibration_step(label, ctx, check.evaluation, check.versions))


def list_versions_if_any(client, name: str):
    try:
        return list_versions(client, name)
    except MlflowException as exc:
        if is_missing(exc):
            return []
        raise


def _train_and_decide(config: TrainConfig, ctx: JobContext, reason: str, *, warm_start, eval_settings,
                      progress, wait_for_lock, launcher_run_id, register: bool = True) -> JobResult:
    """train -> evaluate -> log the model (holding the device) -> register -> guard -> incumbent
    check -> retain."""
    label, as_of = config.label, config.as_of
    eval_settings = settings_for(config.lookback, config.horizon, eval_settings, ctx.thresholds)
    with device_lock(config, ctx, wait=wait_for_lock) as scratch:
        trained = train_step(config, ctx, eval_settings, scratch, warm_start=warm_start, progress=progress,
                             launcher_run_id=launcher_run_id)
        if trained is None:  # a non-zero rank of a distributed run: rank 0 does the rest
            return JobResult(label, as_of, True, reason)
        evaluated = evaluate_step(trained, ctx, eval_settings, scratch)
        outcome = log_model_step(trained, evaluated, ctx)
    if not register:
        return JobResult(label, as_of, True, reason, outcome=outcome)
    version = register_step(outcome, ctx)
    decision, conclusion = guard_step(outcome, version, ctx)
    checks = calibration_step(label, ctx, outcome.evaluation, outcome.compared_versions)
    incumbent = None
    if not decision.promote and label != POOLED:  # the production that stays is checked (on these figures
        incumbent = incumbent_step(label, ctx, as_of, eval_settings,  # when the spans agree)
                                   measured=outcome.evaluation, versions=outcome.compared_versions)
    retention = retention_step(label, ctx)
    return JobResult(label, as_of, True, reason, version, decision, retention, outcome,
                     conclusion.deliveries, incumbent, calibration=checks)


def alert_job_failed(label: str, as_of: date, exc: BaseException, webhook: str | None) -> DeliveryResult:
    """The `job_failed` alert: what failed, for which class and month, and why."""
    return alerts.send_alert(alerts.JOB_FAILED, f"kronos-rolling {label} retrain as of {as_of} failed: {exc}",
                             {"asset_class": label, "as_of": str(as_of), "error": f"{type(exc).__name__}: {exc}"},
                             webhook)


def alert_classes_failed(classes: list[str], as_of: date, webhook: str | None) -> DeliveryResult:
    """The schedule's own alert (`kronos-rolling cron failed`): which classes of this month's job
    failed, also when no job could say so (a server that refused `mlflow run`, a process killed)."""
    return alerts.send_alert(
        alerts.JOB_FAILED,
        f"kronos-rolling monthly job as of {as_of}: {', '.join(classes)} failed; see the job's log and "
        f"the runs in kronos-rolling/<class>", {"as_of": str(as_of), "failed_classes": ", ".join(classes)}, webhook)
