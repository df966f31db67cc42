"""How fast `kronos-rolling` answers, against references measured in the same run.

Every command is a fresh process, as a person types it. References:
`python -c pass` (the interpreter's own start) and `python -c "import mlflow"` (the least a
command that talks to the tracking server must load). Measured:

- `--help` of the top level and of every command group (model, data, train): goal at most
  10x `python -c pass`;
- `history` and `due` against a running tracking server (started here, embedded, on a free
  port, with one registered model and one audit entry): goal at most 3x `import mlflow`.

Each figure is the median of --repeat runs. Also printed: whether each command's process
loaded torch, MLflow's pyfunc code or our pyfunc model (it should not).

    python bench/cli_startup.py               # about a minute on 2 cores
    python bench/cli_startup.py --repeat 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port

PYTHON = sys.executable
CLI = str(Path(PYTHON).parent / "kronos-rolling")
HEAVY = ("torch", "mlflow.pyfunc", "kronos_rolling.tracking.pyfunc")
# Runs the command in this interpreter and then prints which heavy modules it loaded.
PROBE = ("import json, sys\nfrom kronos_rolling.cli.main import main\n"
         "try:\n    main(args=sys.argv[1:], prog_name='kronos-rolling', standalone_mode=False)\n"
         "except SystemExit:\n    pass\n"
         f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)")


def seconds(command: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def heavy_modules(args: list[str], env: dict[str, str]) -> list[str]:
    done = subprocess.run([PYTHON, "-c", PROBE, *args], env=env, capture_output=True, text=True)
    return json.loads(done.stderr.strip().splitlines()[-1])


def seed_registry(url: str) -> None:
    """One registered model with one audit entry: what `history` and `due` read."""
    from mlflow import MlflowClient

    from kronos_rolling.registry import history

    client = MlflowClient(url, registry_uri=url)
    client.create_registered_model("kronos-lora-crypto")
    entry = history.new_entry(1, history.PROMOTE, None, "1", "bench", history.Actor("bench", "here", "bench"),
                              datetime(2018, 1, 1, tzinfo=timezone.utc))
    history.write_entry(client, "kronos-lora-crypto", entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as home, \
            TrackingServer(ServerConfig.embedded(Path(home) / "server", port=free_port())) as server:
        seed_registry(server.url)
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "KRONOS_HOME": home,
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        bare = seconds([PYTHON, "-c", "pass"], env, args.repeat)
        mlflow_import = seconds([PYTHON, "-c", "import mlflow"], env, args.repeat)
        rows = []
        for words, reference, name, goal in (
                (["--help"], bare, "python -c pass", 10),
                (["model", "--help"], bare, "python -c pass", 10),
                (["data", "--help"], bare, "python -c pass", 10),
                (["train", "--help"], bare, "python -c pass", 10),
                (["history", "--asset-class", "crypto"], mlflow_import, "import mlflow", 3),
                (["due", "--asset-class", "crypto", "--as-of", "2018-02-01"], mlflow_import, "import mlflow", 3)):
            took = seconds([CLI, *words], env, args.repeat)
            rows.append((" ".join(words), took, took / reference, name, goal, heavy_modules(words, env)))
    print(f"load average at start {load:.2f} on {os.cpu_count()} CPUs; median of {args.repeat} runs each")
    print(f"reference: python -c pass {bare * 1000:.0f} ms; python -c \"import mlflow\" {mlflow_import * 1000:.0f} ms")
    print(f"{'command':<58} {'ms':>6} {'ratio':>7}  {'goal':<22} heavy modules loaded")
    for words, took, ratio, name, goal, heavy in rows:
        verdict = "met" if ratio <= goal else "NOT met"
        print(f"kronos-rolling {words:<43} {took * 1000:>6.0f} {ratio:>6.1f}x  <= {goal}x {name:<15} "
              f"{verdict:<7} {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
