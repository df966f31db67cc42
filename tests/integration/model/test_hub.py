"""Hub folder format, loading errors, provenance digest, and the `model init` / `forecast` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from kronos_rolling.cli.main import main

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "tiny"
    result = CliRunner().invoke(main, ["model", "init", "--size", "tiny", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def bars_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    close = 30 * np.exp(np.cumsum(rng.normal(0, 0.01, 64)))
    frame = pd.DataFrame({
        "timestamp": pd.date_range("2024-02-01", periods=64, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
        "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
        "volume": rng.lognormal(6, 0.2, 64),
    })
    path = tmp_path_factory.mktemp("csv") / "bars.csv"
    frame.to_csv(path, index=False)
    return path


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
