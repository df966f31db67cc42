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
each row computes what it would compute alone. They may also mix series with different
numbers of sample paths (`samples` per series: a row per path), paths drawn from their
own seeded generators (`RowSeeds`: several requests decoded together each draw as they
would alone) and per-series extra embeddings (the event vectors of different adapters).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence, Union

import torch

from kronos_rolling.data.features import (
    CLIP,
)
from kronos_rolling.errors import ConfigError, DataError, ModelError
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.config import MAX_TEMPERATURE, MAX_TOP_K, MIN_TEMPERATURE
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.layers import Groups, KVCache, first_rows, transposed_weights
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




def check_sampling(temperature: float, top_k: int, top_p: float, samples: int | Sequence[int]) -> None:
    """ConfigError naming the setting when a value lies outside what can be sampled."""
    if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:  # NaN fails both comparisons
        raise ConfigError(f"temperature must be between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, got "
                          f"{temperature!r}; use top_k 1 for a greedy forecast")
    if not 0 <= top_k <= MAX_TOP_K:
        raise ConfigError(f"top_k must be between 0 (off) and {MAX_TOP_K}, got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")
    counts = [samples] if isinstance(samples, int) else list(samples)
    if not counts or min(counts) < 1:
        raise ConfigError(f"samples must be >= 1 per series, got {samples}")


@dataclass(frozen=True)
class RowSeeds:
    """Consecutive rows drawn from their own generator: `spans` holds (rows, seed) in row order
    (seed None: torch's global RNG). Requests decoded in one batch each keep the draws they
    would get alone: one generator per request over its own rows."""

    spans: tuple[tuple[int, int | None], ...]

    @property
    def rows(self) -> int:
        return sum(rows for rows, _ in self.spans)


Seeding = Union[int, torch.Generator, RowSeeds, None]


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator=None) -> torch.Tensor:
    """Sample one id per row of (N, V) logits, filtering as the released predictor does.

    top_k > 0 keeps the k largest logits (and ignores top_p); otherwise top_p < 1 keeps
    the smallest set of most likely tokens whose probability reaches top_p. top_k == 1
    is greedy: the argmax, deterministic and consuming no randomness. generator: a
    torch.Generator, None (torch's global RNG), or a list of (start, stop, generator)
    row spans, each drawn with its own.
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float()
    # Shifted so the largest is 0 before dividing: every value is <= 0, so a small
    # temperature sends the others to -inf (probability 0), never to +inf (NaN).
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
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
    probabilities = logits.softmax(dim=-1)
    if not isinstance(generator, list):
        return torch.multinomial(probabilities, 1, generator=generator)[:, 0]
    drawn = torch.empty(probabilities.shape[0], dtype=torch.long, device=probabilities.device)
    for start, stop, own in generator:
        drawn[start:stop] = torch.multinomial(probabilities[start:stop], 1, generator=own)[:, 0]
    return drawn


def _make_generator(seeding: Seeding, device: torch.device, rows: int):
    """A generator for all rows (from an int seed), as given, or per-span generators for RowSeeds."""
    if seeding is None or isinstance(seeding, torch.Generator):
        return seeding
    if isinstance(seeding, RowSeeds):
        if seeding.rows != rows:
            raise DataError(f"RowSeeds covers {seeding.rows} rows, the batch has {rows}")
        spans, start = [], 0
        for count, seed in seeding.spans:
            spans.append((start, start + count, _make_generator(seed, device, count)))
            start += count
        return spans
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seeding))
    return generator


def unwrap(model) -> Kronos:
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
def eval_mode(*modules):
    """Run a block with `modules` in eval mode, then put back each one's own mode."""
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
    generator: torch.Generator | list | None = None  # a list: (start, stop, generator) row spans


