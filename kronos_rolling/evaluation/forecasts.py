"""What evaluation asks of a model: forecasts on prepared samples (the only torch code here).

Sampling is seeded per batch, so the same model on the same span always gives the same
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.features import STD_EPS
from kronos_rolling.evaluation.samples import CLOSE, EvaluationSamples
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.generate import generate


@dataclass
class ForecastModel:
    """What evaluation needs of a model: the predictor (plain or with LoRA), its tokenizer,
    and its event embedding with the vocabulary it was trained on (both None: no events)."""

    model: torch.nn.Module
    tokenizer: torch.nn.Module
    event_embedding: EventEmbedding | None = None
    vocabulary: EventVocabulary | None = None
    max_context: int = 512


def _vocabulary_map(samples: EvaluationSamples, model: ForecastModel) -> torch.Tensor | None:
    """Ids of the samples' vocabulary -> ids of the model's (types it never saw -> 0)."""
    if model.event_embedding is None:
        return None
    mapping = torch.zeros(samples.vocabulary.size, dtype=torch.long)
    own = model.vocabulary.to_dict() if model.vocabulary is not None else {}
    for event_type, index in samples.vocabulary.to_dict().items():
        mapping[index] = own.get(event_type, 0)
    return mapping


@torch.no_grad()
def forecast_closes(model: ForecastModel, samples: EvaluationSamples) -> np.ndarray:
    """Mean forecast close path (N, horizon) of `model` for every sample, in price units."""
    settings = samples.settings
    remap = _vocabulary_map(samples, model)
    loader = torch.utils.data.DataLoader(samples.dataset, batch_size=settings.batch_size, shuffle=False)
    lookback = settings.lookback
    out = []
    for batch_index, batch in enumerate(loader):
        event_ids = None if remap is None else remap[batch["event_ids"]]
        paths = generate(
            model.model, model.tokenizer, batch["x"][:, :lookback], batch["stamp"][:, :lookback],
            batch["stamp"][:, lookback:], settings.horizon, temperature=settings.temperature,
            top_k=settings.top_k, top_p=settings.top_p, samples=settings.samples,
            generator=settings.seed + batch_index, max_context=model.max_context,
            event_ids=event_ids, event_embedding=model.event_embedding,
        )
        mean_path = paths.mean(dim=1)[..., CLOSE].double()  # (B, H), normalised
        close_mean = batch["mean"][:, CLOSE].double()[:, None]
        close_std = batch["std"][:, CLOSE].double()[:, None]
        out.append((mean_path * (close_std + STD_EPS) + close_mean).numpy())
    return np.concatenate(out, axis=0)
