"""The frozen tokenizer's tokens of every training window: computed once per run, cached on disk.

The tokenizer does not train, so the s1/s2 tokens of a window are the same in every
epoch; encoding them in each step repeated the tokenizer's forward pass once per epoch.
They are computed once, before the first epoch, and saved under KRONOS_HOME
(`Home.token_cache`) in a file named by two digests: the windows' (`BarWindowDataset.
window_digest`: window shape, feature values, which samples) and the tokenizer's
(its weights). A change to either names another file, so stale tokens are never read;
a file that does not hold what its name promises is recomputed and replaced.

Tokens are encoded in float32 without autocast whatever the training precision: the same
tokens a forecast sees.
"""

from __future__ import annotations

import hashlib
import pickle
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.files import atomic_file

log = logging.getLogger(__name__)

ENCODE_BATCH = 256  # windows per tokenizer pass; inference only, so memory stays small


def tokenizer_digest(tokenizer: torch.nn.Module) -> str:
    """sha256 of the tokenizer's state (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, value in tokenizer.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass
class WindowTokens:
    """(N, lookback + horizon) s1 and s2 token ids of every sample, in index order."""

    s1: torch.Tensor
    s2: torch.Tensor
    key: str

    def __len__(self) -> int:
        return self.s1.shape[0]


def token_key(dataset: BarWindowDataset, tokenizer: torch.nn.Module) -> str:
    return f"{dataset.window_digest()[:24]}-{tokenizer_digest(tokenizer)[:24]}"


@torch.no_grad()
def encode_windows(dataset: BarWindowDataset, tokenizer: torch.nn.Module, device: torch.device,
                   key: str) -> WindowTokens:
    was_training = tokenizer.training
    tokenizer.eval()
    s1_parts, s2_parts = [], []
    try:
        for batch in DataLoader(dataset, batch_size=ENCODE_BATCH, shuffle=False):
            s1, s2 = tokenizer.encode(batch["x"].to(device), half=True)
            s1_parts.append(s1.to("cpu", torch.int32))
            s2_parts.append(s2.to("cpu", torch.int32))
    finally:
        tokenizer.train(was_training)
    window = dataset.lookback + dataset.horizon
    empty = torch.zeros(0, window, dtype=torch.int32)
    return WindowTokens(torch.cat(s1_parts) if s1_parts else empty, torch.cat(s2_parts) if s2_parts else empty, key)


def _load(path: Path, key: str, count: int, window: int) -> WindowTokens | None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        log.warning("token cache %s unreadable (%s): recomputing", path, exc)
        return None
    ok = (isinstance(saved, dict) and saved.get("key") == key
          and all(isinstance(saved.get(n), torch.Tensor) and tuple(saved[n].shape) == (count, window)
                  for n in ("s1", "s2")))
    if not ok:
        log.warning("token cache %s does not hold the tokens of key %s: recomputing", path, key)
        return None
    return WindowTokens(saved["s1"], saved["s2"], key)


def window_tokens(dataset: BarWindowDataset, tokenizer: torch.nn.Module, device: torch.device,
                  cache_dir: Path | None = None, *, write: bool = True) -> WindowTokens:
    """The tokens of every window of `dataset`: read from `cache_dir` when there under this
    data and tokenizer, else encoded now (and saved there when `write`)."""
    key = token_key(dataset, tokenizer)
    window = dataset.lookback + dataset.horizon
    path = None if cache_dir is None else Path(cache_dir) / f"{key}.pt"
    if path is not None and path.exists():
        found = _load(path, key, len(dataset), window)
        if found is not None:
            log.info("tokens of %d windows read from %s", len(dataset), path)
            return found
    tokens = encode_windows(dataset, tokenizer, device, key)
    if path is not None and write:
        with atomic_file(path) as tmp:
            torch.save({"key": key, "s1": tokens.s1, "s2": tokens.s2}, tmp)
        log.info("tokens of %d windows saved to %s", len(dataset), path)
    return tokens


class TokenizedWindows(Dataset):
    """A `BarWindowDataset` whose items carry their cached tokens instead of the bars.

    Item: `s1`, `s2` (T,) int64 token ids, `stamp` (T, 5) float32, `event_ids` (T,) int64.
    """

    def __init__(self, dataset: BarWindowDataset, tokens: WindowTokens):
        if len(tokens) != len(dataset):
            raise ValueError(f"{len(tokens)} token rows for {len(dataset)} windows")
        self.dataset, self.tokens = dataset, tokens

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        stamp, event_ids = self.dataset.calendar_item(index)
        return {"s1": self.tokens.s1[index].long(), "s2": self.tokens.s2[index].long(),
                "stamp": stamp, "event_ids": event_ids}
