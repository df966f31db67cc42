"""The MLflow Project: every -P value is checked by our code, `mlflow run` runs the monthly job
into the run MLflow made (real tracking server, bundled data, tiny base), and the monthly
script runs the classes one after another, keeps going after a failure and alerts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.projects._project_spec import load_project
from mlflow.utils.environment import _PythonEnv
from test_registry_support import Receiver

from kronos_rolling import project
from kronos_rolling.cli.main import main as kronos_rolling
from kronos_rolling.errors import ConfigError
from kronos_rolling.project import ENTRY_POINTS, command_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AS_OF = "2018-06-01"
# Small enough for a few seconds of CPU: 32 samples of 16+4 bars, 8 evaluation origins.
SMALL = {"epochs": "1", "lookback": "16", "horizon": "4", "batch_size": "16", "max_samples_per_epoch": "32",
         "stride": "8", "eval_samples": "1", "eval_max_origins": "8", "device": "cpu"}


def minus_p(values: dict[str, str]) -> list[str]:
    return [word for name, value in values.items() for word in ("-P", f"{name}={value}")]


def job_env(tracking_url: str, home: Path, **extra: str) -> dict[str, str]:
    """What cron gives the job: the tracking server, a home, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT", "KRONOS_", "PYTEST_"))}
    env.update(MLFLOW_TRACKING_URI=tracking_url, KRONOS_HOME=str(home), PATH=f"{BIN}{os.pathsep}{env['PATH']}",
               PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)
    return env


# -- the parameters -------------------------------------------------------------------------


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


def test_the_job_logs_into_the_run_mlflow_made_only_when_it_is_in_the_class_experiment(tracking_uri):
    client = MlflowClient(tracking_uri)
    stray = client.create_run(experiment_id="0")  # `mlflow run` without --experiment-name
    environ = {"MLFLOW_RUN_ID": stray.info.run_id, "MLFLOW_EXPERIMENT_ID": "0"}
    assert project.route_launcher_run("crypto", environ) == stray.info.run_id
    assert environ == {"KRONOS_LAUNCHER_RUN_ID": stray.info.run_id}, "the job makes its own run in its experiment"
    experiment = mlflow.set_experiment("kronos-rolling/crypto")
    right = client.create_run(experiment_id=experiment.experiment_id)
    environ = {"MLFLOW_RUN_ID": right.info.run_id}
    assert project.route_launcher_run("crypto", environ) is None
    assert environ == {"MLFLOW_RUN_ID": right.info.run_id}, "the job logs into the run mlflow made"
    for run in (stray, right):
        client.delete_run(run.info.run_id)


def test_conda_env_is_python_3_11_with_this_project_and_cpu_torch():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"] and "pip" in conda["dependencies"]
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip[-1] == ".[postgres]", "the project itself (with its PostgreSQL driver) is installed"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip
    # what MLflow itself makes of it for --env-manager virtualenv/uv
    env = _PythonEnv.from_conda_yaml(str(REPO / "conda.yaml"))
    assert env.python == "3.11" and ".[postgres]" in env.dependencies


# -- mlflow run, for real -------------------------------------------------------------------


