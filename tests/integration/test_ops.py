"""Operations for real: `run-all` through a failing class, the monthly job against the
production stack (PostgreSQL, S3 through moto, basic auth), the torchrun path on CPU, and the
scheduling files every platform reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import psutil
import pytest
import requests
import support.production as ps
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from support import REPO
from support.registry import Receiver

from kronos_rolling.cli.main import main as kronos_rolling

BIN = Path(sys.executable).parent


SMALL = ["--lookback", "16", "--horizon", "4", "--batch-size", "16", "--max-samples-per-epoch", "32",
         "--eval-samples", "1", "--eval-max-origins", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def crypto_only(tmp_path_factory):
    """A data folder with the daily crypto series only: forex and equity data are absent."""
    folder = tmp_path_factory.mktemp("crypto-only")
    sample = REPO / "kronos_rolling" / "sample_data"
    for name in ("BTCUSD-1D.parquet", "ETHUSD.parquet", "LTCUSD.parquet", "events.csv"):
        shutil.copy(sample / name, folder / name)
    return folder


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(kronos_rolling, [str(a) for a in args], catch_exceptions=False)


def test_run_all_runs_classes_in_turn_keeps_going_after_a_failure_alerts_and_exits_1(
        clean_registry, kronos_home, tiny_base, crypto_only, cli, monkeypatch):
    with Receiver() as receiver:
        monkeypatch.setenv("KRONOS_ALERT_WEBHOOK", receiver.url)
        result = cli("run-all", "--as-of", "2018-06-01", "--asset-class", "forex_commodity", "--asset-class", "crypto",
                     "--data", crypto_only, "--base-model", tiny_base, "--epochs", "1", *SMALL)
    out = result.output
    assert result.exit_code == 1, out
    assert out.index("== forex_commodity") < out.index("forex_commodity: FAILED: no forex_commodity symbols") \
        < out.index("== crypto") < out.index("crypto: v1 ")
    assert "failed: forex_commodity" in result.stderr
    [failure] = [b["kronos"] for b in receiver.bodies if b["kronos"]["event"] == "job_failed"]
    assert failure["fields"]["asset_class"] == "forex_commodity" and "DataError" in failure["fields"]["error"]
    [version] = clean_registry.search_model_versions("name='kronos-lora-crypto'")
    assert version.tags["guard_decision"] in ("promoted", "refused")
    assert clean_registry.search_model_versions("name='kronos-lora-forex_commodity'") == []


@pytest.mark.slow
@pytest.mark.postgres
def test_the_monthly_job_runs_against_postgres_s3_and_basic_auth_as_the_job_user(
        tmp_path, kronos_home, tiny_base, crypto_only, cli, monkeypatch, postgres_url):
    with ps.production_stack(tmp_path, postgres_url) as stack:
        # the job user, with no storage credentials: every artifact byte goes through the server
        for name in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                     "KRONOS_MLFLOW_BACKEND_URI", "KRONOS_ALERT_WEBHOOK"):
            monkeypatch.delenv(name, raising=False)
        for name, value in stack.client_env().items():
            monkeypatch.setenv(name, value)
        try:
            result = cli("run", "--asset-class", "crypto", "--as-of", "2018-06-01", "--data", crypto_only,
                         "--base-model", tiny_base, "--epochs", "1", *SMALL)
            assert result.exit_code == 0, result.output
            client = MlflowClient(stack.url)
            [version] = client.search_model_versions("name='kronos-lora-crypto'")
            run = client.get_run(version.run_id)
        finally:
            mlflow.set_tracking_uri(None)
        assert run.data.tags["mlflow.user"] == stack.username
        assert version.tags["guard_decision"] in ("promoted", "refused")
        assert f"crypto: v{version.version} " in result.output

        keys = stack.bucket_keys()
        run_files = {key.rsplit("/artifacts/", 1)[1] for key in keys if f"/{run.info.run_id}/artifacts/" in key}
        assert {"adapter/adapter_model.safetensors", "adapter/event_embedding.safetensors", "metadata.json",
                "plots/forecast_vs_actual.png"} <= run_files
        model_id = version.source.split("/")[-1]  # models:/m-...: the version's own files
        assert any(f"/models/{model_id}/artifacts/MLmodel" in key for key in keys)
        assert not (stack.data_dir / "artifacts").exists(), "nothing may land on the server's disk"

        # without credentials, or with wrong ones, the server refuses: HTTP and through MLflow
        url = f"{stack.url}/api/2.0/mlflow/registered-models/get?name=kronos-lora-crypto"
        assert requests.get(url, timeout=30).status_code == 401
        assert requests.get(url, auth=(stack.username, "wrong"), timeout=30).status_code == 401
        assert requests.get(url, auth=(stack.username, stack.password), timeout=30).status_code == 200
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            MlflowClient(stack.url).get_registered_model("kronos-lora-crypto")


@pytest.mark.slow
def test_torchrun_trains_on_two_cpu_processes_into_one_run(clean_registry, tracking_uri, kronos_home, tiny_base,
                                                           crypto_only):
    experiment = mlflow.set_experiment("kronos-rolling/crypto")
    before = {r.info.run_id for r in clean_registry.search_runs([experiment.experiment_id], max_results=1000)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
         "kronos-service/finetune/train_event_conditioned.py", "rolling", "--asset-class", "crypto", "--no-register",
         "--as-of", "2018-09-01", "--data", str(crypto_only), "--base-model", str(tiny_base), "--epochs", "2",
         *SMALL],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]

    runs = [r for r in clean_registry.search_runs([experiment.experiment_id], max_results=1000)
            if r.info.run_id not in before]
    [run] = runs  # only rank 0 talks to MLflow
    run_id = run.info.run_id
    assert f"run {run_id}: model " in done.stdout and "val_mae" in done.stdout  # the figures' table, then the run
    assert run.info.status == "FINISHED" and run.data.tags["kronos.complete"] == "true"
    assert run.data.params["as_of"] == "2018-09-01" and run.data.params["epochs"] == "2"
    for key in ("train_loss", "val_loss", "lr", "bars_per_second"):
        assert [m.step for m in clean_registry.get_metric_history(run_id, key)] == [1, 2], key
    models = clean_registry.search_logged_models(experiment_ids=[experiment.experiment_id],
                                                 filter_string=f"source_run_id = '{run_id}'")
    assert [m.name for m in models] == ["model"]
    files = {a.path for a in clean_registry.list_artifacts(run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in files
    assert clean_registry.search_registered_models() == [], "--no-register registers nothing"


def test_the_tests_postgres_is_a_throwaway_cluster_that_leaves_nothing_behind():
    """tests/support/postgres.py: initdb under a temp folder, a free port, stopped and deleted after."""
    import psycopg2
    from support.postgres import throwaway_postgres

    with throwaway_postgres() as url:
        with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SHOW data_directory")
            [data_directory] = cur.fetchone()
            cur.execute("SHOW listen_addresses")
            assert cur.fetchone() == ("127.0.0.1",)
        conn.close()
        assert data_directory.startswith(tempfile.gettempdir()), data_directory
        assert any(data_directory in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    assert not Path(data_directory).exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and p.status() != psutil.STATUS_ZOMBIE
                and data_directory in " ".join(p.info["cmdline"])], "the cluster is still running"
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url, connect_timeout=2)
