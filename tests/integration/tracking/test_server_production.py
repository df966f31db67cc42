"""The production tracking server, for real: PostgreSQL backend, artifacts proxied by the
server into an S3 bucket (moto's S3 server), basic auth on, allowed hosts set, started the
way the container starts it (mlflow_server/start.sh, environment only).

PostgreSQL comes from scripts/test-services.sh (`make test` runs it first); without it these
tests fail and say so.
"""

from __future__ import annotations

import os
import stat

import mlflow
import psutil
import pytest
import requests
import support.production as ps
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kronos_rolling.errors import ConfigError
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres_url):
    with ps.production_stack(tmp_path_factory.mktemp("production"), postgres_url) as running:
        yield running


@pytest.fixture
def job_client(stack, monkeypatch):
    """An MLflow client signed in as the (non-admin) job user, with no storage credentials:
    every artifact byte has to go through the server."""
    for name in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in stack.client_env().items():
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(stack.url)
    yield MlflowClient(stack.url)
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_job_user_logs_a_run_and_registers_a_version(job_client, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    mlflow.set_experiment("kronos-monthly-crypto")
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 5e-5)
        mlflow.log_metric("val_mae", 0.25, step=1)
        mlflow.log_artifacts(str(adapter), "adapter")

    name = "kronos-lora-crypto"
    job_client.create_registered_model(name)
    version = job_client.create_model_version(name, f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id)
    job_client.set_registered_model_alias(name, "production", version.version)

    assert job_client.get_model_version_by_alias(name, "production").version == version.version
    assert job_client.get_run(run.info.run_id).data.metrics["val_mae"] == 0.25
    got = mlflow.artifacts.download_artifacts(f"models:/{name}@production", dst_path=str(tmp_path / "back"))
    assert open(os.path.join(got, "adapter_config.json")).read() == '{"r": 8}'


def test_artifacts_go_through_the_server_into_the_bucket(job_client, stack):
    mlflow.set_experiment("kronos-bucket-check")
    with mlflow.start_run() as run:
        mlflow.log_text("bytes for the bucket", "report/summary.txt")

    keys = [key for key in stack.bucket_keys() if run.info.run_id in key]
    assert keys == [f"mlflow/{run.info.experiment_id}/{run.info.run_id}/artifacts/report/summary.txt"]
    body = stack.s3().get_object(Bucket=stack.bucket, Key=keys[0])["Body"].read()
    assert body == b"bytes for the bucket"
    assert not (stack.data_dir / "artifacts").exists(), "nothing may land on the server's disk"


def test_clients_without_valid_credentials_are_refused(stack, monkeypatch):
    assert requests.get(stack.url + SEARCH, timeout=30).status_code == 401
    assert requests.get(stack.url + SEARCH, auth=(stack.username, "not-the-password"), timeout=30).status_code == 401
    listing = "/api/2.0/mlflow-artifacts/artifacts?path=1"
    assert requests.get(stack.url + listing, timeout=30).status_code == 401, "the artifact proxy is guarded too"
    assert requests.get(stack.url + SEARCH, auth=(stack.username, stack.password), timeout=30).status_code == 200

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(stack.url).search_experiments(max_results=1)


def test_job_user_cannot_manage_users(stack):
    response = requests.post(f"{stack.url}/api/2.0/mlflow/users/create",
                             json={"username": "intruder", "password": "intruder-password"},
                             auth=(stack.username, stack.password), timeout=30)
    assert response.status_code == 403


def test_requests_for_other_host_names_are_refused(stack):
    auth = (stack.username, stack.password)
    forged = requests.get(stack.url + SEARCH, auth=auth, headers={"Host": "evil.example"}, timeout=30)
    assert forged.status_code == 403
    named = requests.get(stack.url.replace("127.0.0.1", "localhost") + SEARCH, auth=auth, timeout=30)
    assert named.status_code == 200


def test_users_live_in_the_tracking_database_and_secrets_stay_private(stack):
    import psycopg2

    with psycopg2.connect(stack.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT username, is_admin FROM users ORDER BY username")
        assert cur.fetchall() == [(stack.admin_username, True), (stack.username, False)]
        cur.execute("SELECT count(*) FROM alembic_version")  # the tracking schema, created before serving
        assert cur.fetchone() == (1,)

    for name in ("basic_auth.ini", "flask_secret_key"):
        assert stat.S_IMODE((stack.data_dir / name).stat().st_mode) == 0o600, name
    command_lines = [" ".join(p.cmdline()) for p in stack.server_processes()]
    assert len(command_lines) >= 3, "launcher, mlflow server and its worker"
    assert not any(stack.database_url.split("@")[0] in line or stack.admin_password in line
                   for line in command_lines), "passwords must not show in `ps`"


def test_missing_bucket_is_named_before_anything_starts(stack, tmp_path):
    # A free port: the bucket check must not depend on 5000 being free (the demo's server may hold it).
    config = ServerConfig.from_options(tmp_path, port=free_port(), artifacts_destination="s3://no-such-bucket/mlflow",
                                       environ={})
    config.env = {"MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint, **ps.S3_KEYS}
    server = TrackingServer(config)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' at http://127.0.0.1:.*create the bucket"):
        server.start()
    assert server.process is None
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before


def test_without_postgres_the_tests_fail_and_say_what_to_run():
    with pytest.raises(pytest.fail.Exception, match="bash scripts/test-services.sh"):
        with ps.postgres_database("postgresql://kronos:kronos@127.0.0.1:1/kronos_test"):
            pass
