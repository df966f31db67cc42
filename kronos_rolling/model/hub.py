"""The hub folder format of the released checkpoints: `config.json` + `model.safetensors`.

`config.json` holds the constructor arguments; `model.safetensors` the state dict
(parameters and persistent buffers). A model is loaded from a local folder or, when the
network allows, from a Hugging Face hub id through `huggingface_hub`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kronos_rolling.errors import ModelError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def resolve_folder(id_or_dir: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder holding config.json and model.safetensors for a folder path or a hub id."""
    local = Path(id_or_dir).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"{local} is a file; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (local / name).is_file()]
        if missing:
            raise ModelError(
                f"model folder {local} lacks {', '.join(missing)}; a Kronos folder holds {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} (as written by save_pretrained or `kronos-rolling model init`)"
            )
        return local
    return _download(str(id_or_dir), revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        config_path = hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
        hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision)
    except Exception as exc:  # offline, unknown repo or revision, invalid id: one answer for all
        at = f" at revision {revision!r}" if revision else ""
        raise ModelError(
            f"cannot load model {repo_id!r}{at}: it is not a local folder, and fetching it from the "
            f"Hugging Face hub failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"Check the folder path or hub id; if this machine is offline, download the folder "
            f"elsewhere (huggingface-cli download {repo_id} --local-dir DIR) and pass DIR instead."
        ) from exc
    return Path(config_path).parent


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}; the file must be a JSON object of constructor arguments") from exc
    if not isinstance(values, dict):
        raise ModelError(f"{path} must hold a JSON object of constructor arguments")
    return values


def load_pretrained(model_cls, config_cls, id_or_dir, revision=None, *, what: str = "model"):
    folder = resolve_folder(id_or_dir, revision)
    config = config_cls.from_dict(read_config(folder), source=f"{what} config {folder / CONFIG_NAME}")
    model = model_cls(**config.to_dict())
    weights_path = folder / WEIGHTS_NAME
    try:
        state = load_file(str(weights_path))
    except Exception as exc:
        raise ModelError(f"cannot read {weights_path}: {exc}; re-download or re-save the folder") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise ModelError(
            f"{weights_path} does not match its {CONFIG_NAME} ({config_cls.__name__}): "
            + (f"missing {_few(missing)}; " if missing else "")
            + (f"unexpected {_few(unexpected)}; " if unexpected else "")
            + (f"wrong shapes for {_few(wrong_shape)}; " if wrong_shape else "")
            + f"pass a {what} folder whose weights were saved with this config"
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def _few(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def save_pretrained(module: torch.nn.Module, config: dict[str, Any], directory) -> Path:
    """Write config.json + model.safetensors into `directory` (created; files replaced atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=directory))
    try:
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def model_source_digest(folder) -> str:
    """sha256 over config.json then model.safetensors: identifies exactly which weights were used."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        path = folder / name
        if not path.is_file():
            raise ModelError(f"cannot fingerprint {folder}: {name} is missing")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
