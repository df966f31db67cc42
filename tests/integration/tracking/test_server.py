"""The tracking server we start for tests, the demo and `kronos-rolling server`."""

from __future__ import annotations

import os
import stat

import mlflow
import psutil
import requests

from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port


def test_session_server_logs_a_run(tracking_uri):
    mlflow.set_experiment("smoke")
    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
        mlflow.log_text("hello", "hello.txt")
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params["p"] == "1"
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/hello.txt") == "hello"


def test_stop_ends_the_server_and_its_children(tmp_path):
    server = TrackingServer(ServerConfig.embedded(tmp_path, port=free_port()))
    server.start()
    leader = psutil.Process(server.process.pid)
    family = [leader] + leader.children(recursive=True)
    assert len(family) >= 2, "mlflow server runs its app in a child process"
    assert requests.get(f"{server.url}/health", timeout=5).ok
    server.stop()
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    assert (tmp_path / "mlflow.db").exists()


def test_the_servers_databases_artifacts_log_and_secrets_are_private_whatever_the_umask(tmp_path, monkeypatch):
    """Under umask 0 every file would be world-readable and writable; none of the server's is."""
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "a-long-admin-password")
    home = tmp_path / "home"
    config = ServerConfig.from_options(home, port=free_port(), basic_auth=True, environ=dict(os.environ))
    previous = os.umask(0)
    try:
        with TrackingServer(config) as server:
            auth = requests.auth.HTTPBasicAuth("admin", "a-long-admin-password")
            response = requests.post(f"{server.url}/api/2.0/mlflow/experiments/create", json={"name": "modes"},
                                     auth=auth, timeout=10)
            assert response.ok, response.text
            experiment = response.json()["experiment_id"]
            run = requests.post(f"{server.url}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment},
                                auth=auth, timeout=10).json()["run"]["info"]
            artifact = f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run['run_id']}/artifacts/a.txt"
            assert requests.put(artifact, data=b"hello", auth=auth, timeout=10).ok
        (home / "note.txt").write_text("written by this test under umask 0")
    finally:
        os.umask(previous)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(home / "note.txt") == 0o666, "the umask of the test applied to its own files"
    for name in ("mlflow.db", "basic_auth.db", "basic_auth.ini", "flask_secret_key", "server.log"):
        assert mode(home / name) == 0o600, name
    artifacts = home / "artifacts"
    assert mode(artifacts) == 0o700
    stored = [p for p in artifacts.rglob("*")]
    assert any(p.name == "a.txt" for p in stored)
    assert all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in stored), [(p, oct(mode(p))) for p in stored]


def test_existing_databases_and_artifact_folder_are_made_private_at_start(tmp_path):
    first = TrackingServer(ServerConfig.embedded(tmp_path, port=free_port())).start()
    first.stop()
    os.chmod(tmp_path / "mlflow.db", 0o644)  # as an older kronos-rolling left them under umask 022
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    os.chmod(tmp_path / "artifacts", 0o755)
    with TrackingServer(ServerConfig.embedded(tmp_path, port=free_port())):
        pass
    assert stat.S_IMODE((tmp_path / "mlflow.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "artifacts").stat().st_mode) == 0o700
