"""The monthly job for one class (or pooled): due? -> train -> register -> guard -> retention.

A refusal is a decision, not a failure. A failure sends a `job_failed` alert and is
raised again, after the registry has been left as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.pipeline.context import JobContext
from kronos_rolling.pipeline.incumbent import (
    IncumbentCheck,
    check_incumbent,
    incumbent_step,
)
from kronos_rolling.pipeline.steps import (
    TrainOutcome,
    guard_step,
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
from kronos_rolling.registry.names import POOLED
from kronos_rolling.registry.schedule import retrain_due
from kronos_rolling.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    label: str
    as_of: str
    due: bool
    reason: str
    version: str | None = None
    decision: GuardDecision | None = None
    retention: RetentionReport | None = None
    outcome: TrainOutcome | None = None
    alerts: list[DeliveryResult] = field(default_factory=list)  # deliveries of the guard's alerts
    incumbent: IncumbentCheck | None = None  # the monthly check of @production against pooled

    @property
    def promoted(self) -> bool:
        return self.decision is not None and self.decision.promote


def monthly_job(config: TrainConfig, ctx: JobContext, *, warm_start: str | None = "auto",
                eval_settings: EvalSettings | None = None, check_due: bool = True, progress: bool = True,
                wait_for_lock: bool = True, launcher_run_id: str | None = None) -> JobResult:
    """One class (or pooled), one month: due? -> train -> register -> guard -> incumbent check
    -> retention. Not due: the incumbent check alone (an evaluation-only run).

    A refusal is a decision, not a failure. A failure sends a `job_failed` alert and is
    raised again, after the registry has been left as it was.
    """
    as_of_day = pd.Timestamp(config.as_of).date()
    label = config.label
    try:
        if check_due and label != POOLED:
            due = retrain_due(ctx.client, label, as_of_day, ctx.thresholds)
            if not due.due:
                log.info("%s: not due on %s: %s", label, as_of_day, due.reason)
                incumbent = incumbent_step(label, ctx, as_of_day, eval_settings)
                return JobResult(label, config.as_of, False, due.reason, incumbent=incumbent)
            reason = due.reason
        else:
            reason = "pooled adapter (trained on demand)" if label == POOLED else "due check skipped"
        outcome = train_step(config, ctx, warm_start=warm_start, eval_settings=eval_settings, progress=progress,
                             wait_for_lock=wait_for_lock, launcher_run_id=launcher_run_id)
        if outcome is None:  # a non-zero rank of a distributed run
            return JobResult(label, config.as_of, True, reason)
        version = register_step(outcome, ctx)
        decision, conclusion = guard_step(outcome, version, ctx, as_of=as_of_day)
        incumbent = None
        if not decision.promote and label != POOLED:  # the production that stays is checked on the same figures
            incumbent = check_incumbent(label, ctx, outcome.evaluation, outcome.compared_versions)
        retention = retention_step(label, ctx)
    except Exception as exc:
        alert_job_failed(label, config.as_of, exc, ctx.webhook)
        raise
    return JobResult(label, config.as_of, True, reason, version, decision, retention, outcome,
                     conclusion.deliveries, incumbent)


def alert_job_failed(label: str, as_of: str, exc: BaseException, webhook: str | None) -> DeliveryResult:
    """The `job_failed` alert: what failed, for which class and month, and why."""
    return alerts.send_alert(alerts.JOB_FAILED, f"kronos-rolling {label} retrain as of {as_of} failed: {exc}",
                             {"asset_class": label, "as_of": as_of, "error": f"{type(exc).__name__}: {exc}"},
                             webhook)
