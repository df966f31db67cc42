"""The installed `kronos-rolling` entry point, run as a process (the hub folder format, loading errors and
the `model init` / `forecast` commands in process: tests/unit/model/test_hub.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from support.hub import init_tiny, write_bars_csv

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("init") / "tiny")


@pytest.fixture(scope="module")
def bars_csv(tmp_path_factory):
    return write_bars_csv(tmp_path_factory.mktemp("csv") / "bars.csv")


def test_installed_entry_point_runs_a_forecast(tiny_dir, bars_csv, tmp_path):
    executable = Path(sys.executable).parent / "kronos-rolling"
    out = tmp_path / "cli.csv"
    completed = subprocess.run(
        [str(executable), "forecast", "--model", str(tiny_dir / "predictor"), "--tokenizer",
         str(tiny_dir / "tokenizer"), "--csv", str(bars_csv), "--pred-len", "3", "--top-k", "1",
         "--max-context", "32", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert completed.returncode == 0, completed.stderr
    assert len(pd.read_csv(out)) == 3
