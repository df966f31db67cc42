"""The decode step's layout: transposed weight copies only while generating, LoRA untouched,
and a KV cache that keeps its validity without reallocating."""

from __future__ import annotations

import torch

from kronos_rolling.model.config import MODEL_SIZES, LoraSettings
from kronos_rolling.model.generate import generate
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.layers import KVCache, project, transposed_weights
from kronos_rolling.model.lora import attach_lora
from kronos_rolling.model.tokenizer import KronosTokenizer

TINY = MODEL_SIZES["tiny"]


def _model(seed=0) -> Kronos:
    torch.manual_seed(seed)
    return Kronos.from_config(TINY.predictor).eval()


def test_transposed_copies_exist_only_inside_the_block_and_compute_the_same_product():
    model = _model()
    linear = model.transformer[0].ffn.w2
    x = torch.randn(3, 1, linear.in_features)
    expected = linear(x)
    with transposed_weights(model):
        assert linear.decode_weight_t.shape == (linear.in_features, linear.out_features)
        assert torch.allclose(project(linear, x), expected, atol=1e-5, rtol=1e-5)
    assert not hasattr(linear, "decode_weight_t")
    assert torch.equal(project(linear, x), expected)


def test_lora_layers_keep_their_adapter_during_a_decode():
    model = attach_lora(_model(), LoraSettings())
    base = model.get_base_model()
    wrapped = base.transformer[0].self_attn.q_proj
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    x = torch.randn(2, 1, base.d_model)
    with torch.no_grad():
        expected = wrapped(x)
        with transposed_weights(base):
            assert "decode_weight_t" not in wrapped.base_layer.__dict__  # no copy for a base under LoRA
            assert torch.equal(project(wrapped, x), expected)
            assert not torch.allclose(expected, wrapped.base_layer(x))  # the adapter contributes


def test_a_generation_leaves_no_copies_behind_and_greedy_matches_full_recomputation():
    model = _model()
    torch.manual_seed(1)
    tokenizer = KronosTokenizer.from_config(TINY.tokenizer).eval()
    x = torch.randn(2, 24, 6)
    stamps = torch.zeros(2, 30, 5)
    cached = generate(model, tokenizer, x, stamps[:, :24], stamps[:, 24:], 6, top_k=1, max_context=26)
    full = generate(model, tokenizer, x, stamps[:, :24], stamps[:, 24:], 6, top_k=1, max_context=26,
                    use_cache=False)
    assert torch.allclose(cached, full, atol=1e-5)
    assert not any("decode_weight_t" in m.__dict__ for m in model.modules())


def test_the_cache_tracks_padding_and_resets_to_all_valid():
    cache = KVCache(capacity=8)
    cache.advance(3, batch=2, device=torch.device("cpu"), new_valid=torch.tensor([[False, True, True]] * 2))
    assert not cache.all_valid and cache.valid.tolist() == [[False, True, True]] * 2
    buffer = cache._valid
    cache.advance(1, batch=2, device=torch.device("cpu"))
    assert cache.valid.tolist() == [[False, True, True, True]] * 2 and cache._valid is buffer
    cache.reset()
    cache.advance(2, batch=2, device=torch.device("cpu"))
    assert cache.all_valid and bool(cache.valid.all()) and cache._valid is buffer


def test_products_of_one_input_are_laid_side_by_side_and_give_the_same_block_output():
    model = _model()
    block = model.transformer[0]
    x = torch.randn(2, 1, model.d_model)
    with torch.no_grad():
        expected = block.ffn(x), block.self_attn.q_proj(x), block.self_attn.v_proj(x)
        with transposed_weights(model):
            assert block.self_attn.decode_qkv_t[0].shape == (model.d_model, 3 * model.d_model)
            assert "decode_weight_t" not in block.ffn.w1.__dict__  # fused with w3 instead
            assert torch.allclose(block.ffn(x), expected[0], atol=1e-5)
    assert "decode_qkv_t" not in block.self_attn.__dict__ and "decode_w13_t" not in block.ffn.__dict__


def test_nested_or_concurrent_generations_share_one_layout_until_the_last_ends():
    model = _model()
    linear = model.transformer[0].self_attn.out_proj
    with transposed_weights(model):
        copy = linear.decode_weight_t
        with transposed_weights(model):
            assert linear.decode_weight_t is copy
        assert linear.decode_weight_t is copy  # the outer generation still decodes with it
    assert "decode_weight_t" not in linear.__dict__ and "_decode_layout" not in model.__dict__


def test_the_shared_lookback_is_decoded_once_per_series_and_gives_the_full_decode():
    torch.manual_seed(2)
    tokenizer = KronosTokenizer.from_config(TINY.tokenizer).eval()
    group, prefix, total = 4, 20, 26
    s1_vocab, s2_vocab = 2 ** tokenizer.s1_bits, 2 ** tokenizer.s2_bits
    shared = [torch.randint(s1_vocab, (3, prefix)), torch.randint(s2_vocab, (3, prefix))]
    ids = [torch.cat([part.repeat_interleave(group, dim=0), torch.randint(vocab, (3 * group, total - prefix))], dim=1)
           for part, vocab in zip(shared, (s1_vocab, s2_vocab))]
    padding = torch.zeros(3 * group, total, dtype=torch.bool)
    padding[:group, :5] = True  # the first series is left-padded
    with torch.no_grad():
        for pad in (None, padding):
            full = tokenizer.decode(ids, padding_mask=pad)[:, prefix:]
            once = tokenizer.decode_after_shared_prefix(ids, prefix, group, padding_mask=pad)
            assert once.shape == full.shape
            assert torch.allclose(once, full, atol=1e-5, rtol=1e-4)


def test_sample_paths_sharing_their_lookback_match_a_single_path_when_greedy():
    """K greedy paths of a series (the lookback fed and decoded once, then copied) equal its one path."""
    model = _model()
    torch.manual_seed(3)
    tokenizer = KronosTokenizer.from_config(TINY.tokenizer).eval()
    x = torch.randn(3, 24, 6)
    stamps = torch.rand(3, 30, 5)
    one = generate(model, tokenizer, x, stamps[:, :24], stamps[:, 24:], 6, top_k=1)
    many = generate(model, tokenizer, x, stamps[:, :24], stamps[:, 24:], 6, top_k=1, samples=5)
    assert many.shape == (3, 5, 6, 6)
    assert torch.allclose(many, one.expand(-1, 5, -1, -1), atol=1e-5, rtol=1e-4)
