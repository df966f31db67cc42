"""How the newcomer's-path test reads the README (support/readme.py); the run itself is
tests/integration/test_readme.py."""

from __future__ import annotations

import pytest
from support import REPO
from support.readme import BACKGROUND, TEST_COMMAND, as_script, readme_commands


def test_readme_commands_are_found_and_the_hub_block_is_left_out():
    commands = readme_commands((REPO / "README.md").read_text())
    assert commands[0] == "make demo   # fresh machine: installs into .venv, then runs the whole monthly process on bundled data"
    assert not any(c.startswith(TEST_COMMAND) for c in commands)
    assert not any("NeoQuasar/Kronos-base" in c for c in commands), "the hub block needs the network"
    assert any(BACKGROUND in c for c in commands)
    assert commands[-1] == "kronos-rolling demo --stop-server", "the demo's server stays up for every command"
    [cron] = [c for c in commands if " mlflow run . " in f" {c} "]
    assert cron.startswith("MLFLOW_TRACKING_URI=http://127.0.0.1:5000 mlflow run . --env-manager local"), cron


@pytest.mark.parametrize("line", ["kronos-rolling serve --port 8080          # runs until Ctrl-C; API docs"])
def test_background_commands_wait_for_their_port(line):
    script = as_script([line], 9999)
    assert 'kronos-rolling serve --port 9999 > "$BACKGROUND_LOG" 2>&1 &' in script
    assert "http://127.0.0.1:9999/health" in script


def test_the_simulation_report_goes_to_the_tests_folder():
    script = as_script(["kronos-rolling simulate --start 2018-01 --months 3 --report simulation.csv   # replay"], 9999)
    assert 'kronos-rolling simulate --start 2018-01 --months 3 --report "$REPORT_FILE"' in script


def test_the_demos_server_address_becomes_the_tests():
    script = as_script(["MLFLOW_TRACKING_URI=http://127.0.0.1:5000 mlflow run . -P asset_class=crypto"], 9999,
                       "http://127.0.0.1:41234")
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:41234 mlflow run . -P asset_class=crypto" in script
