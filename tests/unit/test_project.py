"""The MLflow Project: MLproject is generated from the entry points, each -P value becomes the
option of the command an operator runs (which checks it), and a value it refuses alerts."""

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
from kronos_rolling.training.config import MODE_DEFAULTS, TrainConfig


def test_mlproject_is_generated_from_the_entry_points_with_the_settings_defaults():
    assert (REPO / "MLproject").read_text() == project.mlproject(), \
        "MLproject is stale: run python -m kronos_rolling.project --write-mlproject"
    assert (REPO / "deploy" / "kubernetes" / "MLproject").read_text() == project.mlproject(cluster=True)
    spec = load_project(str(REPO))
    assert set(spec._entry_points) == set(ENTRY_POINTS)
    for name, entry in spec._entry_points.items():
        assert list(entry.parameters) == [p.name for p in ENTRY_POINTS[name].parameters], name
        assert entry.command.startswith(f"python -m kronos_rolling.project {name} ")
    main = spec._entry_points["main"].parameters
    # Each entry point's mode's epochs and lr, so the run records the values used.
    pooled = spec._entry_points["pooled"].parameters
    assert (int(main["epochs"].default), float(main["lr"].default)) == (MODE_DEFAULTS["rolling"]["epochs"],
                                                                   MODE_DEFAULTS["rolling"]["lr"])
    assert (int(pooled["epochs"].default), float(pooled["lr"].default)) == (MODE_DEFAULTS["pooled"]["epochs"],
                                                                       MODE_DEFAULTS["pooled"]["lr"])
    assert main["lr"].type == "float"
    assert main["lookback"].default == TrainConfig.lookback and main["horizon"].default == TrainConfig.horizon
    assert main["years"].default == TrainConfig.years and main["years"].type == "float"
    assert main["force"].default == "false" and spec._entry_points["pooled"].parameters["register"].default == "true"


def test_the_parameters_are_the_commands_own_options():
    """Declared once: every MLproject parameter's option words and default come from the click command."""
    run = {p.name: p for p in project._command(("run",)).params}
    for parameter in ENTRY_POINTS["main"].parameters:
        click_name = {"data": "data_dir"}.get(parameter.name, parameter.name)
        assert parameter.option.split("/")[0] in run[click_name].opts, parameter.name


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
    ("epochs", "abc", "--epochs"),
    ("epochs", "0", "--epochs"),
    ("lr", "-1e-4", "--lr"),
    ("asset_class", "stocks", "--asset-class"),
    ("data", "/no/such/folder", "--data"),
    ("max_samples_per_epoch", "-5", "--max-samples-per-epoch"),
    ("device", "tpu", "--device"),
    ("precision", "fp16", "--precision"),
    ("force", "maybe", "-P force='maybe' is not a boolean"),
])
def test_a_bad_value_is_refused_by_the_command_exits_2_and_alerts(name, text, words, monkeypatch, capsys):
    with Receiver() as receiver:
        monkeypatch.setenv("KRONOS_ALERT_WEBHOOK", receiver.url)
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        with pytest.raises(SystemExit) as exited:
            project.main(["main", *(["asset_class=crypto"] if name != "asset_class" else []), "as_of=2018-06-01",
                          f"{name}={text}"])
    assert exited.value.code == 2
    assert words in capsys.readouterr().err
    [alert] = receiver.bodies
    assert alert["kronos"]["event"] == "job_failed" and words in alert["kronos"]["fields"]["error"]


def test_lists_and_switches_become_options_and_unknown_names_are_refused():
    assert command_for("simulate", {"drill": "2018-05, 2018-06", "asset_class": ""}) == \
        ["simulate", "--drill-bad-candidate", "2018-05", "--drill-bad-candidate", "2018-06"]
    assert command_for("pooled", {"register": "no"}) == ["train", "pooled", "--no-register"]
    assert command_for("main", {"asset_class": "crypto", "force": "false", "as_of": ""}) == \
        ["run", "--asset-class", "crypto"]
    # MLflow appends -P names MLproject does not declare as `--name value`
    with pytest.raises(ConfigError, match="no parameter learning_rate; it takes: asset_class, as_of"):
        command_for("main", project.parse_arguments(["asset_class=crypto", "--learning_rate", "1e-3"]))
    with pytest.raises(ConfigError, match="no entry point 'train'"):
        command_for("train", {})


def test_the_run_mlflow_made_goes_to_jobs_that_log_into_it_and_not_to_the_replay():
    assert command_for("main", {"asset_class": "equity"}, run_id="0123abcd")[-2:] == ["--mlflow-run-id", "0123abcd"]
    assert "--mlflow-run-id" in command_for("pooled", {}, run_id="0123abcd")
    assert "--mlflow-run-id" not in command_for("simulate", {}, run_id="0123abcd")
    assert project.experiment_label("main", {"asset_class": "equity"}) == "equity"
    assert project.experiment_label("simulate", {}) is None


def test_conda_env_is_python_3_11_with_this_project_and_cpu_torch():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"] and "pip" in conda["dependencies"]
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip[-1] == ".[postgres]", "the project itself (with its PostgreSQL driver) is installed"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip
    # what MLflow itself makes of it for --env-manager virtualenv/uv
    env = _PythonEnv.from_conda_yaml(str(REPO / "conda.yaml"))
    assert env.python == "3.11" and ".[postgres]" in env.dependencies


@pytest.mark.parametrize("uri", ["sqlite:///{repo}/mlflow.db", "file://{repo}/mlruns", "{repo}/mlruns",
                                 "sqlite:///{repo}/sub/x.db"])
def test_a_store_inside_the_project_folder_is_refused_naming_the_fix(uri):
    with pytest.raises(ConfigError) as refused:
        project.check_tracking_store(uri.format(repo=REPO), [REPO])
    message = str(refused.value)
    assert "inside the project folder" in message and "MLflow's own default when MLFLOW_TRACKING_URI is not set" in message
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 mlflow run" in message


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.com", "sqlite:////srv/mlflow.db",
                                 "postgresql://u@db/mlflow", "file:///srv/mlruns"])
def test_a_server_or_a_store_elsewhere_is_accepted(uri):
    project.check_tracking_store(uri, [REPO])
