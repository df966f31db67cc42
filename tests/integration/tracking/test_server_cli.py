"""`kronos-rolling server` end to end: the embedded default, in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow
import psutil
import pytest

from kronos_rolling.tracking.server import free_port, is_healthy

pytestmark = pytest.mark.slow


# `python -m kronos_rolling.cli server ARGS` is `kronos-rolling server ARGS` (same click command
# run by the main CLI group); it works whether or not the group has it attached yet.
SERVER = [sys.executable, "-m", "kronos_rolling.cli", "server"]


def start(args, env, log_file):
    # As from a terminal's foreground: Ctrl-C at its default. A test run started in the background
    # (`make test &`) ignores SIGINT, and children inherit that, so this test's Ctrl-C would never arrive.
    with open(log_file, "ab") as out:
        process = subprocess.Popen(SERVER + args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return process


def wait_serving(process, url, log_file, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not is_healthy(url, timeout=1.0):
        assert process.poll() is None, f"server exited with {process.returncode}:\n{log_file.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no answer at {url}"
        time.sleep(0.3)
    return [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)


def stop(process, family, sig):
    process.send_signal(sig)
    try:
        code = process.wait(timeout=30)
    finally:
        gone, alive = psutil.wait_procs(family, timeout=10)
        for proc in alive:
            proc.kill()
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    return code


@pytest.fixture
def clean_client_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    yield
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def test_embedded_server_serves_keeps_data_and_stops_cleanly(tmp_path, clean_client_env):
    data_dir, log_file, port = tmp_path / "home", tmp_path / "server.out", free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ}
    for name in [n for n in env if n.startswith("KRONOS_MLFLOW_") or n == "KRONOS_HOME"]:
        del env[name]

    # First start: defaults except data dir and port (a free one; 5000 may be taken).
    process = start(["--data-dir", str(data_dir), "--port", str(port)], env, log_file)
    family = wait_serving(process, url, log_file)
    listening = {c.laddr for p in family for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert {addr.ip for addr in listening} == {"127.0.0.1"}, "bound to loopback only by default"

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("embedded")
    with mlflow.start_run() as run:
        mlflow.log_metric("val_mae", 0.5)
        mlflow.log_text("adapter bytes", "adapter/weights.txt")
    stored = list((data_dir / "artifacts").rglob("weights.txt"))
    assert [p.read_text() for p in stored] == ["adapter bytes"], "artifacts land in DATA_DIR/artifacts"
    assert (data_dir / "mlflow.db").exists()

    assert stop(process, family, signal.SIGINT) == 0  # Ctrl-C

    # Second start on the same data, found through KRONOS_HOME this time: the schema is
    # upgraded in place and the earlier run is still there.
    process = start(["--port", str(port)], {**env, "KRONOS_HOME": str(data_dir)}, log_file)
    family = wait_serving(process, url, log_file)
    assert mlflow.get_run(run.info.run_id).data.metrics["val_mae"] == 0.5
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/adapter/weights.txt") == "adapter bytes"
    assert stop(process, family, signal.SIGTERM) == 0  # what a container runtime sends

    output = log_file.read_text()
    assert f"MLflow tracking server at {url}" in output
    assert "stopping the tracking server" in output


def test_a_taken_port_is_an_error_that_says_what_to_do(tmp_path, tracking_server):
    port = tracking_server.config.port
    result = subprocess.run(SERVER + ["--data-dir", str(tmp_path), "--port", str(port)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"something already answers at http://127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_kill_9_of_the_server_command_takes_its_workers_with_it(tmp_path, clean_client_env):
    """SIGKILL runs nothing in the killed process; its supervisor child stops `mlflow server` and every
    worker, so the port is free and a restart on it works."""
    data_dir, log_file, port = tmp_path / "home", tmp_path / "server.out", free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = start(["--data-dir", str(data_dir), "--port", str(port), "--workers", "2"], env, log_file)
    family = wait_serving(process, url, log_file)
    assert len(family) >= 4, [(p.pid, p.name()) for p in family]  # command, supervisor, mlflow, workers

    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    gone, alive = psutil.wait_procs(family[1:], timeout=30)
    for orphan in alive:
        orphan.kill()
    assert not alive, f"orphans: {[(p.pid, p.name()) for p in alive]}"
    deadline = time.monotonic() + 10
    while not port_free(port):
        assert time.monotonic() < deadline, f"port {port} still taken"
        time.sleep(0.2)

    again = start(["--data-dir", str(data_dir), "--port", str(port)], env, log_file)
    assert stop(again, wait_serving(again, url, log_file), signal.SIGTERM) == 0
