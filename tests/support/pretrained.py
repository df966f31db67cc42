"""Pre-training in tests: a tiny base pre-trained on the bundled history, built once per cache
folder, and what the pre-training tests start from (tests/unit/training/test_pretrain.py and
tests/integration/training/test_pretrain.py).

- `pretrained_tiny_base`: the base behind the `pretrained_base` fixture.
- `QUICK`: `pretrain_base` settings of a few steps on a few bars, about a second.
- `two_symbol_store_in`: a writable copy of two bundled series.
- `pretrain_cli`: the `model pretrain` command in the same group class as `kronos-rolling`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
from filelock import FileLock

from kronos_rolling.cli.main import KronosGroup
from kronos_rolling.cli.model import pretrain
from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.training.pretrain.config import DEFAULT_UNTIL, PretrainConfig
from kronos_rolling.training.pretrain.run import is_current_pretrain, run_pretraining

# A few seconds on two cores, yet clearly better than random weights on held-out bars.
TEST_BASE_SETTINGS = dict(tokenizer_steps=60, predictor_steps=80, batch_size=16, lookback=48, horizon=16)

UNTIL = pd.Timestamp(DEFAULT_UNTIL, tz="UTC")

# A few steps on two series: enough to move every weight, about a second.
QUICK = dict(until=DEFAULT_UNTIL, tokenizer_steps=4, predictor_steps=4, batch_size=8, lookback=32, horizon=8,
             progress=False)


def two_symbol_store_in(root: Path) -> DataStore:
    """A writable copy of two bundled series (an equity index and daily bitcoin) in `root`."""
    root.mkdir()
    for name in ("^GSPC.parquet", "BTCUSD-1D.parquet"):
        shutil.copy(BUNDLED_DATA_DIR / name, root / name)
    return DataStore(root)


def pretrain_cli() -> KronosGroup:
    group = KronosGroup(name="kronos-rolling")
    group.add_command(pretrain)
    return group


def pretrained_tiny_base(cache_dir: str | os.PathLike, *, until=DEFAULT_UNTIL, seed: int = 0,
                         store: DataStore | None = None) -> Path:
    """A tiny base pre-trained on the bundled history before `until`, built once per cache folder.

    Reused when cache_dir/pretrain.json records the same settings and data digest; otherwise
    (re)built. Meant for a session-scoped pytest fixture.
    """
    cache_dir = Path(cache_dir)
    store = store if store is not None else DataStore(BUNDLED_DATA_DIR)
    config = PretrainConfig(until=until, size="tiny", seed=seed, **TEST_BASE_SETTINGS)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir.parent / f".{cache_dir.name}.lock")):
        if not is_current_pretrain(cache_dir, config, store):
            run_pretraining(store, cache_dir, config, force=True, progress=False)
    return cache_dir
