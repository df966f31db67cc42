"""How `kronos-rolling server` options become an `mlflow server` command and environment."""

from __future__ import annotations

import pytest

from kronos_rolling.errors import ConfigError
from kronos_rolling.tracking.server import (
    ServerConfig,
    check_database,
    redact,
    sqlalchemy_uri,
)

PG = "postgresql://mlflow:s3cret-pass@db.internal:5432/mlflow"


ADMIN = {"MLFLOW_AUTH_ADMIN_USERNAME": "root", "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password"}


def test_embedded_default_keeps_everything_under_the_data_dir(tmp_path):
    config = ServerConfig.from_options(tmp_path, environ={})
    assert config.backend_store_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert config.artifacts_destination == str(tmp_path / "artifacts")
    assert (config.host, config.port, config.url) == ("127.0.0.1", 5000, "http://127.0.0.1:5000")
    assert config.basic_auth is None and config.allowed_hosts is None
    command = config.command()
    assert "--app-name" not in command and "--allowed-hosts" not in command
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "artifacts")
    assert config.environment()["MLFLOW_BACKEND_STORE_URI"] == config.backend_store_uri


@pytest.mark.parametrize("given, expected", [
    ("postgres://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
    ("postgresql://u:p@h/d?sslmode=require", "postgresql+psycopg2://u:p@h/d?sslmode=require"),
    ("postgresql+psycopg2://u:p@h/d", "postgresql+psycopg2://u:p@h/d"),
    ("mysql+pymysql://u:p@h/d", "mysql+pymysql://u:p@h/d"),
    ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
])
def test_database_urls_name_the_driver_we_ship(given, expected):
    assert sqlalchemy_uri(given) == expected


def test_production_options_reach_mlflow_without_putting_secrets_on_the_command_line(tmp_path):
    config = ServerConfig.from_options(
        tmp_path, host="0.0.0.0", port=8080, workers=2, backend_store_uri=PG,
        artifacts_destination="s3://models/mlflow", basic_auth=True,
        allowed_hosts="mlflow.example.com,localhost:*", environ=ADMIN,
    )
    assert config.url == "http://127.0.0.1:8080", "clients on this machine use the loopback address"
    command = config.command()
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--allowed-hosts") + 1] == "mlflow.example.com,localhost:*"
    assert command[command.index("--artifacts-destination") + 1] == "s3://models/mlflow"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--workers") + 1] == "2"
    assert not any("s3cret-pass" in part or "a-long-admin-password" in part for part in command)

    env = config.environment()
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow:s3cret-pass@db.internal:5432/mlflow"
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "basic_auth.ini")
    assert config.basic_auth.admin_username == "root"
    # Users live beside the tracking data on a database server ...
    assert config.basic_auth.database_uri == env["MLFLOW_BACKEND_STORE_URI"]
    assert "s3cret-pass" not in repr(config.basic_auth)


def test_auth_users_go_to_sqlite_beside_a_sqlite_backend_unless_told_otherwise(tmp_path):
    config = ServerConfig.from_options(tmp_path, basic_auth=True, environ=ADMIN)
    assert config.basic_auth.database_uri == f"sqlite:///{tmp_path}/basic_auth.db"
    config = ServerConfig.from_options(tmp_path, backend_store_uri=PG, basic_auth=True,
                                       auth_db_uri="postgres://a:b@auth-db/users", environ=ADMIN)
    assert config.basic_auth.database_uri == "postgresql+psycopg2://a:b@auth-db/users"


@pytest.mark.parametrize("password, says", [(None, "not set"), ("short", "shorter than 12")])
def test_basic_auth_without_a_usable_admin_password_is_refused(tmp_path, password, says):
    environ = {} if password is None else {"MLFLOW_AUTH_ADMIN_PASSWORD": password}
    with pytest.raises(ConfigError, match=f"MLFLOW_AUTH_ADMIN_PASSWORD is {says}"):
        ServerConfig.from_options(tmp_path, basic_auth=True, environ=environ)


def test_unreachable_database_is_named_without_its_password():
    with pytest.raises(ConfigError) as caught:
        check_database("postgresql+psycopg2://kronos:hunter2-secret@127.0.0.1:1/mlflow", wait=0)
    message = str(caught.value)
    assert "127.0.0.1:1/mlflow" in message and "hunter2-secret" not in message
    assert "KRONOS_MLFLOW_BACKEND_URI" in message


def test_redact_hides_only_the_password():
    assert redact(PG) == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert redact("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"
    assert redact("postgresql://mlflow@db/mlflow") == "postgresql://mlflow@db/mlflow"
