"""One training routine, two modes, on a frozen Kronos base.

Loss is the mean cross-entropy of the s1 and s2 tokens with teacher forcing; the
tokenizer stays frozen. AdamW, linear warm-up then cosine decay, gradient clipping, and
early stopping on an inner validation slice at the end of the training window (the
guard's validation span is never seen here). The best epoch is kept.

An epoch checkpoint (training/checkpoint.py) lets a killed run resume; only a run that
finished produces an adapter bundle. The same code runs under torchrun
(training/distributed.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import DataError
from kronos_rolling.model.config import LoraSettings
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.kronos import Kronos, token_loss
from kronos_rolling.model.lora import (
    attach_lora,
    load_adapter_bundle,
    save_adapter_bundle,
)
from kronos_rolling.settings import Distributed
from kronos_rolling.training.checkpoint import Checkpoint
from kronos_rolling.training.config import TrainConfig
from kronos_rolling.training.distributed import _all_mean
from kronos_rolling.training.progress import progress_bar
from kronos_rolling.training.schedule import warmup_cosine
from kronos_rolling.training.tokens import TokenizedWindows, window_tokens

log = logging.getLogger(__name__)


# Autocast dtype of each training precision but float32 (no autocast); weights, gradients
# and AdamW stay float32. No fp16: it would need loss scaling, and bf16 has float32's range.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    lr: float
    seconds: float
    bars_per_second: float


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    samples: int
    seconds: float


@dataclass
class Trainee:
    """What a fit changes: LoRA weights inside `model` and the event embedding."""

    model: torch.nn.Module  # peft-wrapped Kronos; its LoRA layers are the only trainable part
    tokenizer: torch.nn.Module
    event_embedding: EventEmbedding
    vocabulary: EventVocabulary

    def trainable_state(self) -> dict[str, torch.Tensor]:
        module = ConditionedKronos(self.model, self.event_embedding)
        return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        module = ConditionedKronos(self.model, self.event_embedding)
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def save(self, out_dir: Path) -> Path:
        return save_adapter_bundle(self.model, self.event_embedding, self.vocabulary.to_dict(), out_dir)


class ConditionedKronos(torch.nn.Module):
    """Kronos with the event embedding added to each bar's input: one module for DDP."""

    def __init__(self, model: torch.nn.Module, event_embedding: EventEmbedding):
        super().__init__()
        self.model = model
        self.event_embedding = event_embedding

    def forward(self, s1, s2, stamp, event_ids, s1_targets, causal_s2=None):
        kronos = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return kronos(s1, s2, stamp, use_teacher_forcing=True, s1_targets=s1_targets,
                      extra_embedding=self.event_embedding(event_ids), causal_s2=causal_s2)


def training_symbols(config: TrainConfig, store: DataStore) -> list[str]:
    symbols = store.symbols_for(config.asset_class) if config.mode == "rolling" else store.symbols()
    if not symbols:
        raise DataError(
            f"no {config.label} symbols in {store.root}; import some with "
            "`kronos-rolling data import FILE --symbol SYMBOL`"
        )
    return symbols


def build_trainee(base_model: Kronos, tokenizer: torch.nn.Module, calendar_types: list[str],
                  lora: LoraSettings, warm_start_dir: Path | None, seed: int) -> tuple[Trainee, LoraSettings]:
    """A LoRA-wrapped base and an event embedding: fresh, or continued from a bundle.

    A warm start keeps the bundle's LoRA shape (rank, targets) and its event ids; event
    types new in the data get new rows, initialised at zero (no effect until trained).
    """
    for p in base_model.parameters():
        p.requires_grad_(False)
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    if warm_start_dir is None:
        model = attach_lora(base_model, lora)
        vocabulary = EventVocabulary.from_types(calendar_types)
        embedding = EventEmbedding(vocabulary.size, base_model.d_model)
    else:
        model, old_embedding, old_vocab = load_adapter_bundle(base_model, warm_start_dir, is_trainable=True)
        vocabulary = EventVocabulary.from_dict(old_vocab).extended(calendar_types)
        embedding = EventEmbedding(vocabulary.size, base_model.d_model)
        with torch.no_grad():
            rows = min(old_embedding.num_event_types, vocabulary.size)
            embedding.table.weight[:rows] = old_embedding.table.weight[:rows]
        lora = lora_settings_of(model)
    return Trainee(model, tokenizer, embedding, vocabulary), lora


