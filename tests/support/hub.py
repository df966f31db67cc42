"""What the hub-folder and `forecast` command tests start from (tests/unit/model/test_hub.py and
tests/integration/model/test_hub.py).

- `init_tiny`: a tiny base made by `kronos-rolling model init` (random weights, seed 3), as a
  user would make one: `out/tokenizer` and `out/predictor` in the hub folder format.
- `write_bars_csv`: 64 hourly bars of a seeded random walk as a plain CSV (naive timestamps,
  no amount column), the shape of a file a user hands to `forecast --csv`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from kronos_rolling.cli.main import main


def init_tiny(out: Path) -> Path:
    result = CliRunner().invoke(main, ["model", "init", "--size", "tiny", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out


def write_bars_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    close = 30 * np.exp(np.cumsum(rng.normal(0, 0.01, 64)))
    frame = pd.DataFrame({
        "timestamp": pd.date_range("2024-02-01", periods=64, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
        "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
        "volume": rng.lognormal(6, 0.2, 64),
    })
    frame.to_csv(path, index=False)
    return path
