"""Kronos tokenizer: a causal transformer autoencoder with a binary spherical quantiser (BSQ).

Each bar (6 normalised features) becomes s1_bits + s2_bits signs. The first s1_bits
signs form the coarse token s1, the rest the fine token s2; bit i of a token is the
sign of its i-th channel (least significant first). Decoding turns the signs back into
bars; the coarse half alone also decodes (through `post_quant_embed_pre`), which is what
makes the tokens hierarchical during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kronos_rolling.model import hub
from kronos_rolling.model.config import TokenizerConfig
from kronos_rolling.model.layers import Groups, KVCache, TransformerBlock, first_rows, plan_attention, run_blocks


class BinarySphericalQuantizer(nn.Module):
    """Sign quantisation on the unit sphere plus the BSQ training penalties.

    Penalties (BSQ paper, arXiv 2406.07548): a commitment loss pulling the continuous
    code towards its quantised corner, plus a per-sample entropy (each code confidently
    on one side of every axis) minus a codebook entropy (use all codes).

    As trained in the released tokenizers, both entropies are computed from the
    per-channel sign probabilities sigmoid(-4 z / sqrt(D)): the codebook entropy is the
    sum over channels of the entropy of the batch-average sign probability. (The
    released code builds per-group code distributions for `group_size` too, but then
    overwrites them with the per-channel ones; we reproduce what it computes.)

    `basis` and `group_basis` are unused powers of two kept only because the released
    checkpoints store them (persistent buffers).
    """

    def __init__(self, embed_dim: int, beta: float, gamma0: float, gamma: float, zeta: float, group_size: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.beta = beta
        self.gamma0 = gamma0
        self.gamma = gamma
        self.zeta = zeta
        self.group_size = group_size
        self.register_buffer("basis", 2 ** torch.arange(embed_dim - 1, -1, -1))
        self.register_buffer("group_basis", 2 ** torch.arange(group_size - 1, -1, -1))

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.embed_dim)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Corners of the hypercube scaled onto the unit sphere, with a straight-through gradient."""
        signs = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        return (z + (signs - z).detach()) * self.scale

    def loss(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        commitment = self.beta * ((zq.detach() - z) ** 2).sum(dim=-1).mean()
        p = torch.sigmoid(-4 * z * self.scale)
        sign_probs = torch.stack([p, 1 - p], dim=-1)  # (..., D, 2)
        per_sample_entropy = _entropy(sign_probs).sum(dim=-1).mean()
        average_sign_probs = sign_probs.reshape(-1, self.embed_dim, 2).mean(dim=0)
        codebook_entropy = _entropy(average_sign_probs).sum()
        entropy_penalty = self.gamma0 * per_sample_entropy - self.gamma * codebook_entropy
        return commitment + self.zeta * entropy_penalty


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs + 1e-8)).sum(dim=-1)


