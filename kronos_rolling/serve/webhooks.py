"""MLflow registry webhooks: check a delivery, decide whether it concerns us.

MLflow (3.3+, SQL backends) POSTs `{"entity", "action", "timestamp", "data"}` as JSON,
with headers `X-MLflow-Delivery-Id`, `X-MLflow-Timestamp` (unix seconds) and, when the
webhook has a secret, `X-MLflow-Signature: v1,<base64 HMAC-SHA256 of
"<delivery id>.<timestamp>.<body>">`. An alias event carries `data.name` (the registered
model), `data.alias` and, when set, `data.version`.

A delivery never tells the service what to load: it only wakes the watcher, which reads
the registry itself. So a forged or replayed delivery can at worst cause one extra read.
Register one with

    MlflowClient("https://MLFLOW-HOST").create_webhook(name="kronos-predictor", url="https://HOST/webhooks/mlflow",
        events=["model_version_alias.created", "model_version_alias.deleted"], secret=SECRET)
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from kronos_rolling.names import MODEL_PREFIX

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
# Entities whose events can change what we serve: aliases move, versions/tags appear, models go.
RELEVANT_ENTITIES = {"model_version_alias", "model_version", "model_version_tag", "registered_model"}


class WebhookRejected(Exception):
    """The delivery is unsigned, badly signed or too old."""


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def check_signature(secret: str, headers, body: bytes, now_unix: float, tolerance_s: float) -> None:
    """Raise WebhookRejected unless the delivery carries a fresh, valid signature of `body`."""
    given = headers.get(SIGNATURE_HEADER)
    delivery_id = headers.get(DELIVERY_ID_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not given or not delivery_id or not timestamp:
        raise WebhookRejected(f"unsigned delivery: {SIGNATURE_HEADER}, {DELIVERY_ID_HEADER} and "
                              f"{TIMESTAMP_HEADER} are required (create the webhook with the service's secret)")
    try:
        sent = float(timestamp)
    except ValueError:
        raise WebhookRejected(f"{TIMESTAMP_HEADER} {timestamp!r} is not unix seconds") from None
    if abs(now_unix - sent) > tolerance_s:
        raise WebhookRejected(f"delivery timestamp is {abs(now_unix - sent):.0f}s away from now "
                              f"(tolerance {tolerance_s:g}s); replayed or clocks apart")
    expected = signature(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected, given.strip()):
        raise WebhookRejected("signature does not match: the webhook's secret differs from KRONOS_WEBHOOK_SECRET")


def relevant_model(payload) -> str | None:
    """The registered model of ours an event is about, or None when it cannot affect us."""
    if not isinstance(payload, dict) or payload.get("entity") not in RELEVANT_ENTITIES:
        return None
    data = payload.get("data")
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name.startswith(MODEL_PREFIX) else None
