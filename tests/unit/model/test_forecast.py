"""Forecasting: KV cache against full recomputation, sampling, batches, DataFrame API, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_rolling.data.calendars import future_bar_times
from kronos_rolling.data.features import FEATURE_COLUMNS
from kronos_rolling.errors import ConfigError, DataError, KronosError, ModelError
from kronos_rolling.model.config import MODEL_SIZES, TokenizerConfig
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.model.generate import generate, sample_tokens
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer

torch.set_num_threads(2)


TINY = MODEL_SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Kronos.from_config(TINY.predictor).eval(), KronosTokenizer.from_config(TINY.tokenizer).eval()


def make_bars(n: int, seed: int = 0, freq: str = "15min", volume: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.002, n))
    frame = pd.DataFrame({
        "timestamp": pd.date_range("2024-05-06 09:30", periods=n, freq=freq),
        "open": open_,
        "high": np.maximum(open_, close) * 1.002,
        "low": np.minimum(open_, close) * 0.998,
        "close": close,
    })
    if volume:
        frame["volume"] = rng.lognormal(5, 0.3, n)
    return frame


def random_inputs(batch: int, lookback: int, pred_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, lookback, 6, generator=g).cumsum(dim=1) / 5
    stamps = torch.stack([torch.randint(low, high, (batch, lookback + pred_len), generator=g)
                          for low, high in [(0, 60), (0, 24), (0, 7), (1, 32), (1, 13)]], dim=-1).float()
    return x, stamps[:, :lookback], stamps[:, lookback:]


def _with(bars: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    bars = bars.copy()
    if isinstance(value, str):
        bars[column] = bars[column].astype(object)
    bars.loc[row, column] = value
    return bars


@pytest.mark.parametrize("max_context", [512, 40], ids=["within-context", "sliding-window"])
@pytest.mark.parametrize("top_k,samples", [(1, 1), (0, 3)], ids=["greedy", "sampled"])
def test_kv_cache_gives_the_same_tokens_as_full_recomputation(tiny, max_context, top_k, samples):
    model, tokenizer = tiny
    x, x_stamp, y_stamp = random_inputs(2, 36, 12)
    kwargs = dict(top_k=top_k, top_p=0.9, samples=samples, max_context=max_context)
    threads = torch.get_num_threads()
    cached = generate(model, tokenizer, x, x_stamp, y_stamp, 12, generator=11, **kwargs)
    assert torch.get_num_threads() == threads  # single-bar steps run on one thread, then it is restored
    recomputed = generate(model, tokenizer, x, x_stamp, y_stamp, 12, generator=11, use_cache=False, **kwargs)
    # Decoding is deterministic, so equal outputs mean equal sampled tokens.
    assert cached.shape == (2, samples, 12, 6)
    assert torch.equal(cached, recomputed)


def test_seed_makes_sampling_reproducible_and_greedy_needs_none(tiny):
    model, tokenizer = tiny
    x, x_stamp, y_stamp = random_inputs(1, 30, 10, seed=1)
    run = lambda **kw: generate(model, tokenizer, x, x_stamp, y_stamp, 10, samples=4, **kw)  # noqa: E731
    assert torch.equal(run(generator=5), run(generator=5))
    assert not torch.equal(run(generator=5), run(generator=6))
    greedy = run(top_k=1)
    assert torch.equal(greedy, run(top_k=1))
    assert torch.equal(greedy[:, 0], greedy[:, 3])  # all greedy paths are the same path


def test_sampling_filters_follow_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_tokens(logits, top_k=2, generator=g).tolist()) == {0, 1}
    # Nucleus 0.7: {0.5} < 0.7, so the token crossing it (0.3) is kept too, nothing more.
    assert set(sample_tokens(logits, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_tokens(logits, top_p=1.0, generator=g).tolist()) == {0, 1, 2, 3}
    assert sample_tokens(logits[:1], top_k=1).item() == 0
    # A low temperature sharpens towards the most likely token.
    assert (sample_tokens(logits, temperature=0.05, generator=g) == 0).float().mean() > 0.99


def test_forecaster_frame_paths_and_quantiles(tiny):
    model, tokenizer = tiny
    bars = make_bars(80)
    forecaster = Forecaster(model, tokenizer, device="cpu")
    result = forecaster.forecast(bars, 6, samples=5, seed=3, quantiles=True, return_paths=True)
    assert list(result.mean.columns) == ["timestamp", *FEATURE_COLUMNS]
    expected_times = pd.date_range(bars["timestamp"].iloc[-1], periods=7, freq="15min", tz="UTC")[1:]
    assert pd.DatetimeIndex(result.mean["timestamp"]).equals(expected_times)  # naive input is UTC
    assert len(result.paths) == 5 and all(len(p) == 6 for p in result.paths)
    stacked = np.stack([p[FEATURE_COLUMNS].to_numpy() for p in result.paths])
    np.testing.assert_allclose(result.mean[FEATURE_COLUMNS].to_numpy(), stacked.mean(axis=0), rtol=1e-5)
    p10, p50, p90 = (result.quantiles[q][FEATURE_COLUMNS].to_numpy() for q in ("p10", "p50", "p90"))
    assert (p10 <= p50 + 1e-9).all() and (p50 <= p90 + 1e-9).all() and (p10 < p90).any()
    flat = result.to_frame()
    assert "close_p10" in flat.columns and "amount_p90" in flat.columns and len(flat) == 6
    # Forecasts are in price units: near the series' level, not z-scores.
    assert abs(result.mean["close"].mean() - bars["close"].mean()) < 5 * bars["close"].std() + 1


def test_forecaster_greedy_is_deterministic_and_matches_generate(tiny):
    model, tokenizer = tiny
    bars = make_bars(60, seed=2, volume=False)  # volume/amount filled with zeros
    forecaster = Forecaster(model, tokenizer, device="cpu", max_context=32)
    first = forecaster.forecast(bars, 8, top_k=1)
    second = forecaster.forecast(bars, 8, top_k=1, seed=99)
    pd.testing.assert_frame_equal(first.mean, second.mean)
    future = pd.date_range("2030-01-01", periods=8, freq="D")
    given = forecaster.forecast(bars, 8, top_k=1, future_timestamps=future)
    assert pd.DatetimeIndex(given.mean["timestamp"]).equals(future.tz_localize("UTC"))


def test_a_csv_path_forecasts_like_its_dataframe(tiny, tmp_path):
    model, tokenizer = tiny
    bars = make_bars(50, seed=4)
    bars.to_csv(tmp_path / "bars.csv", index=False)
    forecaster = Forecaster(model, tokenizer, device="cpu")
    want = forecaster.forecast(bars, 4, top_k=1).mean
    got = forecaster.forecast(tmp_path / "bars.csv", 4, top_k=1).mean
    np.testing.assert_allclose(got[FEATURE_COLUMNS].to_numpy(), want[FEATURE_COLUMNS].to_numpy(), rtol=1e-6)
    [listed] = forecaster.forecast([str(tmp_path / "bars.csv")], 4, top_k=1)
    np.testing.assert_allclose(listed.mean["close"].to_numpy(), want["close"].to_numpy(), rtol=1e-6)
    with pytest.raises(DataError, match="missing.csv: no such file"):
        forecaster.forecast(tmp_path / "missing.csv", 4)


def test_batch_of_different_lengths_matches_single_forecasts(tiny):
    model, tokenizer = tiny
    series = [make_bars(25, seed=4), make_bars(44, seed=5), make_bars(50, seed=6)]
    forecaster = Forecaster(model, tokenizer, device="cpu", max_context=48)  # the longest rows slide
    together = forecaster.forecast(series, 5, top_k=1)
    assert isinstance(together, list) and len(together) == 3
    for bars, batched in zip(series, together):
        alone = forecaster.forecast(bars, 5, top_k=1)
        np.testing.assert_allclose(batched.mean[FEATURE_COLUMNS].to_numpy(), alone.mean[FEATURE_COLUMNS].to_numpy(),
                                   rtol=1e-4, atol=1e-4 * bars["close"].std())
    lookback = forecaster.forecast(series[1], 5, top_k=1, lookback=25)
    tail = forecaster.forecast(series[1].iloc[-25:], 5, top_k=1)
    pd.testing.assert_frame_equal(lookback.mean, tail.mean)


def test_future_timestamps_use_the_most_common_spacing():
    stamps = pd.Series(pd.to_datetime(["2024-01-01 10:00", "2024-01-01 10:05", "2024-01-01 10:10",
                                       "2024-01-01 11:00", "2024-01-01 11:05"]))
    assert list(future_bar_times(stamps, 2)) == list(pd.to_datetime(["2024-01-01 11:10", "2024-01-01 11:15"], utc=True))


@pytest.mark.parametrize(
    "mutate,kwargs,error,words",
    [
        (lambda b: b.drop(columns=["close"]), {}, DataError, ["missing column", "close"]),
        (lambda b: b.set_index("timestamp"), {}, DataError, ["timestamp", "reset_index"]),
        (lambda b: _with(b, 7, "high", np.nan), {}, DataError, ["NaN", "high", "row 7"]),
        (lambda b: _with(b, 3, "volume", np.inf), {}, DataError, ["infinite", "volume", "row 3"]),
        (lambda b: b.iloc[:1], {}, DataError, ["1 usable bar", "at least 2"]),
        (lambda b: b, {"lookback": 500}, DataError, ["lookback of 500", "more history"]),
        (lambda b: _with(b, 5, "timestamp", b.loc[4, "timestamp"]), {}, DataError, ["row 5", "duplicate timestamp"]),
        (lambda b: _with(b, 5, "timestamp", b.loc[1, "timestamp"]), {}, DataError, ["row 5", "ascending time order"]),
        (lambda b: _with(b, 2, "open", "n/a"), {}, DataError, ["row 2, column 'open'", "not a number"]),
        (lambda b: _with(b, 2, "open", -1.0), {}, DataError, ["row 2, column 'open'", "price is not positive"]),
        (lambda b: _with(b, 6, "low", 1e4), {}, DataError, ["row 6, column 'high'", "high is below low"]),
        (lambda b: _with(b, 1, "volume", -3.0), {}, DataError, ["row 1, column 'volume'", "negative value"]),
        (lambda b: _with(b, 3, "close", 1e300), {}, DataError, ["row 3, column 'close'", "float32"]),
        (lambda b: b, {"pred_len": 600}, ConfigError, ["exceeds the model's context of 512"]),
        (lambda b: b, {"future_timestamps": pd.date_range("2030-01-01", periods=2)}, DataError, ["2 future timestamps"]),
        (lambda b: b, {"temperature": 0.0}, ConfigError, ["temperature"]),
    ],
    ids=["missing-column", "missing-timestamp", "nan", "inf", "too-few-bars", "lookback", "duplicate-time",
         "unordered-time", "non-numeric", "negative-price", "high-below-low", "negative-volume", "overflow",
         "horizon", "future-length", "temperature"],
)
def test_bad_input_gives_a_clear_error(tiny, mutate, kwargs, error, words):
    model, tokenizer = tiny
    forecaster = Forecaster(model, tokenizer, device="cpu")
    kwargs = {"pred_len": 4, **kwargs}
    with pytest.raises(error) as caught:
        forecaster.forecast(mutate(make_bars(40)), **kwargs)
    assert isinstance(caught.value, KronosError)
    for word in words:
        assert word in str(caught.value)


def test_list_errors_name_the_series(tiny):
    forecaster = Forecaster(*tiny, device="cpu")
    with pytest.raises(DataError, match=r"series 1, row 4, column 'low': missing value \(NaN\)"):
        forecaster.forecast([make_bars(30), _with(make_bars(30), 4, "low", np.nan)], 3)


def test_tokenizer_and_predictor_bit_sizes_must_match(tiny):
    model, _ = tiny
    wrong = KronosTokenizer.from_config(TokenizerConfig(d_model=16, n_heads=2, ff_dim=16, n_enc_layers=1,
                                                        n_dec_layers=1))  # 10/10 bits
    with pytest.raises(ModelError, match="10/10 bits, predictor expects 6/6"):
        Forecaster(model, wrong, device="cpu")


def test_devices_and_precision_are_checked(tiny):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only answers")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Forecaster(*tiny, device="cuda")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Forecaster(*tiny, device="auto", precision="bf16")
    assert Forecaster(*tiny, device="auto").device.type == "cpu"
