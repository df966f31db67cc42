"""Settings and report of a small-base pre-training (`kronos-rolling model pretrain`).

The output folder holds `tokenizer/` and `predictor/` in the hub format and
`pretrain.json`: these settings, the symbols, the data digest and the losses.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kronos_rolling import __version__
from kronos_rolling.errors import ConfigError
from kronos_rolling.model.config import MODEL_SIZES

if TYPE_CHECKING:  # torch- and pandas-free at import: the command line reads the defaults here
    import pandas as pd

    from kronos_rolling.model.base import BaseModelRef

REPORT_NAME = "pretrain.json"


REPORT_FORMAT = "kronos-rolling-pretrain/1"


DEFAULT_UNTIL = "2017-01-01"  # the replay and the demo evaluate from 2017-12 on


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pre-training; together with the data digest they fix the weights (on CPU)."""

    until: str  # first excluded bar time (UTC, ISO); no bar at or after it is read
    size: str = "tiny"
    symbols: tuple[str, ...] | None = None  # None: every symbol of the store with bars before `until`
    # About a minute on two cores for the tiny size (bench/pretrain_tiny.py).
    tokenizer_steps: int = 150
    predictor_steps: int = 200
    batch_size: int = 32
    # Windows of lookback + horizon bars, z-scored over the lookback: the shape and scaling
    # that fine-tuning (`train.TrainConfig`) and evaluation feed the base.
    lookback: int = 128
    horizon: int = 16
    tokenizer_lr: float = 2e-3
    predictor_lr: float = 2e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    stride: int = 1  # bars between consecutive candidate windows
    seed: int = 0

    def __post_init__(self):
        from kronos_rolling.data.windows import to_utc

        object.__setattr__(self, "until", to_utc(self.until).isoformat())
        if self.size not in MODEL_SIZES:
            raise ConfigError(f"unknown model size {self.size!r}; use one of {', '.join(MODEL_SIZES)}")
        if self.symbols is not None:
            if not self.symbols:
                raise ConfigError("symbols is empty; pass at least one symbol, or none for every symbol")
            object.__setattr__(self, "symbols", tuple(self.symbols))
        for name in ("tokenizer_steps", "predictor_steps", "batch_size", "lookback", "horizon", "stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tokenizer_lr", "predictor_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        context = MODEL_SIZES[self.size].max_context
        if self.window > context:
            raise ConfigError(
                f"windows of {self.window} bars (lookback {self.lookback} + horizon {self.horizon}) exceed the "
                f"{self.size} model's context of {context} bars; use a shorter lookback"
            )

    @property
    def window(self) -> int:
        return self.lookback + self.horizon

    def to_dict(self) -> dict:
        values = asdict(self)
        values["symbols"] = list(self.symbols) if self.symbols is not None else None
        return values


@dataclass
class StageResult:
    """How one stage went. Losses are means over the first and the last tenth of its steps."""

    steps: int
    first_loss: float
    final_loss: float
    seconds: float
    bars_per_second: float
    final_parts: dict[str, float] = field(default_factory=dict)  # tokenizer: recon_s1, recon, bsq


@dataclass
class PretrainReport:
    """What `pretrain_base` wrote; `to_dict()` is the content of pretrain.json."""

    out_dir: Path
    config: PretrainConfig
    symbols: list[str]  # symbols that gave training windows
    skipped: dict[str, str]  # symbol -> why it gave none
    windows: int
    bars: dict[str, int]  # bars before `until` per symbol
    first_bar: str
    last_bar: str  # the latest bar read: always before `until`
    data_digest: str
    data_dir: str
    tokenizer: StageResult
    predictor: StageResult
    seconds: float
    # Same seed and data give the same weights bit for bit with the same torch and thread count.
    torch_version: str
    torch_threads: int

    def to_dict(self) -> dict:
        return {
            "format": REPORT_FORMAT,
            "settings": self.config.to_dict(),
            "data": {
                "digest": self.data_digest,
                "dir": self.data_dir,
                "symbols": self.symbols,
                "skipped": self.skipped,
                "bars": self.bars,
                "windows": self.windows,
                "first_bar": self.first_bar,
                "last_bar": self.last_bar,
            },
            "tokenizer": asdict(self.tokenizer),
            "predictor": asdict(self.predictor),
            "seconds": self.seconds,
            "code_version": __version__,
            "torch_version": self.torch_version,
            "torch_threads": self.torch_threads,
        }

    def summary(self) -> str:
        return (
            f"pretrained {self.config.size} base on {self.windows:,} windows of {len(self.symbols)} symbols "
            f"(bars before {self.config.until[:10]}) in {self.seconds:.0f}s: tokenizer loss "
            f"{self.tokenizer.first_loss:.4f} -> {self.tokenizer.final_loss:.4f} ({self.tokenizer.steps} steps), "
            f"token loss {self.predictor.first_loss:.4f} -> {self.predictor.final_loss:.4f} "
            f"({self.predictor.steps} steps); wrote {self.out_dir}"
        )


def read_pretrain_report(folder: str | os.PathLike) -> dict | None:
    """The pretrain.json of a folder written by `pretrain_base`, else None."""
    path = Path(folder) / REPORT_NAME
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) and values.get("format") == REPORT_FORMAT else None


def pretrained_until(base: BaseModelRef) -> pd.Timestamp | None:
    """Where a base pre-trained by `kronos-rolling model pretrain` stopped seeing bars (None: unknown,
    e.g. a hub checkpoint)."""
    from kronos_rolling.data.windows import to_utc

    if not Path(base.predictor).is_dir():
        return None
    report = read_pretrain_report(Path(base.predictor).parent)
    until = (report or {}).get("settings", {}).get("until")
    return to_utc(until) if until else None
