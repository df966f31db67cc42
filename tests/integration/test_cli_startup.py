"""A fast CLI: `--help` of every command group and the registry commands (`history`, `due`,
`promote`, `rollback`) load neither torch nor MLflow's model code. Each command runs in a fresh
interpreter (a subprocess, so this lives under tests/integration) against a real tracking
server, and reports which heavy modules it loaded. Timings: bench/cli_startup.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.registry import register_stand_in

HEAVY = ("torch", "mlflow.pyfunc", "kronos_rolling.tracking.pyfunc", "kronos_rolling.model.kronos")
# `--help` loads no data library either (pandas alone is most of a 0.4 s start; MLflow's client,
# which the registry commands need, loads it anyway).
HELP_HEAVY = (*HEAVY, "pandas")
PROBE = ("import json, sys\nfrom kronos_rolling.cli.main import main\n"
         "code = main(args=sys.argv[1:], prog_name='kronos-rolling', standalone_mode=False)\n"
         f"print(json.dumps({{'code': code, 'heavy': [m for m in {HELP_HEAVY!r} if m in sys.modules]}}))")


def run_probe(*args: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


@pytest.mark.parametrize("group", [[], ["model"], ["data"], ["train"], ["history"], ["promote"], ["serve"]])
def test_help_loads_no_heavy_module(group):
    report, out = run_probe(*group, "--help")
    assert "Usage: kronos-rolling" in out
    assert report["heavy"] == []


def test_registry_commands_load_no_heavy_module(clean_registry):
    for _ in range(2):
        register_stand_in(clean_registry, "crypto")
    for args in (["promote", "--asset-class", "crypto", "--version", "2", "--reason", "startup test"],
                 ["rollback", "--asset-class", "crypto", "--to-version", "1", "--reason", "startup test"],
                 ["history", "--asset-class", "crypto"],
                 ["due", "--asset-class", "crypto", "--as-of", "2018-02-01"]):
        report, _ = run_probe(*args)
        assert [m for m in report["heavy"] if m in HEAVY] == [], (args, report)
    aliases = clean_registry.get_registered_model("kronos-lora-crypto").aliases
    assert aliases["production"] == "1", "promote and rollback really ran (verification included)"
