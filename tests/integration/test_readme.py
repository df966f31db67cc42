"""A newcomer's run of every README command, in order, in one shell (the test command excepted),
then the demo once more.

Commands come from the README's ```bash blocks (support/readme.py: what is read, what differs
from a newcomer's machine: free ports, the report's folder). KRONOS_HOME is a fresh folder; the
demo takes the base shipped with the package, as on any machine. The cron command
(`MLFLOW_TRACKING_URI=... mlflow run . ...`) runs as written, against the demo's server, which
stays up until the README's last command stops it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient
from support import REPO
from support.readme import REPORT, as_script, readme_commands

from kronos_rolling.settings import BUNDLED_BASE_DIR
from kronos_rolling.tracking.server import free_port

README_TIMEOUT_S = 1500


def stop_script(shell: subprocess.Popen, env: dict[str, str]) -> str:
    """Kill the script and every process below it (`set -m` gives each command a process group
    of its own), then stop the demo's server, which left the tree when its starter exited; what
    the script had printed."""
    try:
        family = psutil.Process(shell.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    shell.kill()
    printed, _ = shell.communicate()
    subprocess.run(["kronos-rolling", "demo", "--stop-server"], env=env, cwd=REPO, capture_output=True, timeout=300)
    return printed or ""


@pytest.mark.timeout(README_TIMEOUT_S + 600)  # its own limit (and cleanup) comes first
def test_a_newcomer_runs_every_readme_command(tmp_path):
    commands = readme_commands((REPO / "README.md").read_text())
    tracking_port, serve_port = free_port(), free_port()
    tracking = f"http://127.0.0.1:{tracking_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KRONOS_", "PYTEST_"))}
    env.update(KRONOS_HOME=str(tmp_path / "home"), KRONOS_MLFLOW_PORT=str(tracking_port),
               BACKGROUND_LOG=str(tmp_path / "background.log"), REPORT_FILE=str(tmp_path / REPORT),
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    local_store = REPO / "mlflow.db"
    store_before = local_store.exists()
    script = tmp_path / "newcomer.sh"
    script.write_text(as_script(commands, serve_port, tracking))
    started = time.monotonic()
    shell = subprocess.Popen(["bash", str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, partial = None, ""
    try:
        out, _ = shell.communicate(timeout=README_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        partial = exc.output or ""
    finally:  # timed out, or pytest stopped the test: stop the script, its children and the demo's server
        if shell.poll() is None:
            partial = (partial if isinstance(partial, str) else partial.decode()) + stop_script(shell, env)
    if out is None:
        commands_run = re.findall(r"^\+ .*$", partial, flags=re.M)
        pytest.fail(f"the README commands did not finish in {README_TIMEOUT_S}s (load average "
                    f"{os.getloadavg()[0]:.1f}); the last ones started: {commands_run[-3:]}\n{partial[-4000:]}")
    print(f"README commands: {time.monotonic() - started:.0f}s of the {README_TIMEOUT_S}s limit "
          f"(load average {os.getloadavg()[0]:.1f} at the end)")
    for stamp in re.findall(r"^\[\d/6\].*$|^demo finished.*$", out, flags=re.M):
        print(stamp)
    assert shell.returncode == 0, out[-6000:]
    demo = out.split("+ make demo")[1].split("+ ")[0] if "+ make demo" in out else out
    assert f"[2/6] base: the tiny Kronos shipped with the package (no pre-training)\n      {BUNDLED_BASE_DIR}" in out
    assert "pre-trained tiny base" not in out and "tokenizer loss" not in out, "nothing was pre-trained"
    # The demo ends with its verdicts, one row per class, and commands runnable as printed.
    verdicts = out.split("[6/6] verdicts")[1]
    header = verdicts.splitlines()[1].split()
    assert header[:4] == ["class", "version", "decision", "reference"] and "serves" in header, verdicts[:800]
    rows = {line.split()[0]: line for line in verdicts.splitlines()[2:6]}
    assert set(rows) == {"pooled", "crypto", "forex_commodity", "equity"}, verdicts[:800]
    assert re.search(r"by the guard\s+(pooled|base)\s+[+-]\d\.\d\de[+-]\d\d \[", rows["crypto"]), rows["crypto"]
    assert f"{Path(sys.executable).parent / 'kronos-rolling'} history --asset-class crypto" in verdicts
    assert f"{tracking}/#/experiments?workflowType=machine_learning" in verdicts
    # The operator's promote and rollback, then the cron command as written, on the demo's server.
    assert re.search(r"kronos-lora-crypto@production: (none|v1) -> v2 \(@previous_production: ", out), out[-6000:]
    assert "-> v1 (" in out, "the rollback"
    assert '"crypto"' in out, "the predictor's /models answer"
    assert (tmp_path / REPORT).read_text().startswith("asset_class,"), "simulate --report"
    assert f"report: {tmp_path / REPORT}" in out, "the report says where it went"
    assert re.search(r"^crypto: v3 (promoted to @production|kept in @staging): ", out, flags=re.M), out[-6000:]
    assert local_store.exists() == store_before, "mlflow run made no store of its own in the checkout"
    # Logs a file can hold and a person reads.
    assert "\r" not in out, "a progress bar drew into a pipe"
    assert re.search(r"epoch 1/\d+: \d+/\d+ samples in [\d.]+s, loss=", out)
    shortfalls = [line for line in out.splitlines() if "window shortfall:" in line]
    assert shortfalls and all(len(line) <= 230 for line in shortfalls), max(shortfalls, key=len)
    assert demo.count("window shortfall:") <= 4
    unsent = [line for line in demo.splitlines() if "alert(s) raised, not sent" in line]
    assert 1 <= len(unsent) <= 4, "one line per job at most, naming its alerts"
    without_guard = re.sub(r"(Regression|negative_skill) alert raised\.", "", out)  # registry/guard.py's describe
    assert "alert raised" not in without_guard, "no other 'alert raised' wording than the guard's sentence"
    for noise in ("already exists", "cloudpickle", "dataset source", "system metrics", "waiting up to"):
        assert noise not in out.lower(), noise
    browse = re.search(r"browse it: kronos-rolling server --data-dir \S+ --port (\d+)", out)
    assert browse and int(browse.group(1)) != tracking_port, "the replay's own server, on the port it ran on"
    assert (tmp_path / "home" / "mlflow.db").exists()

    # The demo is safe to run twice: everything is reused, nothing is trained or registered again;
    # its server (started again on the same home) still holds what the cron command registered.
    try:
        again = subprocess.run(["kronos-rolling", "demo"], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=600)
        client = MlflowClient(tracking)
        versions = {v.version: v for v in client.search_model_versions("name='kronos-lora-crypto'")}
        cron_experiment = client.get_experiment(client.get_run(versions["3"].run_id).info.experiment_id).name
    finally:
        subprocess.run(["kronos-rolling", "demo", "--stop-server"], cwd=REPO, env=env, capture_output=True,
                       timeout=120)
    second = again.stdout + again.stderr
    assert again.returncode == 0, second[-4000:]
    assert "already trained: kronos-lora-pooled v1," in second
    monthly = second.split("[4/6]")[1].split("[5/6]")[0]
    assert monthly.count(": not due (") == 3, monthly
    assert "answered by" in second and "[6/6] verdicts" in second
    cron = versions["3"]
    assert cron.tags["as_of"] == "2018-03-01" and cron.tags["guard_decision"] in ("promoted", "refused")
    assert cron_experiment == "kronos-rolling/crypto"

    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "home") not in ps, "a README command left a process running"


def test_a_quote_in_a_comment_does_not_swallow_the_command(tmp_path):
    script = as_script(["echo ran   # the demo's settings"], 9999)
    (tmp_path / "s.sh").write_text(script)
    out = subprocess.run(["bash", str(tmp_path / "s.sh")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.splitlines() == ["+ echo ran   # the demo's settings", "ran"], out
