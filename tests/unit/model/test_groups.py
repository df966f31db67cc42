"""Several requests in one generation, each as it would be alone; sampling bounds; forecast rows
that are always valid bars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_rolling.data.features import FEATURE_COLUMNS, denormalize
from kronos_rolling.errors import ConfigError, ModelError
from kronos_rolling.model.config import MODEL_SIZES, LoraSettings
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.forecast import ForecastGroup, Forecaster, prepare_series, valid_bars
from kronos_rolling.model.generate import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    RowSeeds,
    check_sampling,
    generate,
    sample_tokens,
)
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.lora import BASE_ROWS, attach_lora, rows_by_adapter
from kronos_rolling.model.tokenizer import KronosTokenizer

torch.set_num_threads(2)

TINY = MODEL_SIZES["tiny"]


def make_bars(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.002, n))
    return pd.DataFrame({"timestamp": pd.date_range("2024-05-06 09:30", periods=n, freq="15min"), "open": open_,
                         "high": np.maximum(open_, close) * 1.002, "low": np.minimum(open_, close) * 0.998,
                         "close": close, "volume": rng.lognormal(5, 0.3, n)})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Kronos.from_config(TINY.predictor).eval(), KronosTokenizer.from_config(TINY.tokenizer).eval()


def closes(results) -> list[np.ndarray]:
    return [r.mean[FEATURE_COLUMNS].to_numpy() for r in results]


def assert_valid(frame: pd.DataFrame) -> None:
    o, h, low, c, v, a = (frame[col].to_numpy() for col in FEATURE_COLUMNS)
    assert (h >= np.maximum(o, c)).all() and (np.maximum(o, c) >= np.minimum(o, c)).all()
    assert (np.minimum(o, c) >= low).all() and (low > 0).all()
    assert (v >= 0).all() and (a >= 0).all()


def test_valid_bars_mends_each_kind_of_inconsistency_and_leaves_valid_rows_alone():
    rows = np.array([
        [10.0, 11.0, 9.0, 10.5, 100.0, 1000.0],   # valid: unchanged
        [10.0, 9.5, 10.2, 10.1, 5.0, 50.0],        # high below low, both inside open/close
        [-1.0, 2.0, -3.0, 1.0, -4.0, -5.0],        # negative prices, volume and amount
    ])
    mended = valid_bars(rows, price_floor=0.01)
    np.testing.assert_array_equal(mended[0], rows[0])
    np.testing.assert_allclose(mended[1], [10.0, 10.1, 10.0, 10.1, 5.0, 50.0])
    np.testing.assert_allclose(mended[2], [0.01, 2.0, 0.01, 1.0, 0.0, 0.0])
    assert_valid(pd.DataFrame(mended, columns=FEATURE_COLUMNS))
    with pytest.raises(ModelError, match="price_floor must be > 0"):
        valid_bars(rows, 0.0)


def test_every_returned_row_is_a_valid_bar_though_the_raw_output_is_not(tiny):
    """An untrained model forecasts each column independently: its raw rows break the bar rules."""
    model, tokenizer = tiny
    bars = make_bars(64, seed=7)
    prepared = prepare_series(bars, 12)
    raw = generate(model, tokenizer, torch.from_numpy(prepared.x_norm)[None], torch.from_numpy(prepared.x_stamp)[None],
                   torch.from_numpy(prepared.y_stamp)[None], 12, samples=16, generator=0)[0].numpy()
    raw = denormalize(raw, prepared.mean, prepared.std)
    broken = (raw[..., 1] < np.maximum(raw[..., 0], raw[..., 3])) | (raw[..., 2] > np.minimum(raw[..., 0], raw[..., 3]))
    assert broken.any(), "the raw output should need mending for this test to mean anything"
    result = Forecaster(model, tokenizer, device="cpu").forecast(bars, 12, samples=16, seed=0, quantiles=True,
                                                                 return_paths=True)
    for frame in [result.mean, *result.paths, *result.quantiles.values()]:
        assert_valid(frame)


def test_groups_decoded_together_get_what_each_gets_alone(tiny):
    """Different path counts, seeds, lengths and series counts in one generation."""
    model, tokenizer = tiny
    forecaster = Forecaster(model, tokenizer, device="cpu")
    groups = [ForecastGroup([make_bars(40, 1)], samples=1, seed=3),
              ForecastGroup([make_bars(56, 2), make_bars(30, 3)], samples=5, seed=4),
              ForecastGroup([make_bars(48, 4)], samples=2, seed=None)]
    together = forecaster.forecast_groups(groups[:2], 6, quantiles=True)
    for group, batched in zip(groups[:2], together):
        alone = forecaster.forecast(group.bars, 6, samples=group.samples, seed=group.seed, quantiles=True)
        for got, want in zip(batched, alone):
            np.testing.assert_allclose(got.mean[FEATURE_COLUMNS].to_numpy(), want.mean[FEATURE_COLUMNS].to_numpy(),
                                       rtol=1e-4)
            np.testing.assert_allclose(got.quantiles["p90"]["close"], want.quantiles["p90"]["close"], rtol=1e-4)
    # An unseeded group beside seeded ones leaves their draws alone.
    with_unseeded = forecaster.forecast_groups(groups, 6)
    for batched, before in zip(with_unseeded[:2], together):
        for got, want in zip(batched, before):
            np.testing.assert_allclose(got.mean["close"], want.mean["close"], rtol=1e-4)
    with pytest.raises(ConfigError, match="samples must be >= 1"):
        forecaster.forecast_groups([ForecastGroup([make_bars(40)], samples=0)], 6)


def test_generate_takes_paths_per_series_seeds_per_span_and_extra_vectors(tiny):
    model, tokenizer = tiny
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 24, 6, generator=g).cumsum(dim=1) / 5
    stamps = torch.zeros(2, 30, 5)
    events = EventEmbedding(3, model.d_model)
    torch.nn.init.normal_(events.table.weight[1:])
    ids = torch.randint(0, 3, (2, 30), generator=g)
    kwargs = dict(max_context=512, top_p=0.9)
    mixed = generate(model, tokenizer, x, stamps[:, :24], stamps[:, 24:], 6, samples=[1, 3],
                     generator=RowSeeds(((1, 7), (3, 8))), extra_embedding=events(ids).detach(), **kwargs)
    assert [tuple(t.shape) for t in mixed] == [(1, 6, 6), (3, 6, 6)]
    first = generate(model, tokenizer, x[:1], stamps[:1, :24], stamps[:1, 24:], 6, samples=1, generator=7,
                     event_ids=ids[:1], event_embedding=events, **kwargs)
    second = generate(model, tokenizer, x[1:], stamps[1:, :24], stamps[1:, 24:], 6, samples=3, generator=8,
                      event_ids=ids[1:], event_embedding=events, **kwargs)
    assert torch.allclose(mixed[0], first[0], atol=1e-4) and torch.allclose(mixed[1], second[0], atol=1e-4)


def test_adapters_routed_per_row_give_each_group_its_own_adapter(tiny):
    """One generation, three groups: adapter a, adapter b and the bare base, as each alone."""
    _, tokenizer = tiny
    torch.manual_seed(0)
    peft = attach_lora(Kronos.from_config(TINY.predictor).eval(), LoraSettings(rank=2, alpha=4))
    peft.add_adapter("b", peft.peft_config["default"])
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.5)
    peft.eval()
    forecaster = Forecaster(peft, tokenizer, device="cpu")
    series = [make_bars(40, 1), make_bars(48, 2), make_bars(36, 3)]
    groups = [ForecastGroup([bars], samples=2, seed=1, adapter=name)
              for bars, name in zip(series, ("default", "b", BASE_ROWS))]
    together = forecaster.forecast_groups(groups, 5)
    alone = []
    for bars, name in zip(series, ("default", "b", None)):
        if name is None:
            with peft.disable_adapter():
                alone.append(forecaster.forecast(bars, 5, samples=2, seed=1))
        else:
            peft.set_adapter(name)
            alone.append(forecaster.forecast(bars, 5, samples=2, seed=1))
    for [got], want in zip(together, alone):
        np.testing.assert_allclose(got.mean["close"], want.mean["close"], rtol=1e-4)
    assert not np.allclose(alone[0].mean["close"], alone[1].mean["close"])  # the adapters differ
    with pytest.raises(ModelError, match="no adapter named c"):
        with rows_by_adapter(peft, ["c"], [1]):
            pass


def test_sampling_settings_are_bounded_and_the_smallest_temperature_stays_finite():
    for bad, field in ((0.0, "temperature"), (1e-38, "temperature"), (float("nan"), "temperature"),
                       (MAX_TEMPERATURE * 2, "temperature")):
        with pytest.raises(ConfigError, match=field):
            check_sampling(bad, 0, 0.9, 1)
    with pytest.raises(ConfigError, match="top_k"):
        check_sampling(1.0, -1, 0.9, 1)
    with pytest.raises(ConfigError, match="top_p"):
        check_sampling(1.0, 0, 0.0, 1)
    # Large logits at the smallest temperature: the most likely token, never NaN probabilities.
    logits = torch.tensor([[900.0, 899.0, -800.0]] * 64)
    g = torch.Generator().manual_seed(0)
    for top_k, top_p in ((0, 1.0), (0, 0.5), (2, 1.0)):
        drawn = sample_tokens(logits, temperature=MIN_TEMPERATURE, top_k=top_k, top_p=top_p, generator=g)
        assert (drawn == 0).all()
    spans = [(0, 32, torch.Generator().manual_seed(1)), (32, 64, torch.Generator().manual_seed(1))]
    even = torch.zeros(64, 50)
    drawn = sample_tokens(even, generator=spans)
    assert torch.equal(drawn[:32], drawn[32:])  # each span draws from its own generator
