"""The epoch checkpoint that lets a killed training resume where it stopped.

It holds the trainable weights, the optimiser, the schedule, the RNG and the history,
and belongs to one configuration: the fingerprint of settings, base, data and warm start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.training.config import TrainConfig

log = logging.getLogger(__name__)


def config_fingerprint(config: TrainConfig, base: BaseModelRef, data_digest: str, warm_start: str | None) -> str:
    """What must match for a checkpoint to be resumed: settings, base, data and warm start."""
    payload = json.dumps({"config": config.to_params(), "base": base.to_dict(), "data": data_digest,
                          "warm_start": warm_start}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Checkpoint:
    """The epoch checkpoint of one training, written atomically after every epoch."""

    def __init__(self, directory: Path, fingerprint: str):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.path = self.directory / "checkpoint.pt"

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to a different configuration or data", self.path)
            return None
        return state

    def save(self, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({**state, "fingerprint": self.fingerprint}, partial)
        os.replace(partial, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:  # not empty (someone else's files) or already gone
            pass
