"""Tensor-level forecasting with a KV cache: sample token paths from normalised bars.

Semantics are those of the released Kronos predictor:
1. tokenise the clipped, normalised lookback (all of it);
2. for each future bar, take the last `max_context` tokens (rotary positions starting
   at 0 at the window's start), sample s1 from the last position's s1 logits and s2
   from the s2 logits conditioned on that s1;
3. decode the last min(total, max_context) tokens through the tokenizer and keep the
   horizon; average the sample paths.

While lookback + generated bars fit in `max_context`, each step feeds only the newest
bar and reuses cached keys/values (same tokens as recomputing the window). Once the
window slides, every position's rotary index and every hidden state changes, so each
step recomputes the window, exactly as the reference does.

Batches may mix series of different lengths: rows are left-padded and masked so that
each row computes what it would compute alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

from kronos_rolling.data.features import (
    CLIP,
)
from kronos_rolling.errors import ConfigError, DataError, ModelError
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.layers import KVCache, transposed_weights
from kronos_rolling.model.tokenizer import KronosTokenizer


def check_pair(model: Kronos, tokenizer: KronosTokenizer) -> None:
    """The tokenizer must produce the token vocabularies the predictor was trained on."""
    if (model.s1_bits, model.s2_bits) != (tokenizer.s1_bits, tokenizer.s2_bits):
        raise ModelError(
            f"tokenizer and predictor do not fit: tokenizer makes s1/s2 tokens of "
            f"{tokenizer.s1_bits}/{tokenizer.s2_bits} bits, predictor expects {model.s1_bits}/{model.s2_bits}; "
            f"use the tokenizer the predictor was trained with (e.g. Kronos-Tokenizer-base for "
            f"Kronos-small/base, Kronos-Tokenizer-2k for Kronos-mini)"
        )


def check_sampling(temperature: float, top_k: int, top_p: float, samples: int) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}; use --top-k 1 for a greedy forecast")
    if top_k < 0:
        raise ConfigError(f"top-k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top-p must be in (0, 1], got {top_p}")
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one id per row of (N, V) logits, filtering as the released predictor does.

    top_k > 0 keeps the k largest logits (and ignores top_p); otherwise top_p < 1 keeps
    the smallest set of most likely tokens whose probability reaches top_p. top_k == 1
    is greedy: the argmax, deterministic and consuming no randomness.
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative > top_p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # keep the token that crosses top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


def _make_generator(seed_or_generator, device: torch.device) -> torch.Generator | None:
    if seed_or_generator is None or isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed_or_generator))
    return generator


def _unwrap(model) -> Kronos:
    """The Kronos inside a peft wrapper (LoRA layers are injected in place, so they stay active)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, Kronos):
        raise ModelError(f"expected a Kronos predictor (or a peft model around one), got {type(base).__name__}")
    return base


@contextlib.contextmanager
def _intra_op_threads(count: int | None, device: torch.device):
    """Run a block with `count` CPU intra-op threads (None or a GPU device: unchanged).

    Why: a single-bar step is ~100 tiny operations; with several threads each one ends in
    a barrier, and when another process holds a core the spin-waiting threads make a step
    5-10x slower. One thread loses little on an idle machine (the step is memory-bound).
    """
    if count is None or device.type != "cpu" or count == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _eval_mode(*modules):
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)


@dataclass
class TokenSequences:
    """Token rows being generated: (R, total) s1/s2 ids, (R, total, 5) stamps, optional
    (R, total) padding mask and (R, total, d_model) extra embedding."""

    s1: torch.Tensor
    s2: torch.Tensor
    stamps: torch.Tensor
    pad_mask: torch.Tensor | None = None
    extra: torch.Tensor | None = None


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None


def decode_step(kronos: Kronos, sequences: TokenSequences, window: slice, cache: KVCache,
                query_table: torch.Tensor, sampling: Sampling, shared_rows: int = 1) -> None:
    """Feed the bars in `window` (continuing what `cache` holds), sample the next bar's s1
    then s2, and write them at position `window.stop`. query_table: `kronos.s2_query_table()`.

    shared_rows: rows come in groups of this many identical copies (a series' sample paths
    before they diverge); the window is fed once per group and the cache copied to each row.
    """
    seq = sequences
    rows = slice(None, None, shared_rows)
    context = kronos.context(
        seq.s1[rows, window], seq.s2[rows, window], seq.stamps[rows, window],
        padding_mask=None if seq.pad_mask is None else seq.pad_mask[rows, window],
        extra_embedding=None if seq.extra is None else seq.extra[rows, window],
        cache=cache,
    )
    cache.repeat_rows(shared_rows)
    last = context[:, -1].repeat_interleave(shared_rows, dim=0)
    next_s1 = sample_tokens(kronos.head(last), sampling.temperature, sampling.top_k, sampling.top_p,
                            sampling.generator)
    next_s2 = sample_tokens(kronos.next_s2_logits(next_s1, last, cache, query_table), sampling.temperature,
                            sampling.top_k, sampling.top_p, sampling.generator)
    seq.s1[:, window.stop] = next_s1
    seq.s2[:, window.stop] = next_s2


