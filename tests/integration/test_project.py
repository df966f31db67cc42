"""The MLflow Project: every -P value is checked by our code, `mlflow run` runs the monthly job
into the run MLflow made (real tracking server, bundled data, tiny base), and the monthly
script runs the classes one after another, keeps going after a failure and alerts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from support import REPO
from support.registry import Receiver

from kronos_rolling import project
from kronos_rolling.tracking.runs import UNFINISHED_REASON

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


@pytest.fixture(scope="module")
def monthly_job(tracking_server, tiny_base, tmp_path_factory):
    """The monthly cron job for forex_commodity then crypto, as of 2018-06-01, on the bundled data:
    `deploy/monthly-job.sh` runs, for each class,
        mlflow run <repo> -e main --env-manager local --experiment-name kronos-rolling/<class>
            -P asset_class=<class> -P as_of=2018-06-01 -P base_model=<tiny base> -P epochs=1 ...
    The bundled EURUSD series ends in 2017, so forex_commodity has no bars in May 2018, the month it
    would be judged on, and fails at once (as_of later than its data): a real failure, which must
    not stop crypto."""
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
    assert params["lr"] == "5e-05" and "resolved.lr" not in params  # MLflow writes a float param its own way
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
    assert job["asset_class"] == "forex_commodity" and "is later than the data" in job["error"]
    assert "forex_commodity's last bar ends 2017-" in job["error"] and "-P as_of=" in job["error"]
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


LATE = "2026-12-01"  # the bundled data ends in 2019-2020: the cron's default as_of (today) is past it


def assert_names_the_last_bar_and_the_fix(text: str) -> None:
    assert f"as_of {LATE} is later than the data" in text, text[-3000:]
    assert "crypto's last bar ends 2019-" in text or "crypto's last bar ends 2020-" in text, text[-3000:]
    assert "-P as_of=" in text and "--as-of " in text and "kronos-rolling data import" in text, text[-3000:]


def test_an_as_of_past_the_data_exits_2_naming_the_last_bar_and_the_fix(tracking_server, tiny_base, tmp_path):
    """Through the real command: exit 2, the message and the job_failed alert name crypto's last bar
    and the fix; nothing is registered and no run is left RUNNING."""
    client = MlflowClient(tracking_server.url)
    with Receiver() as receiver:
        env = job_env(tracking_server.url, tmp_path / "home", KRONOS_ALERT_WEBHOOK=receiver.url)
        done = subprocess.run([str(BIN / "kronos-rolling"), "run", "--asset-class", "crypto", "--as-of", LATE,
                               "--base-model", str(tiny_base), "--device", "cpu"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "NotImplementedError" not in done.stderr, done.stderr[-3000:]
    assert_names_the_last_bar_and_the_fix(done.stderr)
    [alert] = [body["kronos"] for body in receiver.bodies]
    assert alert["event"] == "job_failed" and alert["fields"]["asset_class"] == "crypto"
    assert_names_the_last_bar_and_the_fix(alert["fields"]["error"])
    running = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 f"params.as_of = '{LATE}' and attributes.status = 'RUNNING'")
    assert running == []


def test_mlflow_run_with_an_as_of_past_the_data_fails_clearly_and_leaves_no_run_running(
        tracking_server, tiny_base, tmp_path):
    """`mlflow run . --env-manager local -P asset_class=crypto` as cron runs it, with the date past the data."""
    client = MlflowClient(tracking_server.url)
    with Receiver() as receiver:
        env = job_env(tracking_server.url, tmp_path / "home", KRONOS_ALERT_WEBHOOK=receiver.url)
        done = subprocess.run(
            [str(BIN / "mlflow"), "run", ".", "--env-manager", "local", "-P", "asset_class=crypto",
             *minus_p({"as_of": LATE, "base_model": str(tiny_base), "device": "cpu"})],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "NotImplementedError" not in output, output[-3000:]
    assert_names_the_last_bar_and_the_fix(done.stderr)
    [alert] = [body["kronos"] for body in receiver.bodies]
    assert alert["event"] == "job_failed"
    assert_names_the_last_bar_and_the_fix(alert["fields"]["error"])
    launchers = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   f"params.as_of = '{LATE}'")
    assert launchers and all(r.info.status == "FAILED" for r in launchers), [r.info.status for r in launchers]

    # The entry point's command itself, as MLproject runs it, exits 2.
    bridge = subprocess.run([sys.executable, "-m", "kronos_rolling.project", "main", "asset_class=crypto",
                             f"as_of={LATE}", f"base_model={tiny_base}"],
                            cwd=REPO, env={k: v for k, v in env.items() if k != "KRONOS_ALERT_WEBHOOK"},
                            capture_output=True, text=True, timeout=300)
    assert bridge.returncode == 2, bridge.stdout[-3000:] + bridge.stderr[-3000:]
    assert_names_the_last_bar_and_the_fix(bridge.stderr)


def test_a_launch_that_fails_before_the_job_runs_leaves_no_run_running(tracking_server, tiny_base, tmp_path):
    """The design card's env manager (conda) on a machine without conda: `mlflow run` creates its run,
    then fails to build the environment; the monthly script ends that run as FAILED and alerts."""
    client = MlflowClient(tracking_server.url)
    since = int(time.time() * 1000)
    with Receiver() as receiver:
        env = job_env(tracking_server.url, tmp_path / "home", KRONOS_ALERT_WEBHOOK=receiver.url, KRONOS_AS_OF=AS_OF,
                      KRONOS_ASSET_CLASSES="crypto", KRONOS_ENV_MANAGER="conda",
                      MLFLOW_CONDA_HOME=str(tmp_path / "no-conda-here"))
        env.pop("CONDA_EXE", None)
        done = subprocess.run(["bash", "deploy/monthly-job.sh", *minus_p({"base_model": str(tiny_base), **SMALL})],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Could not find Conda executable" in done.stderr, done.stderr[-3000:]
    experiment = client.get_experiment_by_name("kronos-rolling/crypto")
    launched = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
                if r.info.start_time >= since]
    assert launched, "mlflow run created no run: the test no longer shows the failure it is about"
    assert [r.info.status for r in launched] == ["FAILED"] * len(launched)
    assert all(r.data.tags["kronos.failed_reason"] == UNFINISHED_REASON for r in launched)
    assert [body["kronos"]["fields"]["failed_classes"] for body in receiver.bodies] == ["crypto"]


def test_mlflow_run_without_a_tracking_uri_refuses_mlflows_default_store_in_the_checkout(tmp_path):
    """The README's local command without MLFLOW_TRACKING_URI: MLflow makes ./mlflow.db in the checkout
    and hands it to the job, which refuses it at once (exit 2), naming the fix; the monthly script
    refuses before any `mlflow run`."""
    env = job_env("", tmp_path / "home")
    del env["MLFLOW_TRACKING_URI"]
    made = [path for path in (REPO / "mlflow.db", REPO / "mlruns") if not path.exists()]
    try:
        done = subprocess.run([str(BIN / "mlflow"), "run", ".", "--env-manager", "local", "-P", "asset_class=crypto",
                               "-P", "as_of=2018-03-01"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        for path in made:  # what this test's `mlflow run` left in the checkout
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    assert done.returncode != 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"is sqlite:///{REPO}/mlflow.db, inside the project folder" in done.stderr, done.stderr[-3000:]
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 mlflow run" in done.stderr
    assert "error: the tracking store is" in done.stderr, "our one-line refusal, not a traceback"

    script = subprocess.run(["bash", "deploy/monthly-job.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert script.returncode == 2 and "MLFLOW_TRACKING_URI is not set" in script.stderr, script.stderr
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 bash deploy/monthly-job.sh" in script.stderr
    assert "== crypto" not in script.stdout, "no class ran"


def test_the_checkout_ignores_local_stores_and_reports():
    ignored = subprocess.run(["git", "check-ignore", "mlflow.db", "mlruns/x", "simulation.csv", "report.csv"],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
    assert ignored.stdout.split() == ["mlflow.db", "mlruns/x", "simulation.csv", "report.csv"], ignored
    kept = subprocess.run(["git", "check-ignore", "kronos_rolling/sample_data/events.csv"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert kept.returncode == 1, "bundled data stays tracked"
