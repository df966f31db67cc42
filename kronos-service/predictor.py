#!/usr/bin/env python
"""The predictor service, where the phase document puts it (`kronos-service/predictor.py`).

    python kronos-service/predictor.py serve [--host 127.0.0.1] [--port 8080]    # = kronos-rolling serve
    python kronos-service/predictor.py predict --symbol BTCUSDT --csv FILE --pred-len N

The phase document's checkpoint folders are MLflow registry aliases here: a symbol's
asset class picks `models:/kronos-lora-<class>@production`, else the pooled adapter's
`@production`, else the bare base (see `kronos_rolling.serve`). `get_lora_checkpoint`
is that selection as a function; the running service makes the same decision against
the versions it has loaded.
"""

from __future__ import annotations

from kronos_rolling.data.store import DataStore
from kronos_rolling.serve.selection import Choice
from kronos_rolling.serve.source import RegistrySource, registry_choice
from kronos_rolling.settings import ServeSettings, load_settings
from kronos_rolling.tracking.context import Tracking


def get_lora_checkpoint(symbol: str, settings: ServeSettings | None = None) -> Choice:
    """Which registered version answers `symbol`: `.uri` is `models:/NAME/VERSION`, or None for the bare base.

    `.label` is the asset class, "pooled" or "base"; `.fallback` says why the class's own
    production version does not answer. Settings default to the environment (MLFLOW_TRACKING_URI,
    KRONOS_DATA_DIR for asset-class overrides, KRONOS_SERVE_INFERENCE_GUARD).
    """
    settings = settings or load_settings().serve
    guard_ratio = settings.guard_ratio if settings.inference_guard else None
    return registry_choice(symbol, RegistrySource(Tracking.connect(settings.tracking_uri, check=False)),
                           DataStore(settings.data_dir).overrides(), guard_ratio)


def main() -> None:
    """`serve` and `predict` of the command line, as `python kronos-service/predictor.py ...`."""
    from kronos_rolling.cli.main import KronosGroup
    from kronos_rolling.cli.serve import COMMANDS

    KronosGroup("predictor.py", commands={c.name: c for c in COMMANDS})(prog_name="predictor.py")


if __name__ == "__main__":
    main()
