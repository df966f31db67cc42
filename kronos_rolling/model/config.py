"""Typed configurations of the Kronos tokenizer and predictor, and the released sizes.

The field names are the constructor arguments of the released checkpoints and the keys
of their `config.json`, so a hub folder's config maps onto these dataclasses one to one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

from kronos_rolling.errors import ModelError

# The dependency-aware layer of the predictor always has 4 heads (fixed in the released
# architecture, not a config field), so d_model must split into 4 heads as well.
DEPENDENCY_LAYER_HEADS = 4

# The sampling settings every entry point accepts (HTTP, the pyfunc model, the CLI), here
# without torch so that `--help` stays light. With
# the logits shifted to their maximum before the division (`generate.sample_tokens`), any of these
# values gives finite probabilities; outside them a forecast is either NaN (a temperature
# of 1e-38 is 0 in float32) or meaningless.
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1 << 16


@dataclass(frozen=True)
class TokenizerConfig:
    """Constructor arguments of `KronosTokenizer` (defaults: Kronos-Tokenizer-base)."""

    d_in: int = 6
    d_model: int = 256
    n_heads: int = 4
    ff_dim: int = 512
    n_enc_layers: int = 4
    n_dec_layers: int = 4
    ffn_dropout_p: float = 0.0
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    s1_bits: int = 10
    s2_bits: int = 10
    beta: float = 0.05
    gamma0: float = 1.0
    gamma: float = 1.1
    zeta: float = 0.05
    group_size: int = 4

    def __post_init__(self):
        _check_heads("tokenizer", self.d_model, self.n_heads)
        if self.n_enc_layers < 1 or self.n_dec_layers < 1:
            raise ModelError(
                "tokenizer config: n_enc_layers and n_dec_layers must be >= 1 "
                f"(got {self.n_enc_layers}, {self.n_dec_layers})"
            )
        codebook_dim = self.s1_bits + self.s2_bits
        if self.s1_bits < 1 or self.s2_bits < 1 or codebook_dim % self.group_size:
            raise ModelError(
                f"tokenizer config: s1_bits + s2_bits ({codebook_dim}) must be positive and divisible by "
                f"group_size ({self.group_size}); choose bit sizes that are a multiple of group_size"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TokenizerConfig":
        return _from_dict(cls, values, source)


@dataclass(frozen=True)
class KronosConfig:
    """Constructor arguments of `Kronos` (defaults: Kronos-small)."""

    s1_bits: int = 10
    s2_bits: int = 10
    n_layers: int = 8
    d_model: int = 512
    n_heads: int = 8
    ff_dim: int = 1024
    ffn_dropout_p: float = 0.25
    attn_dropout_p: float = 0.1
    resid_dropout_p: float = 0.25
    token_dropout_p: float = 0.1
    learn_te: bool = True

    def __post_init__(self):
        _check_heads("predictor", self.d_model, self.n_heads)
        _check_heads("predictor dependency layer", self.d_model, DEPENDENCY_LAYER_HEADS)
        if self.s1_bits < 1 or self.s2_bits < 1 or self.n_layers < 1:
            raise ModelError("predictor config: s1_bits, s2_bits and n_layers must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "KronosConfig":
        return _from_dict(cls, values, source)


def _check_heads(what: str, d_model: int, n_heads: int) -> None:
    # RoPE rotates pairs of channels, so each head needs an even width.
    if n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
        raise ModelError(
            f"{what} config: d_model={d_model} must split into n_heads={n_heads} heads of even width"
        )


def _from_dict(cls, values: Mapping[str, Any], source: str):
    names = {f.name for f in fields(cls)}
    other = TokenizerConfig if cls is KronosConfig else KronosConfig
    unknown = sorted(set(values) - names)
    missing = sorted(names - set(values))
    if unknown or missing:
        hint = ""
        if set(values) == {f.name for f in fields(other)}:
            kind = "tokenizer" if other is TokenizerConfig else "predictor"
            hint = f" It looks like a {kind} config: check that --model and --tokenizer are not swapped."
        raise ModelError(
            f"{source} is not a {cls.__name__}: "
            + (f"unknown fields {unknown}; " if unknown else "")
            + (f"missing fields {missing}; " if missing else "")
            + f"expected exactly {sorted(names)}.{hint}"
        )
    return cls(**{name: values[name] for name in names})


@dataclass(frozen=True)
class ModelSize:
    """A released (or test) size: matching tokenizer and predictor and the context they were trained with."""

    name: str
    tokenizer: TokenizerConfig
    predictor: KronosConfig
    max_context: int
    hub_ids: tuple[str, str] | None = None  # (predictor id, tokenizer id) of the released weights


# Released configurations. Kronos-Tokenizer-base's config.json was checked against the
# published file. The exact config.json files of Kronos-mini, Kronos-base and
# Kronos-Tokenizer-2k could not be retrieved here; the values below are those of the
# Kronos model card/paper (mini: 4 x 256, base: 12 x 832) and assume that
# Kronos-Tokenizer-2k shares Kronos-Tokenizer-base's architecture (it differs in the
# context it was trained on, 2048 bars). Loading a real folder never depends on these:
# `from_pretrained` always builds from the folder's own config.json.
MODEL_SIZES: dict[str, ModelSize] = {
    # For tests and offline demos: a few hundred thousand parameters, trains in seconds
    # on two CPU cores. Six-bit tokens keep both vocabularies (64) small.
    "tiny": ModelSize(
        name="tiny",
        tokenizer=TokenizerConfig(
            d_model=48, n_heads=4, ff_dim=96, n_enc_layers=3, n_dec_layers=3,
            s1_bits=6, s2_bits=6, group_size=4,
        ),
        predictor=KronosConfig(
            s1_bits=6, s2_bits=6, n_layers=2, d_model=64, n_heads=4, ff_dim=128,
            ffn_dropout_p=0.1, attn_dropout_p=0.0, resid_dropout_p=0.1, token_dropout_p=0.0,
            learn_te=True,
        ),
        max_context=512,
    ),
    "mini": ModelSize(
        name="mini",
        tokenizer=TokenizerConfig(),
        predictor=KronosConfig(
            n_layers=4, d_model=256, n_heads=4, ff_dim=512,
            ffn_dropout_p=0.2, attn_dropout_p=0.0, resid_dropout_p=0.2, token_dropout_p=0.0,
        ),
        max_context=2048,
        hub_ids=("NeoQuasar/Kronos-mini", "NeoQuasar/Kronos-Tokenizer-2k"),
    ),
    "small": ModelSize(
        name="small",
        tokenizer=TokenizerConfig(),
        predictor=KronosConfig(),
        max_context=512,
        hub_ids=("NeoQuasar/Kronos-small", "NeoQuasar/Kronos-Tokenizer-base"),
    ),
    "base": ModelSize(
        name="base",
        tokenizer=TokenizerConfig(),
        predictor=KronosConfig(
            n_layers=12, d_model=832, n_heads=16, ff_dim=2048,
            ffn_dropout_p=0.2, attn_dropout_p=0.0, resid_dropout_p=0.2, token_dropout_p=0.0,
        ),
        max_context=512,
        hub_ids=("NeoQuasar/Kronos-base", "NeoQuasar/Kronos-Tokenizer-base"),
    ),
}

DEFAULT_MAX_CONTEXT = 512


def default_max_context(predictor: KronosConfig) -> int:
    """The context a predictor was trained with: that of the released size whose architecture
    it has (training-only settings such as dropout are ignored), else 512."""
    for size in MODEL_SIZES.values():
        if _architecture(size.predictor) == _architecture(predictor):
            return size.max_context
    return DEFAULT_MAX_CONTEXT


def _architecture(predictor: KronosConfig) -> tuple:
    return (predictor.s1_bits, predictor.s2_bits, predictor.n_layers, predictor.d_model, predictor.n_heads,
            predictor.ff_dim)


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. target_modules are leaf names inside the predictor's
    transformer blocks (attention projections and SwiGLU linears); the tokenizer, the
    embeddings, the dependency layer and the heads are never adapted."""

    rank: int = 8
    alpha: int = 16
    # No LoRA dropout by default (peft's default too): the base's own dropout already
    # regularises in training mode, and on CPU the extra masks made a step 1.3x slower and
    # kept a dropped copy of every adapted layer's input (bench/train_speed.py).
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "w1", "w2", "w3")

    def __post_init__(self):
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ModelError(
                f"LoRA settings need rank >= 1, alpha > 0 and 0 <= dropout < 1 "
                f"(got rank={self.rank}, alpha={self.alpha}, dropout={self.dropout})"
            )
        allowed = {"q_proj", "k_proj", "v_proj", "out_proj", "w1", "w2", "w3"}
        unknown = sorted(set(self.target_modules) - allowed)
        if unknown or not self.target_modules:
            raise ModelError(f"LoRA target_modules must be a non-empty subset of {sorted(allowed)}; got {unknown or '[]'}")

    def target_pattern(self) -> str:
        """Regex (full match, as peft applies it) for the targeted linears of transformer blocks only."""
        names = "|".join(re.escape(name) for name in self.target_modules)
        return rf"transformer\.\d+\.(?:self_attn|ffn)\.(?:{names})"


@dataclass(frozen=True)
class SamplingSettings:
    """How a forecast samples tokens: the released predictor's defaults. top_k=1 is greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 0.9
