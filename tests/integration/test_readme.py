"""A newcomer's run of every README command, in order, in one shell (the test command excepted).

Commands come from the README's ```bash blocks. Two things differ from a newcomer's
machine, both so that the test cannot collide with anything else running here: the
ports (the tracking server's and the predictor's) are free ones, and KRONOS_HOME (and the
file simulate's report goes to) is a fresh folder, seeded with the session's pre-trained tiny base (`pretrained_base`, built once for
every test that needs one) where the demo looks for its bases, so the demo reuses it as it does
on its second run instead of pre-training again; every README command still runs for real. A command marked `# runs until Ctrl-C` is started in the background and
waited for on its port, as a person would leave it running in another terminal. A block
right after `<!-- not run by the tests: ... -->` is skipped (it needs the Hugging Face hub).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from support import REPO

from kronos_rolling.tracking.server import free_port
from kronos_rolling.training.pretrain.config import read_pretrain_report

SKIP_MARKER = "<!-- not run by the tests"


TEST_COMMAND = "make test"


BACKGROUND = "# runs until Ctrl-C"


REPORT = "simulation.csv"  # simulate's report: written into the test's folder, not the checkout


def readme_commands(text: str) -> list[str]:
    """The README's shell commands in order, one per line, comments kept."""
    commands, skip_next = [], False
    for match in re.finditer(r"(<!--.*?-->)|```bash\n(.*?)```", text, flags=re.S):
        if match.group(1):
            skip_next = match.group(1).startswith(SKIP_MARKER)
            continue
        if skip_next:
            skip_next = False
            continue
        for line in match.group(2).splitlines():
            if line.strip() and not line.strip().startswith("#") and not line.startswith(TEST_COMMAND):
                commands.append(line)
    return commands


def as_script(commands: list[str], serve_port: int) -> str:
    lines = [
        "set -euo pipefail",
        "background=()",
        'cleanup() { for pid in "${background[@]}"; do kill -- -"$pid" 2>/dev/null || true; done; '
        "kronos-rolling demo --stop-server >/dev/null 2>&1 || true; }",
        "trap cleanup EXIT",
        "set -m  # background commands get their own process group, so cleanup stops their children",
    ]
    for command in commands:
        command = command.replace("8080", str(serve_port)).replace(REPORT, '"$REPORT_FILE"')
        lines.append(f"echo {shlex.quote('+ ' + command)}")
        if BACKGROUND in command:
            lines.append(f"{command.split('#')[0].strip()} > \"$BACKGROUND_LOG\" 2>&1 &")
            lines.append("background+=($!)")
            port = re.search(r"--port (\d+)", command).group(1)
            lines.append(f"for i in $(seq 600); do curl -sf http://127.0.0.1:{port}/health >/dev/null && break; "
                         f"sleep 0.5; done")
        else:
            lines.append(command)
    return "\n".join(lines) + "\n"


def seed_pretrained_base(home: Path, pretrained: Path) -> Path:
    """Put the session's pre-trained tiny base where the demo finds its bases (HOME/bases/tiny-until-<date>)."""
    until = read_pretrain_report(pretrained)["settings"]["until"][:10]
    target = home / "bases" / f"tiny-until-{until}"
    shutil.copytree(pretrained, target)
    return target


README_TIMEOUT_S = 1500


def stop_script(shell: subprocess.Popen, env: dict[str, str]) -> None:
    """Kill the script and every process below it (`set -m` gives each command a process group
    of its own), then stop the demo's server, which left the tree when its starter exited."""
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
    shell.communicate()
    subprocess.run(["kronos-rolling", "demo", "--stop-server"], env=env, cwd=REPO, capture_output=True, timeout=300)


@pytest.mark.timeout(README_TIMEOUT_S + 600)  # its own limit (and cleanup) comes first
def test_a_newcomer_runs_every_readme_command(tmp_path, pretrained_base):
    commands = readme_commands((REPO / "README.md").read_text())
    seeded = seed_pretrained_base(tmp_path / "home", pretrained_base)
    tracking_port, serve_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KRONOS_", "PYTEST_"))}
    env.update(KRONOS_HOME=str(tmp_path / "home"), KRONOS_MLFLOW_PORT=str(tracking_port),
               BACKGROUND_LOG=str(tmp_path / "background.log"), REPORT_FILE=str(tmp_path / REPORT),
               MLFLOW_TRACKING_URI=f"http://127.0.0.1:{tracking_port}", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    script = tmp_path / "newcomer.sh"
    script.write_text(as_script(commands, serve_port))
    shell = subprocess.Popen(["bash", str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = None
    try:
        out, _ = shell.communicate(timeout=README_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:  # timed out, or pytest stopped the test: stop the script, its children and the demo's server
        if shell.poll() is None:
            stop_script(shell, env)
    if out is None:
        pytest.fail(f"the README commands did not finish in {README_TIMEOUT_S}s")
    assert shell.returncode == 0, out[-6000:]
    assert str(seeded) in out.split("[2/6]")[1].split("[3/6]")[0], "the demo reused the seeded base"
    assert "[6/6] where to look" in out and "answered by" in out
    assert "kronos-lora-crypto@production: v" in out and "-> v2" in out, "the operator's promote"
    assert "-> v1 (" in out, "the rollback"
    assert '"crypto"' in out, "the predictor's /models answer"
    assert (tmp_path / REPORT).read_text().startswith("asset_class,"), "simulate --report"
    # Logs a file can hold: no progress bar redrawn into the pipe, one line per epoch; one
    # window-shortfall warning per job run at most (the demo runs 4); no third-party noise we can prevent.
    assert "\r" not in out, "a progress bar drew into a pipe"
    assert re.search(r"epoch 1/\d+: \d+/\d+ samples in [\d.]+s, loss=", out)
    assert out.split("[6/6]")[0].count("window shortfall:") <= 4
    for noise in ("already exists", "cloudpickle", "dataset source"):
        assert noise not in out.lower(), noise
    browse = re.search(r"browse it: kronos-rolling server --data-dir \S+ --port (\d+)", out)
    assert browse and int(browse.group(1)) != tracking_port, "the replay's own server, on the port it ran on"
    assert (tmp_path / "home" / "mlflow.db").exists()

    # The demo is safe to run twice: everything is reused, nothing is trained or registered again.
    try:
        again = subprocess.run(["kronos-rolling", "demo"], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=600)
    finally:
        subprocess.run(["kronos-rolling", "demo", "--stop-server"], cwd=REPO, env=env, capture_output=True,
                       timeout=120)
    second = again.stdout + again.stderr
    assert again.returncode == 0, second[-4000:]
    assert "already trained: kronos-lora-pooled v1," in second
    monthly = second.split("[4/6]")[1].split("[5/6]")[0]
    assert monthly.count(": not due (") == 3, monthly
    assert "answered by" in second

    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "home") not in ps, "a README command left a process running"
