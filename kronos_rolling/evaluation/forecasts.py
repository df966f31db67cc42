"""What evaluation asks of a model on prepared samples: sampled paths and token likelihoods.

The only torch code of the evaluation. Sampling is seeded per batch of origins, so the
same model on the same span always gives the same numbers; the teacher-forced NLL uses
no randomness at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.features import STD_EPS
from kronos_rolling.evaluation.samples import CLOSE, EvaluationSamples
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.generate import eval_mode, unwrap, generate


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


def _batches(samples: EvaluationSamples):
    return torch.utils.data.DataLoader(samples.dataset, batch_size=samples.settings.batch_size, shuffle=False)


@torch.no_grad()
def forecast_paths(model: ForecastModel, samples: EvaluationSamples) -> np.ndarray:
    """(N, K, horizon) sampled close paths of `model` for every sample, in price units."""
    settings = samples.settings
    remap = _vocabulary_map(samples, model)
    lookback = settings.lookback
    out = []
    for batch_index, batch in enumerate(_batches(samples)):
        event_ids = None if remap is None else remap[batch["event_ids"]]
        paths = generate(
            model.model, model.tokenizer, batch["x"][:, :lookback], batch["stamp"][:, :lookback],
            batch["stamp"][:, lookback:], settings.horizon, temperature=settings.temperature,
            top_k=settings.top_k, top_p=settings.top_p, samples=settings.samples,
            generator=settings.seed + batch_index, max_context=model.max_context,
            event_ids=event_ids, event_embedding=model.event_embedding,
            step_threads=None,  # K paths x a batch of origins per step: wide enough for every core
        )
        close = paths[..., CLOSE].double()  # (B, K, H), normalised
        mean = batch["mean"][:, CLOSE].double()[:, None, None]
        std = batch["std"][:, CLOSE].double()[:, None, None]
        out.append((close * (std + STD_EPS) + mean).numpy())
    return np.concatenate(out, axis=0)


@torch.no_grad()
def token_nll(model: ForecastModel, samples: EvaluationSamples) -> np.ndarray:
    """(N,) teacher-forced negative log-likelihood, in nats per token, of each origin's horizon.

    The lookback and the horizon are tokenised together (the normaliser saw the lookback
    only); the model reads every true token before position t and scores the true s1 and
    s2 tokens of the H horizon bars; their 2H log-probabilities are averaged. Eval mode,
    with a causal s2 cross-attention (training's inner validation loss does the same).
    """
    settings = samples.settings
    kronos = unwrap(model.model)
    remap = _vocabulary_map(samples, model)
    device = next(kronos.parameters()).device
    lookback, horizon = settings.lookback, settings.horizon
    out = []
    with eval_mode(model.model, model.tokenizer):
        for batch in _batches(samples):
            x = batch["x"].to(device)
            s1, s2 = model.tokenizer.encode(x, half=True)
            stamp = batch["stamp"].to(device)
            extra = None
            if model.event_embedding is not None:
                extra = model.event_embedding(remap[batch["event_ids"]].to(device))[:, :-1]
            s1_logits, s2_logits = kronos(s1[:, :-1], s2[:, :-1], stamp[:, :-1], use_teacher_forcing=True,
                                          s1_targets=s1[:, 1:], extra_embedding=extra, causal_s2=True)
            scored = slice(lookback - 1, lookback + horizon - 1)  # positions predicting the horizon bars
            nll_s1 = F.cross_entropy(s1_logits[:, scored].float().transpose(1, 2), s1[:, lookback:], reduction="none")
            nll_s2 = F.cross_entropy(s2_logits[:, scored].float().transpose(1, 2), s2[:, lookback:], reduction="none")
            out.append(((nll_s1 + nll_s2) / 2).mean(dim=1).double().cpu().numpy())
    return np.concatenate(out, axis=0)
