"""The epoch checkpoint that lets a killed training resume where it stopped.

It holds the trainable weights, the optimiser, the schedule, the RNG and the history,
and belongs to one configuration: the fingerprint of settings, base, data and warm start.

Nothing in it is a pickle, so reading a checkpoint cannot run code:

    checkpoint.json                 the fingerprint, the state's structure and plain values,
                                    the name and sha256 of its tensor file
    tensors-<sha256[:16]>.safetensors   every tensor of the state

`load` reads the JSON first and returns None, having read nothing else, unless its
fingerprint matches; then it checks the tensor file's sha256 before reading it. A save
writes the tensor file, then replaces checkpoint.json atomically, then removes the older
tensor file, so a crash at any point leaves the previous checkpoint or the new one.
Any other file in the folder (an old `checkpoint.pt`, say) is never opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kronos_rolling.errors import ModelError
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.files import file_sha256  # the one sha256 of a file
from kronos_rolling.training.config import TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "checkpoint.json"
LEGACY_PICKLE = "checkpoint.pt"  # what versions before 0.2 wrote; never read
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_DICT = "__dict__"


def config_fingerprint(config: TrainConfig, base: BaseModelRef, data_digest: str, warm_start: str | None) -> str:
    """What must match for a checkpoint to be resumed: settings, base, data and warm start."""
    payload = json.dumps({"config": config.to_params(), "base": base.to_dict(), "data": data_digest,
                          "warm_start": warm_start}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def split_state(state, tensors: dict[str, torch.Tensor], path: str = "s"):
    """(JSON-able structure, tensors filled in): tensors become {"__tensor__": key}; dicts keep
    their key types (the optimiser's state is keyed by int), tuples stay tuples."""
    if isinstance(state, torch.Tensor):
        tensors[path] = state.detach().cpu().contiguous().clone()  # own storage: safetensors refuses shared ones
        return {_TENSOR: path}
    if isinstance(state, dict):
        return {_DICT: [[key, split_state(value, tensors, f"{path}.{key}")] for key, value in state.items()]}
    if isinstance(state, tuple):
        return {_TUPLE: [split_state(value, tensors, f"{path}.{i}") for i, value in enumerate(state)]}
    if isinstance(state, list):
        return [split_state(value, tensors, f"{path}.{i}") for i, value in enumerate(state)]
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise ModelError(f"checkpoint value at {path} is a {type(state).__name__}; only tensors, numbers, text, "
                     "lists, tuples and dicts can be checkpointed")


def join_state(structure, tensors: dict[str, torch.Tensor]):
    if isinstance(structure, list):
        return [join_state(value, tensors) for value in structure]
    if isinstance(structure, dict):
        if _TENSOR in structure:
            return tensors[structure[_TENSOR]]
        if _TUPLE in structure:
            return tuple(join_state(value, tensors) for value in structure[_TUPLE])
        return {key: join_state(value, tensors) for key, value in structure[_DICT]}
    return structure


class Checkpoint:
    """The epoch checkpoint of one training, written atomically after every epoch."""

    def __init__(self, directory: Path, fingerprint: str):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.path = self.directory / STATE_FILE

    def load(self) -> dict | None:
        if not self.path.exists():
            if (self.directory / LEGACY_PICKLE).exists():
                log.warning("ignoring %s: pickled checkpoints are never loaded; training starts from epoch 0",
                            self.directory / LEGACY_PICKLE)
            return None
        try:
            record = json.loads(self.path.read_text())
            fingerprint = record.get("fingerprint")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring checkpoint %s: it is unreadable (%s)", self.path, exc)
            return None
        if fingerprint != self.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to a different configuration or data", self.path)
            return None
        tensor_file = self.directory / Path(str(record.get("tensors", ""))).name
        if not tensor_file.is_file() or file_sha256(tensor_file) != record.get("sha256"):
            log.warning("ignoring checkpoint %s: its tensor file %s is missing or does not match its sha256",
                        self.path, tensor_file.name)
            return None
        state = join_state(record["state"], load_file(str(tensor_file)))
        return {**state, "fingerprint": fingerprint}

    def save(self, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        structure = split_state(state, tensors)
        partial = self.directory / ".tensors.partial"
        save_file(tensors, str(partial))
        digest = file_sha256(partial)
        tensor_file = self.directory / f"tensors-{digest[:16]}.safetensors"
        os.replace(partial, tensor_file)
        record = {"fingerprint": self.fingerprint, "tensors": tensor_file.name, "sha256": digest,
                  "state": structure}
        partial_json = self.directory / f".{STATE_FILE}.partial"
        partial_json.write_text(json.dumps(record))
        os.replace(partial_json, self.path)
        for old in self.directory.glob("tensors-*.safetensors"):
            if old != tensor_file:
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        for old in self.directory.glob("tensors-*.safetensors"):
            old.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:  # not empty (someone else's files) or already gone
            pass
