"""The evaluation's sampled paths: K paths x a batch of origins decode as one batch, reproducibly."""

from __future__ import annotations

import numpy as np
import torch

from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.forecasts import ForecastModel, forecast_paths
from kronos_rolling.evaluation.samples import build_samples
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer


def _setup(batch_size=8):
    store = DataStore()
    settings = EvalSettings(lookback=16, horizon=4, samples=3, max_origins=12, batch_size=batch_size)
    vocabulary = EventVocabulary.from_types(store.events().event_types())
    samples = build_samples(store, ["BTCUSD-1D"], ("2019-01-01", "2019-03-01"), settings, vocabulary)
    torch.manual_seed(0)
    size = MODEL_SIZES["tiny"]
    model = ForecastModel(Kronos.from_config(size.predictor), KronosTokenizer.from_config(size.tokenizer))
    return model, samples


def test_k_paths_times_the_origins_of_a_batch_decode_as_one_batch():
    model, samples = _setup(batch_size=8)
    rows = []
    model.model.embedding.emb_s2.register_forward_hook(lambda m, i, out: rows.append(out.shape[0]))
    paths = forecast_paths(model, samples)
    assert paths.shape == (12, 3, 4)
    # 12 origins in batches of 8 and 4, each x K = 3 paths; one predictor pass per decoded bar.
    # The lookback pass runs once per origin (its K paths share it), the later bars on every path.
    assert rows == [8] + [24] * 3 + [4] + [12] * 3


def test_the_paths_are_the_same_for_the_same_seed():
    model, samples = _setup()
    first, second = forecast_paths(model, samples), forecast_paths(model, samples)
    assert np.array_equal(first, second)
    assert not np.allclose(first[:, 0], first[:, 1])  # K distinct sampled paths, not one repeated
