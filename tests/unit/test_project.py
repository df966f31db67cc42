"""The MLflow Project: every -P value is checked by our code, `mlflow run` runs the monthly job
into the run MLflow made (real tracking server, bundled data, tiny base), and the monthly
script runs the classes one after another, keeps going after a failure and alerts."""

from __future__ import annotations

import pytest
import yaml
from mlflow.projects._project_spec import load_project
from mlflow.utils.environment import _PythonEnv
from support import REPO
from support.registry import Receiver

from kronos_rolling import project
from kronos_rolling.cli.main import main as kronos_rolling
from kronos_rolling.errors import ConfigError
from kronos_rolling.project import ENTRY_POINTS, command_for


def test_every_parameter_of_mlproject_is_checked_by_our_code():
    spec = load_project(str(REPO))
    assert set(spec._entry_points) == set(ENTRY_POINTS)
    for name, entry in spec._entry_points.items():
        ours = [p.name for p in ENTRY_POINTS[name].parameters]
        assert list(entry.parameters) == ours, name
        for parameter in ours:  # each value reaches our code under its own name
            assert f" {parameter}={{{parameter}}}" in f" {entry.command}", (name, parameter)
        assert entry.command.startswith(f"python -m kronos_rolling.project {name} ")
        # every default passes our checks (asset_class, the one required value, aside)
        values = {p: "crypto" if v.default is None else str(v.default) for p, v in entry.parameters.items()}
        command_for(name, values)


def test_the_cluster_variant_has_the_same_entry_points_in_docker():
    root, cluster = load_project(str(REPO)), load_project(str(REPO / "deploy" / "kubernetes"))
    assert cluster.docker_env["image"].endswith("kronos-rolling:latest") and not cluster.env_config_path
    assert root.env_type == "conda_env"
    for name, entry in root._entry_points.items():
        twin = cluster._entry_points[name]
        assert twin.command == entry.command, name
        assert {p: (v.type, v.default) for p, v in twin.parameters.items()} == \
               {p: (v.type, v.default) for p, v in entry.parameters.items()}, name


@pytest.mark.parametrize("entry, values", [
    ("main", {"asset_class": "equity", "as_of": "2024-03-01", "data": str(REPO / "kronos_rolling" / "sample_data"),
              "base_model": "NeoQuasar/Kronos-small", "epochs": "3", "lr": "1e-4", "batch_size": "8",
              "lookback": "64", "horizon": "8", "stride": "2", "years": "1.5", "max_samples_per_epoch": "100",
              "eval_samples": "2", "eval_max_origins": "50", "seed": "7", "device": "cpu",
              "precision": "bf16", "warm_start": "models:/kronos-lora-pooled@production", "force": "true"}),
    ("pooled", {"as_of": "", "data": "", "base_model": "", "epochs": "10", "lr": "1e-4", "batch_size": "32",
                "lookback": "128", "horizon": "16", "stride": "1", "years": "2", "max_samples_per_epoch": "",
                "eval_samples": "4", "eval_max_origins": "", "seed": "42", "device": "auto", "precision": "float32",
                "register": "false"}),
    ("simulate", {"start": "2018-01", "months": "12", "asset_class": "crypto,equity", "drill": "2018-06,2018-09"}),
])
def test_parameters_become_options_the_command_accepts(entry, values):
    command = command_for(entry, values)
    assert ("--force" in command) == (entry == "main")
    assert ("--no-register" in command) == (entry == "pooled")
    # let click parse every option of the very command the entry point runs
    path = ENTRY_POINTS[entry].command
    target = kronos_rolling
    for name in path:
        target = target.commands[name]
    parsed = target.make_context(" ".join(path), command[len(path):]).params
    if entry == "main":
        assert parsed["asset_class"] == "equity" and parsed["epochs"] == 3 and parsed["lr"] == 1e-4
        assert parsed["eval_max_origins"] == 50 and parsed["force"] is True
        assert parsed["warm_start"] == "models:/kronos-lora-pooled@production" and parsed["precision"] == "bf16"
    elif entry == "pooled":
        assert parsed["as_of"] is None and parsed["data_dir"] is None and parsed["max_samples_per_epoch"] is None
    else:
        assert parsed["classes"] == ("crypto", "equity") and parsed["months"] == 12
        assert parsed["drills"] == ("2018-06", "2018-09")


