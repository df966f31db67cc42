"""At the CPU-sized settings the README, the demo and `simulate` use, a fine-tune changes the model
measurably: the adapter's weights grow, val_nll moves with an interval that excludes zero, and the
forecast differs from the bare base's for the same request and seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from support.training import trainee_and_sets

from kronos_rolling.data.store import DataStore
from kronos_rolling.evaluation.config import EvalSettings
from kronos_rolling.evaluation.forecasts import ForecastModel
from kronos_rolling.evaluation.span import evaluate_span
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.pipeline.replay import SimulationSettings
from kronos_rolling.training.loop import fit


def _lora_b_norm(trainee) -> float:
    return float(sum(p.detach().norm() ** 2 for n, p in trainee.model.named_parameters() if "lora_B" in n) ** 0.5)


def _forecast_model(trainee, base) -> ForecastModel:
    trainee.model.eval()
    return ForecastModel(trainee.model, trainee.tokenizer, trainee.event_embedding.eval(), trainee.vocabulary,
                         base.max_context)


@pytest.fixture(scope="module")
def adapted(pretrained_base, tmp_path_factory):
    """The pooled adapter as of 2017-11-01, then crypto's rolling fine-tune from it as of 2017-12-01."""
    store, settings = DataStore(), SimulationSettings()
    base = BaseModelRef.resolve(str(pretrained_base))
    pooled_config = settings.train_config("pooled", "2017-11-01", None, base)
    pooled, train_set, inner_set = trainee_and_sets(pooled_config, store)
    assert _lora_b_norm(pooled) == 0.0, "a fresh LoRA adapter starts as the identity (B = 0)"
    fit(pooled, train_set, inner_set, pooled_config, device=torch.device("cpu"), progress=False)
    pooled_dir = tmp_path_factory.mktemp("pooled") / "adapter"
    pooled.save(pooled_dir)

    config = settings.train_config("rolling", "2017-12-01", "crypto", base)
    candidate, train_set, inner_set = trainee_and_sets(config, store, warm_start_dir=pooled_dir)
    warm = {n: p.detach().clone() for n, p in candidate.model.named_parameters() if "lora_B" in n}
    fit(candidate, train_set, inner_set, config, device=torch.device("cpu"), progress=False)
    moved = float(sum((p.detach() - warm[n]).norm() ** 2 for n, p in candidate.model.named_parameters()
                      if n in warm) ** 0.5)
    return {"base": base, "store": store, "settings": settings, "pooled": pooled, "candidate": candidate,
            "config": config, "moved": moved, "warm_norm": float(sum(w.norm() ** 2 for w in warm.values()) ** 0.5)}


def test_the_settings_depart_from_the_phase_defaults_and_say_why(adapted):
    config = adapted["config"]
    assert config.epochs == 5, "the phase's 5 epochs are kept"
    tags = config.departure_tags()
    assert tags["kronos.non_default_settings"] == (
        f"lr {config.lr:g} instead of 5e-05, lookback 32 instead of 128, horizon 4 instead of 16, "
        "max_samples_per_epoch 256 instead of all, max_inner_val_samples 64 instead of 2048")
    assert "CPU-sized" in tags["kronos.non_default_reason"]


def test_the_adapter_weights_grow_and_move(adapted):
    assert _lora_b_norm(adapted["pooled"]) > 0.1
    # The rolling fine-tune moves its warm start's LoRA B by a sizeable fraction of its norm.
    assert adapted["moved"] > 0.05 * adapted["warm_norm"], (adapted["moved"], adapted["warm_norm"])


def test_val_nll_changes_measurably_from_the_warm_start(adapted):
    base, settings = adapted["base"], adapted["settings"]
    candidate = adapted["candidate"]
    eval_settings = EvalSettings(lookback=settings.lookback, horizon=settings.horizon, samples=2, max_origins=None)
    evaluation = evaluate_span(adapted["store"], ["crypto"], adapted["config"].window().val_span,
                               {"candidate": _forecast_model(candidate, base),
                                "warm_start": _forecast_model(adapted["pooled"], base)},
                               eval_settings, candidate.vocabulary)
    difference = evaluation.difference("candidate", "warm_start", "val_nll")
    assert difference.has_interval and evaluation.origins >= 100
    # Not float noise: the whole 90% interval is on one side of zero.
    assert difference.lo > 0 or difference.hi < 0, difference.describe()


def test_the_forecast_differs_from_the_bare_base_for_the_same_request_and_seed(adapted):
    base = adapted["base"]
    bare_model, tokenizer = base.load()
    bars = adapted["store"].load("BTCUSD")
    bars = bars[bars["timestamp"] < pd.Timestamp("2017-12-01", tz="UTC")].tail(adapted["settings"].lookback).reset_index(drop=True)
    candidate = adapted["candidate"]
    candidate.model.eval()
    tuned = Forecaster(candidate.model, candidate.tokenizer, device="cpu").forecast(bars, 4, samples=4, seed=7)
    bare = Forecaster(bare_model, tokenizer, device="cpu").forecast(bars, 4, samples=4, seed=7)
    again = Forecaster(bare_model, tokenizer, device="cpu").forecast(bars, 4, samples=4, seed=7)
    np.testing.assert_array_equal(bare.mean["close"].to_numpy(), again.mean["close"].to_numpy())
    relative = np.abs(tuned.mean["close"].to_numpy() / bare.mean["close"].to_numpy() - 1)
    assert relative.max() > 1e-4, relative
