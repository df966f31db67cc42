"""`kronos-rolling serve` with MLFLOW_TRACKING_URI unset talks to the documented default tracking
server (http://127.0.0.1:$KRONOS_MLFLOW_PORT, the one `kronos-rolling server` and the demo start),
never to MLflow's own default (a `mlflow.db` in the current folder)."""

from __future__ import annotations

from urllib.parse import urlparse

import requests
from support.serve import ServiceProcess, register_version, set_production


def test_serve_without_a_tracking_uri_finds_the_models_of_the_default_server(
        clean_registry, tracking_server, tiny_base, kronos_home, tmp_path, monkeypatch):
    version = register_version(clean_registry, tiny_base, "crypto", seed=3)
    set_production(clean_registry, "crypto", version)
    # The tracking server stands where the settings' default points: 127.0.0.1 on KRONOS_MLFLOW_PORT
    # (a free port, not 5000, which the demo's server may hold).
    address = urlparse(tracking_server.url)
    assert address.hostname == "127.0.0.1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {"KRONOS_MLFLOW_PORT": str(address.port), "KRONOS_BASE_MODEL": str(tiny_base),
           "KRONOS_SERVE_POLL_INTERVAL_S": "1", "OMP_NUM_THREADS": "1"}
    with ServiceProcess(env=env, cwd=workdir) as service:
        models = requests.get(service.url + "/models", timeout=30).json()["models"]
        health = requests.get(service.url + "/health", timeout=30).json()
    crypto = models["crypto"]
    assert crypto is not None, models
    assert (crypto["registered_model"], crypto["version"], crypto["source"]) == (
        "kronos-lora-crypto", version, "registry"), models
    assert f"127.0.0.1:{address.port}" in health["registry"]["uri"], health["registry"]
    assert health["registry"]["error"] is None and not health["registry"]["stale"], health["registry"]
    assert list(workdir.iterdir()) == [], "serve wrote to the current folder (MLflow's own mlflow.db?)"
