"""A newcomer's run of every README command, in order, in one shell (the test command excepted).

Commands come from the README's ```bash blocks. Two things differ from a newcomer's
machine, both so that the test cannot collide with anything else running here: the
ports (the tracking server's and the predictor's) are free ones, and KRONOS_HOME (and the
file simulate's report goes to) is a fresh folder. A command marked `# runs until Ctrl-C` is started in the background and
waited for on its port, as a person would leave it running in another terminal. A block
right after `<!-- not run by the tests: ... -->` is skipped (it needs the Hugging Face hub).
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from support import REPO

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


def test_readme_commands_are_found_and_the_hub_block_is_left_out():
    commands = readme_commands((REPO / "README.md").read_text())
    assert commands[0] == "make demo   # fresh machine: installs into .venv, then runs the whole monthly process on bundled data"
    assert not any(c.startswith(TEST_COMMAND) for c in commands)
    assert not any("NeoQuasar/Kronos-base" in c for c in commands), "the hub block needs the network"
    assert any(BACKGROUND in c for c in commands)


@pytest.mark.parametrize("line", ["kronos-rolling serve --port 8080          # runs until Ctrl-C; API docs"])
def test_background_commands_wait_for_their_port(line):
    script = as_script([line], 9999)
    assert 'kronos-rolling serve --port 9999 > "$BACKGROUND_LOG" 2>&1 &' in script
    assert "http://127.0.0.1:9999/health" in script


def test_the_simulation_report_goes_to_the_tests_folder():
    script = as_script(["kronos-rolling simulate --start 2018-01 --months 3 --report simulation.csv   # replay"], 9999)
    assert 'kronos-rolling simulate --start 2018-01 --months 3 --report "$REPORT_FILE"' in script


def test_a_quote_in_a_comment_does_not_swallow_the_command(tmp_path):
    script = as_script(["echo ran   # the demo's settings"], 9999)
    (tmp_path / "s.sh").write_text(script)
    out = subprocess.run(["bash", str(tmp_path / "s.sh")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.splitlines() == ["+ echo ran   # the demo's settings", "ran"], out
