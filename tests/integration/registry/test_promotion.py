"""Staging, guard decisions, promotion, rollback and the audit trail on a real tracking server."""

from __future__ import annotations

import json
import sys
import textwrap
from contextlib import ExitStack
from datetime import date, datetime, timezone

import pytest
from mlflow import MlflowClient
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from support.locks import FILELOCK_DEBUG, queued_on
from support.processes import Child
from support.registry import (
    FaultProxy,
    Receiver,
    figures,
    judge,
    promote_decision,
    refuse_decision,
    register_stand_in,
)

from kronos_rolling.errors import ConfigError, RegistryError, RegistryUnavailable
from kronos_rolling.locks import registry_lock
from kronos_rolling.registry import alerts, history
from kronos_rolling.registry.history import Actor
from kronos_rolling.registry.lifecycle import conclude_retrain
from kronos_rolling.names import CADENCE_TAG
from kronos_rolling.registry.promotion import (
    alias_state,
    apply_guard_decision,
    mark_staging,
    production_version,
    promote,
    rollback,
)
from kronos_rolling.settings import load_settings

CRYPTO = "kronos-lora-crypto"


OPERATOR = Actor(user="ops", host="cron-1", job="monthly-2024-03")


AT = datetime(2024, 3, 1, 6, 0, tzinfo=timezone.utc)


def candidate(client, asset_class="crypto"):
    """Register a stand-in version and give it @staging, as the monthly job does."""
    version = register_stand_in(client, asset_class)
    mark_staging(client, version.name, version.version, lock_dir=load_settings().lock_dir)
    return version.version