def lora_settings_of(model) -> LoraSettings:
    """The LoRA shape of a loaded adapter (a warm start keeps it, whatever the defaults say)."""
    peft_config = model.peft_config["default"]
    targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")})
    return LoraSettings(rank=peft_config.r, alpha=peft_config.lora_alpha, dropout=peft_config.lora_dropout,
                        target_modules=tuple(targets))


def _epoch_indices(n: int, epoch: int, config: TrainConfig, dist_info: Distributed) -> np.ndarray:
    """This rank's sample order for an epoch: a seeded shuffle, capped, split evenly by rank."""
    order = np.random.default_rng([config.seed, epoch]).permutation(n)
    if config.max_samples_per_epoch is not None:
        order = order[: config.max_samples_per_epoch]
    usable = len(order) - len(order) % dist_info.world  # equal shares keep DDP ranks in step
    return order[:usable][dist_info.rank :: dist_info.world]


class EpochSampler(Sampler[int]):
    """This rank's sample order in the current epoch (`set_epoch`): `_epoch_indices`."""

    def __init__(self, n: int, config: TrainConfig, dist_info: Distributed):
        self.n, self.config, self.dist_info = n, config, dist_info
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(_epoch_indices(self.n, self.epoch, self.config, self.dist_info).tolist())

    def __len__(self) -> int:
        return len(_epoch_indices(self.n, self.epoch, self.config, self.dist_info))


def _loader(windows: TokenizedWindows, sampler, batch_size: int) -> DataLoader:
    """Batches of tokenized windows in the sampler's order (no workers: an item is a slice)."""
    return DataLoader(windows, batch_size=batch_size, sampler=sampler, num_workers=0)


