"""Which model answers a symbol: small pure decisions, kept apart from the code that acts.

For a symbol of asset class C the service answers with
1. `kronos-lora-C@production`, if it is loaded (and, with the optional inference-time
   guard, its val_mae is at most `guard_ratio` x the pooled adapter's);
2. else `kronos-lora-pooled@production`;
3. else the bare base model, with a warning.
The phase document's `get_lora_checkpoint(symbol)` is this decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from kronos_rolling.data.assets import classify_asset
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.names import POOLED, PRODUCTION, registered_model_name

BASE = "base"  # the label of the bare base model in answers


@dataclass(frozen=True)
class Candidate:
    """A version that could answer: loaded in the service, or held by @production."""

    label: str  # asset class or "pooled"
    registered_model: str
    version: str
    val_mae: float | None = None
    # The pooled version and its val_mae on this version's own validation span, when
    # the training job compared them (the fair reference for the guard).
    pooled_version: str | None = None
    pooled_val_mae: float | None = None

    def describe(self) -> str:
        return f"{self.registered_model} v{self.version}"


@dataclass(frozen=True)
class Choice:
    asset_class: str
    label: str  # the asset class, "pooled" or "base": who answers
    candidate: Candidate | None  # None: the bare base
    fallback: str | None = None  # why the class's own production version does not answer
    warning: str | None = None  # set when the bare base answers

    @property
    def alias(self) -> str | None:
        return None if self.candidate is None else PRODUCTION

    @property
    def uri(self) -> str | None:
        """The pinned version that answers (`models:/NAME/VERSION`); None: the bare base."""
        return None if self.candidate is None else f"models:/{self.candidate.registered_model}/{self.candidate.version}"


def asset_class_of(symbol: str, overrides: Mapping[str, str] | None = None) -> str:
    """The symbol's asset class (overrides first); DataError for symbols no rule places."""
    return classify_asset(symbol, dict(overrides or {}))


def regressed(candidate: Candidate, pooled: Candidate, ratio: float) -> float | None:
    """The pooled val_mae the candidate is more than `ratio` x worse than, or None.

    Prefers the pooled figure measured on the candidate's own span when it is about the
    pooled version served now; else compares with the pooled version's own val_mae.
    """
    if candidate.val_mae is None:
        return None
    if candidate.pooled_val_mae is not None and candidate.pooled_version == pooled.version:
        reference = candidate.pooled_val_mae
    else:
        reference = pooled.val_mae
    if reference is None:
        return None
    return reference if candidate.val_mae > reference * ratio else None


def choose(asset_class: str, available: Mapping[str, Candidate], *, guard_ratio: float | None = None,
           unavailable: Mapping[str, str] | None = None) -> Choice:
    """Who answers a symbol of `asset_class`, given what is available per label.

    guard_ratio: None leaves the guard off. unavailable: per label, why it is not
    available (refused download, foreign base), for the fallback message.
    """
    unavailable = unavailable or {}
    name = registered_model_name(asset_class)
    own = available.get(asset_class)
    pooled = available.get(POOLED)
    if own is not None:
        if guard_ratio is None or pooled is None:
            return Choice(asset_class, asset_class, own)
        reference = regressed(own, pooled, guard_ratio)
        if reference is None:
            return Choice(asset_class, asset_class, own)
        reason = (f"inference guard: {own.describe()} val_mae {own.val_mae:.6g} is more than "
                  f"{(guard_ratio - 1) * 100:.0f}% worse than the pooled adapter's {reference:.6g}")
    else:
        reason = unavailable.get(asset_class) or f"{name} has no @{PRODUCTION} version"
    if pooled is not None:
        return Choice(asset_class, POOLED, pooled, fallback=reason)
    pooled_reason = unavailable.get(POOLED) or f"{registered_model_name(POOLED)} has no @{PRODUCTION} version"
    return Choice(asset_class, BASE, None, fallback=f"{reason}; {pooled_reason}",
                  warning=f"no adapter for {asset_class}: answered by the bare base model "
                          f"({reason}; {pooled_reason})")


def same_base(service: BaseModelRef, adapter: BaseModelRef) -> bool:
    """Was the adapter trained on the base the service runs? Folders by digest, hub ids by id + revision."""
    if service.max_context != adapter.max_context:
        return False
    if service.predictor_digest or adapter.predictor_digest:
        return (service.predictor_digest == adapter.predictor_digest
                and service.tokenizer_digest == adapter.tokenizer_digest)
    return ((service.predictor, service.revision, service.tokenizer, service.tokenizer_revision)
            == (adapter.predictor, adapter.revision, adapter.tokenizer, adapter.tokenizer_revision))


@dataclass(frozen=True)
class Freshness:
    stale: bool
    reason: str | None = None


def registry_freshness(last_success: datetime | None, failing_since: datetime | None, now: datetime,
                       poll_interval_s: float) -> Freshness:
    """Stale when the registry cannot be read now (`failing_since`: the first failed read of
    the outage, None when the last read succeeded), none ever succeeded, or polling stopped."""
    if last_success is None:
        return Freshness(True, "the registry has not been reached since start-up")
    if failing_since is not None:
        return Freshness(True, f"the registry has been unreachable since {failing_since.isoformat(timespec='seconds')}")
    age = (now - last_success).total_seconds()
    if age > 3 * poll_interval_s:
        return Freshness(True, f"the registry was last read {age:.0f}s ago (poll interval {poll_interval_s:g}s)")
    return Freshness(False)


def finite_or_none(value) -> float | None:
    """A recorded figure as a number, None when it is missing or not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
