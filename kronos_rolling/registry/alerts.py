"""Alerts: a JSON POST to the webhook in KRONOS_ALERT_WEBHOOK.

The body is Slack-compatible (`text`, plus the fields as an attachment) and carries the
same facts machine-readably under `kronos` (event, fields). Delivery is retried with
exponential back-off on network errors, 429 and 5xx. An alert never changes the outcome
it reports: a failed delivery is logged at ERROR and returned, not raised.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import urlparse

import requests
import tenacity

from kronos_rolling.registry.client import retrying
from kronos_rolling.registry.guard import GuardDecision
from kronos_rolling.settings import ALERT_RETRY, ALERT_TIMEOUT_S, RetryPolicy

log = logging.getLogger(__name__)

WEBHOOK_ENV = "KRONOS_ALERT_WEBHOOK"

REGRESSION = "regression"
REFUSED = "guard_refused"
JOB_FAILED = "job_failed"
ROLLBACK = "rollback"
WITHDRAWN = "withdrawn"
NEGATIVE_SKILL = "negative_skill"
CADENCE_CHANGED = "cadence_changed"
VERSION_REFUSED = "version_refused"  # a version failed verification (tracking/integrity.py) and does not serve
MISCALIBRATED = "miscalibrated"  # what serves next covers far from 80% with its 80% intervals


@dataclass(frozen=True)
class Alert:
    event: str
    text: str
    fields: dict


@dataclass(frozen=True)
class DeliveryResult:
    event: str
    delivered: bool
    attempts: int
    status: int | None = None  # last HTTP status, if any answer came
    error: str | None = None  # why it was not delivered (or skipped)
    skipped: bool = False  # no webhook configured


def payload(alert: Alert) -> dict:
    return {
        "text": alert.text,
        "attachments": [{
            "color": "danger" if alert.event in (REGRESSION, JOB_FAILED, WITHDRAWN, VERSION_REFUSED) else "warning",
            "fields": [{"title": k, "value": str(v), "short": len(str(v)) < 40}
                       for k, v in alert.fields.items()],
        }],
        "kronos": {"event": alert.event, "fields": alert.fields},
    }


class _Undelivered(Exception):
    """One failed delivery; `retry` says whether another attempt may succeed."""

    def __init__(self, error: str, status: int | None, retry: bool):
        super().__init__(error)
        self.status, self.retry = status, retry


def _post(webhook: str, body: dict, timeout_s: float) -> int:
    try:
        response = requests.post(webhook, data=json.dumps(body, default=str),
                                 headers={"Content-Type": "application/json"}, timeout=timeout_s)
    except requests.RequestException as exc:
        raise _Undelivered(f"{type(exc).__name__}: {exc}", None, retry=True) from exc
    if not 200 <= response.status_code < 300:
        # 429 and 5xx may pass later; any other refusal will not change by repeating it.
        retry = response.status_code == 429 or response.status_code >= 500
        raise _Undelivered(f"HTTP {response.status_code}: {response.text[:200]}", response.status_code, retry)
    return response.status_code


def send_alert(event: str, text: str, fields: dict, webhook: str | None, *,
               retry: RetryPolicy = ALERT_RETRY, timeout_s: float = ALERT_TIMEOUT_S
               ) -> DeliveryResult:
    """POST one alert to `webhook` (KRONOS_ALERT_WEBHOOK); never raises. Without one it is logged."""
    if not webhook:
        log.warning("alert %s not sent (%s is not set): %s", event, WEBHOOK_ENV, text)
        return DeliveryResult(event, False, 0, error=f"{WEBHOOK_ENV} is not set", skipped=True)
    body = payload(Alert(event, text, fields))
    attempts = retrying(retry, tenacity.retry_if_exception(lambda exc: isinstance(exc, _Undelivered) and exc.retry))
    try:
        status = attempts(_post, webhook, body, timeout_s)
        return DeliveryResult(event, True, attempts.statistics["attempt_number"], status)
    except _Undelivered as exc:
        status, error = exc.status, str(exc)
    except Exception as exc:  # noqa: BLE001 - an alert must never raise into its caller
        status, error = None, f"{type(exc).__name__}: {exc}"
    attempt = attempts.statistics.get("attempt_number", 1)
    secret = urlparse(webhook).path
    if len(secret) > 1:  # exception texts repeat the URL; keep its secret out
        error = error.replace(secret, "/...")
    log.error("ALERT NOT DELIVERED after %d attempt(s) to %s: %s | event=%s | %s",
              attempt, _redact(webhook), error, event, text)
    return DeliveryResult(event, False, attempt, status, error)


def guard_alerts(decision: GuardDecision, name: str, version: str | int) -> list[Alert]:
    """The alerts a guard decision calls for: regression, refusal, or none."""
    fields = {"registered_model": name, "version": str(version),
              "candidate_val_mae": decision.candidate.val_mae,
              "reference": decision.reference or "none", "reason": decision.reason}
    if decision.reference_figures is not None:
        fields["reference_val_mae"] = decision.reference_figures.val_mae
    alerts = []
    if decision.regression_alert:
        production = decision.production
        change = ("not a finite number" if decision.mae_change_vs_production is None
                  else f"{decision.mae_change_vs_production:+.1%} against")
        alerts.append(Alert(REGRESSION, (
            f":warning: {name} v{version}: val_mae {decision.candidate.val_mae:.6g} is {change} "
            f"production v{production.version or '?'} ({production.val_mae:.6g}) on the same span"),
            {**fields, "production_version": production.version,
             "production_val_mae": production.val_mae}))
    if not decision.promote and not decision.pending:
        alerts.append(Alert(REFUSED, f":no_entry: {name} v{version} refused by the guard: "
                                     f"{decision.reason}; it stays @staging", fields))
    if decision.negative_skill_alert:
        serving = decision.candidate if decision.promote else decision.production
        who = f"{name} v{version}" if decision.promote else f"{name} production v{serving.version or '?'}"
        alerts.append(Alert(NEGATIVE_SKILL, (
            f":chart_with_downwards_trend: {who}, which serves now, forecasts significantly worse than no "
            f"change (val_mae_skill {serving.val_mae_skill:.4g}; {serving.vs_persistence.describe()})"),
            {**fields, "serving": who, "val_mae_skill": serving.val_mae_skill}))
    if decision.miscalibrated_alert:
        serving = decision.candidate if decision.promote else decision.production
        who = f"{name} v{version}" if decision.promote else f"{name} production v{serving.version or '?'}"
        measured = ("with the calibration fitted on its validation month" if decision.promote
                    else "out of sample, as served")
        alerts.append(Alert(MISCALIBRATED, (
            f":dart: {who}, which serves now, covers {serving.coverage_80:.1%} of outcomes with its 80% intervals "
            f"({measured}); its quantiles are not to be trusted as stated"),
            {**fields, "serving": who, "coverage_80": serving.coverage_80}))
    return alerts


def alias_move_alert(event: str, name: str, from_version: str | None, to_version: str | None, reason: str,
                     extra: dict | None = None) -> Alert:
    """The alert of an alias move outside the guard: a rollback or a withdrawal of @production."""
    after = (f"v{to_version}" if to_version else
             "none (the predictor serves the pooled adapter, else the base, meanwhile)")
    icon = ":rotating_light:" if event == WITHDRAWN else ":leftwards_arrow_with_hook:"
    verb = "withdrawn" if event == WITHDRAWN else "rolled back"
    text = f"{icon} {name}@production {verb}: v{from_version or '-'} -> {after}: {reason}"
    fields = {"registered_model": name, "from_version": from_version or "none", "to_version": to_version or "none",
              "reason": reason, **(extra or {})}
    return Alert(event, text, fields)


def send_alias_move_alert(event: str, name: str, from_version: str | None, to_version: str | None, reason: str,
                          webhook: str | None, extra: dict | None = None, *,
                          retry: RetryPolicy = ALERT_RETRY) -> DeliveryResult:
    """Send `alias_move_alert`; never raises (see send_alert)."""
    alert = alias_move_alert(event, name, from_version, to_version, reason, extra)
    return send_alert(alert.event, alert.text, alert.fields, webhook, retry=retry)


def send_guard_alerts(decision: GuardDecision, name: str, version: str | int,
                      webhook: str | None, *, retry: RetryPolicy = ALERT_RETRY
                      ) -> list[DeliveryResult]:
    return send_alerts(guard_alerts(decision, name, version), webhook, f"{name} v{version}", retry=retry)


def send_alerts(alerts: list[Alert], webhook: str | None, subject: str, *,
                retry: RetryPolicy = ALERT_RETRY) -> list[DeliveryResult]:
    """Send several alerts of one job; never raises. Without a webhook, one log line names them all
    (what they say is recorded where the job writes its decision: the version's description)."""
    if not webhook:
        if alerts:
            log.warning("%s: %d alert(s) raised, not sent (%s is not set): %s", subject, len(alerts),
                        WEBHOOK_ENV, ", ".join(a.event for a in alerts))
        return [DeliveryResult(a.event, False, 0, error=f"{WEBHOOK_ENV} is not set", skipped=True) for a in alerts]
    return [send_alert(a.event, a.text, a.fields, webhook, retry=retry) for a in alerts]


def _redact(url: str) -> str:
    """Webhook URLs carry their secret in the path (Slack); log the host only."""
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}/..." if parsed.netloc else "<webhook>"
