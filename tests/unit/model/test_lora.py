"""Event embedding and LoRA: exact base behaviour when fresh, frozen base, bundle round trip, merge."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from peft import PeftModel

from kronos_rolling.errors import DataError, ModelError
from kronos_rolling.model.config import MODEL_SIZES, LoraSettings
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.forecast import Forecaster
from kronos_rolling.model.kronos import Kronos, token_loss
from kronos_rolling.model.lora import (
    attach_lora,
    load_adapter_bundle,
    save_adapter_bundle,
)
from kronos_rolling.model.tokenizer import KronosTokenizer

torch.set_num_threads(2)


TINY = MODEL_SIZES["tiny"]


VOCAB = {"earnings": 1, "fomc": 2, "split": 3}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base")
    Kronos.from_config(TINY.predictor).save_pretrained(folder / "predictor")
    KronosTokenizer.from_config(TINY.tokenizer).save_pretrained(folder / "tokenizer")
    return folder


def load_base(base_dir) -> Kronos:
    return Kronos.from_pretrained(base_dir / "predictor")


def batch(seed: int = 0, length: int = 24):
    g = torch.Generator().manual_seed(seed)
    s1, s2, t1, t2 = (torch.randint(0, 64, (4, length), generator=g) for _ in range(4))
    stamp = torch.stack([torch.randint(0, 7, (4, length), generator=g)] * 5, dim=-1).float()
    events = torch.randint(0, 4, (4, length), generator=g)
    return s1, s2, stamp, events, t1, t2


def logits(model, events: EventEmbedding | None, data):
    s1, s2, stamp, event_ids, t1, _ = data
    extra = events(event_ids) if events is not None else None
    with torch.no_grad():
        return model(s1, s2, stamp, use_teacher_forcing=True, s1_targets=t1, extra_embedding=extra)


def train_steps(peft_model, events: EventEmbedding, steps: int = 3):
    params = [p for p in peft_model.parameters() if p.requires_grad] + list(events.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    peft_model.train()
    for step in range(steps):
        s1, s2, stamp, event_ids, t1, t2 = batch(seed=10 + step)
        s1_logits, s2_logits = peft_model(s1, s2, stamp, use_teacher_forcing=True, s1_targets=t1,
                                          extra_embedding=events(event_ids))
        loss = token_loss(s1_logits, s2_logits, t1, t2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.eval()


@pytest.fixture(scope="module")
def trained_bundle(base_dir, tmp_path_factory):
    torch.manual_seed(1)
    events = EventEmbedding(4, TINY.predictor.d_model)
    peft_model = attach_lora(load_base(base_dir))
    train_steps(peft_model, events, steps=4)
    out = tmp_path_factory.mktemp("bundles") / "pooled"
    save_adapter_bundle(peft_model, events, VOCAB, out)
    return out, peft_model, events


def test_lora_targets_only_transformer_block_linears(base_dir):
    peft_model = attach_lora(load_base(base_dir), LoraSettings(rank=4, alpha=8))
    adapted = sorted({name.rsplit(".lora_A", 1)[0] for name, _ in peft_model.named_parameters() if ".lora_A" in name})
    expected = sorted(
        f"base_model.model.transformer.{i}.{leaf}"
        for i in range(TINY.predictor.n_layers)
        for leaf in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "ffn.w1", "ffn.w2", "ffn.w3"]
    )
    assert adapted == expected  # not dep_layer.cross_attn.*, not the heads or embeddings
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    only_ffn = attach_lora(load_base(base_dir), LoraSettings(target_modules=("w1", "w3")))
    assert all(".ffn.w1" in n or ".ffn.w3" in n for n, p in only_ffn.named_parameters() if p.requires_grad)
    with pytest.raises(ModelError, match="target_modules"):
        LoraSettings(target_modules=("fusion_proj",))


def test_fresh_adapter_and_event_embedding_give_exactly_the_base_logits(base_dir):
    data = batch()
    base_logits = logits(load_base(base_dir).eval(), None, data)
    events = EventEmbedding(4, TINY.predictor.d_model)
    assert torch.equal(events(data[3]), torch.zeros(4, 24, TINY.predictor.d_model))
    peft_model = attach_lora(load_base(base_dir)).eval()
    adapted_logits = logits(peft_model, events, data)
    assert all(torch.equal(a, b) for a, b in zip(base_logits, adapted_logits))


def test_training_touches_only_adapter_and_event_parameters(base_dir):
    base = load_base(base_dir)
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    events = EventEmbedding(4, TINY.predictor.d_model)
    peft_model = attach_lora(base)
    lora_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    train_steps(peft_model, events)
    after = peft_model.get_base_model().state_dict()
    for name, tensor in before.items():
        key = name if name in after else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], tensor), f"base weight {name} changed"
    assert any(not torch.equal(p, lora_before[n]) for n, p in peft_model.named_parameters() if n in lora_before)
    table = events.table.weight.detach()
    assert table[1:].abs().sum() > 0  # event vectors learned
    assert torch.equal(table[0], torch.zeros_like(table[0]))  # "no event" stays zero


def test_bundle_round_trip_gives_identical_logits_and_merges(base_dir, trained_bundle):
    out, peft_model, events = trained_bundle
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "adapter_config.json", "adapter_model.safetensors", "event_embedding.safetensors",
         "event_vocab.json"])
    assert json.loads((out / "event_vocab.json").read_text()) == VOCAB
    loaded, loaded_events, vocab = load_adapter_bundle(load_base(base_dir), out)
    assert isinstance(loaded, PeftModel) and vocab == VOCAB
    data = batch(seed=3)
    original = logits(peft_model, events, data)
    reloaded = logits(loaded.eval(), loaded_events, data)
    assert all(torch.equal(a, b) for a, b in zip(original, reloaded))
    base_logits = logits(load_base(base_dir).eval(), None, data)
    assert not torch.allclose(base_logits[0], reloaded[0])  # the adapter does something
    assert not any(p.requires_grad for p in loaded.parameters())

    merged = loaded.merge_and_unload()
    assert isinstance(merged, Kronos) and not any("lora" in n for n, _ in merged.named_parameters())
    merged_logits = logits(merged, loaded_events, data)
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(reloaded, merged_logits))

    warm, _, _ = load_adapter_bundle(load_base(base_dir), out, is_trainable=True)
    assert any(p.requires_grad for n, p in warm.named_parameters() if "lora_" in n)


def test_forecaster_uses_adapters_and_events(base_dir, trained_bundle):
    out, _, _ = trained_bundle
    tokenizer = KronosTokenizer.from_pretrained(base_dir / "tokenizer")
    peft_model, events, vocab = load_adapter_bundle(load_base(base_dir), out)
    rng = np.random.default_rng(0)
    close = 20 * np.exp(np.cumsum(rng.normal(0, 0.01, 40)))
    bars = pd.DataFrame({"timestamp": pd.date_range("2024-01-02", periods=40, freq="h"), "open": close,
                         "high": close * 1.01, "low": close * 0.99, "close": close, "volume": 1000.0})
    with_adapter = Forecaster(peft_model, tokenizer, device="cpu", event_embedding=events)
    merged_model = load_adapter_bundle(load_base(base_dir), out)[0].merge_and_unload()
    merged = Forecaster(merged_model, tokenizer, device="cpu", event_embedding=events)
    base = Forecaster(load_base(base_dir), tokenizer, device="cpu")
    no_events = with_adapter.forecast(bars, 5, top_k=1).mean
    pd.testing.assert_frame_equal(no_events, merged.forecast(bars, 5, top_k=1).mean, rtol=1e-4)
    assert not no_events.equals(base.forecast(bars, 5, top_k=1).mean)
    ids = np.zeros(45, dtype=int)
    assert with_adapter.forecast(bars, 5, top_k=1, event_ids=ids).mean.equals(no_events)  # 0 = no event
    ids[-10:] = vocab["earnings"]
    with torch.no_grad():  # a pronounced event vector, so the effect shows in the greedy tokens
        events.table.weight[vocab["earnings"]] = 3 * torch.randn(TINY.predictor.d_model)
    assert not with_adapter.forecast(bars, 5, top_k=1, event_ids=ids).mean.equals(no_events)
    with pytest.raises(DataError, match="event ids must lie in"):
        with_adapter.forecast(bars, 5, event_ids=np.full(45, 9))
    with pytest.raises(DataError, match="one per bar plus one per forecast bar"):
        with_adapter.forecast(bars, 5, event_ids=np.zeros(40, dtype=int))


def test_bundle_errors_leave_nothing_behind(base_dir, trained_bundle, tmp_path):
    out, peft_model, events = trained_bundle
    with pytest.raises(ModelError, match="outside the embedding's 0..3"):
        save_adapter_bundle(peft_model, events, {"huge": 7}, tmp_path / "bad")
    with pytest.raises(ModelError, match="not an empty folder"):
        save_adapter_bundle(peft_model, events, VOCAB, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((out / "adapter_config.json").read_text())
    with pytest.raises(ModelError, match="lacks adapter_model.safetensors, event_embedding.safetensors"):
        load_adapter_bundle(load_base(base_dir), broken)
    wider = Kronos(**{**TINY.predictor.to_dict(), "d_model": 32})
    with pytest.raises(ModelError, match="d_model 64, this base has 32"):
        load_adapter_bundle(wider, out)
    deeper = Kronos(**{**TINY.predictor.to_dict(), "n_layers": 3})
    with pytest.raises(ModelError, match="does not fit this base model"), \
            pytest.warns(UserWarning, match="missing adapter keys"):  # peft itself only warns
        load_adapter_bundle(deeper, out)


def test_event_embedding_saves_and_loads_on_its_own(tmp_path):
    events = EventEmbedding(5, 16)
    with torch.no_grad():
        events.table.weight[1:] = torch.randn(4, 16)
    path = events.save(tmp_path / "events.safetensors")
    loaded = EventEmbedding.load(path)
    assert (loaded.num_event_types, loaded.d_model) == (5, 16)
    assert torch.equal(loaded.table.weight, events.table.weight)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match="cannot read event embedding"):
        EventEmbedding.load(tmp_path / "junk.safetensors")
