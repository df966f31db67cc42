"""The two pre-training stages, as in the Kronos paper, both with full parameters.

1. the tokenizer learns to reconstruct normalised bar windows from its codes: the mean
   squared error of the coarse (s1-only) and of the full (s1 + s2) decoding, plus the
   BSQ quantiser penalty (`tokenizer_loss`);
2. the tokenizer is frozen and the predictor learns the next bar's s1 and s2 tokens with
   teacher forcing (`token_loss`).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.model.kronos import Kronos, token_loss
from kronos_rolling.model.tokenizer import KronosTokenizer, tokenizer_loss
from kronos_rolling.training.pretrain.config import PretrainConfig, StageResult
from kronos_rolling.training.pretrain.data import stage_batches
from kronos_rolling.training.progress import progress_bar
from kronos_rolling.training.schedule import warmup_cosine


def _optimizer(params, lr: float, config: PretrainConfig, steps: int):
    """AdamW with the one schedule of every training (training/schedule.py)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    return optimizer, warmup_cosine(optimizer, steps, config.warmup_fraction)


class _StageLog:
    """Per-step losses, a progress bar (training/progress.py) with loss and bars/s, and the stage's summary."""

    def __init__(self, name: str, steps: int, bars_per_step: int, progress: bool):
        self.steps, self.bars_per_step = steps, bars_per_step
        self.losses: list[float] = []
        self.parts: list[dict[str, float]] = []
        self.started = time.monotonic()
        self.bar = progress_bar(steps, name, "step", enabled=progress)

    def step(self, loss: float, parts: dict[str, float] | None = None) -> None:
        self.losses.append(loss)
        if parts:
            self.parts.append(parts)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        tail = self.losses[-20:]
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{sum(tail) / len(tail):.4f}",
                             bars_s=f"{len(self.losses) * self.bars_per_step / elapsed:,.0f}")

    def result(self) -> StageResult:
        self.bar.close()
        seconds = time.monotonic() - self.started
        tenth = max(1, len(self.losses) // 10)
        final_parts = {}
        if self.parts:
            final_parts = {k: float(np.mean([p[k] for p in self.parts[-tenth:]])) for k in self.parts[0]}
        return StageResult(
            steps=len(self.losses),
            first_loss=float(np.mean(self.losses[:tenth])),
            final_loss=float(np.mean(self.losses[-tenth:])),
            seconds=seconds,
            bars_per_second=len(self.losses) * self.bars_per_step / max(seconds, 1e-9),
            final_parts=final_parts,
        )


def train_tokenizer(tokenizer: KronosTokenizer, dataset: BarWindowDataset, config: PretrainConfig,
                    progress: bool = True) -> StageResult:
    """Stage 1: all tokenizer parameters on the reconstruction + quantiser loss."""
    tokenizer.train()
    params = [p for p in tokenizer.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(params, config.tokenizer_lr, config, config.tokenizer_steps)
    stage = _StageLog("pretrain tokenizer", config.tokenizer_steps, config.batch_size * config.window, progress)
    for batch in stage_batches(dataset, config.tokenizer_steps, config.batch_size, config.seed):
        x = batch["x"]
        loss, parts = tokenizer_loss(tokenizer(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        stage.step(float(loss.detach()), parts)
    tokenizer.eval()
    return stage.result()


def _next_token_loss(predictor: Kronos, tokenizer: KronosTokenizer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced cross-entropy of every bar's s1 and s2 tokens given the bars before it."""
    with torch.no_grad():
        s1, s2 = tokenizer.encode(batch["x"], half=True)
    stamp = batch["stamp"]
    s1_logits, s2_logits = predictor(s1[:, :-1], s2[:, :-1], stamp[:, :-1],
                                     use_teacher_forcing=True, s1_targets=s1[:, 1:])
    return token_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])


def train_predictor(predictor: Kronos, tokenizer: KronosTokenizer, dataset: BarWindowDataset,
                    config: PretrainConfig, progress: bool = True) -> StageResult:
    """Stage 2: all predictor parameters on next-token cross-entropy; the tokenizer stays frozen."""
    tokenizer.eval()
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    predictor.train()
    params = [p for p in predictor.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(params, config.predictor_lr, config, config.predictor_steps)
    stage = _StageLog("pretrain predictor", config.predictor_steps, config.batch_size * (config.window - 1), progress)
    # A different shuffle from stage 1, still fixed by the seed.
    for batch in stage_batches(dataset, config.predictor_steps, config.batch_size, config.seed + 1):
        loss = _next_token_loss(predictor, tokenizer, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        stage.step(float(loss.detach()))
    predictor.eval()
    return stage.result()


@contextlib.contextmanager
def _causal_without_dropout(*modules: torch.nn.Module):
    """Train mode (the s2 cross-attention is causal only then) with every dropout off.

    In eval mode the predictor's s2 logits at bar t see the context of later bars, which
    holds the very tokens being predicted, so an eval-mode teacher-forced loss is too low.
    """
    was_training = [m.training for m in modules]
    for m in modules:
        m.train()
        for sub in m.modules():
            if isinstance(sub, torch.nn.Dropout):
                sub.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
