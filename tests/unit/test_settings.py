"""The settings layer: defaults, then the environment, read in one place with one dialect."""

from __future__ import annotations

from pathlib import Path

import pytest

from kronos_rolling.errors import ConfigError
from kronos_rolling.model.base import (
    DEFAULT_BASE_MODEL,
    default_base_model,
    remember_base_model,
)
from kronos_rolling.settings import (
    DEFAULT_TRACKING_URI,
    Distributed,
    Home,
    ServeSettings,
    load_settings,
    parse_bool,
)


def test_defaults_without_any_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings({})
    assert settings.home == Home(Path.home() / ".kronos-rolling")
    assert settings.tracking_uri == DEFAULT_TRACKING_URI == "http://127.0.0.1:5000"
    assert settings.data_dir is None  # DataStore(None) is the bundled data
    assert settings.lock_dir == settings.home.locks and settings.alert_webhook is None
    assert settings.serve.cache_dir == settings.home.predictor_cache and settings.serve.lock_dir == settings.lock_dir
    assert settings.distributed == Distributed() and settings.job is None and settings.mlflow_run_id is None


def test_the_environment_overrides_each_part(tmp_path):
    environ = {"KRONOS_HOME": str(tmp_path), "KRONOS_DATA_DIR": str(tmp_path / "data"),
               "MLFLOW_TRACKING_URI": "http://registry:5000", "KRONOS_ALERT_WEBHOOK": "http://hooks/x",
               "KRONOS_PRIMARY_METRIC": "val_nll", "KRONOS_KEEP_VERSIONS": "4",
               "KRONOS_REFUSE_ON_REGRESSION": "on", "KRONOS_SERVE_POLL_INTERVAL_S": "5",
               "KRONOS_SERVE_MAX_PRED_LEN": "12", "KRONOS_SERVE_INFERENCE_GUARD": "yes", "KRONOS_API_TOKEN": "t0ken",
               "KRONOS_MLFLOW_PORT": "5123", "KRONOS_MLFLOW_BASIC_AUTH": "TRUE", "MLFLOW_RUN_ID": "abc123",
               "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "UNRELATED": "x"}
    settings = load_settings(environ)
    assert settings.home.root == tmp_path and settings.lock_dir == tmp_path / "locks"
    assert settings.data_dir == tmp_path / "data" and settings.tracking_uri == "http://registry:5000"
    assert settings.alert_webhook == "http://hooks/x"
    thresholds = settings.thresholds
    assert (thresholds.primary_metric, thresholds.keep_versions, thresholds.refuse_on_regression) == \
        ("val_nll", 4, True)
    assert thresholds.stall_sharpe_delta == 0.05  # untouched defaults stay
    serve = settings.serve
    assert serve.poll_interval_s == 5 and serve.limits.max_pred_len == 12 and serve.inference_guard
    assert serve.api_token == "t0ken" and "t0ken" not in repr(serve) and serve.tracking_uri == "http://registry:5000"
    assert serve.cache_dir == tmp_path / "predictor-cache"
    assert settings.server.port == 5123 and settings.server.basic_auth
    assert settings.mlflow_run_id == "abc123" and settings.job == "mlflow-run:abc123"
    assert settings.distributed == Distributed(rank=1, world=2, local_rank=1) and not settings.distributed.is_main
    assert load_settings({"KRONOS_JOB": "cron-17", "MLFLOW_RUN_ID": "abc"}).job == "cron-17"
    # Without MLFLOW_TRACKING_URI, clients talk to the server `kronos-rolling server` starts on this machine.
    assert load_settings({"KRONOS_MLFLOW_PORT": "5123"}).tracking_uri == "http://127.0.0.1:5123"


@pytest.mark.parametrize("environ, words", [
    ({"KRONOS_KEEP_VERSIONS": "six"}, "KRONOS_KEEP_VERSIONS='six'"),
    ({"KRONOS_KEEP_VERSIONS": "0"}, "keep_versions"),
    ({"KRONOS_SERVE_POLL_INTERVAL_S": "soon"}, "KRONOS_SERVE_POLL_INTERVAL_S='soon'"),
    ({"KRONOS_REFUSE_ON_REGRESSION": "maybe"}, "KRONOS_REFUSE_ON_REGRESSION='maybe' is not a boolean"),
    ({"KRONOS_MLFLOW_PORT": "web"}, "KRONOS_MLFLOW_PORT='web'"),
])
def test_a_bad_variable_is_named(environ, words):
    with pytest.raises(ConfigError, match=words):
        load_settings(environ)


def test_one_boolean_dialect():
    for text in ("1", "true", "Yes", "ON"):
        assert parse_bool("X", text) is True
    for text in ("0", "false", "No", "off"):
        assert parse_bool("X", text) is False
    with pytest.raises(ConfigError, match="X='2' is not a boolean"):
        parse_bool("X", "2")


def test_serve_settings_are_checked():
    with pytest.raises(ConfigError, match="poll_interval_s"):
        ServeSettings(poll_interval_s=0)
    with pytest.raises(ConfigError, match="labels"):
        ServeSettings(labels=("bonds",))


def test_the_default_base_is_the_setting_then_this_machines_config(tmp_path):
    home = Home(tmp_path)
    assert default_base_model(None, home) == DEFAULT_BASE_MODEL
    assert remember_base_model(home, "/srv/bases/tiny") is True
    assert remember_base_model(home, "/elsewhere") is False, "a recorded base is never replaced silently"
    assert default_base_model(None, home) == "/srv/bases/tiny"
    assert default_base_model("NeoQuasar/Kronos-small", home) == "NeoQuasar/Kronos-small"
    home.config_file.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        default_base_model(None, home)


@pytest.mark.parametrize("environ, words", [
    ({"KRONOS_MLFLOW_PORT": "0"}, "port 0 is not a TCP port"),
    ({"KRONOS_MLFLOW_PORT": "70000"}, "port 70000 is not a TCP port"),
    ({"KRONOS_MLFLOW_WORKERS": "0"}, "workers=0 must be >= 1"),
    ({"KRONOS_KEEP_VERSIONS": "0"}, "keep_versions=0"),
    ({"KRONOS_SERVE_MAX_BARS": "0"}, "max_bars must be >= 1"),
])
def test_out_of_range_settings_are_refused_not_ignored(environ, words):
    with pytest.raises(ConfigError, match=words):
        load_settings(environ)


@pytest.mark.parametrize("args, words", [
    (["forecast", "--csv", "x.csv", "--max-context", "0"], "--max-context"),
    (["serve", "--port", "0"], "--port"),
    (["server", "--port", "70000"], "--port"),
    (["server", "--workers", "0"], "--workers"),
])
def test_out_of_range_options_are_refused_before_anything_runs(args, words):
    from click.testing import CliRunner

    from kronos_rolling.cli.main import main as cli

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and words in result.output and "range" in result.output, result.output
