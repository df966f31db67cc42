"""Every number the registry lifecycle decides or waits by, in one place.

`Thresholds` holds the decision thresholds (guard, alerts, cadence, retention); the
pure decisions take one as an argument. `RetryPolicy` says how often and how patiently
we retry a registry write or an alert delivery. Operators override any threshold from
the environment (`KRONOS_<FIELD>`, e.g. `KRONOS_PROMOTE_MAE_TOLERANCE=0.01`) through
`Thresholds.from_env()`, which the CLI and the monthly job use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from kronos_rolling.errors import ConfigError


@dataclass(frozen=True)
class Thresholds:
    # Guard: promote when candidate val_mae <= reference val_mae * (1 + tolerance).
    promote_mae_tolerance: float = 0.0
    # Alert when candidate val_mae > prior production val_mae * (1 + ratio), same span.
    regression_alert_ratio: float = 0.10
    # Also refuse a candidate that triggers the regression alert (off: the guard
    # compares with the pooled adapter only; the alert still fires).
    refuse_on_regression: bool = False
    # Cadence: switch monthly -> quarterly after `stall_retrains` monthly retrains in a
    # row each improved val_sharpe by less than `stall_sharpe_delta`.
    stall_sharpe_delta: float = 0.05
    stall_retrains: int = 3
    # Cadence: back to monthly when a quarterly retrain moves val_sharpe by at least this
    # much either way (a large change means the market drifts faster than quarterly).
    resume_monthly_sharpe_change: float = 0.15
    quarterly_interval_months: int = 3
    # Retention: newest versions kept per registered model (plus every aliased version).
    keep_versions: int = 6

    def __post_init__(self) -> None:
        for name in ("promote_mae_tolerance", "regression_alert_ratio", "stall_sharpe_delta",
                     "resume_monthly_sharpe_change"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"threshold {name}={value!r} must be a finite number >= 0 "
                    f"(set KRONOS_{name.upper()} to e.g. {getattr(Thresholds, name)})"
                )
        for name in ("stall_retrains", "quarterly_interval_months", "keep_versions"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(
                    f"threshold {name}={value!r} must be a whole number >= 1 "
                    f"(set KRONOS_{name.upper()} to e.g. {getattr(Thresholds, name)})"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Thresholds":
        """Defaults, overridden by any `KRONOS_<FIELD>` variable present."""
        environ = os.environ if environ is None else environ
        overrides: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f"KRONOS_{f.name.upper()}")
            if raw is None:
                continue
            overrides[f.name] = _parse(f.name, raw, type(getattr(cls(), f.name)))
        return replace(cls(), **overrides)


def _parse(name: str, raw: str, kind: type) -> object:
    env = f"KRONOS_{name.upper()}"
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not a valid {kind.__name__}; unset it or give e.g. "
                          f"{getattr(Thresholds, name)}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: wait first_delay_s, then x factor each time, capped at max_delay_s."""

    attempts: int = 3
    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0

    def delays(self) -> list[float]:
        """The waits between attempts (one fewer than attempts)."""
        return [min(self.first_delay_s * self.factor**i, self.max_delay_s)
                for i in range(max(self.attempts - 1, 0))]


REGISTRY_RETRY = RetryPolicy(attempts=3, first_delay_s=0.5)
ALERT_RETRY = RetryPolicy(attempts=5, first_delay_s=1.0)
ALERT_TIMEOUT_S = 5.0
# How long a job waits for another job's promotion/rollback/retention on the same model.
REGISTRY_LOCK_TIMEOUT_S = 120.0
# Cadence records kept on the registered model (the decision needs the last few only).
CADENCE_RECORDS_KEPT = 12
