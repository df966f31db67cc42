"""Kronos: an autoregressive transformer over hierarchical (s1, s2) bar tokens.

Each position embeds its bar's two tokens plus calendar features (and, optionally, an
extra embedding such as an event vector), runs a stack of causal blocks, and predicts
the next bar: s1 from the context, then s2 from the context conditioned on that s1 via
a dependency-aware cross-attention layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kronos_rolling.model import hub
from kronos_rolling.model.config import DEPENDENCY_LAYER_HEADS, KronosConfig
from kronos_rolling.model.layers import (
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    TransformerBlock,
    _merge_heads,
    _split_heads,
    apply_rotary,
    plan_attention,
    project,
)


class HierarchicalEmbedding(nn.Module):
    """fusion_proj([emb_s1(s1), emb_s2(s2)] * sqrt(d_model))."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.emb_s1 = nn.Embedding(2 ** s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2 ** s2_bits, d_model)
        self.fusion_proj = nn.Linear(2 * d_model, d_model)

    def forward(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.d_model)
        return project(self.fusion_proj, torch.cat([self.emb_s1(s1_ids) * scale, self.emb_s2(s2_ids) * scale], dim=-1))


class FixedEmbedding(nn.Module):
    """Frozen sinusoidal table (used when learn_te is false; stored as `emb.weight`)."""

    def __init__(self, size: int, d_model: int):
        super().__init__()
        position = torch.arange(size).float()[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        table = torch.zeros(size, d_model)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq)
        self.emb = nn.Embedding(size, d_model)
        self.emb.weight = nn.Parameter(table, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids).detach()


class TemporalEmbedding(nn.Module):
    """Sum of minute, hour, weekday, day and month embeddings of (B, T, 5) calendar features."""

    SIZES = {"minute_embed": 60, "hour_embed": 24, "weekday_embed": 7, "day_embed": 32, "month_embed": 13}

    def __init__(self, d_model: int, learn_te: bool):
        super().__init__()
        make = nn.Embedding if learn_te else FixedEmbedding
        for name, size in self.SIZES.items():
            setattr(self, name, make(size, d_model))

    def forward(self, stamp: torch.Tensor) -> torch.Tensor:
        stamp = stamp.long()
        minute, hour, weekday, day, month = stamp.unbind(dim=-1)
        # Summation order follows the released implementation (float addition is not associative).
        return (self.hour_embed(hour) + self.weekday_embed(weekday) + self.day_embed(day)
                + self.month_embed(month) + self.minute_embed(minute))


