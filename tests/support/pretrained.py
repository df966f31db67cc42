"""A tiny base pre-trained on the bundled history, built once per cache folder (tests only)."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.training.pretrain.config import DEFAULT_UNTIL, PretrainConfig
from kronos_rolling.training.pretrain.run import is_current_pretrain, run_pretraining

# A few seconds on two cores, yet clearly better than random weights on held-out bars.
TEST_BASE_SETTINGS = dict(tokenizer_steps=60, predictor_steps=80, batch_size=16, lookback=48, horizon=16)


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
