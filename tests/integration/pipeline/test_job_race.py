"""Two real `kronos-rolling run` jobs for the same class and month, started together: one trains,
the other waits for the class lock, re-checks, and exits 0 saying the month is done."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mlflow import MlflowClient

from kronos_rolling.locks import class_lock
from kronos_rolling.registry.history import read_history
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port


def test_two_jobs_for_one_class_and_month_make_one_version_and_one_history_entry(tmp_path, tiny_base, lock_dir):
    with TrackingServer(ServerConfig.embedded(tmp_path / "server", port=free_port())) as server:
        command = [sys.executable, "-m", "kronos_rolling.cli", "run", "--asset-class", "crypto",
                   "--as-of", "2018-02-01", "--base-model", str(tiny_base), "--epochs", "1", "--lookback", "16",
                   "--horizon", "4", "--max-samples-per-epoch", "32", "--eval-samples", "2",
                   "--eval-max-origins", "120", "--no-progress", "--tracking-uri", server.url]
        env = {**os.environ, "KRONOS_HOME": str(tmp_path / "home"), "KRONOS_LOCK_DIR": str(lock_dir),
               "MLFLOW_TRACKING_URI": server.url}
        # Both jobs find the month due and then queue on the class lock, held here until they both wait.
        with class_lock(lock_dir, "crypto", job="the test, lining the jobs up"):
            jobs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for _ in range(2)]
            time.sleep(25)
            assert all(job.poll() is None for job in jobs), [job.communicate() for job in jobs]
        outputs = [job.communicate(timeout=600) for job in jobs]
        assert [job.returncode for job in jobs] == [0, 0], [err[-3000:] for _, err in outputs]

        client = MlflowClient(server.url)
        versions = client.search_model_versions("name = 'kronos-lora-crypto'")
        assert [v.tags["as_of"] for v in versions] == ["2018-02-01"], "one version for the month"
        decisions = [e for e in read_history(client, "kronos-lora-crypto") if e.action in ("promote", "refuse")]
        assert len(decisions) == 1, decisions
        said = [out + err for out, err in outputs]
        skipped = [text for text in said if "another job already registered kronos-lora-crypto v1 as of 2018-02-01"
                   in text]
        assert len(skipped) == 1, [text[-2000:] for text in said]
        assert "not due (another job already registered" in skipped[0]
