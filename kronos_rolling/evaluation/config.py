"""How the evaluation samples and scores: one settings dataclass, torch-free (the CLI takes its defaults here).

Every field is logged on the run as `eval_<field>` (`eval_samples` is K, the paths whose
median is the point forecast), so two months' figures are comparable only when these match.
`settings_for` is the one place that builds the settings a model is evaluated with: the
model's own lookback and horizon, the caller's choices, and the significance level of the
thresholds (`Thresholds.confidence`, beside the switch that requires it, `min_confidence`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kronos_rolling.errors import ConfigError
from kronos_rolling.model.config import SamplingSettings
from kronos_rolling.settings import Thresholds

METRICS = ("val_mae", "val_nll", "val_crps")  # the losses a decision may be based on


@dataclass(frozen=True)
class EvalSettings:
    lookback: int  # the model's, as trained
    horizon: int
    samples: int = 16  # K sample paths per origin; their mean is the point forecast
    temperature: float = SamplingSettings.temperature
    top_k: int = SamplingSettings.top_k
    top_p: float = SamplingSettings.top_p
    cost: float = 0.0005  # of the sign rule, per unit of position change (5 bp)
    seed: int = 1234
    batch_size: int = 64  # origins per forward pass (times `samples` rows when decoding)
    max_origins: int | None = None  # None: every origin of the span; else a seeded subset (recorded)
    confidence: float = Thresholds.confidence  # of the intervals of paired differences (set by settings_for)
    bootstrap_resamples: int = 2000  # for the interval of a Sharpe change

    def __post_init__(self):
        for name in ("lookback", "horizon", "samples", "batch_size", "bootstrap_resamples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluation setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_origins is not None and self.max_origins < 1:
            raise ConfigError(f"evaluation setting max_origins must be >= 1 or unset, got {self.max_origins}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"evaluation setting confidence must be in (0, 1), got {self.confidence}")
        if self.cost < 0:
            raise ConfigError(f"evaluation setting cost must be >= 0, got {self.cost}")


def settings_for(lookback: int, horizon: int, choices: EvalSettings | None = None,
                 thresholds: Thresholds | None = None) -> EvalSettings:
    """The evaluation of a model trained with `lookback` and `horizon`: the caller's `choices`
    (paths, cap, cost, seed; default: the released ones) with the model's window, and the
    intervals at the thresholds' significance level."""
    chosen = choices or EvalSettings(lookback=lookback, horizon=horizon)
    return replace(chosen, lookback=lookback, horizon=horizon, confidence=(thresholds or Thresholds()).confidence)
