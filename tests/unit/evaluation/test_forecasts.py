"""The evaluation's sampled paths: K paths x a batch of origins decode as one batch, reproducibly."""

from __future__ import annotations

import numpy as np
import torch

from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.forecasts import ForecastModel, forecast_paths, token_nll
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


def test_the_teacher_forced_nll_scores_each_horizon_bar_from_the_tokens_before_it():
    """Pins the alignment of val_nll: bar p (p = lookback .. lookback + H - 1) is scored by
    the logits of a forward pass over bars 0..p-1 only, at its last position, against bar
    p's true s1 and s2 tokens. Shift the scored slice or the targets by one and this fails."""
    model, samples = _setup()
    got = token_nll(model, samples)
    lookback, horizon = samples.settings.lookback, samples.settings.horizon
    kronos = model.model.eval()
    expected = []
    with torch.no_grad():
        for index in range(len(samples)):
            item = samples.dataset[index]
            s1, s2 = model.tokenizer.eval().encode(item["x"][None], half=True)
            stamp = item["stamp"][None]
            per_bar = []
            for p in range(lookback, lookback + horizon):
                s1_logits, s2_logits = kronos(s1[:, :p], s2[:, :p], stamp[:, :p], use_teacher_forcing=True,
                                              s1_targets=s1[:, 1:p + 1], causal_s2=True)
                nll_s1 = -torch.log_softmax(s1_logits[0, -1].float(), -1)[s1[0, p]]
                nll_s2 = -torch.log_softmax(s2_logits[0, -1].float(), -1)[s2[0, p]]
                per_bar.append(float(nll_s1 + nll_s2) / 2)
            expected.append(np.mean(per_bar))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # One position off is a different number: the test can tell an aligned score from a shifted one.
    assert not np.allclose(got[:-1], got[1:], rtol=1e-3)
