"""Names of everything we keep in the MLflow registry: models, aliases, tags.

Registered models
    kronos-lora-<class>    one per asset class (crypto, forex_commodity, equity)
    kronos-lora-pooled     the pooled adapter trained on all classes
Aliases (per registered model)
    @production            what the predictor serves
    @staging               the newest candidate that is not in production
    @previous_production   what @production replaced (kept by retention like any alias)
Registered-model tags
    kronos.cadence         JSON: monthly/quarterly, since, why, recent retrains with Sharpe deltas
    kronos.audit.NNNNNN    JSON, one per promotion / rollback / refusal / cadence change / retention
Version tags (written from the guard's decision, see guard.GuardDecision.as_tags)
    asset_class, val_mae, val_sharpe, pooled_val_mae, production_val_mae, base_val_mae,
    sharpe_delta, guard_reference, guard_decision, guard_reason, regression_alert;
    rolled_back_reason on a version a rollback moved away from; withdrawn_reason on a version
    the monthly incumbent check took @production from; sha256.<file> per adapter file, written at
    registration (tracking/pyfunc.register_adapter_model), checked before a version serves
    (registry/integrity.py).
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
