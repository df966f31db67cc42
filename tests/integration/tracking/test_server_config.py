"""How `kronos-rolling server` options become an `mlflow server` command and environment."""

from __future__ import annotations

import stat

from kronos_rolling.tracking.server import (
    ServerConfig,
    write_auth_config,
)


def test_auth_config_is_private_and_read_back_by_mlflow(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    environ = {"MLFLOW_AUTH_ADMIN_USERNAME": "ops", "MLFLOW_AUTH_ADMIN_PASSWORD": "100%-not-guessable"}
    config = ServerConfig.from_options(tmp_path, backend_store_uri="postgresql://u:p%40ss@h/d",
                                       basic_auth=True, environ=environ)
    env = write_auth_config(config, {})
    ini = tmp_path / "basic_auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    key_file = tmp_path / "flask_secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == key_file.read_text()

    # MLflow's own reader, with nothing in the environment to fall back on.
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    read = read_auth_config()
    assert (read.admin_username, read.admin_password) == ("ops", "100%-not-guessable")
    assert read.database_uri == "postgresql+psycopg2://u:p%40ss@h/d"
    assert read.default_permission == "READ"
    assert read.auth_cache_ttl_seconds == 60

    # The CSRF key survives a restart; an operator's key wins.
    assert write_auth_config(config, {}) == env
    assert write_auth_config(config, {"MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}) == {
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}
