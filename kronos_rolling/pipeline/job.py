"""The monthly job for one class (or pooled): due? -> train -> register -> guard -> retention.

A refusal is a decision, not a failure. A failure sends a `job_failed` alert and is
raised again, after the registry has been left as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.samples import (
    EvalSettings,
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
    GarbageCollection,
    RetentionReport,
)
from kronos_rolling.registry.guard import GuardDecision
from kronos_rolling.registry.names import POOLED
from kronos_rolling.registry.schedule import retrain_due
from kronos_rolling.registry.settings import Thresholds
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

    @property
    def promoted(self) -> bool:
        return self.decision is not None and self.decision.promote


def monthly_job(config: TrainConfig, store: DataStore, *, client: MlflowClient | None = None,
                warm_start: str | None = "auto", eval_settings: EvalSettings | None = None,
                gc: GarbageCollection | None = None, keep: int | None = None, check_due: bool = True,
                thresholds: Thresholds | None = None, webhook: str | None = None,
                checkpoint_root: Path | None = None, progress: bool = True,
                wait_for_lock: bool = True) -> JobResult:
    """One class (or pooled), one month: due? -> train -> register -> guard -> retention.

    A refusal is a decision, not a failure. A failure sends a `job_failed` alert and is
    raised again, after the registry has been left as it was.
    """
    client = client or MlflowClient()
    thresholds = thresholds or Thresholds.from_env()
    as_of_day = pd.Timestamp(config.as_of).date()
    label = config.label
    try:
        if check_due and label != POOLED:
            due = retrain_due(client, label, as_of_day, thresholds)
            if not due.due:
                log.info("%s: not due on %s: %s", label, as_of_day, due.reason)
                return JobResult(label, config.as_of, False, due.reason)
            reason = due.reason
        else:
            reason = "pooled adapter (trained on demand)" if label == POOLED else "due check skipped"
        outcome = train_step(config, store, warm_start=warm_start, eval_settings=eval_settings, client=client,
                             checkpoint_root=checkpoint_root, progress=progress, wait_for_lock=wait_for_lock)
        if outcome is None:  # a non-zero rank of a distributed run
            return JobResult(label, config.as_of, True, reason)
        version = register_step(outcome, client)
        decision, conclusion = guard_step(outcome, version, as_of=as_of_day, client=client,
                                          thresholds=thresholds, webhook=webhook)
        retention = retention_step(label, keep=keep, gc=gc, client=client, thresholds=thresholds)
    except Exception as exc:
        alert_job_failed(label, config.as_of, exc, webhook)
        raise
    return JobResult(label, config.as_of, True, reason, version, decision, retention, outcome,
                     conclusion.deliveries)


def alert_job_failed(label: str, as_of: str, exc: BaseException, webhook: str | None = None) -> DeliveryResult:
    """The `job_failed` alert: what failed, for which class and month, and why."""
    return alerts.send_alert(alerts.JOB_FAILED, f"kronos-rolling {label} retrain as of {as_of} failed: {exc}",
                             {"asset_class": label, "as_of": as_of, "error": f"{type(exc).__name__}: {exc}"},
                             webhook)
