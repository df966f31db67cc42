"""The settings of one training: mode, window, optimisation, LoRA shape, device.

- pooled ("Phase 3"): every asset class together, a fresh LoRA adapter and event
  embedding; 10 epochs at LR 1e-4 by default.
- rolling: one asset class, the `years` before the validation span ending at `as_of`,
  warm-started from an adapter; 5 epochs at LR 5e-5. Every other setting is shared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import TYPE_CHECKING

from kronos_rolling import ASSET_CLASSES, TRAINING_PRECISIONS
from kronos_rolling.errors import ConfigError
from kronos_rolling.model.config import LoraSettings
from kronos_rolling.settings import parse_as_of

if TYPE_CHECKING:  # torch- and pandas-free at import: the command line takes its defaults from here
    from kronos_rolling.data.windows import TrainingWindow
    from kronos_rolling.model.base import BaseModelRef

MODES = ("pooled", "rolling")


# Mode defaults from the phase document: rolling adapts (half the LR, half the epochs).
MODE_DEFAULTS = {"pooled": {"lr": 1e-4, "epochs": 10}, "rolling": {"lr": 5e-5, "epochs": 5}}


@dataclass
class TrainConfig:
    mode: str
    as_of: date  # the decision date (settings.parse_as_of reads any other form once, here)
    asset_class: str | None = None  # rolling: the class; pooled: None (all classes)
    base: BaseModelRef | None = None  # the frozen base, resolved by the command (needed to train)
    epochs: int | None = None  # None: the mode's default
    lr: float | None = None
    years: float = 2.0
    validation_months: int = 1
    batch_size: int = 32
    lookback: int = 128
    horizon: int = 16
    stride: int = 1  # bars between consecutive training samples
    max_samples_per_epoch: int | None = None  # None: all samples every epoch
    max_inner_val_samples: int = 2048
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    patience: int = 2  # epochs without inner-validation improvement before stopping
    seed: int = 42
    lora: LoraSettings = field(default_factory=LoraSettings)
    device: str = "auto"
    precision: str = "float32"  # or bf16: autocast forward, for GPUs with bf16 tensor cores
    note: str = ""  # why settings depart from the released defaults; recorded on the run

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "rolling" and self.asset_class not in ASSET_CLASSES:
            raise ConfigError(
                f"a rolling fine-tune needs --asset-class, one of {', '.join(ASSET_CLASSES)}; got {self.asset_class!r}"
            )
        if self.mode == "pooled" and self.asset_class is not None:
            raise ConfigError("the pooled adapter trains on every asset class; drop --asset-class")
        self.as_of = parse_as_of(self.as_of)
        if self.epochs is None:
            self.epochs = MODE_DEFAULTS[self.mode]["epochs"]
        if self.lr is None:
            self.lr = MODE_DEFAULTS[self.mode]["lr"]
        for name in ("epochs", "batch_size", "lookback", "horizon", "stride", "patience", "validation_months"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {self.precision!r} "
                              f"(fp16 is not offered for training: it needs loss scaling, bf16 does not)")
        if self.max_samples_per_epoch is not None and self.max_samples_per_epoch < 1:
            raise ConfigError(f"max_samples_per_epoch must be >= 1, got {self.max_samples_per_epoch}")

    @property
    def label(self) -> str:
        """`crypto` or `pooled`: names the experiment and registered model."""
        return self.asset_class or "pooled"

    def window(self) -> TrainingWindow:
        import pandas as pd

        from kronos_rolling.data.windows import select_training_window

        return select_training_window(self.as_of, years=self.years,
                                      validation=pd.DateOffset(months=self.validation_months))

    def departures(self, evaluation=None) -> dict[str, tuple[object, object]]:
        """{setting: (used, released default)} for every setting that differs from what the phase
        releases: the mode's lr and epochs and every other field's default (LoRA fields as
        `lora_<field>`), and, given the run's `EvalSettings`, its fields (as `eval_<field>`)
        against the evaluation's defaults for this lookback and horizon. Fields that say which
        training this is (IDENTITY_FIELDS) are never departures."""
        released = TrainConfig(mode=self.mode, as_of=self.as_of, asset_class=self.asset_class)
        found = {}
        for f in fields(self):
            if f.name in IDENTITY_FIELDS:
                continue
            used, default = getattr(self, f.name), getattr(released, f.name)
            if f.name == "lora":
                found.update(_differences(used, default, "lora_"))
            elif _comparable(used) != _comparable(default):
                found[f.name] = (used, default)
        if evaluation is not None:
            found.update(_differences(evaluation, type(evaluation)(lookback=self.lookback, horizon=self.horizon),
                                      "eval_"))
        return found

    def departure_tags(self, evaluation=None) -> dict[str, str]:
        """Tags that say on the run which released defaults were not used, and why (`note`)."""
        departures = self.departures(evaluation)
        if not departures:
            return {}
        text = ", ".join(f"{name} {_shown(used)} instead of {_shown(default)}"
                         for name, (used, default) in departures.items())
        return {"kronos.non_default_settings": text,
                "kronos.non_default_reason": self.note or "not given (set TrainConfig.note / --note)"}

    def to_params(self) -> dict:
        values = asdict(self)
        values.pop("base")
        values["lora"] = asdict(self.lora)
        return values


IDENTITY_FIELDS = ("mode", "as_of", "asset_class", "base", "note")


def _differences(used, default, prefix: str) -> dict[str, tuple[object, object]]:
    return {prefix + f.name: (getattr(used, f.name), getattr(default, f.name)) for f in fields(used)
            if _comparable(getattr(used, f.name)) != _comparable(getattr(default, f.name))}


def _comparable(value):
    """A list of names (LoRA's target modules) is a set: its order is no setting."""
    return sorted(map(str, value)) if isinstance(value, (tuple, list)) else value


def _shown(value) -> str:
    if value is None:  # the caps (max_samples_per_epoch, eval max_origins): none, so all
        return "all"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)
