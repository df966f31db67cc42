"""Alerts against a real local HTTP receiver: delivered, retried, given up on loudly."""

from __future__ import annotations

import logging
import time

import pytest
from support.registry import Receiver, figures, judge

from kronos_rolling.registry import alerts
from kronos_rolling.registry.alerts import send_alert, send_guard_alerts
from kronos_rolling.settings import RetryPolicy, load_settings
from kronos_rolling.tracking.server import free_port

FAST = RetryPolicy(attempts=4, first_delay_s=0.1, factor=2.0)


def test_delivered_with_slack_text_and_structured_fields():
    with Receiver() as receiver:
        result = send_alert("guard_refused", "crypto v7 refused", {"version": "7", "val_mae": 0.12},
                            receiver.url, retry=FAST)
    assert result.delivered and result.attempts == 1 and result.status == 200
    (body,) = receiver.bodies
    assert body["text"] == "crypto v7 refused"
    assert body["kronos"] == {"event": "guard_refused", "fields": {"version": "7", "val_mae": 0.12}}
    assert {"title": "val_mae", "value": "0.12", "short": True} in body["attachments"][0]["fields"]


def test_retried_with_back_off_until_the_receiver_recovers():
    with Receiver(fail_first=2) as receiver:
        started = time.monotonic()
        result = send_alert("regression", "worse", {}, receiver.url, retry=FAST)
        took = time.monotonic() - started
    assert result.delivered and result.attempts == 3
    assert receiver.requests_seen == 3 and len(receiver.bodies) == 1
    assert took >= 0.1 + 0.2  # waited between attempts, longer each time


def test_receiver_down_is_logged_loudly_and_never_raises(caplog):
    down = f"http://127.0.0.1:{free_port()}/hooks/secret-token"
    with caplog.at_level(logging.ERROR, logger="kronos_rolling.registry.alerts"):
        result = send_alert("job_failed", "crypto job failed", {"job": "x"}, down, retry=FAST)
    assert not result.delivered and result.attempts == 4 and result.status is None
    assert "ConnectionError" in result.error
    (record,) = caplog.records
    assert "ALERT NOT DELIVERED after 4 attempt(s)" in record.getMessage()
    assert "crypto job failed" in record.getMessage()
    assert "secret-token" not in record.getMessage()  # the webhook's secret stays out of logs


def test_receiver_failing_for_good_gives_up_after_all_attempts():
    with Receiver(fail_first=100) as receiver:
        result = send_alert("regression", "worse", {}, receiver.url, retry=FAST)
    assert not result.delivered and result.attempts == 4 and result.status == 503
    assert receiver.requests_seen == 4


def test_client_error_is_not_retried():
    with Receiver(fail_first=100, fail_status=404) as receiver:
        result = send_alert("regression", "worse", {}, receiver.url, retry=FAST)
    assert not result.delivered and result.attempts == 1 and result.status == 404
    assert receiver.requests_seen == 1


def test_webhook_from_the_environment_through_the_settings_and_skipped_without_one():
    skipped = send_alert("regression", "worse", {}, load_settings({}).alert_webhook)
    assert skipped.skipped and not skipped.delivered and alerts.WEBHOOK_ENV in skipped.error
    with Receiver() as receiver:
        webhook = load_settings({alerts.WEBHOOK_ENV: receiver.url}).alert_webhook
        assert send_alert("regression", "worse", {}, webhook, retry=FAST).delivered
    assert len(receiver.bodies) == 1


@pytest.mark.parametrize("candidate, production, skill, events", [
    (0.90, None, 0.1, []),  # promoted, no production: silence
    (0.90, 0.95, 0.1, []),  # promoted, better than production
    (0.99, 0.89, 0.1, ["regression", "guard_refused"]),  # worse than production by >10%: refused
    (0.96, 0.95, 0.1, ["guard_refused"]),  # worse than production, within 10%
    (1.20, None, 0.1, ["guard_refused"]),
    (1.20, 1.00, 0.1, ["regression", "guard_refused"]),
    (0.90, None, -0.1, ["negative_skill"]),  # promoted, but worse than no change
])
def test_guard_decision_alerts(candidate, production, skill, events):
    decision = judge(figures(candidate, skill=skill), figures(1.0),
                     None if production is None else figures(production, version="4"))
    with Receiver() as receiver:
        results = send_guard_alerts(decision, "kronos-lora-crypto", "5", receiver.url)
    assert [r.event for r in results] == events and all(r.delivered for r in results)
    assert [b["kronos"]["event"] for b in receiver.bodies] == events
    for body in receiver.bodies:
        assert body["kronos"]["fields"]["registered_model"] == "kronos-lora-crypto"
        assert "kronos-lora-crypto v5" in body["text"]
    if "regression" in events:
        assert "production v4" in receiver.bodies[0]["text"]


def test_a_job_without_a_webhook_logs_one_line_naming_every_alert_it_raised(caplog):
    from kronos_rolling.registry.alerts import Alert, send_alerts

    raised = [Alert("guard_refused", "v2 refused", {}), Alert("negative_skill", "worse than no change", {})]
    with caplog.at_level(logging.INFO, logger="kronos_rolling.registry.alerts"):
        results = send_alerts(raised, None, "kronos-lora-crypto v2")
    assert [(r.event, r.skipped, r.delivered) for r in results] == [("guard_refused", True, False),
                                                                     ("negative_skill", True, False)]
    [line] = [r.getMessage() for r in caplog.records]
    assert line == ("kronos-lora-crypto v2: 2 alert(s) raised, not sent (KRONOS_ALERT_WEBHOOK is not set): "
                    "guard_refused, negative_skill")
    caplog.clear()
    assert send_alerts([], None, "kronos-lora-crypto v3") == [] and caplog.records == []
