"""Transformer building blocks shared by the Kronos tokenizer and predictor.

Attribute names (`self_attn.q_proj`, `ffn.w1`, `rotary.inv_freq`, ...) are those of the
released checkpoints: they are the state-dict keys and the names peft targets.

Attention is causal with rotary positions (RoPE). Positions are explicit so that a
left-padded row, or a row continued from a key/value cache, sees exactly the positions
it would see alone: its first real bar is position 0.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def project(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """linear(x), through the weight's transposed copy when a decode has laid one out.

    On CPU a single row times a row-major (out, in) weight (what nn.Linear computes) runs
    at about half the memory bandwidth that the same product reaches on the contiguous
    (in, out) transpose (measured in docs/benchmarks.md). `transposed_weights` lays the
    copies out for the length of a generation; elsewhere, and for layers wrapped by LoRA,
    this is linear(x).
    """
    weight_t = linear.__dict__.get("decode_weight_t") if type(linear) is nn.Linear else None
    if weight_t is None:
        return linear(x)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.mm(rows, weight_t) if linear.bias is None else torch.addmm(linear.bias, rows, weight_t)
    return out.view(*x.shape[:-1], weight_t.shape[1])


def _fused_product(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    out = torch.mm(rows, weight_t) if bias is None else torch.addmm(bias, rows, weight_t)
    return out.view(*x.shape[:-1], weight_t.shape[1])


def _fused_t(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The transposed weights of linears that read the same input, side by side, and their biases."""
    weight_t = torch.cat([linear.weight.detach().t() for linear in linears], dim=1).contiguous()
    if all(linear.bias is None for linear in linears):
        return weight_t, None
    return weight_t, torch.cat([linear.bias.detach() for linear in linears])


_LAYOUT_LOCK = threading.Lock()  # guards the layout's user count when threads share a model (the service)


def _lay_out(model: nn.Module) -> list[tuple[nn.Module, str]]:
    laid_out: list[tuple[nn.Module, str]] = []

    def lay(module: nn.Module, name: str, value) -> None:
        setattr(module, name, value)
        laid_out.append((module, name))

    with torch.no_grad():
        fused: set[int] = set()
        for module in model.modules():
            if isinstance(module, MultiHeadAttention):
                parts = (module.q_proj, module.k_proj, module.v_proj)
                if all(type(p) is nn.Linear and p.bias is not None for p in parts):
                    lay(module, "decode_qkv_t", _fused_t(*parts))
                    fused.update(id(p) for p in parts)
            elif isinstance(module, FeedForward):
                parts = (module.w1, module.w3)
                if all(type(p) is nn.Linear for p in parts):
                    lay(module, "decode_w13_t", _fused_t(*parts))
                    fused.update(id(p) for p in parts)
        for name, module in model.named_modules():
            # A LoRA layer's base_layer is never called through `project`: no copy for it.
            if type(module) is nn.Linear and id(module) not in fused and not name.endswith("base_layer"):
                lay(module, "decode_weight_t", module.weight.detach().t().contiguous())
    return laid_out


