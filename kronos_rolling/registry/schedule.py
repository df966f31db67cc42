"""The cadence state on the registered model, read into and written from `cadence.py`.

The whole state is one JSON tag (`kronos.cadence`) so it changes in one write; a
change of mode also adds an audit entry, so `kronos-rolling history` shows when and why
a class went quarterly or back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kronos_rolling.errors import ConfigError, RegistryError
from kronos_rolling.locks import registry_lock
from kronos_rolling.registry import cadence, history
from kronos_rolling.registry.cadence import CadenceState, DueDecision
from kronos_rolling.registry.client import call, get_registered_model, is_missing
from kronos_rolling.registry.history import Actor
from kronos_rolling.names import CADENCE_TAG, registered_model_name
from kronos_rolling.settings import REGISTRY_LOCK_TIMEOUT_S, Thresholds


@dataclass(frozen=True)
class CadenceUpdate:
    before: CadenceState
    after: CadenceState

    @property
    def switched(self) -> bool:
        return self.before.mode != self.after.mode


def read_cadence(client: MlflowClient, asset_class: str) -> CadenceState:
    """The stored state; the default (monthly, no retrains) before the model's first version."""
    name = registered_model_name(asset_class)
    try:
        tags = call(f"read {name}", client.get_registered_model, name).tags
    except MlflowException as exc:
        if is_missing(exc):
            return CadenceState()
        raise RegistryError(f"could not read {name}: {exc.message}") from exc
    return _parse(name, tags)


def retrain_due(client: MlflowClient, asset_class: str, as_of: date,
                thresholds: Thresholds = Thresholds()) -> DueDecision:
    return cadence.is_retrain_due(read_cadence(client, asset_class), as_of, thresholds)


def record_retrain(client: MlflowClient, asset_class: str, version: str | int, on: date,
                   sharpe_delta: float | None, *, lock_dir: Path, thresholds: Thresholds = Thresholds(),
                   actor: Actor | None = None, at: datetime | None = None, sharpe_lo: float | None = None,
                   sharpe_hi: float | None = None) -> CadenceUpdate:
    """Record a finished retrain (its Sharpe change vs the previous production, same span, and its interval)."""
    name = registered_model_name(asset_class)
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        tags = get_registered_model(client, name).tags
        before = _parse(name, tags)
        after = cadence.after_retrain(before, on, sharpe_delta, str(version), thresholds, sharpe_lo=sharpe_lo,
                                      sharpe_hi=sharpe_hi)
        _store(client, name, tags, before, after, actor, at)
        return CadenceUpdate(before, after)


def set_cadence(client: MlflowClient, asset_class: str, mode: str, on: date, reason: str, *, lock_dir: Path,
                actor: Actor | None = None, at: datetime | None = None) -> CadenceUpdate:
    """An operator's choice of cadence."""
    if mode not in cadence.MODES:
        raise ConfigError(f"cadence {mode!r} is not one of: {', '.join(cadence.MODES)}")
    name = registered_model_name(asset_class)
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        tags = get_registered_model(client, name).tags
        try:
            before = _parse(name, tags)
        except RegistryError:
            before = CadenceState()  # an operator's setting is how an unreadable state is reset
        after = cadence.with_mode(before, mode, on, reason)
        _store(client, name, tags, before, after, actor, at, always_audit=True)
        return CadenceUpdate(before, after)


def _parse(name: str, tags: dict[str, str]) -> CadenceState:
    raw = tags.get(CADENCE_TAG)
    if raw is None:
        return CadenceState()
    try:
        return cadence.from_json(raw)
    except ValueError as exc:
        raise RegistryError(
            f"tag {CADENCE_TAG} of {name} is unreadable ({exc}); reset it with "
            f"`kronos-rolling cadence --asset-class {name.removeprefix('kronos-lora-')} "
            "--set monthly`") from None


def _store(client: MlflowClient, name: str, tags: dict[str, str], before: CadenceState,
           after: CadenceState, actor: Actor | None, at: datetime | None,
           always_audit: bool = False) -> None:
    call(f"store cadence of {name}", client.set_registered_model_tag, name, CADENCE_TAG,
         cadence.to_json(after))
    if not (always_audit or before.mode != after.mode):
        return
    entry = history.new_entry(history.next_seq(tags), history.CADENCE, None, None,
                              f"{before.mode} -> {after.mode}: {after.reason}",
                              actor or Actor.current(), at)
    try:
        history.write_entry(client, name, entry)
    except Exception:
        # A switch without its audit entry would be silent: put the old state back.
        if CADENCE_TAG in tags:
            call(f"restore cadence of {name}", client.set_registered_model_tag, name,
                 CADENCE_TAG, tags[CADENCE_TAG])
        else:
            call(f"restore cadence of {name}", client.delete_registered_model_tag, name,
                 CADENCE_TAG)
        raise
