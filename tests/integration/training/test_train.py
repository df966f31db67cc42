"""The training loop on a tiny base: what it changes, what it sees, and how it survives a kill."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from support import TESTS
from support.train_worker import CHECKPOINT_FINGERPRINT
from support.train_worker import run as worker_run
from support.training import small_config, state_of, trainee_and_sets

from kronos_rolling.data.store import DataStore
from kronos_rolling.training.checkpoint import Checkpoint
from kronos_rolling.training.loop import fit

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-for-bit comparisons need the same reduction order in every run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit(config, store=None, **kw):
    trainee, train_set, inner_set = trainee_and_sets(config, store or DataStore())
    result = fit(trainee, train_set, inner_set, config, device=CPU, progress=False, **kw)
    return trainee, result, train_set, inner_set


def test_fit_changes_only_the_adapter_and_event_embedding(tiny_base):
    config = small_config(tiny_base)
    trainee, train_set, inner_set = trainee_and_sets(config, DataStore())
    base = trainee.model.get_base_model()
    frozen_before = {n: p.detach().clone() for n, p in base.named_parameters() if "lora_" not in n}
    tokenizer_before = {n: p.detach().clone() for n, p in trainee.tokenizer.state_dict().items()}
    trainable_before = state_of(trainee)
    result = fit(trainee, train_set, inner_set, config, device=CPU, progress=False)

    assert [h.epoch for h in result.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor([h.train_loss, h.val_loss])).all() for h in result.history)
    for name, value in base.named_parameters():
        if "lora_" not in name:
            assert torch.equal(value, frozen_before[name]), f"base weight {name} changed"
    for name, value in trainee.tokenizer.state_dict().items():
        assert torch.equal(value, tokenizer_before[name]), f"tokenizer weight {name} changed"
    after = state_of(trainee)
    changed = [n for n in after if not torch.equal(after[n], trainable_before[n])]
    assert any("lora_B" in n for n in changed), "LoRA weights did not train"
    assert set(after) == set(trainable_before)
    assert all("lora_" in n or n.startswith("event_embedding.") for n in after)


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_tokens_weights_and_optimiser_in_float32(tiny_base, tmp_path):
    config = small_config(tiny_base, precision="bf16")
    trainee, train_set, inner_set = trainee_and_sets(config, DataStore())
    seen = {"predictor": set(), "tokenizer": set()}
    block_linear = trainee.model.get_base_model().transformer[0].ffn.w2
    tokenizer_linear = next(m for m in trainee.tokenizer.modules() if isinstance(m, torch.nn.Linear))
    block_linear.register_forward_hook(lambda m, i, out: seen["predictor"].add(out.dtype))
    tokenizer_linear.register_forward_hook(lambda m, i, out: seen["tokenizer"].add(out.dtype))
    before = state_of(trainee)
    checkpoint = Checkpoint(tmp_path / "checkpoint", "bf16")
    result = fit(trainee, train_set, inner_set, config, device=CPU, progress=False, checkpoint=checkpoint)

    assert seen == {"predictor": {torch.bfloat16}, "tokenizer": {torch.float32}}
    moments = [value for state in checkpoint.load()["optimizer"]["state"].values()
               for key, value in state.items() if key in ("exp_avg", "exp_avg_sq")]
    assert moments and all(value.dtype == torch.float32 for value in moments)
    assert all(torch.isfinite(torch.tensor([h.train_loss, h.val_loss])).all() for h in result.history)
    after = state_of(trainee)
    assert all(value.dtype == torch.float32 for value in after.values())
    assert any("lora_B" in n and not torch.equal(after[n], before[n]) for n in after), "LoRA weights did not train"


def test_progress_shows_each_epoch_with_bars_per_second_and_loss(tiny_base, capsys):
    config = small_config(tiny_base, epochs=2)
    trainee, train_set, inner_set = trainee_and_sets(config, DataStore())
    fit(trainee, train_set, inner_set, config, device=CPU, progress=True)
    shown = capsys.readouterr().err
    for epoch in ("epoch 1/2", "epoch 2/2"):
        assert f"{config.label} {epoch}" in shown
    # Not a terminal: one line per epoch, not a redrawn bar.
    assert "bars_s=" in shown and "loss=" in shown and "64/64 samples in " in shown and "\r" not in shown
    assert shown.count("\n") == 2


def test_a_fixed_seed_gives_the_same_adapter(tiny_base):
    first, *_ = _fit(small_config(tiny_base))
    second, *_ = _fit(small_config(tiny_base))
    third, *_ = _fit(small_config(tiny_base, seed=7))
    a, b, c = state_of(first), state_of(second), state_of(third)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_training_never_sees_the_validation_span(tiny_base, tmp_path):
    """Poison every bar from the start of the guard's span on: the adapter must not change."""
    config = small_config(tiny_base)
    window = config.window()
    store = DataStore()
    _, _, train_set, inner_set = _fit(config, store)
    for dataset, end in ((train_set, window.inner_val_start), (inner_set, window.train_end)):
        assert len(dataset) > 0
        for symbol, origins in dataset.origins().groupby("symbol")["origin"]:
            stamps = pd.DatetimeIndex(store.load(symbol)["timestamp"])
            last_bar = stamps[stamps.searchsorted(origins) + config.horizon - 1]
            assert (last_bar < end).all(), f"a {symbol} sample reaches past {end}"

    poisoned = tmp_path / "poisoned"
    shutil.copytree(store.root, poisoned)
    for symbol in store.symbols_for("crypto"):
        bars = store.load(symbol)
        late = bars["timestamp"] >= window.val_start
        bars.loc[late, ["open", "high", "low", "close"]] *= 50.0
        bars.loc[late, "volume"] *= 0.01
        target = store.path_of(symbol)
        (poisoned / target.name).unlink()
        bars.to_parquet(poisoned / f"{target.stem}.parquet", index=False)
    clean, *_ = _fit(small_config(tiny_base))
    dirty, *_ = _fit(small_config(tiny_base), DataStore(poisoned))
    a, b = state_of(clean), state_of(dirty)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_early_stopping_keeps_the_best_epoch(tiny_base):
    # At a vanishing learning rate the inner validation loss stops improving after the
    # first epoch, so patience 1 stops training at epoch 2 and restores epoch 1.
    config = small_config(tiny_base, epochs=6, lr=1e-9, patience=1, warmup_fraction=0.0)
    trainee, train_set, inner_set = trainee_and_sets(config, DataStore())
    states = {}
    result = fit(trainee, train_set, inner_set, config, device=CPU, progress=False,
                 on_epoch=lambda record: states.__setitem__(record.epoch, state_of(trainee)))
    assert result.stopped_early
    assert [h.epoch for h in result.history] == [1, 2]
    assert result.best_epoch == 1 and result.best_val_loss == result.history[0].val_loss
    final, best, last = state_of(trainee), states[1], states[2]
    assert any(not torch.equal(best[n], last[n]) for n in best), "epoch 2 changed nothing at all"
    assert all(torch.equal(final[n], best[n]) for n in final), "the best epoch's weights were not restored"


