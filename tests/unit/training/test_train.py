"""Training settings and checkpoints, checked without training (the loop itself:
tests/integration/training/test_train.py)."""

from __future__ import annotations

import pytest
from support.training import small_config

from kronos_rolling.errors import ConfigError
from kronos_rolling.training.checkpoint import Checkpoint


def test_mode_defaults_follow_the_phase_document(tiny_base):
    pooled = small_config(tiny_base, mode="pooled", epochs=None)
    rolling = small_config(tiny_base, epochs=None)
    assert (pooled.lr, pooled.epochs) == (1e-4, 10)
    assert (rolling.lr, rolling.epochs) == (5e-5, 5)


@pytest.mark.parametrize("kwargs, words", [
    ({"mode": "weekly"}, "mode must be one of"),
    ({"asset_class": "bonds"}, "needs --asset-class"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"as_of": "not a date"}, "as_of 'not a date' is not a date; give YYYY-MM-DD"),
    ({"precision": "fp16"}, "precision must be one of float32, bf16"),
])
def test_bad_settings_are_named(tiny_base, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        small_config(tiny_base, **kwargs)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    Checkpoint(tmp_path, "one").save({"epoch": 1})
    assert Checkpoint(tmp_path, "one").load()["epoch"] == 1
    assert Checkpoint(tmp_path, "other").load() is None


def test_every_setting_that_departs_from_the_released_defaults_is_recorded_with_the_reason():
    from kronos_rolling.evaluation.config import EvalSettings
    from kronos_rolling.model.config import LoraSettings
    from kronos_rolling.training.config import TrainConfig

    released = TrainConfig(mode="rolling", as_of="2018-02-01", asset_class="crypto")
    assert released.departure_tags(EvalSettings(lookback=128, horizon=16)) == {}
    config = TrainConfig(mode="rolling", as_of="2018-02-01", asset_class="crypto", lr=1e-3, lookback=32, horizon=4,
                         max_samples_per_epoch=256, lora=LoraSettings(rank=4), device="cpu",
                         note="CPU-sized, as the demo")
    evaluation = EvalSettings(lookback=32, horizon=4, samples=4, max_origins=64)  # lookback/horizon: the run's own
    tags = config.departure_tags(evaluation)
    assert tags["kronos.non_default_settings"] == (
        "lr 0.001 instead of 5e-05, lookback 32 instead of 128, horizon 4 instead of 16, max_samples_per_epoch 256 "
        "instead of all, lora_rank 4 instead of 8, device cpu instead of auto, eval_samples 4 instead of 16, "
        "eval_max_origins 64 instead of all")
    assert tags["kronos.non_default_reason"] == "CPU-sized, as the demo"
    unexplained = TrainConfig(mode="pooled", as_of="2018-02-01", epochs=3).departure_tags()
    assert unexplained == {"kronos.non_default_settings": "epochs 3 instead of 10",
                           "kronos.non_default_reason": "not given (set TrainConfig.note / --note)"}
