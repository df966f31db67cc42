"""MLflow Model Registry lifecycle: register, guard, promote, alert, roll back, retain, cadence.

Pure decisions (no MLflow, no clock; every date is an argument):
    guard.py       decide_promotion: does a candidate take over @production?
    cadence.py     is_retrain_due / after_retrain: monthly or quarterly, and when next
    retention.py   choose_versions_to_delete: newest N plus every aliased version
    (thresholds: settings.Thresholds, in one place with every other setting)

Acting on the registry (MlflowClient against a tracking server):
    client.py      connect, retry transient failures, clear errors for missing things
    promotion.py   @staging, apply_guard_decision, promote, rollback (all-or-nothing)
    history.py     the audit trail (who / what / when / why) on the registered model
    schedule.py    the cadence state on the registered model
    cleanup.py     apply_retention: delete versions and their files; keep their training runs
    alerts.py      webhook alerts with retries that never raise
    lifecycle.py   conclude_retrain: guard -> aliases -> cadence -> alerts, in one call
    (names of models, aliases and tags: names.py; verifying a version: tracking/integrity.py;
    commands: cli/registry.py)
"""