def test_a_killed_training_resumes_to_the_same_adapter(tiny_base, tmp_path):
    checkpoint_dir = tmp_path / "ckpt"
    worker = subprocess.Popen([sys.executable, str(TESTS / "support" / "train_worker.py"), str(tiny_base),
                               str(checkpoint_dir), str(tmp_path / "never.pt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = Checkpoint(checkpoint_dir, CHECKPOINT_FINGERPRINT)
    deadline = time.monotonic() + 120
    while not checkpoint.path.exists():
        assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    saved = checkpoint.load()
    assert saved is not None and 1 <= saved["epoch"] < 4, "the kill must land mid-training"
    assert not (tmp_path / "never.pt").exists()

    resumed, result = worker_run(tiny_base, checkpoint_dir)
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    straight, _ = worker_run(tiny_base, None)
    a, b = state_of(resumed), state_of(straight)
    assert all(torch.equal(a[n], b[n]) for n in a), "resumed training differs from an uninterrupted one"


def test_a_warm_start_continues_from_the_bundle_and_keeps_its_shape_and_event_rows(tiny_base, tmp_path):
    from safetensors.torch import load_file
    from support.serve import EVENT_VOCAB, build_bundle

    from kronos_rolling.model.config import LoraSettings
    from kronos_rolling.model.kronos import Kronos
    from kronos_rolling.model.tokenizer import KronosTokenizer
    from kronos_rolling.training.loop import build_trainee

    bundle = build_bundle(tiny_base, tmp_path / "bundle", seed=5)  # rank 4, unlike the default 8
    saved = load_file(str(bundle / "adapter_model.safetensors"))
    trainee, lora = build_trainee(Kronos.from_pretrained(tiny_base / "predictor"),
                                  KronosTokenizer.from_pretrained(tiny_base / "tokenizer"),
                                  [*EVENT_VOCAB, "NEW_EVENT"], LoraSettings(), bundle, seed=0)
    assert lora.rank == 4
    loaded = {name: p for name, p in trainee.model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(saved) and all(p.requires_grad for p in loaded.values())
    for key, tensor in saved.items():
        [match] = [p for name, p in loaded.items() if name.replace(".default", "") == key]
        assert torch.equal(match.detach(), tensor), key
    old_rows = load_file(str(bundle / "event_embedding.safetensors"))
    table = trainee.event_embedding.table.weight.detach()
    [old] = old_rows.values()
    assert torch.equal(table[:len(old)], old)  # the bundle's event vectors, same ids
    assert trainee.vocabulary.size == len(old) + 1 and not table[len(old):].any()  # a new type starts at zero
