"""The tracking server we start for tests, the demo and `kronos-rolling server`."""

from __future__ import annotations

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
