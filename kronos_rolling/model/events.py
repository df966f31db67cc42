"""Event conditioning: one learned vector per event type, added to a bar's input embedding.

Id 0 means "no event" and always contributes zero. Every vector starts at zero, so an
untrained event embedding leaves the model's outputs exactly those of the base model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kronos_rolling.errors import DataError, ModelError

NO_EVENT = 0


class EventEmbedding(nn.Module):
    def __init__(self, num_event_types: int, d_model: int):
        super().__init__()
        if num_event_types < 1 or d_model < 1:
            raise ModelError(
                f"event embedding needs num_event_types >= 1 (id 0 = no event) and d_model >= 1, "
                f"got {num_event_types} and {d_model}"
            )
        self.num_event_types = num_event_types
        self.d_model = d_model
        # padding_idx keeps the "no event" row at zero and out of every gradient update.
        self.table = nn.Embedding(num_event_types, d_model, padding_idx=NO_EVENT)
        nn.init.zeros_(self.table.weight)

    def forward(self, event_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) integer event ids -> (B, T, d_model) vectors to add to the input embedding."""
        event_ids = event_ids.long()
        if event_ids.numel() and (int(event_ids.min()) < 0 or int(event_ids.max()) >= self.num_event_types):
            raise DataError(
                f"event ids must lie in [0, {self.num_event_types - 1}] (0 = no event), got "
                f"{int(event_ids.min())}..{int(event_ids.max())}; map unknown event types to 0 or "
                f"train an event embedding with more types"
            )
        return self.table(event_ids)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.partial")
        save_file(
            {"weight": self.table.weight.detach().cpu().contiguous()},
            str(staging),
            metadata={"num_event_types": str(self.num_event_types), "d_model": str(self.d_model)},
        )
        os.replace(staging, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EventEmbedding":
        path = Path(path)
        try:
            weights = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise ModelError(f"cannot read event embedding {path}: {exc}; pass a file written by EventEmbedding.save") from exc
        weight = weights.get("weight")
        if weight is None or weight.dim() != 2:
            raise ModelError(f"{path} holds no (num_event_types, d_model) 'weight' tensor; it is not an event embedding")
        module = cls(weight.shape[0], weight.shape[1])
        module.table.weight.data.copy_(weight)
        return module