@torch.no_grad()
def generate(model, tokenizer: KronosTokenizer, x_norm: torch.Tensor, x_stamp: torch.Tensor,
             y_stamp: torch.Tensor, pred_len: int, *, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 0.9, samples: int = 1, generator=None, max_context: int = 512,
             event_ids: torch.Tensor | None = None, event_embedding: EventEmbedding | None = None,
             lengths: Sequence[int] | torch.Tensor | None = None, clip: float = CLIP,
             use_cache: bool = True, autocast_dtype: torch.dtype | None = None,
             step_threads: int | None = 1) -> torch.Tensor:
    """Sample forecasts: (B, samples, pred_len, d_in) normalised bars.

    x_norm (B, L, 6) normalised lookback; x_stamp (B, L, 5) and y_stamp (B, pred_len, 5)
    calendar features of the lookback and the horizon. lengths: real bars per row when
    rows are left-padded to L (None: all L). generator: a torch.Generator or an int seed
    (None: torch's global RNG). event_ids: (B, L + pred_len) event ids for
    `event_embedding`. use_cache=False recomputes the window at every step (reference
    behaviour, for checks). autocast_dtype: run under CUDA autocast in this precision.
    step_threads: CPU threads for the cached single-bar steps (None: torch's setting);
    window passes always use torch's setting.
    """
    kronos = _unwrap(model)
    check_pair(kronos, tokenizer)
    check_sampling(temperature, top_k, top_p, samples)
    batch, lookback, _ = x_norm.shape
    if pred_len < 1:
        raise ConfigError(f"pred_len must be >= 1, got {pred_len}")
    if pred_len > max_context:
        raise ConfigError(
            f"horizon of {pred_len} bars exceeds the model's context of {max_context} bars: the final "
            f"decode sees only the last {max_context} tokens; forecast at most {max_context} bars "
            f"(or forecast in several steps)"
        )
    if x_stamp.shape[:2] != (batch, lookback) or y_stamp.shape[:2] != (batch, pred_len):
        raise DataError(
            f"stamps do not match the bars: x_stamp {tuple(x_stamp.shape)} for x {tuple(x_norm.shape)}, "
            f"y_stamp {tuple(y_stamp.shape)} for pred_len {pred_len}"
        )
    if (event_ids is None) != (event_embedding is None):
        raise ConfigError("event_ids and event_embedding go together: pass both or neither")
    if event_ids is not None and tuple(event_ids.shape) != (batch, lookback + pred_len):
        raise DataError(f"event_ids must have shape {(batch, lookback + pred_len)}, got {tuple(event_ids.shape)}")

    device = next(kronos.parameters()).device
    out_device = x_norm.device
    generator = _make_generator(generator, device)
    total = lookback + pred_len

    padding = None
    if lengths is not None:
        lengths_t = torch.as_tensor(lengths, device=device).long()
        if int(lengths_t.min()) < 1 or int(lengths_t.max()) > lookback:
            raise DataError(f"lengths must lie in [1, {lookback}], got {lengths_t.tolist()}")
        if int(lengths_t.min()) < lookback:
            padding = torch.arange(lookback, device=device)[None, :] < (lookback - lengths_t)[:, None]

    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None else contextlib.nullcontext()
    )
    # On CPU the predictor's products read transposed weight copies (`layers.project`).
    layout = transposed_weights(kronos) if device.type == "cpu" else contextlib.nullcontext()
    with _eval_mode(kronos, tokenizer), autocast, layout:
        x = x_norm.to(device=device, dtype=torch.float32).clamp(-clip, clip)
        s1_lookback, s2_lookback = tokenizer.encode(x, half=True, padding_mask=padding)

        # Sample paths are rows: series b's paths are rows b*samples .. b*samples + samples - 1.
        rows = batch * samples
        s1 = torch.zeros(rows, total, dtype=torch.long, device=device)
        s2 = torch.zeros_like(s1)
        s1[:, :lookback] = s1_lookback.repeat_interleave(samples, dim=0)
        s2[:, :lookback] = s2_lookback.repeat_interleave(samples, dim=0)
        stamps = torch.cat([x_stamp, y_stamp], dim=1).to(device=device, dtype=torch.float32)
        stamps = stamps.repeat_interleave(samples, dim=0)
        pad_mask = None
        if padding is not None:
            pad_mask = torch.zeros(rows, total, dtype=torch.bool, device=device)
            pad_mask[:, :lookback] = padding.repeat_interleave(samples, dim=0)
            stamps = stamps.masked_fill(pad_mask[..., None], 0.0)
        extra = None
        if event_embedding is not None:
            ids = event_ids.to(device).long()
            if padding is not None:
                ids = ids.masked_fill(torch.cat([padding, padding.new_zeros(batch, pred_len)], dim=1), 0)
            extra = event_embedding.to(device)(ids).repeat_interleave(samples, dim=0)

        sequences = TokenSequences(s1, s2, stamps, pad_mask, extra)
        sampling = Sampling(temperature, top_k, top_p, generator)
        cache = KVCache(capacity=min(max_context, total))  # never more positions than the window holds
        query_table = kronos.s2_query_table()
        for step in range(pred_len):
            known = lookback + step  # tokens so far; the next bar is position `known`
            start = max(0, known - max_context)
            single_bar = use_cache and step > 0 and known <= max_context
            if single_bar:
                window = slice(known - 1, known)  # only the newest bar; the rest is cached
            else:
                cache.reset()
                window = slice(start, known)
            # Before the first sampled bar, a series' paths are copies of one lookback: fed once.
            shared = samples if step == 0 else 1
            with _intra_op_threads(step_threads if single_bar else None, device):
                decode_step(kronos, sequences, window, cache, query_table, sampling, shared)

        start = max(0, total - max_context)
        ids, window_pad = [s1[:, start:], s2[:, start:]], None if pad_mask is None else pad_mask[:, start:]
        if samples > 1:  # a series' paths share the lookback's tokens: the causal decoder reads them once
            decoded = tokenizer.decode_after_shared_prefix(ids, lookback - start, samples, half=True,
                                                           padding_mask=window_pad)
        else:
            decoded = tokenizer.decode(ids, half=True, padding_mask=window_pad)
    forecast = decoded[:, -pred_len:].float()
    return forecast.reshape(batch, samples, pred_len, -1).to(out_device)
