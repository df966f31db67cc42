"""Staging, guard decisions, promotion, rollback and the audit trail on a real tracking server."""

from __future__ import annotations

import time

import pytest

from kronos_rolling.errors import ConfigError, RegistryUnavailable
from kronos_rolling.names import registered_model_name
from kronos_rolling.tracking.context import Tracking
from kronos_rolling.tracking.server import free_port


@pytest.mark.parametrize("asset_class", ["crypto", "forex_commodity", "equity", "pooled"])
def test_registered_model_names(asset_class):
    assert registered_model_name(asset_class) == f"kronos-lora-{asset_class}"


@pytest.mark.parametrize("bad", ["Crypto", "bonds", "", "kronos-lora-crypto"])
def test_unknown_asset_class_names_the_valid_ones(bad):
    with pytest.raises(ConfigError, match="use one of: crypto, forex_commodity, equity, pooled"):
        registered_model_name(bad)


def test_registry_unreachable(cli, monkeypatch):
    down = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=f"{down} does not answer"):
        Tracking.connect(down)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    for args in (["history"], ["rollback", "--reason", "x"], ["due"], ["cadence"],
                 ["retention", "--dry-run"]):
        result = cli(*args, "--asset-class", "crypto")
        assert result.exit_code == RegistryUnavailable.exit_code, (args, result.output)
        assert "does not answer" in result.output and "Traceback" not in result.output
    assert time.monotonic() - started < 30