def decode_step(kronos: Kronos, sequences: TokenSequences, window: slice, cache: KVCache,
                query_table: torch.Tensor, sampling: Sampling, shared_rows: Groups = 1) -> None:
    """Feed the bars in `window` (continuing what `cache` holds), sample the next bar's s1
    then s2, and write them at position `window.stop`. query_table: `kronos.s2_query_table()`.

    shared_rows: rows come in groups of identical copies (a series' sample paths before
    they diverge), all of this size or of the sizes a tensor gives; the window is fed once
    per group and the cache copied to each row.
    """
    seq = sequences
    rows = first_rows(shared_rows)
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
             top_p: float = 0.9, samples: int | Sequence[int] = 1, generator: Seeding = None,
             max_context: int = 512, event_ids: torch.Tensor | None = None,
             event_embedding: EventEmbedding | None = None, extra_embedding: torch.Tensor | None = None,
             lengths: Sequence[int] | torch.Tensor | None = None, clip: float = CLIP,
             use_cache: bool = True, autocast_dtype: torch.dtype | None = None,
             step_threads: int | None = 1) -> torch.Tensor | list[torch.Tensor]:
    """Sample forecasts: (B, samples, pred_len, d_in) normalised bars; with `samples` a
    list (paths per series), a list of B (paths_b, pred_len, d_in) tensors.

    x_norm (B, L, 6) normalised lookback; x_stamp (B, L, 5) and y_stamp (B, pred_len, 5)
    calendar features of the lookback and the horizon. lengths: real bars per row when
    rows are left-padded to L (None: all L). generator: a torch.Generator or an int seed
    (None: torch's global RNG), or RowSeeds (a seed per span of rows; rows are the paths,
    series after series). event_ids: (B, L + pred_len) event ids for `event_embedding`;
    or extra_embedding: the (B, L + pred_len, d_model) vectors themselves (zeros where a
    series has none), for series whose event embeddings differ. use_cache=False
    recomputes the window at every step (reference behaviour, for checks).
    autocast_dtype: run under CUDA autocast in this precision. step_threads: CPU threads
    for the cached single-bar steps (None: torch's setting); window passes always use
    torch's setting.
    """
    kronos = unwrap(model)
    check_pair(kronos, tokenizer)
    check_sampling(temperature, top_k, top_p, samples)
    batch, lookback, _ = x_norm.shape
    uniform = isinstance(samples, int)
    if not uniform and len(samples) != batch:
        raise DataError(f"samples lists {len(samples)} path counts for {batch} series; give one per series")
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
    if event_ids is not None and extra_embedding is not None:
        raise ConfigError("pass event_ids with event_embedding, or extra_embedding, not both")
    if event_ids is not None and tuple(event_ids.shape) != (batch, lookback + pred_len):
        raise DataError(f"event_ids must have shape {(batch, lookback + pred_len)}, got {tuple(event_ids.shape)}")
    if extra_embedding is not None and tuple(extra_embedding.shape) != (batch, lookback + pred_len, kronos.d_model):
        raise DataError(f"extra_embedding must have shape {(batch, lookback + pred_len, kronos.d_model)}, "
                        f"got {tuple(extra_embedding.shape)}")

    device = next(kronos.parameters()).device
    out_device = x_norm.device
    # Sample paths are rows, series after series: series b's paths follow those of series b - 1.
    paths: Groups = samples if uniform else torch.as_tensor(list(samples), dtype=torch.long, device=device)
    rows = batch * samples if uniform else int(paths.sum())
    generator = _make_generator(generator, device, rows)
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
    with eval_mode(kronos, tokenizer), autocast, layout:
        x = x_norm.to(device=device, dtype=torch.float32).clamp(-clip, clip)
        s1_lookback, s2_lookback = tokenizer.encode(x, half=True, padding_mask=padding)

        s1 = torch.zeros(rows, total, dtype=torch.long, device=device)
        s2 = torch.zeros_like(s1)
        s1[:, :lookback] = s1_lookback.repeat_interleave(paths, dim=0)
        s2[:, :lookback] = s2_lookback.repeat_interleave(paths, dim=0)
        stamps = torch.cat([x_stamp, y_stamp], dim=1).to(device=device, dtype=torch.float32)
        stamps = stamps.repeat_interleave(paths, dim=0)
        pad_mask = None
        if padding is not None:
            pad_mask = torch.zeros(rows, total, dtype=torch.bool, device=device)
            pad_mask[:, :lookback] = padding.repeat_interleave(paths, dim=0)
            stamps = stamps.masked_fill(pad_mask[..., None], 0.0)
        extra = None
        if event_embedding is not None:
            ids = event_ids.to(device).long()
            if padding is not None:
                ids = ids.masked_fill(padding_in_total(padding, pred_len), 0)
            extra = event_embedding.to(device)(ids).repeat_interleave(paths, dim=0)
        elif extra_embedding is not None:
            extra = extra_embedding.to(device=device, dtype=torch.float32)
            if padding is not None:
                extra = extra.masked_fill(padding_in_total(padding, pred_len)[..., None], 0.0)
            extra = extra.repeat_interleave(paths, dim=0)

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
            shared = paths if step == 0 else 1
            with _intra_op_threads(step_threads if single_bar else None, device):
                decode_step(kronos, sequences, window, cache, query_table, sampling, shared)

        start = max(0, total - max_context)
        ids, window_pad = [s1[:, start:], s2[:, start:]], None if pad_mask is None else pad_mask[:, start:]
        if rows > batch:  # a series' paths share the lookback's tokens: the causal decoder reads them once
            decoded = tokenizer.decode_after_shared_prefix(ids, lookback - start, paths, half=True,
                                                           padding_mask=window_pad)
        else:
            decoded = tokenizer.decode(ids, half=True, padding_mask=window_pad)
    forecast = decoded[:, -pred_len:].float().to(out_device)
    if uniform:
        return forecast.reshape(batch, samples, pred_len, -1)
    return list(forecast.split(paths.tolist()))


def padding_in_total(padding: torch.Tensor, pred_len: int) -> torch.Tensor:
    """The (B, L) left-padding mask of a lookback, extended over the horizon (never padded)."""
    return torch.cat([padding, padding.new_zeros(padding.shape[0], pred_len)], dim=1)
