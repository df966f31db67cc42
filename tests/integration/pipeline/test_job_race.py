"""Two real `kronos-rolling run` jobs for the same class and month, started together: one trains,
the other waits for the class lock, re-checks, and exits 0 saying the month is done.

The test holds the class lock until both jobs have tried to take it (filelock's line on a failed
attempt: support/locks.py), so both are certainly queued when it lets go; no sleep."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack

from mlflow import MlflowClient
from support.locks import FILELOCK_DEBUG, queued_on
from support.processes import Child

from kronos_rolling.locks import class_lock
from kronos_rolling.registry.history import read_history
from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port

# `kronos-rolling ARGS` as `python -c KRONOS_ROLLING ARGS`, saying each time it finds a lock taken.
KRONOS_ROLLING = FILELOCK_DEBUG + "from kronos_rolling.cli.main import main; main(prog_name='kronos-rolling')"


def test_two_jobs_for_one_class_and_month_make_one_version_and_one_history_entry(tmp_path, tiny_base, lock_dir):
    with TrackingServer(ServerConfig.embedded(tmp_path / "server", port=free_port())) as server:
        command = [sys.executable, "-c", KRONOS_ROLLING, "run", "--asset-class", "crypto",
                   "--as-of", "2018-02-01", "--base-model", str(tiny_base), "--epochs", "1", "--lookback", "16",
                   "--horizon", "4", "--max-samples-per-epoch", "32", "--eval-samples", "2",
                   "--eval-max-origins", "120", "--no-progress", "--tracking-uri", server.url]
        env = {**os.environ, "KRONOS_HOME": str(tmp_path / "home"), "KRONOS_LOCK_DIR": str(lock_dir),
               "MLFLOW_TRACKING_URI": server.url}
        # Both jobs find the month due and then queue on the class lock, held here until they both wait.
        with ExitStack() as running:
            with class_lock(lock_dir, "crypto", job="the test, lining the jobs up") as held:
                jobs = [running.enter_context(Child(command, env=env, name=f"job {n}")) for n in (1, 2)]
                for job in jobs:
                    job.stderr.wait_for(queued_on(held), timeout=300)  # it found the class lock taken
                assert all(job.poll() is None for job in jobs)
            codes = [job.wait(timeout=600) for job in jobs]
            outputs = [(job.stdout.text(), job.stderr.text()) for job in jobs]
        assert codes == [0, 0], [err[-3000:] for _, err in outputs]

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