class CrossAttention(nn.Module):
    """Queries from the sibling (s1) embedding, keys/values from the context."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(d_model // n_heads)
        self.resid_dropout = nn.Dropout(0.0)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (_split_heads(project(self.k_proj, context), self.n_heads),
                _split_heads(project(self.v_proj, context), self.n_heads))

    def attend(self, query: torch.Tensor, keys, values, mask=None, is_causal=False, rope=None) -> torch.Tensor:
        return self.attend_projected(project(self.q_proj, query), keys, values, mask, is_causal, rope)

    def attend_projected(self, projected_query: torch.Tensor, keys, values, mask=None, is_causal=False,
                         rope=None) -> torch.Tensor:
        """`attend` with the query already through q_proj."""
        q = _split_heads(projected_query, self.n_heads)
        if rope is not None:
            cos, sin = rope
            q, keys = apply_rotary(q, cos, sin), apply_rotary(keys, cos, sin)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=is_causal)
        return self.resid_dropout(project(self.out_proj, _merge_heads(out)))

    def forward(self, query, key, value=None, key_padding_mask=None, causal: bool | None = None) -> torch.Tensor:
        """Full-sequence cross-attention with the released semantics.

        Query and key positions are rotated by their index when the lengths agree; a single
        query (incremental decoding) is rotated by position 0 together with all keys, i.e.
        not at all. causal=None follows the released model: causal while training, over
        the whole sequence in eval mode.
        """
        causal = self.training if causal is None else causal
        q_len, k_len = query.shape[1], key.shape[1]
        if q_len not in (1, k_len):
            raise ValueError(f"cross-attention needs 1 or {k_len} queries, got {q_len}")
        keys, values = self.keys_values(key)
        rope = None
        if q_len > 1:
            rope = self.rotary.cos_sin(torch.arange(q_len, device=query.device))
        mask = None
        if key_padding_mask is not None:
            valid = ~key_padding_mask.bool()
            mask = valid[:, None, None, :].expand(-1, 1, q_len, -1)
            if causal:
                mask = mask & torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()
            # A padded query with nothing to attend to would give NaN: let it see itself.
            empty = ~mask.any(dim=-1, keepdim=True)
            mask = mask | (empty & torch.eye(q_len, k_len, dtype=torch.bool, device=query.device))
        # A single causal query lines up with key 0 (top-left alignment), as in the released model.
        is_causal = causal and mask is None
        return self.attend(query, keys, values, mask, is_causal, rope)


class DependencyAwareLayer(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.cross_attn = CrossAttention(d_model, DEPENDENCY_LAYER_HEADS)
        self.norm = RMSNorm(d_model)

    def forward(self, hidden_states, sibling_embed, key_padding_mask=None, causal: bool | None = None) -> torch.Tensor:
        attended = self.cross_attn(sibling_embed, hidden_states, hidden_states, key_padding_mask, causal)
        return self.norm(hidden_states + attended)


class DualHead(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.proj_s1 = nn.Linear(d_model, 2 ** s1_bits)
        self.proj_s2 = nn.Linear(d_model, 2 ** s2_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(self.proj_s1, x)

    def cond_forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(self.proj_s2, x)


class Kronos(nn.Module):
    def __init__(self, s1_bits, s2_bits, n_layers, d_model, n_heads, ff_dim, ffn_dropout_p,
                 attn_dropout_p, resid_dropout_p, token_dropout_p, learn_te):
        super().__init__()
        self.config = KronosConfig(
            s1_bits=s1_bits, s2_bits=s2_bits, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
            ff_dim=ff_dim, ffn_dropout_p=ffn_dropout_p, attn_dropout_p=attn_dropout_p,
            resid_dropout_p=resid_dropout_p, token_dropout_p=token_dropout_p, learn_te=learn_te,
        )
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits
        self.d_model = d_model
        self.token_drop = nn.Dropout(token_dropout_p)
        self.embedding = HierarchicalEmbedding(s1_bits, s2_bits, d_model)
        self.time_emb = TemporalEmbedding(d_model, learn_te)
        self.transformer = nn.ModuleList(
            TransformerBlock(d_model, n_heads, ff_dim, ffn_dropout_p, attn_dropout_p, resid_dropout_p)
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model)
        self.dep_layer = DependencyAwareLayer(d_model)
        self.head = DualHead(s1_bits, s2_bits, d_model)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.requires_grad:
            nn.init.normal_(module.weight, mean=0.0, std=self.d_model ** -0.5)

    # -- hub format -------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: KronosConfig) -> "Kronos":
        return cls(**config.to_dict())

    @classmethod
    def from_pretrained(cls, id_or_dir: str | Path, revision: str | None = None) -> "Kronos":
        return hub.load_pretrained(cls, KronosConfig, id_or_dir, revision, what="predictor")

    def save_pretrained(self, directory: str | Path) -> Path:
        return hub.save_pretrained(self, self.config.to_dict(), directory)

    # -- forward ----------------------------------------------------------------------

    def embed(self, s1_ids, s2_ids, stamp=None, extra_embedding=None) -> torch.Tensor:
        x = self.embedding(s1_ids, s2_ids)
        if stamp is not None:
            x = x + self.time_emb(stamp)
        if extra_embedding is not None:
            x = x + extra_embedding.to(x.dtype)
        return self.token_drop(x)

    def context(self, s1_ids, s2_ids, stamp=None, padding_mask=None, extra_embedding=None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Normalised hidden states (B, T, d_model) of the transformer stack.

        With a cache, the T positions continue the cached ones; their keys/values, and the
        dependency layer's keys/values, are stored for the next call.
        """
        x = self.embed(s1_ids, s2_ids, stamp, extra_embedding)
        # One rotary table for all blocks: every block's inv_freq holds the same values.
        rotary = self.transformer[0].self_attn.rotary
        past_valid = cache.valid if cache is not None and cache.length else None
        plan = plan_attention(rotary, x.shape[1], padding_mask, past_valid=past_valid,
                              past_all_valid=cache.all_valid if past_valid is not None else None)
        for index, block in enumerate(self.transformer):
            x = block(x, plan, cache, f"block{index}")
        x = self.norm(x)
        if cache is not None:
            cache.write("dep", *self.dep_layer.cross_attn.keys_values(x))
            new_valid = None if padding_mask is None else ~padding_mask.to(x.device).bool()
            cache.advance(x.shape[1], x.shape[0], x.device, new_valid)
        return x

    def forward(self, s1_ids, s2_ids, stamp=None, padding_mask=None, use_teacher_forcing=False,
                s1_targets=None, extra_embedding=None, causal_s2: bool | None = None):
        """(s1_logits, s2_logits), each (B, T, vocab), predicting the next bar's tokens.

        stamp: (B, T, 5) minute, hour, weekday, day, month. padding_mask: (B, T), True at
        padded positions (left padding; excluded from attention). extra_embedding:
        (B, T, d_model) added to the token + time embedding (None: the base model).
        s2 is conditioned on s1_targets with teacher forcing, else on an s1 sampled from
        the s1 logits.

        causal_s2: whether the s2 cross-attention is causal. None keeps the released
        behaviour: causal in train mode, but over all positions in eval mode, where the s2
        logits at position t then see the inputs after t (the next bar's true tokens
        included). Pass causal_s2=True for validation losses in eval mode; generation is
        unaffected (its single query is the last position).
        """
        x = self.context(s1_ids, s2_ids, stamp, padding_mask, extra_embedding)
        s1_logits = self.head(x)
        if use_teacher_forcing:
            sibling_ids = s1_targets
        else:
            probs = F.softmax(s1_logits.detach().float(), dim=-1)
            sibling_ids = torch.multinomial(probs.view(-1, probs.shape[-1]), 1).view(s1_ids.shape)
        x2 = self.dep_layer(x, self.embedding.emb_s1(sibling_ids), key_padding_mask=padding_mask, causal=causal_s2)
        return s1_logits, self.head.cond_forward(x2)

    def decode_s1(self, s1_ids, s2_ids, stamp=None, padding_mask=None, extra_embedding=None):
        """(s1_logits, context) over a whole window."""
        x = self.context(s1_ids, s2_ids, stamp, padding_mask, extra_embedding)
        return self.head(x), x

    def decode_s2(self, context, s1_ids, padding_mask=None):
        """s2 logits for every position of `context`, conditioned on s1_ids ((B, T) or (B, 1))."""
        x2 = self.dep_layer(context, self.embedding.emb_s1(s1_ids), key_padding_mask=padding_mask)
        return self.head.cond_forward(x2)

    def s2_query_table(self) -> torch.Tensor:
        """(2**s1_bits, d_model): the dependency layer's projected query of every s1 token.

        The s2 head's query depends on the sampled s1 token alone, so a generation computes
        q_proj(emb_s1(token)) for the whole vocabulary once and each step picks a row (one
        lookup instead of an embedding, a d x d product and a bias add per step).
        """
        return self.dep_layer.cross_attn.q_proj(self.embedding.emb_s1.weight)

    def next_s2_logits(self, s1_ids: torch.Tensor, last_context: torch.Tensor, cache: KVCache,
                       query_table: torch.Tensor | None = None) -> torch.Tensor:
        """s2 logits of the next bar given its sampled s1 (B,), from the cached context.

        Same as decode_s2(context, s1[:, None])[:, -1]: one unrotated query over the
        dependency keys of the whole window. query_table: `s2_query_table()`, computed once
        per generation (None: project the query here).
        """
        keys, values = cache.read("dep")
        mask = None if cache.all_valid else cache.valid[:, None, None, :]
        if query_table is None:
            projected = self.dep_layer.cross_attn.q_proj(self.embedding.emb_s1(s1_ids)[:, None])
        else:
            projected = query_table[s1_ids][:, None]
        attended = self.dep_layer.cross_attn.attend_projected(projected, keys, values, mask)
        x2 = self.dep_layer.norm(last_context[:, None] + attended)
        return self.head.cond_forward(x2)[:, 0]


def token_loss(s1_logits, s2_logits, s1_targets, s2_targets, padding_mask=None) -> torch.Tensor:
    """Mean of the s1 and s2 cross-entropies over non-padded positions (padding_mask True = padded)."""
    if padding_mask is not None:
        keep = ~padding_mask.bool()
        s1_logits, s2_logits = s1_logits[keep], s2_logits[keep]
        s1_targets, s2_targets = s1_targets[keep], s2_targets[keep]
    ce_s1 = F.cross_entropy(s1_logits.reshape(-1, s1_logits.shape[-1]).float(), s1_targets.reshape(-1))
    ce_s2 = F.cross_entropy(s2_logits.reshape(-1, s2_logits.shape[-1]).float(), s2_targets.reshape(-1))
    return (ce_s1 + ce_s2) / 2
