"""What the monthly job does once a candidate version is registered and evaluated.

    mark_staging(...)                      right after registering (before evaluating)
    decision = decide_promotion(...)       figures from the evaluation, same span
    conclude_retrain(...)                  this module: guard -> aliases -> cadence -> alerts
    apply_retention(...)                   registry/cleanup.py

The registry writes come first and the alerts last, so an alert always describes
what really happened; alerts never raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from mlflow import MlflowClient

from kronos_rolling.registry import alerts
from kronos_rolling.registry.alerts import DeliveryResult
from kronos_rolling.registry.guard import GuardDecision
from kronos_rolling.registry.history import Actor
from kronos_rolling.names import registered_model_name
from kronos_rolling.registry.promotion import AliasMove, apply_guard_decision
from kronos_rolling.registry.schedule import CadenceUpdate, record_retrain
from kronos_rolling.settings import Thresholds


@dataclass(frozen=True)
class RetrainConclusion:
    move: AliasMove
    cadence: CadenceUpdate
    deliveries: list[DeliveryResult]


def conclude_retrain(client: MlflowClient, asset_class: str, version: str | int,
                     decision: GuardDecision, *, as_of: date, lock_dir: Path, webhook: str | None,
                     thresholds: Thresholds = Thresholds(),
                     actor: Actor | None = None, at: datetime | None = None) -> RetrainConclusion:
    name = registered_model_name(asset_class)
    actor = actor or Actor.current()
    move = apply_guard_decision(client, name, version, decision, lock_dir=lock_dir, actor=actor, at=at)
    change = decision.sharpe_change
    update = record_retrain(client, asset_class, version, as_of, decision.sharpe_delta, lock_dir=lock_dir,
                            thresholds=thresholds, actor=actor, at=at,
                            sharpe_lo=change.lo if change is not None else None,
                            sharpe_hi=change.hi if change is not None else None)
    raised = alerts.guard_alerts(decision, name, version)
    if update.switched:
        raised.append(alerts.Alert(
            alerts.CADENCE_CHANGED,
            f"{name}: cadence {update.before.mode} -> {update.after.mode} ({update.after.reason})",
            {"registered_model": name, "cadence": update.after.mode,
             "since": str(update.after.since), "reason": update.after.reason}))
    deliveries = alerts.send_alerts(raised, webhook, f"{name} v{version}")  # one log line without a webhook
    return RetrainConclusion(move, update, deliveries)
