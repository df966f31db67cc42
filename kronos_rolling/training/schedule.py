"""The learning-rate schedule of every training (fine-tunes and pre-training): linear
warm-up to the peak LR, then cosine decay to a tenth of it."""

from __future__ import annotations

import math

import torch

FINAL_FRACTION = 0.1  # the LR ends at a tenth of the peak


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak LR at optimiser step `step` (0-based) of `total`, `warmup` of them warm-up."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return FINAL_FRACTION + (1 - FINAL_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule over `total_steps` optimiser steps, the first `warmup_fraction` of them warm-up (at least one)."""
    warmup = max(1, int(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total_steps))
