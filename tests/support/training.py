"""Small, fast training set-ups shared by the training tests and their worker process."""

from __future__ import annotations

import torch

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.training.config import TrainConfig
from kronos_rolling.training.loop import build_trainee

LOOKBACK, HORIZON = 16, 4


def small_config(base_dir, mode="rolling", asset_class="crypto", as_of="2018-06-01", **overrides) -> TrainConfig:
    values = dict(mode=mode, as_of=as_of, asset_class=asset_class if mode == "rolling" else None,
                  base=BaseModelRef.resolve(str(base_dir)), epochs=2, lookback=LOOKBACK, horizon=HORIZON,
                  batch_size=16, max_samples_per_epoch=64, max_inner_val_samples=32)
    values.update(overrides)
    return TrainConfig(**values)


def small_eval() -> EvalSettings:
    """Enough origins for the guard's interval (min_origins 30; 3 x horizon per series), few paths."""
    return EvalSettings(lookback=LOOKBACK, horizon=HORIZON, samples=2, max_origins=120, batch_size=64)


def job_context(tracking_uri: str, **environ):
    """What a job gets from its command: the settings of `environ` (KRONOS_HOME, KRONOS_LOCK_DIR, ...,
    else this process's), a tracking context for `tracking_uri` and the data folder."""
    import os

    from kronos_rolling.pipeline.context import JobContext
    from kronos_rolling.settings import load_settings
    from kronos_rolling.tracking.context import Tracking

    settings = load_settings({**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **environ})
    return JobContext.from_settings(settings, Tracking.connect(tracking_uri))


def trainee_and_sets(config: TrainConfig, store: DataStore, warm_start_dir=None):
    """What fit() needs, built exactly as the training step builds it."""
    model, tokenizer = config.base.load()
    calendar = store.events()
    trainee, _ = build_trainee(model, tokenizer, calendar.event_types(), config.lora, warm_start_dir, config.seed)
    window = config.window()
    symbols = store.symbols_for(config.asset_class) if config.mode == "rolling" else store.symbols()
    train_set = BarWindowDataset(store, symbols, *window.fit_span, config.lookback, config.horizon,
                                 trainee.vocabulary, stride=config.stride, seed=config.seed, calendar=calendar)
    inner_set = BarWindowDataset(store, symbols, *window.inner_val_span, config.lookback, config.horizon,
                                 trainee.vocabulary, stride=config.stride, seed=config.seed, calendar=calendar,
                                 max_samples=config.max_inner_val_samples)
    return trainee, train_set, inner_set


def state_of(trainee) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainee.trainable_state().items()}