class BSQuantizer(nn.Module):
    """Normalises codes onto the sphere and quantises them (`tokenizer.bsq` in the checkpoints)."""

    def __init__(self, s1_bits, s2_bits, beta, gamma0, gamma, zeta, group_size):
        super().__init__()
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits
        self.bsq = BinarySphericalQuantizer(s1_bits + s2_bits, beta, gamma0, gamma, zeta, group_size)

    def forward(self, z: torch.Tensor, with_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = F.normalize(z, dim=-1)
        quantized = self.bsq.quantize(z)
        return quantized, (self.bsq.loss(z, quantized) if with_loss else None)


def bits_to_ids(bits: torch.Tensor) -> torch.Tensor:
    """(..., n) signs -> (...,) integer ids, channel i is bit i (least significant first)."""
    weights = 2 ** torch.arange(bits.shape[-1], device=bits.device, dtype=torch.long)
    return ((bits > 0).long() * weights).sum(dim=-1)


def ids_to_bits(ids: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Inverse of `bits_to_ids`: (...,) ids -> (..., n_bits) of +-1."""
    weights = 2 ** torch.arange(n_bits, device=ids.device, dtype=torch.long)
    return ((ids.long().unsqueeze(-1) & weights) != 0).float() * 2 - 1


@dataclass
class TokenizerOutput:
    """Training forward of the tokenizer."""

    recon_s1: torch.Tensor  # (B, T, d_in) decoded from the s1 half alone
    recon: torch.Tensor  # (B, T, d_in) decoded from both halves
    bsq_loss: torch.Tensor  # scalar quantiser penalty
    quantized: torch.Tensor  # (B, T, s1_bits + s2_bits) quantised codes
    s1_ids: torch.Tensor  # (B, T)
    s2_ids: torch.Tensor  # (B, T)


class KronosTokenizer(nn.Module):
    """Turns (B, T, d_in) normalised bars into two token ids per bar, and back."""

    def __init__(self, d_in, d_model, n_heads, ff_dim, n_enc_layers, n_dec_layers, ffn_dropout_p,
                 attn_dropout_p, resid_dropout_p, s1_bits, s2_bits, beta, gamma0, gamma, zeta, group_size):
        super().__init__()
        self.config = TokenizerConfig(
            d_in=d_in, d_model=d_model, n_heads=n_heads, ff_dim=ff_dim, n_enc_layers=n_enc_layers,
            n_dec_layers=n_dec_layers, ffn_dropout_p=ffn_dropout_p, attn_dropout_p=attn_dropout_p,
            resid_dropout_p=resid_dropout_p, s1_bits=s1_bits, s2_bits=s2_bits, beta=beta,
            gamma0=gamma0, gamma=gamma, zeta=zeta, group_size=group_size,
        )
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits
        codebook_dim = s1_bits + s2_bits

        def block():
            return TransformerBlock(d_model, n_heads, ff_dim, ffn_dropout_p, attn_dropout_p, resid_dropout_p)

        self.embed = nn.Linear(d_in, d_model)
        self.head = nn.Linear(d_model, d_in)
        # The released tokenizers count the input projection as the first encoder layer
        # and the output projection as the last decoder layer: n - 1 transformer blocks each.
        self.encoder = nn.ModuleList(block() for _ in range(n_enc_layers - 1))
        self.decoder = nn.ModuleList(block() for _ in range(n_dec_layers - 1))
        self.quant_embed = nn.Linear(d_model, codebook_dim)
        self.post_quant_embed_pre = nn.Linear(s1_bits, d_model)
        self.post_quant_embed = nn.Linear(codebook_dim, d_model)
        self.tokenizer = BSQuantizer(s1_bits, s2_bits, beta, gamma0, gamma, zeta, group_size)

    # -- hub format -------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: TokenizerConfig) -> "KronosTokenizer":
        return cls(**config.to_dict())

    @classmethod
    def from_pretrained(cls, id_or_dir: str | Path, revision: str | None = None) -> "KronosTokenizer":
        return hub.load_pretrained(cls, TokenizerConfig, id_or_dir, revision, what="tokenizer")

    def save_pretrained(self, directory: str | Path) -> Path:
        return hub.save_pretrained(self, self.config.to_dict(), directory)

    # -- encoding / decoding ----------------------------------------------------------

    def _codes(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        z = run_blocks(self.encoder, self.embed(x), padding_mask)
        return self.quant_embed(z)

    def _decode_bits(self, bits: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        z = run_blocks(self.decoder, self.post_quant_embed(bits), padding_mask)
        return self.head(z)

    def encode(self, x: torch.Tensor, half: bool = True, padding_mask: torch.Tensor | None = None):
        """Token ids of (B, T, d_in) bars: [s1_ids, s2_ids] if half, else one id over all bits.

        padding_mask: optional (B, T), True at padded positions (left padding), which
        other positions do not attend to.
        """
        quantized, _ = self.tokenizer(self._codes(x, padding_mask), with_loss=False)
        if half:
            return [bits_to_ids(quantized[..., : self.s1_bits]), bits_to_ids(quantized[..., self.s1_bits:])]
        return bits_to_ids(quantized)

    def indices_to_bits(self, ids, half: bool = True) -> torch.Tensor:
        """Token ids -> quantised codes as fed to the decoder."""
        codebook_dim = self.s1_bits + self.s2_bits
        if half:
            s1_ids, s2_ids = ids
            bits = torch.cat([ids_to_bits(s1_ids, self.s1_bits), ids_to_bits(s2_ids, self.s2_bits)], dim=-1)
        else:
            bits = ids_to_bits(ids, codebook_dim)
        return bits * (1.0 / math.sqrt(codebook_dim))

    def decode(self, ids, half: bool = True, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_in) bars from token ids ([s1, s2] if half)."""
        bits = self.indices_to_bits(ids, half).to(self.post_quant_embed.weight.dtype)
        return self._decode_bits(bits, padding_mask)

    def decode_after_shared_prefix(self, ids, prefix: int, group: Groups, half: bool = True,
                                   padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """decode(ids)[:, prefix:], for rows that come in groups of `group` sharing their first
        `prefix` tokens (a series' sample paths share its lookback); `group` may be a tensor
        of group sizes (series with different numbers of paths).

        The decoder is causal, so the shared prefix is decoded once per group and the rest of
        each row continues from its cached keys and values: the same figures up to float
        rounding, at a fraction of the work when the prefix is most of the row.
        """
        bits = self.indices_to_bits(ids, half).to(self.post_quant_embed.weight.dtype)
        x = self.post_quant_embed(bits)
        if not self.decoder:
            return self.head(x[:, prefix:])
        rotary = self.decoder[0].self_attn.rotary
        cache = KVCache(capacity=x.shape[1])
        head_rows = first_rows(group)
        shared = x[head_rows, :prefix]
        shared_pad = None if padding_mask is None else padding_mask[head_rows, :prefix]
        plan = plan_attention(rotary, prefix, shared_pad)
        for index, block in enumerate(self.decoder):
            shared = block(shared, plan, cache, f"decoder{index}")
        cache.advance(prefix, shared.shape[0], x.device, None if shared_pad is None else ~shared_pad.bool())
        cache.repeat_rows(group)
        rest = x[:, prefix:]
        rest_pad = None if padding_mask is None else padding_mask[:, prefix:]
        plan = plan_attention(rotary, rest.shape[1], rest_pad, past_valid=cache.valid,
                              past_all_valid=cache.all_valid)
        for index, block in enumerate(self.decoder):
            rest = block(rest, plan, cache, f"decoder{index}")
        return self.head(rest)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> TokenizerOutput:
        """Training pass: reconstructions from the s1 half and from both halves, plus the BSQ loss."""
        quantized, bsq_loss = self.tokenizer(self._codes(x, padding_mask))
        coarse = self.post_quant_embed_pre(quantized[..., : self.s1_bits])
        recon_s1 = self.head(run_blocks(self.decoder, coarse, padding_mask))
        recon = self._decode_bits(quantized, padding_mask)
        return TokenizerOutput(
            recon_s1=recon_s1,
            recon=recon,
            bsq_loss=bsq_loss,
            quantized=quantized,
            s1_ids=bits_to_ids(quantized[..., : self.s1_bits]),
            s2_ids=bits_to_ids(quantized[..., self.s1_bits:]),
        )


def tokenizer_loss(output: TokenizerOutput, x: torch.Tensor, padding_mask: torch.Tensor | None = None):
    """Kronos tokenizer objective: (mse(s1-only recon) + mse(full recon) + bsq_loss) / 2.

    Returns (loss, parts) where parts holds the float values for logging.
    """
    if padding_mask is not None:
        keep = ~padding_mask.bool()
        recon_s1_err = F.mse_loss(output.recon_s1[keep], x[keep])
        recon_err = F.mse_loss(output.recon[keep], x[keep])
    else:
        recon_s1_err = F.mse_loss(output.recon_s1, x)
        recon_err = F.mse_loss(output.recon, x)
    loss = (recon_s1_err + recon_err + output.bsq_loss) / 2
    parts = {
        "recon_s1": float(recon_s1_err.detach()),
        "recon": float(recon_err.detach()),
        "bsq": float(output.bsq_loss.detach()),
    }
    return loss, parts
