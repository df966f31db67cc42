"""How the evaluation samples and scores: one settings dataclass, torch-free (the CLI takes its defaults here)."""

from __future__ import annotations

from dataclasses import dataclass

from kronos_rolling.model.config import SamplingSettings


@dataclass(frozen=True)
class EvalSettings:
    lookback: int  # the model's, as trained
    horizon: int
    hold: int = 1  # bars between forecast origins, and how long the sign rule holds a position
    samples: int = 4
    temperature: float = SamplingSettings.temperature
    top_k: int = SamplingSettings.top_k
    top_p: float = SamplingSettings.top_p
    cost: float = 0.0005  # per unit of position change (5 bp)
    seed: int = 1234
    batch_size: int = 64
    max_origins: int | None = None  # None: every origin in the span; else a seeded subsample

    def __post_init__(self):
        if not 1 <= self.hold <= self.horizon:
            raise ValueError(f"hold must be between 1 and the horizon ({self.horizon}), got {self.hold}")
