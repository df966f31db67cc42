"""Every setting of the predictor service, and the request limits it enforces.

`ServeSettings.from_env()` reads the environment; the `serve` and `predict` commands
override single fields from their options. Names:

    KRONOS_BASE_MODEL            the base (folder with predictor/ + tokenizer/, or hub id)
    MLFLOW_TRACKING_URI          the registry [default: the local `kronos-rolling server`]
    KRONOS_DATA_DIR              asset-class overrides and events.csv [default: bundled data]
    KRONOS_HOME                  the cache of resolved versions lives in $KRONOS_HOME/predictor-cache
    KRONOS_API_TOKEN             bearer token every caller must send (unset: no auth)
    KRONOS_WEBHOOK_SECRET        the secret of the MLflow webhook that calls /webhooks/mlflow
    KRONOS_SERVE_DEVICE          auto, cpu or cuda
    KRONOS_SERVE_<FIELD>         any numeric/boolean field below, e.g. KRONOS_SERVE_POLL_INTERVAL_S=10
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from kronos_rolling.errors import ConfigError, DataError
from kronos_rolling.registry.names import model_targets
from kronos_rolling.tracking.server import DEFAULT_HOST, DEFAULT_PORT, default_data_dir

CACHE_FOLDER = "predictor-cache"
DEFAULT_SERVE_PORT = 8080
_SECRETS = {"api_token": "KRONOS_API_TOKEN", "webhook_secret": "KRONOS_WEBHOOK_SECRET"}
_NOT_NUMERIC = {"base_model", "tracking_uri", "data_dir", "cache_dir", "device", "labels", "limits", *_SECRETS}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; everything larger is a 4xx with the limit named."""

    min_bars: int = 16  # fewer gives the normaliser too little history to mean anything
    max_bars: int = 2048  # further capped by the base's context at start-up
    max_pred_len: int = 128
    max_samples: int = 32
    max_batch_items: int = 32
    max_body_bytes: int = 8 * 1024 * 1024
    max_symbol_length: int = 64

    def check_options(self, pred_len: int, samples: int) -> None:
        if pred_len > self.max_pred_len:
            raise ConfigError(f"pred_len {pred_len} is over this service's limit of {self.max_pred_len} bars; "
                              f"ask for at most {self.max_pred_len} (or forecast in several steps)")
        if samples > self.max_samples:
            raise ConfigError(f"samples {samples} is over this service's limit of {self.max_samples}; "
                              f"ask for at most {self.max_samples} sample paths")

    def check_bars(self, symbol: str, n_bars: int) -> None:
        if n_bars < self.min_bars:
            raise DataError(f"{symbol}: {n_bars} bar(s) sent but at least {self.min_bars} are needed; "
                            "send more history")
        if n_bars > self.max_bars:
            raise DataError(f"{symbol}: {n_bars} bars sent but at most {self.max_bars} are used (the model's "
                            f"context); send only the last {self.max_bars}")

    def check_batch(self, n_items: int) -> None:
        if n_items > self.max_batch_items:
            raise ConfigError(f"{n_items} series in one batch but at most {self.max_batch_items} are allowed; "
                              "split the batch")


@dataclass(frozen=True)
class ServeSettings:
    base_model: str | None = None  # None: $KRONOS_BASE_MODEL, else the released Kronos-base
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else the local tracking server
    data_dir: Path | None = None  # None: $KRONOS_DATA_DIR, else the bundled sample data
    cache_dir: Path | None = None  # None: $KRONOS_HOME/predictor-cache
    device: str = "auto"
    labels: tuple[str, ...] = field(default_factory=model_targets)  # registered models to follow
    poll_interval_s: float = 30.0
    inference_guard: bool = False  # serve pooled when a class's val_mae is > guard_ratio x pooled's
    guard_ratio: float = 1.10
    # CPU threads for a forecast's window passes (0: torch's default, one per core; the
    # single-bar decode steps always run on one, see model/forecast.py). One: concurrent
    # requests on one adapter run side by side, each on a core of its own, instead of
    # competing for the same cores.
    inference_threads: int = 1
    busy_threads: int = 1  # CPU threads for inference while a training job holds the device
    busy_nice: int = 10  # niceness of inference threads meanwhile (Linux; 0: same priority as training)
    busy_check_s: float = 2.0
    registry_timeout_s: float = 10.0  # one registry request, before it counts as unreachable
    webhook_tolerance_s: float = 300.0  # accepted age of a signed webhook delivery
    refused_retry_s: float = 300.0  # a refused version is fetched again after this (or on a push)
    cache_keep: int = 3  # cached versions kept per registered model (besides the served one)
    limits: RequestLimits = field(default_factory=RequestLimits)
    api_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.labels) - set(model_targets()))
        if unknown or not self.labels:
            raise ConfigError(f"labels must be a non-empty subset of {', '.join(model_targets())}; got {unknown}")
        positive = ("poll_interval_s", "guard_ratio", "busy_check_s", "registry_timeout_s", "webhook_tolerance_s",
                    "refused_retry_s")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r} must be a number > 0 (KRONOS_SERVE_{name.upper()})")
        if not 0 <= self.busy_nice <= 19:
            raise ConfigError(f"busy_nice must be between 0 and 19 (KRONOS_SERVE_BUSY_NICE), got {self.busy_nice}")
        if self.inference_threads < 0:
            raise ConfigError("inference_threads must be >= 0 (0: one per core) (KRONOS_SERVE_INFERENCE_THREADS)")
        for name in ("busy_threads", "cache_keep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (KRONOS_SERVE_{name.upper()})")
        for f in fields(RequestLimits):
            if getattr(self.limits, f.name) < 1:
                raise ConfigError(f"{f.name} must be >= 1 (KRONOS_SERVE_{f.name.upper()})")
        if self.limits.min_bars > self.limits.max_bars:
            raise ConfigError(f"min_bars {self.limits.min_bars} is above max_bars {self.limits.max_bars}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "ServeSettings":
        """Defaults, then `KRONOS_SERVE_<FIELD>` and the named variables, then `overrides` (not None)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        limit_values: dict[str, object] = {}
        defaults, default_limits = cls(), RequestLimits()
        for f in fields(cls):
            if f.name in _NOT_NUMERIC:
                continue
            raw = environ.get(f"KRONOS_SERVE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f"KRONOS_SERVE_{f.name.upper()}", raw, type(getattr(defaults, f.name)))
        for f in fields(RequestLimits):
            raw = environ.get(f"KRONOS_SERVE_{f.name.upper()}")
            if raw is not None:
                limit_values[f.name] = _parse(f"KRONOS_SERVE_{f.name.upper()}", raw, int)
        values["limits"] = replace(default_limits, **limit_values)
        for name, env in _SECRETS.items():
            values[name] = environ.get(env) or None
        values["device"] = environ.get("KRONOS_SERVE_DEVICE") or defaults.device
        values["base_model"] = environ.get("KRONOS_BASE_MODEL") or None
        values["tracking_uri"] = environ.get("MLFLOW_TRACKING_URI") or None
        values["data_dir"] = Path(environ["KRONOS_DATA_DIR"]).expanduser() if environ.get("KRONOS_DATA_DIR") else None
        home = environ.get("KRONOS_HOME")
        values["cache_dir"] = (Path(home).expanduser() if home else default_data_dir()) / CACHE_FOLDER
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_data_dir() / CACHE_FOLDER


def _parse(env: str, raw: str, kind: type) -> object:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not a valid {kind.__name__}; unset it or give a valid value") from None


__all__ = ["ServeSettings", "RequestLimits", "DEFAULT_SERVE_PORT", "CACHE_FOLDER"]
