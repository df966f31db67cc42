"""The training loop on a tiny base: what it changes, what it sees, and how it survives a kill."""

from __future__ import annotations

import pytest
import torch
from support.training import small_config

from kronos_rolling.errors import ConfigError
from kronos_rolling.training.checkpoint import Checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-for-bit comparisons need the same reduction order in every run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_mode_defaults_follow_the_phase_document(tiny_base):
    pooled = small_config(tiny_base, mode="pooled", epochs=None)
    rolling = small_config(tiny_base, epochs=None)
    assert (pooled.lr, pooled.epochs) == (1e-4, 10)
    assert (rolling.lr, rolling.epochs) == (5e-5, 5)


@pytest.mark.parametrize("kwargs, words", [
    ({"mode": "weekly"}, "mode must be one of"),
    ({"asset_class": "bonds"}, "needs --asset-class"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"as_of": "not a date"}, "cannot read"),
    ({"precision": "fp16"}, "precision must be one of float32, bf16"),
])
def test_bad_settings_are_named(tiny_base, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        small_config(tiny_base, **kwargs)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    Checkpoint(tmp_path, "one").save({"epoch": 1})
    assert Checkpoint(tmp_path, "one").load()["epoch"] == 1
    assert Checkpoint(tmp_path, "other").load() is None