@pytest.mark.parametrize("name, text, words", [
    ("epochs", "abc", "whole number >= 1"),
    ("epochs", "0", "whole number >= 1"),
    ("lr", "-1e-4", "positive number"),
    ("lr", "nan", "positive number"),
    ("as_of", "2018-13-01", "YYYY-MM-DD"),
    ("asset_class", "stocks", "crypto, forex_commodity, equity"),
    ("data", "/no/such/folder", "there is no folder"),
    ("base_model", "./missing-base", "neither an existing folder nor a hub id"),
    ("max_samples_per_epoch", "-5", "or empty for no cap"),
    ("device", "tpu", "auto, cpu, cuda"),
    ("precision", "fp16", "float32, bf16"),
    ("force", "maybe", "true or false"),
    ("warm_start", "latest", "models:/NAME@ALIAS"),
])
def test_a_bad_value_is_named_with_a_valid_example(name, text, words):
    values = {"asset_class": "crypto", name: text}
    with pytest.raises(ConfigError) as caught:
        command_for("main", values)
    message = str(caught.value)
    assert f"-P {name}={text!r}" in message and words in message
    assert f"(e.g. -P {name}=" in message
    assert f"-P {name}={ENTRY_POINTS['main'].parameter(name).example}" in message


def test_a_bad_drill_month_is_named():
    with pytest.raises(ConfigError, match="2018-6x is not a month"):
        command_for("simulate", {"drill": "2018-05,2018-6x"})
    assert "--drill-bad-candidate" not in command_for("simulate", {"drill": ""})


def test_every_bad_value_is_named_at_once_and_unknown_names_are_refused():
    with pytest.raises(ConfigError) as caught:
        command_for("main", {"asset_class": "crypto", "epochs": "five", "lookback": "1.5"})
    assert "-P epochs='five'" in str(caught.value) and "-P lookback='1.5'" in str(caught.value)
    # MLflow appends -P names MLproject does not declare as `--name value`
    with pytest.raises(ConfigError, match="no parameter learning_rate; it takes: asset_class, as_of"):
        command_for("main", project.parse_arguments(["asset_class=crypto", "--learning_rate", "1e-3"]))
    with pytest.raises(ConfigError, match="no entry point 'train'"):
        command_for("train", {})


def test_a_failure_before_the_job_starts_exits_non_zero_and_alerts(monkeypatch, capsys):
    with Receiver() as receiver:
        monkeypatch.setenv("KRONOS_ALERT_WEBHOOK", receiver.url)
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        with pytest.raises(SystemExit) as exited:
            project.main(["main", "asset_class=crypto", "as_of=2018-06-01", "epochs=abc"])
    assert exited.value.code == 2
    assert "-P epochs='abc'" in capsys.readouterr().err
    [alert] = receiver.bodies
    assert alert["kronos"]["event"] == "job_failed"
    assert alert["kronos"]["fields"]["asset_class"] == "crypto" and "epochs" in alert["kronos"]["fields"]["error"]


def test_conda_env_is_python_3_11_with_this_project_and_cpu_torch():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"] and "pip" in conda["dependencies"]
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip[-1] == ".[postgres]", "the project itself (with its PostgreSQL driver) is installed"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip
    # what MLflow itself makes of it for --env-manager virtualenv/uv
    env = _PythonEnv.from_conda_yaml(str(REPO / "conda.yaml"))
    assert env.python == "3.11" and ".[postgres]" in env.dependencies


def test_the_replay_leaves_the_run_mlflow_made_alone():
    environ = {"MLFLOW_RUN_ID": "0123abcd", "MLFLOW_EXPERIMENT_ID": "3", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert project.experiment_label("simulate", {}) is None
    assert project.route_launcher_run(None, environ) == "0123abcd"
    assert environ == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "KRONOS_LAUNCHER_RUN_ID": "0123abcd"}
