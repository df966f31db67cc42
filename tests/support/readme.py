"""The README's shell commands, and the script that runs them in one shell as a newcomer would.

Two things differ from a newcomer's machine, both so that a test cannot collide with anything
else running here: the ports (the demo's tracking server, 5000, and the predictor's, 8080) are
free ones, and the file simulate's report goes to is in the test's folder. A command marked
`# runs until Ctrl-C` is started in the background and waited for on its port, as a person would
leave it running in another terminal. A block right after `<!-- not run by the tests: ... -->`
is skipped (it needs the Hugging Face hub, or trains for long).
"""

from __future__ import annotations

import re
import shlex

SKIP_MARKER = "<!-- not run by the tests"
TEST_COMMAND = "make test"
BACKGROUND = "# runs until Ctrl-C"
REPORT = "simulation.csv"  # simulate's report: written into the test's folder, not the checkout
TRACKING = "http://127.0.0.1:5000"  # the demo's tracking server, as the README spells it


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


def as_script(commands: list[str], serve_port: int, tracking_uri: str = TRACKING) -> str:
    """One bash script running `commands` in order; the demo's address becomes `tracking_uri`."""
    lines = [
        "set -euo pipefail",
        "background=()",
        'cleanup() { for pid in "${background[@]}"; do kill -- -"$pid" 2>/dev/null || true; done; '
        "kronos-rolling demo --stop-server >/dev/null 2>&1 || true; }",
        "trap cleanup EXIT",
        "set -m  # background commands get their own process group, so cleanup stops their children",
    ]
    for command in commands:
        command = (command.replace("8080", str(serve_port)).replace(REPORT, '"$REPORT_FILE"')
                   .replace(TRACKING, tracking_uri))
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
