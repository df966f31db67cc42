"""Names of everything we keep in the MLflow registry: models, aliases, tags.

Registered models
    kronos-lora-<class>    one per asset class (crypto, forex_commodity, equity)
    kronos-lora-pooled     the pooled adapter trained on all classes
Aliases (per registered model)
    @production            what the predictor serves
    @staging               the newest version, unless it is in production (set at registration,
                           kept by a refusal; after every move of @production, by the guard or by
                           hand, it is put back on the newest version if that one does not serve)
    @previous_production   what @production replaced (kept by retention like any alias)
Registered-model tags (and description: the audit trail as a table, registry/history.py)
    kronos.cadence         JSON: monthly/quarterly, since, why, recent retrains with Sharpe deltas
    kronos.audit.NNNNNN    JSON, one per promotion / rollback / refusal / cadence change / retention
Version tags
    at registration (pipeline/steps.register_step): asset_class, as_of, train_window, val_span,
    val_mae, val_nll, val_sharpe, warm_start, calibration; sha256.<file> per adapter file
    (tracking/pyfunc.register_adapter_model), checked before a version serves (tracking/integrity.py);
    from the guard's decision, the few a person reads (registry/promotion.GUARD_VERSION_TAGS:
    guard_decision, guard_reason, guard_reference, vs_reference_diff[_lo|_hi], val_mae_skill,
    production_version; regression_alert / negative_skill_alert when raised; every figure is in
    guard/decision.json on the training run);
    latest_decision, latest_reason: the newest word on the version (the guard's, or a promote,
    rollback or withdrawal after it); rolled_back_reason on a version a rollback moved away
    from; withdrawn_reason on a version the monthly incumbent check took @production from;
    calibration_served.<class> (true/false) and calibration_reason.<class>: whether the version's
    calibration for that class is served, decided out of sample each month (pipeline/calibrate.py;
    no tag: served). The calibration itself is calibration.json in the adapter bundle.
"""

from __future__ import annotations

from kronos_rolling import ASSET_CLASSES
from kronos_rolling.errors import ConfigError

POOLED = "pooled"
MODEL_PREFIX = "kronos-lora-"

PRODUCTION = "production"
STAGING = "staging"
PREVIOUS_PRODUCTION = "previous_production"

CADENCE_TAG = "kronos.cadence"
AUDIT_TAG_PREFIX = "kronos.audit."
ROLLED_BACK_TAG = "rolled_back_reason"
WITHDRAWN_TAG = "withdrawn_reason"
CALIBRATION_TAG = "calibration"  # at registration: per class, fitted (on what) or why not
CALIBRATION_SERVED_TAG = "calibration_served."  # + class: "false" when withheld
CALIBRATION_REASON_TAG = "calibration_reason."  # + class: why it is served or not


def withheld_calibrations(tags: dict[str, str] | None) -> frozenset[str]:
    """The classes whose calibration a version's tags withhold (made coverage worse out of sample)."""
    return frozenset(key[len(CALIBRATION_SERVED_TAG):] for key, value in (tags or {}).items()
                     if key.startswith(CALIBRATION_SERVED_TAG) and value == "false")


def model_targets() -> tuple[str, ...]:
    """Everything that has a registered model: the asset classes and the pooled adapter."""
    return (*ASSET_CLASSES, POOLED)


def validate_asset_class(asset_class: str) -> str:
    if asset_class not in model_targets():
        raise ConfigError(
            f"unknown asset class {asset_class!r}; use one of: {', '.join(model_targets())}"
        )
    return asset_class


def registered_model_name(asset_class: str) -> str:
    """`crypto` -> `kronos-lora-crypto`; `pooled` -> `kronos-lora-pooled`."""
    return MODEL_PREFIX + validate_asset_class(asset_class)