@contextlib.contextmanager
def transposed_weights(model: nn.Module):
    """Within the block, every plain nn.Linear of `model` also holds its weight transposed
    and contiguous (`decode_weight_t`, used by `project`): one extra copy of those weights.

    Products that read the same input are laid side by side instead, one call for all:
    an attention's query, key and value (`decode_qkv_t`) and a feed-forward's w1 and w3
    (`decode_w13_t`), when none of them is wrapped by LoRA. Generations running at once
    on one model (threads of the service) share one layout, removed when the last ends;
    the weights must not change while one runs.
    """
    with _LAYOUT_LOCK:
        layout = model.__dict__.get("_decode_layout")
        if layout is None:
            layout = model.__dict__["_decode_layout"] = {"users": 0, "laid_out": _lay_out(model)}
        layout["users"] += 1
    try:
        yield
    finally:
        with _LAYOUT_LOCK:
            layout["users"] -= 1
            if layout["users"] == 0:
                for module, name in layout["laid_out"]:
                    module.__dict__.pop(name, None)
                model.__dict__.pop("_decode_layout", None)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the input precision, as the released models do.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ff_dim: int, ffn_dropout_p: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.ffn_dropout = nn.Dropout(ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.__dict__.get("decode_w13_t")  # laid out by `transposed_weights` while decoding
        if fused is not None:
            gate, up = _fused_product(x, *fused).chunk(2, dim=-1)
            return self.ffn_dropout(project(self.w2, F.silu(gate) * up))
        return self.ffn_dropout(project(self.w2, F.silu(project(self.w1, x)) * project(self.w3, x)))


class RotaryEmbedding(nn.Module):
    """Holds the RoPE frequencies; `inv_freq` is a persistent buffer in the checkpoints."""

    def __init__(self, head_dim: int):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # cos/sin of positions 0..n-1

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for integer positions of shape (T,) or (B, T), shaped to broadcast over heads."""
        angles = positions.to(self.inv_freq.dtype).unsqueeze(-1) * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if positions.dim() == 1:
            return cos[None, None], sin[None, None]  # (1, 1, T, hd)
        return cos[:, None], sin[:, None]  # (B, 1, T, hd)

    def cos_sin_range(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos_sin(arange(start, start + length)) as views of a table computed once.

        The values are those of `cos_sin` (element-wise, so bit-identical); a decode step
        slices the table instead of computing and allocating its angles again.
        """
        end = start + length
        table = self._table
        if table is None or table[0].shape[2] < end or table[0].device != self.inv_freq.device \
                or table[0].dtype != self.inv_freq.dtype:
            table = self.cos_sin(torch.arange(max(end, 2 * length, 64), device=self.inv_freq.device))
            self._table = table
        return table[0][:, :, start:end], table[1][:, :, start:end]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


@dataclass
class AttentionPlan:
    """How a forward pass attends: rotary positions and the mask, built once per pass.

    `mask` is a boolean (B, 1, T, S) "may attend" tensor, or None; `is_causal` asks
    scaled_dot_product_attention for its own causal mask (only valid when T == S).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    is_causal: bool


def plan_attention(
    rotary: RotaryEmbedding,
    length: int,
    padding_mask: torch.Tensor | None = None,
    *,
    past_valid: torch.Tensor | None = None,
    past_all_valid: bool | None = None,
) -> AttentionPlan:
    """Positions and mask for `length` new positions after `past_valid` cached ones.

    padding_mask: (B, length), True where the new position is padding. past_valid: (B, P)
    bool, which cached keys are real bars (None: no cache). Each real position's rotary
    index is the number of real positions before it in its row, so padding never shifts
    a row's positions. Padding queries attend to themselves only (they are discarded but
    must not produce NaN). past_all_valid: whether every cached key is a real bar, when the
    caller knows it (a KV cache does): saves checking `past_valid` on every decode step.
    """
    device = rotary.inv_freq.device
    past = 0 if past_valid is None else past_valid.shape[1]
    if past_all_valid is None:
        past_all_valid = past_valid is None or bool(past_valid.all())
    if padding_mask is None and past_all_valid:
        cos, sin = rotary.cos_sin_range(past, length)
        if past == 0:
            return AttentionPlan(cos, sin, None, is_causal=length > 1)
        if length == 1:
            return AttentionPlan(cos, sin, None, is_causal=False)
        query_at = torch.arange(past, past + length, device=device)[:, None]
        key_at = torch.arange(past + length, device=device)[None, :]
        return AttentionPlan(cos, sin, (key_at <= query_at)[None, None], is_causal=False)

    batch = (padding_mask if padding_mask is not None else past_valid).shape[0]
    new_valid = (
        torch.ones(batch, length, dtype=torch.bool, device=device)
        if padding_mask is None
        else ~padding_mask.to(device=device, dtype=torch.bool)
    )
    key_valid = new_valid if past_valid is None else torch.cat([past_valid.to(device), new_valid], dim=1)
    real_before = key_valid.long().cumsum(dim=1) - 1  # rotary index of each real position
    positions = real_before[:, past:].clamp(min=0)
    cos, sin = rotary.cos_sin(positions)
    query_col = torch.arange(past, past + length, device=device)[:, None]
    key_col = torch.arange(past + length, device=device)[None, :]
    causal = key_col <= query_col  # (T, S)
    mask = (causal[None] & key_valid[:, None, :]) | (key_col == query_col)[None]
    return AttentionPlan(cos, sin, mask[:, None], is_causal=False)


Groups = "int | torch.Tensor"
"""Rows in groups of identical copies: every group of this size (int), or a (groups,) tensor of sizes."""


def first_rows(groups: Groups) -> "slice | torch.Tensor":
    """The first row of every group (what is fed once for the whole group)."""
    if isinstance(groups, int):
        return slice(None, None, groups)
    return torch.cumsum(groups, dim=0) - groups


class KVCache:
    """Keys and values of past positions for every attention layer of one model.

    Buffers are allocated on first use for `capacity` positions and filled in place, so
    a decode step allocates no cache memory. `valid` records which cached positions are
    real bars (False for left padding); `all_valid` says whether all of them are.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.all_valid = True
        self._valid: torch.Tensor | None = None
        self._buffers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def valid(self) -> torch.Tensor | None:
        return None if self._valid is None or self.length == 0 else self._valid[:, : self.length]

    def reset(self) -> None:
        self.length = 0
        if not self.all_valid and self._valid is not None:
            self._valid.fill_(True)
        self.all_valid = True

    def write(self, name: str, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, T, hd) keys/values after the cached ones; return all keys/values so far."""
        end = self.length + keys.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        buffers = self._buffers.get(name)
        if buffers is None or buffers[0].shape[:2] != keys.shape[:2] or buffers[0].dtype != keys.dtype:
            shape = (*keys.shape[:2], self.capacity, keys.shape[3])
            buffers = (keys.new_empty(shape), values.new_empty(shape))
            self._buffers[name] = buffers
        key_buf, value_buf = buffers
        key_buf[:, :, self.length:end] = keys
        value_buf[:, :, self.length:end] = values
        return key_buf[:, :, :end], value_buf[:, :, :end]

    def repeat_rows(self, factor: Groups) -> None:
        """Give every row `factor` copies (row b becomes rows b*factor .. b*factor + factor - 1),
        or with a (rows,) tensor, factor[b] copies of row b: the sample paths of one series
        continue from a single pass over their shared lookback."""
        if isinstance(factor, int) and factor == 1:
            return
        def repeated(buffer: torch.Tensor) -> torch.Tensor:  # only the written positions are copied
            if not isinstance(factor, int):
                out = buffer.new_empty((int(factor.sum()), *buffer.shape[1:]))
                out[:, :, : self.length] = buffer[:, :, : self.length].repeat_interleave(factor, dim=0)
                return out
            out = buffer.new_empty((buffer.shape[0] * factor, *buffer.shape[1:]))
            out.view(buffer.shape[0], factor, *buffer.shape[1:])[:, :, :, : self.length] = \
                buffer[:, None, :, : self.length]
            return out

        self._buffers = {name: (repeated(keys), repeated(values)) for name, (keys, values) in self._buffers.items()}
        if self._valid is not None:
            self._valid = self._valid.repeat_interleave(factor, dim=0)

    def read(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        key_buf, value_buf = self._buffers[name]
        return key_buf[:, :, : self.length], value_buf[:, :, : self.length]

    def advance(self, count: int, batch: int, device: torch.device, new_valid: torch.Tensor | None = None) -> None:
        """Mark `count` more positions of `batch` rows as written (call once per forward).

        new_valid: (batch, count) bool, which of them are real bars; None: all of them.
        """
        end = self.length + count
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        if self._valid is None or self._valid.shape[0] != batch or self._valid.device != torch.device(device):
            self._valid = torch.ones(batch, self.capacity, dtype=torch.bool, device=device)
        if new_valid is None:
            if not self.all_valid:  # earlier rows may have left False here; all-valid buffers stay True
                self._valid[:, self.length:end] = True
        else:
            self._valid[:, self.length:end] = new_valid
            self.all_valid = self.all_valid and bool(new_valid.all())
        self.length = end


def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, n_heads, width // n_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


class MultiHeadAttention(nn.Module):
    """Causal self-attention with RoPE on queries and keys."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(d_model // n_heads)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def forward(self, x: torch.Tensor, plan: AttentionPlan, cache: KVCache | None = None, cache_name: str = "") -> torch.Tensor:
        fused = self.__dict__.get("decode_qkv_t")  # laid out by `transposed_weights` while decoding
        if fused is not None:
            q, k, v = _fused_product(x, *fused).chunk(3, dim=-1)
        else:
            q, k, v = project(self.q_proj, x), project(self.k_proj, x), project(self.v_proj, x)
        q = apply_rotary(_split_heads(q, self.n_heads), plan.cos, plan.sin)
        k = apply_rotary(_split_heads(k, self.n_heads), plan.cos, plan.sin)
        v = _split_heads(v, self.n_heads)
        if cache is not None:
            k, v = cache.write(cache_name, k, v)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=plan.mask,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
            is_causal=plan.is_causal,
        )
        return self.resid_dropout(project(self.out_proj, _merge_heads(out)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1 x), then + ffn(norm2 x)."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, ffn_dropout_p: float = 0.0,
                 attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, attn_dropout_p, resid_dropout_p)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim, ffn_dropout_p)

    def forward(self, x: torch.Tensor, plan: AttentionPlan, cache: KVCache | None = None, cache_name: str = "") -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), plan, cache, cache_name)
        return x + self.ffn(self.norm2(x))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run a stack of causal blocks over a whole sequence (no cache)."""
    if len(blocks) == 0:
        return x
    plan = plan_attention(blocks[0].self_attn.rotary, x.shape[1], padding_mask)
    for block in blocks:
        x = block(x, plan)
    return x
