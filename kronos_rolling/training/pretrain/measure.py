"""How good a pre-trained base is on held-out windows, next to a baseline that knows no order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.errors import DataError
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.training.pretrain.data import collate
from kronos_rolling.training.pretrain.stages import (
    _causal_without_dropout,
    _next_token_loss,
)


@dataclass(frozen=True)
class BaseLosses:
    """A base's fit to windows it was not trained on (lower is better)."""

    reconstruction_mse: float  # tokenizer: full-code decoding vs the normalised bars
    token_loss: float  # predictor: mean teacher-forced s1/s2 cross-entropy, in nats
    windows: int


@torch.no_grad()
def evaluate_base(tokenizer: KronosTokenizer, predictor: Kronos | None, dataset: BarWindowDataset, *,
                  batch_size: int = 64, max_windows: int | None = 512, seed: int = 0) -> BaseLosses:
    """Reconstruction error and next-token loss on (a seeded subsample of) a dataset's windows."""
    if len(dataset) == 0:
        raise DataError(f"no windows to evaluate on in {dataset!r}")
    count = len(dataset) if max_windows is None else min(max_windows, len(dataset))
    chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
    recon_sum, token_sum = 0.0, 0.0
    modules = [tokenizer] + ([predictor] if predictor is not None else [])
    with _causal_without_dropout(*modules):
        for start in range(0, count, batch_size):
            batch = collate(dataset, chosen[start:start + batch_size])
            size = len(batch["x"])
            s1, s2 = tokenizer.encode(batch["x"], half=True)
            recon = tokenizer.decode([s1, s2], half=True)
            recon_sum += float(torch.nn.functional.mse_loss(recon, batch["x"])) * size
            if predictor is not None:
                token_sum += float(_next_token_loss(predictor, tokenizer, batch)) * size
    return BaseLosses(recon_sum / count, token_sum / count if predictor is not None else float("nan"), count)


@torch.no_grad()
def frequency_baseline_loss(tokenizer: KronosTokenizer, fit: BarWindowDataset, held_out: BarWindowDataset, *,
                            batch_size: int = 64, max_windows: int | None = 512, seed: int = 0) -> float:
    """Cross-entropy of held-out tokens under the token frequencies of `fit` (add-one smoothed).

    A predictor that ignores the context cannot beat this: a token loss below it shows the
    predictor learnt something from the bars before each one, not just which tokens are common.
    """
    def token_counts(dataset: BarWindowDataset):
        count = len(dataset) if max_windows is None else min(max_windows, len(dataset))
        chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
        s1_counts = torch.zeros(2 ** tokenizer.s1_bits, dtype=torch.float64)
        s2_counts = torch.zeros(2 ** tokenizer.s2_bits, dtype=torch.float64)
        for start in range(0, count, batch_size):
            s1, s2 = tokenizer.encode(collate(dataset, chosen[start:start + batch_size])["x"], half=True)
            # The first bar of a window is never a target, as in `token_loss`.
            s1_counts += torch.bincount(s1[:, 1:].flatten(), minlength=len(s1_counts)).double()
            s2_counts += torch.bincount(s2[:, 1:].flatten(), minlength=len(s2_counts)).double()
        return s1_counts, s2_counts

    tokenizer.eval()
    fit_s1, fit_s2 = token_counts(fit)
    held_s1, held_s2 = token_counts(held_out)

    def cross_entropy(fit_counts, held_counts):
        log_p = torch.log((fit_counts + 1) / (fit_counts + 1).sum())
        return float(-(held_counts * log_p).sum() / held_counts.sum())

    return (cross_entropy(fit_s1, held_s1) + cross_entropy(fit_s2, held_s2)) / 2