def autocast_for(device: torch.device, precision: str):
    """The autocast context of a training forward pass in `precision` (float32: none)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _step_loss(module: torch.nn.Module, batch: dict, device: torch.device,
               causal_s2: bool | None = None, precision: str = "float32"):
    s1, s2 = batch["s1"].to(device), batch["s2"].to(device)  # computed once per run (training/tokens.py)
    stamp = batch["stamp"].to(device)
    events = batch["event_ids"].to(device)
    with autocast_for(device, precision):
        s1_logits, s2_logits = module(s1[:, :-1], s2[:, :-1], stamp[:, :-1], events[:, :-1], s1[:, 1:],
                                      causal_s2=causal_s2)
    return token_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])


@torch.no_grad()
def _validation_loss(module, windows: TokenizedWindows, config, dist_info, device) -> float:
    if len(windows) == 0:
        return float("nan")
    module.eval()
    total, count = 0.0, 0
    for batch in _loader(windows, range(dist_info.rank, len(windows), dist_info.world), config.batch_size):
        size = len(batch["s1"])
        # Eval mode (no dropout) with a causal s2 cross-attention: in the released eval-mode
        # forward, bar t's s2 logits attend to later bars, which hold the targets themselves.
        total += float(_step_loss(module, batch, device, causal_s2=True, precision=config.precision)) * size
        count += size
    module.train()
    return _all_mean(total / max(count, 1), count, dist_info)


def fit(trainee: Trainee, train_set: BarWindowDataset, inner_val_set: BarWindowDataset, config: TrainConfig,
        *, device: torch.device, dist_info: Distributed = Distributed(), checkpoint: Checkpoint | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None, progress: bool = True,
        state_extra: dict | None = None, token_cache: Path | None = None) -> FitResult:
    """Train the adapter and event embedding; restore the best epoch before returning.

    The frozen tokenizer's tokens of every window are computed once, before the first
    epoch (training/tokens.py); token_cache: the folder that keeps them between runs
    (`Home.token_cache`; None: computed in memory for this run only).
    """
    if len(train_set) == 0:
        raise DataError(f"no training samples in the window for {', '.join(train_set.symbols)}; "
                        f"each needs {config.lookback + config.horizon} consecutive bars")
    trainee.model.to(device)
    trainee.tokenizer.to(device).eval()
    trainee.event_embedding.to(device)
    module = ConditionedKronos(trainee.model, trainee.event_embedding).to(device)
    module.train()
    runner = module
    if dist_info.enabled:
        runner = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sampler = EpochSampler(len(train_set), config, dist_info)
    train_loader = _loader(
        TokenizedWindows(train_set, window_tokens(train_set, trainee.tokenizer, device, token_cache,
                                                  write=dist_info.is_main)),
        sampler, config.batch_size)
    inner_windows = TokenizedWindows(inner_val_set, window_tokens(inner_val_set, trainee.tokenizer, device, token_cache,
                                                              write=dist_info.is_main))
    total_steps = len(train_loader) * config.epochs
    scheduler = warmup_cosine(optimizer, total_steps, config.warmup_fraction)

    history: list[EpochRecord] = []
    best_state, best_val, best_epoch, bad_epochs, start_epoch = None, float("inf"), 0, 0, 0
    resumed = checkpoint.load() if checkpoint is not None else None
    if resumed is not None:
        trainee.load_trainable_state(resumed["trainable"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        history = [EpochRecord(**h) for h in resumed["history"]]
        best_state, best_val = resumed["best_state"], resumed["best_val"]
        best_epoch, bad_epochs, start_epoch = resumed["best_epoch"], resumed["bad_epochs"], resumed["epoch"]
        torch.set_rng_state(resumed["torch_rng"])
        log.info("resuming from %s after epoch %d", checkpoint.path, start_epoch)

    started = time.monotonic()
    bars_per_sample = config.lookback + config.horizon - 1
    stopped_early = bad_epochs >= config.patience and start_epoch < config.epochs
    for epoch in range(start_epoch, config.epochs):
        if stopped_early:
            break
        epoch_start = time.monotonic()
        sampler.set_epoch(epoch)
        bar = progress_bar(len(sampler) * dist_info.world, f"{config.label} epoch {epoch + 1}/{config.epochs}",
                           "sample", enabled=progress and dist_info.is_main)
        loss_sum, seen = 0.0, 0
        for batch in train_loader:
            loss = _step_loss(runner, batch, device, precision=config.precision)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            size = len(batch["s1"])
            loss_sum += float(loss.detach()) * size
            seen += size
            elapsed = max(time.monotonic() - epoch_start, 1e-9)
            bar.update(size * dist_info.world)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                            bars_s=f"{seen * dist_info.world * bars_per_sample / elapsed:,.0f}")
        bar.close()
        train_loss = _all_mean(loss_sum / max(seen, 1), seen, dist_info)
        val_loss = _validation_loss(module, inner_windows, config, dist_info, device)
        seconds = time.monotonic() - epoch_start
        record = EpochRecord(epoch + 1, train_loss, val_loss, scheduler.get_last_lr()[0], seconds,
                             seen * dist_info.world * bars_per_sample / max(seconds, 1e-9))
        history.append(record)
        judged = val_loss if math.isfinite(val_loss) else train_loss  # no inner slice: judge on training loss
        if judged < best_val - 1e-6:
            best_val, best_epoch, bad_epochs = judged, epoch + 1, 0
            best_state = trainee.trainable_state()
        else:
            bad_epochs += 1
        if checkpoint is not None and dist_info.is_main:
            checkpoint.save({
                "epoch": epoch + 1, "trainable": trainee.trainable_state(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": [asdict(h) for h in history], "best_state": best_state, "best_val": best_val,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs, "torch_rng": torch.get_rng_state(),
                **(state_extra or {}),
            })
        if on_epoch is not None and dist_info.is_main:
            on_epoch(record)
        if bad_epochs >= config.patience and epoch + 1 < config.epochs:
            stopped_early = True
            log.info("early stop after epoch %d: no inner-validation improvement for %d epochs",
                     epoch + 1, config.patience)

    if best_state is not None:
        trainee.load_trainable_state(best_state)
    total = time.monotonic() - started
    return FitResult(history, best_epoch, best_val, stopped_early, len(train_set), total)