@pytest.fixture
def fast_mlflow_http(monkeypatch):
    """Let our own retries, not MLflow's minutes-long HTTP back-off, meet injected failures."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def test_first_version_is_promoted_against_pooled_with_an_audit_trail(clean_registry, lock_dir):
    client = clean_registry
    v1 = candidate(client)
    assert alias_state(client, CRYPTO).staging == v1
    decision = judge(figures(0.9, 0.6), figures(1.0, 0.4))
    move = apply_guard_decision(client, CRYPTO, v1, decision, actor=OPERATOR, at=AT, lock_dir=lock_dir)

    assert move.promoted and move.from_version is None and move.to_version == v1
    state = alias_state(client, CRYPTO)
    assert (state.production, state.staging, state.previous_production) == (v1, None, None)
    version = client.get_model_version(CRYPTO, v1)
    assert version.tags["guard_decision"] == "promoted"
    assert version.tags["guard_reference"] == "pooled"
    assert float(version.tags["val_mae"]) == 0.9 and float(version.tags["vs_reference_diff"]) == -0.1
    # The few tags a person reads; every figure in guard/decision.json on the run, linked from the description.
    assert set(version.tags) - {"asset_class"} - {t for t in version.tags if t.startswith("sha256.")} == {
        "guard_decision", "guard_reason", "guard_reference", "vs_reference_diff", "vs_reference_diff_lo",
        "vs_reference_diff_hi", "decision_diff", "decision_diff_lo", "decision_diff_hi", "decision_horizons",
        "val_mae", "val_mae_skill", "latest_decision", "latest_reason"}
    assert float(version.tags["decision_horizons"]) == 10.0  # the evidence the decision rested on
    assert version.tags["latest_decision"] == "promoted by the guard"
    assert version.description.startswith(f"Guard, 2024-03-01 06:00 UTC: Promoted to @production: {decision.reason}")
    assert f"(`runs:/{version.run_id}/guard/decision.json`)" in version.description
    record = client.download_artifacts(version.run_id, "guard/decision.json")
    full = json.loads(open(record).read())
    assert float(full["tags"]["pooled_val_mae"]) == 1.0 and full["decided_by"] == "ops@cron-1 (monthly-2024-03)"
    run = client.get_run(version.run_id)  # the training run carries the decision too
    assert run.data.tags["guard_decision"] == "promoted"
    assert run.data.tags["mlflow.note.content"].startswith(f"{CRYPTO} v{v1}: promoted to @production. val_mae 0.9")
    assert decision.reason.startswith("beats the pooled (val_mae difference -0.1 [-0.101, -0.099] on 10.0 horizons)")
    (entry,) = history.read_history(client, CRYPTO)
    assert (entry.action, entry.from_version, entry.to_version) == ("promote", None, v1)
    assert (entry.user, entry.host, entry.job, entry.at) == (
        "ops", "cron-1", "monthly-2024-03", "2024-03-01T06:00:00+00:00")
    assert "pooled" in entry.reason
    assert production_version(client, CRYPTO).version == v1


def test_refused_version_keeps_staging_and_is_tagged_with_the_reason(clean_registry, lock_dir):
    client = clean_registry
    v1 = candidate(client)
    apply_guard_decision(client, CRYPTO, v1, promote_decision(), lock_dir=lock_dir)
    v2 = candidate(client)
    decision = judge(figures(1.3), figures(1.1), figures(1.0, version=v1))
    move = apply_guard_decision(client, CRYPTO, v2, decision, actor=OPERATOR, lock_dir=lock_dir)

    assert not move.promoted and move.action == "refuse"
    state = alias_state(client, CRYPTO)
    assert (state.production, state.staging) == (v1, v2)
    tags = client.get_model_version(CRYPTO, v2).tags
    assert tags["guard_decision"] == "refused" and tags["regression_alert"] == "true"
    assert tags["guard_reason"] == decision.reason
    assert decision.reason.startswith("is worse than the pooled (val_mae difference +0.2")
    assert tags["production_version"] == v1
    assert client.get_model_version(CRYPTO, v2).description.startswith("Guard, ") and \
        "Kept in @staging (refused)" in client.get_model_version(CRYPTO, v2).description
    last = history.read_history(client, CRYPTO)[-1]
    assert (last.action, last.from_version, last.to_version) == ("refuse", v1, v2)


def test_rollback_walks_back_through_promotions(clean_registry, cli, lock_dir):
    client = clean_registry
    v1, v2, v3 = (candidate(client) for _ in range(3))
    for version in (v1, v2, v3):
        apply_guard_decision(client, CRYPTO, version, promote_decision(), lock_dir=lock_dir)
    assert alias_state(client, CRYPTO) == alias_state(client, CRYPTO).__class__(v3, None, v2)

    result = cli("rollback", "--asset-class", "crypto", "--reason", "v3 spikes on weekends")
    assert result.exit_code == 0, result.output
    assert f"v{v3} -> v{v2}" in result.output and f"@previous_production: v{v1}" in result.output
    assert client.get_model_version(CRYPTO, v3).tags["rolled_back_reason"] == "v3 spikes on weekends"

    again = rollback(client, "crypto", reason="v2 too", lock_dir=lock_dir)
    assert (again.from_version, again.to_version, again.previous_production) == (v2, v1, None)
    nowhere = cli("rollback", "--asset-class", "crypto", "--reason", "more")
    assert nowhere.exit_code == RegistryError.exit_code
    assert f"no version older than v{v1} that the guard promoted" in nowhere.output
    assert "--to-version" in nowhere.output

    explicit = cli("rollback", "--asset-class", "crypto", "--to-version", v3)  # the command, as written
    assert explicit.exit_code == 0, explicit.output
    assert alias_state(client, CRYPTO).production == v3
    assert history.read_history(client, CRYPTO)[-1].reason == "rolled back by an operator"

    shown = cli("history", "--asset-class", "crypto")
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert lines[0] == CRYPTO and lines[1].split()[:4] == ["#", "when", "(UTC)", "action"]
    actions = [line.split()[2] for line in lines[2:]]
    assert actions == ["promote", "promote", "promote", "rollback", "rollback", "rollback"]
    assert "v3 spikes on weekends" in shown.output
    as_json = cli("history", "--asset-class", "crypto", "--json", "--limit", "1")
    assert as_json.exit_code == 0 and '"reason": "rolled back by an operator"' in as_json.output
    assert len(as_json.output.strip().splitlines()) == 1


def test_an_operator_promotes_a_refused_version_by_hand(clean_registry, cli, lock_dir):
    client = clean_registry
    v1, v2 = candidate(client), candidate(client)
    apply_guard_decision(client, CRYPTO, v1, promote_decision(), lock_dir=lock_dir)
    apply_guard_decision(client, CRYPTO, v2, refuse_decision(), lock_dir=lock_dir)
    assert alias_state(client, CRYPTO).staging == v2

    result = cli("promote", "--asset-class", "crypto", "--version", v2, "--reason", "reviewed by hand")
    assert result.exit_code == 0, result.output
    assert f"v{v1} -> v{v2}" in result.output and f"@previous_production: v{v1}" in result.output
    state = alias_state(client, CRYPTO)
    assert (state.production, state.staging, state.previous_production) == (v2, None, v1)
    last = history.read_history(client, CRYPTO)[-1]
    assert (last.action, last.from_version, last.to_version, last.reason) == ("promote", v1, v2, "reviewed by hand")

    again = cli("promote", "--asset-class", "crypto", "--version", v2, "--reason", "twice")
    assert again.exit_code == 0 and "already" in again.output
    assert history.read_history(client, CRYPTO)[-1].reason == "reviewed by hand", "no audit entry for a no-op"
    missing = cli("promote", "--asset-class", "crypto", "--version", 99, "--reason", "typo")
    assert missing.exit_code == RegistryError.exit_code and "does not exist" in missing.output
    assert alias_state(client, CRYPTO).production == v2


def test_rollback_refuses_deleted_versions_and_missing_artifacts(clean_registry, cli, lock_dir):
    client = clean_registry
    v1, v2, v3 = (candidate(client) for _ in range(3))
    apply_guard_decision(client, CRYPTO, v3, promote_decision(), lock_dir=lock_dir)
    client.delete_model_version(CRYPTO, v1)
    before = client.get_registered_model(CRYPTO)

    deleted = cli("rollback", "--asset-class", "crypto", "--to-version", v1, "--reason", "x")
    assert deleted.exit_code == RegistryError.exit_code
    assert f"v{v1} does not exist" in deleted.output and f"live versions: v{v3}, v{v2}" in deleted.output

    source = client.get_model_version_download_uri(CRYPTO, v2)
    get_artifact_repository(source).delete_artifacts()  # through the server, like a lost bucket
    missing = cli("rollback", "--asset-class", "crypto", "--to-version", v2, "--reason", "x")
    assert missing.exit_code == RegistryError.exit_code
    assert f"artifacts of {CRYPTO} v{v2} are missing" in missing.output

    after = client.get_registered_model(CRYPTO)
    assert after.aliases == before.aliases and after.tags == before.tags  # nothing half-done


def test_production_deleted_under_the_alias_is_explained(clean_registry, cli, lock_dir):
    client = clean_registry
    v1, v2 = candidate(client), candidate(client)
    apply_guard_decision(client, CRYPTO, v1, promote_decision(), lock_dir=lock_dir)
    apply_guard_decision(client, CRYPTO, v2, promote_decision(), lock_dir=lock_dir)
    client.delete_model_version(CRYPTO, v2)  # MLflow drops the alias with the version
    with pytest.raises(RegistryError, match=f"v{v2}, which held it last, has been deleted"):
        production_version(client, CRYPTO)
    fixed = cli("rollback", "--asset-class", "crypto", "--reason", "v2 deleted by hand")
    assert fixed.exit_code == 0, fixed.output
    assert production_version(client, CRYPTO).version == v1


def test_transient_failures_are_retried(clean_registry, fast_mlflow_http, lock_dir):
    v1 = candidate(clean_registry)
    with FaultProxy(clean_registry.tracking_uri) as proxy:
        flaky = proxy.fail("POST", "/registered-models/alias", failures=2)
        through_proxy = MlflowClient(proxy.url)
        move = apply_guard_decision(through_proxy, CRYPTO, v1, promote_decision(), lock_dir=lock_dir)
    assert move.promoted and flaky.hits == 3
    assert alias_state(clean_registry, CRYPTO).production == v1


def test_a_failed_promotion_restores_the_previous_state(clean_registry, fast_mlflow_http, lock_dir):
    client = clean_registry
    v1, v2 = candidate(client), candidate(client)
    apply_guard_decision(client, CRYPTO, v1, promote_decision(), lock_dir=lock_dir)
    model_before = client.get_registered_model(CRYPTO)
    version_before = client.get_model_version(CRYPTO, v2)

    with FaultProxy(client.tracking_uri) as proxy:
        broken = proxy.fail("POST", "/registered-models/set-tag", body_part="kronos.audit",
                            failures=100)
        with pytest.raises(RegistryUnavailable, match="write audit entry"):
            apply_guard_decision(MlflowClient(proxy.url), CRYPTO, v2, promote_decision(), lock_dir=lock_dir)
    assert broken.hits == 3  # our three attempts at the last step

    model_after = client.get_registered_model(CRYPTO)
    version_after = client.get_model_version(CRYPTO, v2)
    assert model_after.aliases == model_before.aliases == {"production": v1, "staging": v2}
    assert model_after.tags == model_before.tags
    assert version_after.tags == version_before.tags
    assert version_after.description == version_before.description


def test_concurrent_promotions_are_serialised(clean_registry, tracking_uri, lock_dir):
    client = clean_registry
    v1, v2, v3 = (candidate(client) for _ in range(3))
    apply_guard_decision(client, CRYPTO, v1, promote_decision(), lock_dir=lock_dir)
    job = FILELOCK_DEBUG + textwrap.dedent("""
        import sys
        from kronos_rolling.registry.promotion import promote
        from kronos_rolling.settings import load_settings
        from kronos_rolling.tracking.context import Tracking
        settings = load_settings()
        client = Tracking.connect(settings.tracking_uri).client
        print("promoting", flush=True)
        promote(client, "kronos-lora-crypto", sys.argv[1], "job " + sys.argv[1], lock_dir=settings.lock_dir)
    """)
    with ExitStack() as running:
        with registry_lock(lock_dir, CRYPTO, timeout=5) as held:  # both jobs start while a third writer holds it
            jobs = [running.enter_context(Child([sys.executable, "-c", job, v], name=f"promote v{v}"))
                    for v in (v2, v3)]
            for j in jobs:
                j.stdout.wait_for("^promoting$")
                j.stderr.wait_for(queued_on(held), timeout=120)  # it found the model's lock taken
            assert all(j.poll() is None for j in jobs), "a job ran past the lock"
            assert alias_state(client, CRYPTO).production == v1
        for j in jobs:
            assert j.wait(timeout=60) == 0, j.stderr.tail()

    entries = [e for e in history.read_history(client, CRYPTO) if e.action == "promote"]
    assert len(entries) == 3
    # each promotion saw the one before it: the trail is a chain, never a fork
    assert [e.from_version for e in entries[1:]] == [e.to_version for e in entries[:-1]]
    state = alias_state(client, CRYPTO)
    assert state.production == entries[-1].to_version
    assert state.previous_production == entries[-1].from_version


def test_conclude_retrain_acts_records_and_alerts(clean_registry, monkeypatch, lock_dir):
    client = clean_registry
    v1 = candidate(client, "equity")
    name = "kronos-lora-equity"
    with Receiver() as receiver:
        first = conclude_retrain(client, "equity", v1,
                                 judge(figures(0.9, 0.5), figures(1.0)),
                                 as_of=date(2024, 1, 1), webhook=receiver.url, lock_dir=lock_dir)
        v2 = candidate(client, "equity")
        worse = judge(figures(1.2, 0.3), figures(1.0), figures(0.9, 0.5, version=v1))
        second = conclude_retrain(client, "equity", v2, worse, as_of=date(2024, 2, 1),
                                  webhook=receiver.url, lock_dir=lock_dir)
    assert first.move.promoted and first.deliveries == []
    assert not second.move.promoted
    assert [d.event for d in second.deliveries] == [alerts.REGRESSION, alerts.REFUSED]
    assert all(d.delivered for d in second.deliveries)
    assert [b["kronos"]["event"] for b in receiver.bodies] == ["regression", "guard_refused"]
    assert alias_state(client, name).production == v1
    stored = client.get_registered_model(name).tags[CADENCE_TAG]
    assert '"sharpe_delta": -0.2' in stored and f'"version": "{v2}"' in stored


def test_unknown_asset_class_and_missing_model_from_the_cli(clean_registry, cli):
    unknown = cli("history", "--asset-class", "metals")
    assert unknown.exit_code == ConfigError.exit_code
    assert "unknown asset class 'metals'" in unknown.output and "Traceback" not in unknown.output
    missing = cli("history", "--asset-class", "crypto")
    assert missing.exit_code == RegistryError.exit_code
    assert "registered model 'kronos-lora-crypto' does not exist" in missing.output
    rollback_missing = cli("rollback", "--asset-class", "pooled", "--reason", "x")
    assert rollback_missing.exit_code == RegistryError.exit_code
    assert "kronos-lora-pooled" in rollback_missing.output


def test_operator_promote_and_idempotence(clean_registry, lock_dir):
    client = clean_registry
    v1, v2 = candidate(client), candidate(client)
    move = promote(client, CRYPTO, v2, "hand-picked", actor=OPERATOR, lock_dir=lock_dir)
    assert move.promoted and alias_state(client, CRYPTO).production == v2
    again = promote(client, CRYPTO, v2, "hand-picked", lock_dir=lock_dir)
    assert again.audit_seq is None  # nothing moved, nothing recorded
    assert len(history.read_history(client, CRYPTO)) == 1
    with pytest.raises(RegistryError, match="v99 does not exist"):
        promote(client, CRYPTO, "99", "typo", lock_dir=lock_dir)
    assert alias_state(client, CRYPTO).production == v2
    assert alias_state(client, CRYPTO).staging is None  # the promoted candidate left @staging
    refuse = apply_guard_decision(client, CRYPTO, v1, refuse_decision(), lock_dir=lock_dir)
    assert refuse.action == "refuse" and alias_state(client, CRYPTO).staging == v1


def test_manual_moves_keep_versions_true_staging_consistent_and_the_model_page_readable(
        clean_registry, cli, lock_dir):
    """The README's path: the guard promotes v1 and refuses v2; an operator promotes v2, then rolls
    back to v1. Each version's description and tags say what happened last and who did it, @staging
    follows one rule (the newest version unless it serves), and the registered model's description is
    the audit trail as a table, rewritten on every move."""
    client = clean_registry
    v1, v2 = candidate(client), candidate(client)
    apply_guard_decision(client, CRYPTO, v1, promote_decision(), lock_dir=lock_dir, actor=OPERATOR, at=AT)
    apply_guard_decision(client, CRYPTO, v2, refuse_decision(), lock_dir=lock_dir, actor=OPERATOR, at=AT)

    promoted = cli("promote", "--asset-class", "crypto", "--version", v2, "--reason", "operator override")
    assert promoted.exit_code == 0, promoted.output
    assert f"@production: v{v1} -> v{v2} (@previous_production: v{v1})" in promoted.output
    assert alias_state(client, CRYPTO).staging is None, "the newest version serves: nothing waits in @staging"
    version = client.get_model_version(CRYPTO, v2)
    assert version.tags["guard_decision"] == "refused", "the guard's own record stays"
    assert (version.tags["latest_decision"], version.tags["latest_reason"]) == ("promoted by hand",
                                                                                "operator override")
    last = version.description.split("\n\n")[-1]
    assert f"promoted to @production by hand (v{v1} → v{v2}): operator override." in last
    assert "This overrides the guard's refusal above." in last

    rolled = cli("rollback", "--asset-class", "crypto", "--to-version", v1, "--reason", "back to January")
    assert rolled.exit_code == 0, rolled.output
    state = alias_state(client, CRYPTO)
    assert (state.production, state.staging) == (v1, v2), "rolled back: the newest version waits in @staging again"
    back, away = client.get_model_version(CRYPTO, v1), client.get_model_version(CRYPTO, v2)
    assert back.tags["latest_decision"] == "rolled back to" and away.tags["latest_decision"] == "rolled back from"
    assert away.tags["rolled_back_reason"] == "back to January"
    assert f"@production rolled back from this version to v{v1}: back to January." in away.description
    assert away.description.index("operator override") < away.description.index("back to January")

    page = client.get_registered_model(CRYPTO).description
    rows = [line for line in page.splitlines() if line.startswith(("| 1 ", "| 2 ", "| 3 ", "| 4 "))]
    assert [row.split(" | ")[2] for row in rows] == ["rollback", "promote", "refuse", "promote"], page
    assert f"@production v{v2} → v{v1}" in rows[0] and "back to January" in rows[0]
    assert f"@production none → v{v1}" in rows[3] and "ops@cron-1 (monthly-2024-03)" in rows[3]
    assert "**Audit trail**, newest first" in page

    first = cli("promote", "--asset-class", "pooled", "--version", candidate(client, "pooled"), "--reason", "first")
    assert "kronos-lora-pooled@production: none -> v1 (@previous_production: none)" in first.output, first.output


def test_a_withheld_calibration_is_on_the_version_and_each_change_in_the_audit_trail(clean_registry, lock_dir):
    from kronos_rolling.names import withheld_calibrations
    from kronos_rolling.registry.guard import CalibrationDecision
    from kronos_rolling.registry.promotion import record_calibration

    client = clean_registry
    version = register_stand_in(client, "pooled").version
    name = "kronos-lora-pooled"
    kept = CalibrationDecision(True, "out of sample on s the calibration kept or improved coverage")
    worse = CalibrationDecision(False, "out of sample on s the calibration made coverage worse")
    assert not record_calibration(client, name, version, "crypto", kept, lock_dir=lock_dir)  # served already
    assert record_calibration(client, name, version, "crypto", worse, lock_dir=lock_dir)
    assert not record_calibration(client, name, version, "crypto", worse, lock_dir=lock_dir)  # no new entry
    tags = client.get_model_version(name, version).tags
    assert withheld_calibrations(tags) == {"crypto"}
    assert tags["calibration_reason.crypto"] == worse.reason and tags["calibration_served.crypto"] == "false"
    assert record_calibration(client, name, version, "crypto", kept, lock_dir=lock_dir)
    entries = [e for e in history.read_history(client, name) if e.action == "calibration"]
    assert [e.reason.split(":")[0] for e in entries] == ["crypto calibration withheld",
                                                         "crypto calibration served again"]
    assert entries[0].to_version == version
    assert "calibration of v" in client.get_registered_model(name).description
    assert withheld_calibrations(client.get_model_version(name, version).tags) == frozenset()