@pytest.fixture(scope="module")
def monthly_job(tracking_server, tiny_base, tmp_path_factory):
    """The monthly cron job for forex_commodity then crypto, as of 2018-06-01, on the bundled data:
    `deploy/monthly-job.sh` runs, for each class,
        mlflow run <repo> -e main --env-manager local --experiment-name kronos-rolling/<class>
            -P asset_class=<class> -P as_of=2018-06-01 -P base_model=<tiny base> -P epochs=1 ...
    The bundled EURUSD series ends in 2017, so forex_commodity trains and then has nothing to be
    evaluated on in May 2018: a real failure, which must not stop crypto."""
    client = MlflowClient(tracking_server.url)
    for model in client.search_registered_models(max_results=1000):
        client.delete_registered_model(model.name)
    before = {r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=5000)}
    home = tmp_path_factory.mktemp("project-home")
    with Receiver() as receiver:
        env = job_env(tracking_server.url, home, KRONOS_ALERT_WEBHOOK=receiver.url, KRONOS_AS_OF=AS_OF,
                      KRONOS_ASSET_CLASSES="forex_commodity crypto")
        done = subprocess.run(["bash", "deploy/monthly-job.sh", *minus_p({"base_model": str(tiny_base), **SMALL})],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    runs = {}
    for label in ("crypto", "forex_commodity"):
        experiment = client.get_experiment_by_name(f"kronos-rolling/{label}")
        runs[label] = [] if experiment is None else [
            r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.info.run_id not in before]
    return {"done": done, "runs": runs, "client": client, "home": home, "alerts": receiver.bodies}


def test_mlflow_run_trains_registers_and_guards_in_the_run_it_made(monthly_job):
    done, client = monthly_job["done"], monthly_job["client"]
    assert "crypto: v1 " in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    [run] = monthly_job["runs"]["crypto"]  # the run `mlflow run` made is the training run: no second one
    assert run.data.tags["mlflow.source.type"] == "PROJECT"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.info.status == "FINISHED" and run.data.tags["kronos.complete"] == "true"
    assert run.info.run_name == f"crypto-{AS_OF}"
    params = run.data.params
    assert params["asset_class"] == "crypto" and params["as_of"] == AS_OF and params["epochs"] == "1"
    # -P values as typed stay; what our code resolved differently sits beside them
    assert params["lr"] == "5e-5" and params["resolved.lr"] == "5e-05"
    assert params["resolved.base_model"].endswith("/predictor")
    assert params["train_end"] == params["val_start"] and "val_mae" in run.data.metrics

    [version] = client.search_model_versions("name='kronos-lora-crypto'")
    assert version.run_id == run.info.run_id
    tags = version.tags
    assert tags["guard_decision"] in ("promoted", "refused") and tags["guard_reason"]
    assert tags["as_of"] == AS_OF and tags["train_window"] == "2016-05-01/2018-05-01"
    aliases = client.get_registered_model("kronos-lora-crypto").aliases
    assert aliases["production" if tags["guard_decision"] == "promoted" else "staging"] == version.version


def test_the_monthly_script_keeps_going_after_a_failed_class_alerts_and_exits_1(monthly_job):
    done, client = monthly_job["done"], monthly_job["client"]
    out = done.stdout
    assert done.returncode == 1, out[-3000:] + done.stderr[-3000:]
    assert out.index(f"== forex_commodity, as of {AS_OF}") < out.index(f"== crypto, as of {AS_OF}")
    assert "== forex_commodity FAILED" in done.stderr and "== crypto FAILED" not in done.stderr
    [failed] = monthly_job["runs"]["forex_commodity"]
    assert failed.info.status == "FAILED" and "kronos.complete" not in failed.data.tags
    assert client.search_model_versions("name='kronos-lora-forex_commodity'") == [], "registry left as it was"
    events = [(body["kronos"]["event"], body["kronos"]["fields"]) for body in monthly_job["alerts"]]
    [crypto] = client.search_model_versions("name='kronos-lora-crypto'")
    guard_alerts = [] if crypto.tags["guard_decision"] == "promoted" else ["guard_refused"]
    assert [event for event, _ in events if event != "regression"] == ["job_failed", *guard_alerts, "job_failed"]
    job, month = events[0][1], events[-1][1]
    assert job["asset_class"] == "forex_commodity" and "no evaluation samples for EURUSD" in job["error"]
    assert month == {"as_of": AS_OF, "failed_classes": "forex_commodity"}


def test_not_due_exits_zero_saying_when_the_next_retrain_is(monthly_job, tiny_base, tracking_uri, monkeypatch,
                                                            capsys):
    monkeypatch.setenv("KRONOS_HOME", str(monthly_job["home"]))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with pytest.raises(SystemExit) as exited:
        project.main(["main", "asset_class=crypto", "as_of=2018-06-20", f"base_model={tiny_base}"])
    assert exited.value.code == 0
    assert "crypto: not due (monthly cadence: last retrain on 2018-06-01; next one is due on or after " \
           "2018-07-01)" in capsys.readouterr().out
    assert len(monthly_job["client"].search_model_versions("name='kronos-lora-crypto'")) == 1


def test_the_replay_leaves_the_run_mlflow_made_alone():
    environ = {"MLFLOW_RUN_ID": "0123abcd", "MLFLOW_EXPERIMENT_ID": "3", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert project.experiment_label("simulate", {}) is None
    assert project.route_launcher_run(None, environ) == "0123abcd"
    assert environ == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "KRONOS_LAUNCHER_RUN_ID": "0123abcd"}


def test_a_bare_mlflow_run_works_and_points_to_the_class_run(monthly_job, tracking_server, tiny_base):
    """`mlflow run . -P asset_class=crypto --env-manager local`, as the issue writes it: no
    --experiment-name, so MLflow's run lands in "Default" and the job's run in kronos-rolling/crypto."""
    client = monthly_job["client"]
    env = job_env(tracking_server.url, monthly_job["home"])
    done = subprocess.run(
        [str(BIN / "mlflow"), "run", ".", "-P", "asset_class=crypto", "--env-manager", "local",
         *minus_p({"as_of": "2018-07-01", "base_model": str(tiny_base), **SMALL})],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    launcher = client.search_runs(["0"], "tags.`mlflow.project.entryPoint` = 'main'", max_results=10)[0]
    assert launcher.info.status == "FINISHED"
    experiment, run_id = launcher.data.tags["kronos.job_run"].rsplit("/", 1)
    assert experiment == "kronos-rolling/crypto"
    job_run = client.get_run(run_id)
    assert client.get_experiment(job_run.info.experiment_id).name == "kronos-rolling/crypto"
    assert job_run.data.tags["kronos.complete"] == "true" and job_run.data.params["as_of"] == "2018-07-01"
    versions = {v.run_id: v for v in client.search_model_versions("name='kronos-lora-crypto'")}
    assert run_id in versions and versions[run_id].tags["guard_decision"] in ("promoted", "refused")
