"""Pre-train a small Kronos base on history that ends before a cut-off date.

The offline demo and the tests need a base that has seen real markets, not random
weights, and the released checkpoints are not reachable here. Two stages, as in the
Kronos paper, both with full parameters:

1. the tokenizer learns to reconstruct normalised bar windows from its codes: the mean
   squared error of the coarse (s1-only) and of the full (s1 + s2) decoding, plus the
   BSQ quantiser penalty (`tokenizer_loss`);
2. the tokenizer is frozen and the predictor learns the next bar's s1 and s2 tokens with
   teacher forcing (`token_loss`).

Only bars strictly before `until` are used: each symbol's bars are cut at `until` right
after loading, before windows, normalisation or the data digest see them, so every window
the base is later evaluated on (from `until` on) is unseen. The output folder holds `tokenizer/` and `predictor/` in the hub format
and `pretrain.json` (settings, symbols, data digest, losses); it is written to a hidden
sibling folder and renamed into place at the end, so a failed run never leaves a
half-written base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch

from kronos_rolling import __version__
from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.events import EventCalendar
from kronos_rolling.data.store import BUNDLED_DATA_DIR, DATA_DIR_ENV, DataStore
from kronos_rolling.data.windows import to_utc
from kronos_rolling.errors import ConfigError, DataError
from kronos_rolling.features import FEATURE_COLUMNS
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.kronos import Kronos, token_loss
from kronos_rolling.model.tokenizer import KronosTokenizer, tokenizer_loss

REPORT_NAME = "pretrain.json"
REPORT_FORMAT = "kronos-rolling-pretrain/1"
DEFAULT_UNTIL = "2017-01-01"  # the replay and the demo evaluate from 2017-12 on


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pre-training; together with the data digest they fix the weights (on CPU)."""

    until: str  # first excluded bar time (UTC, ISO); no bar at or after it is read
    size: str = "tiny"
    symbols: tuple[str, ...] | None = None  # None: every symbol of the store with bars before `until`
    # About a minute on two cores for the tiny size (bench/pretrain_tiny.py).
    tokenizer_steps: int = 150
    predictor_steps: int = 200
    batch_size: int = 32
    # Windows of lookback + horizon bars, z-scored over the lookback: the shape and scaling
    # that fine-tuning (`train.TrainConfig`) and evaluation feed the base.
    lookback: int = 128
    horizon: int = 16
    tokenizer_lr: float = 2e-3
    predictor_lr: float = 2e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    stride: int = 1  # bars between consecutive candidate windows
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "until", to_utc(self.until).isoformat())
        if self.size not in MODEL_SIZES:
            raise ConfigError(f"unknown model size {self.size!r}; use one of {', '.join(MODEL_SIZES)}")
        if self.symbols is not None:
            if not self.symbols:
                raise ConfigError("symbols is empty; pass at least one symbol, or none for every symbol")
            object.__setattr__(self, "symbols", tuple(self.symbols))
        for name in ("tokenizer_steps", "predictor_steps", "batch_size", "lookback", "horizon", "stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tokenizer_lr", "predictor_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        context = MODEL_SIZES[self.size].max_context
        if self.window > context:
            raise ConfigError(
                f"windows of {self.window} bars (lookback {self.lookback} + horizon {self.horizon}) exceed the "
                f"{self.size} model's context of {context} bars; use a shorter lookback"
            )

    @property
    def window(self) -> int:
        return self.lookback + self.horizon

    def to_dict(self) -> dict:
        values = asdict(self)
        values["symbols"] = list(self.symbols) if self.symbols is not None else None
        return values


@dataclass
class StageResult:
    """How one stage went. Losses are means over the first and the last tenth of its steps."""

    steps: int
    first_loss: float
    final_loss: float
    seconds: float
    bars_per_second: float
    final_parts: dict[str, float] = field(default_factory=dict)  # tokenizer: recon_s1, recon, bsq


@dataclass
class PretrainReport:
    """What `pretrain_base` wrote; `to_dict()` is the content of pretrain.json."""

    out_dir: Path
    config: PretrainConfig
    symbols: list[str]  # symbols that gave training windows
    skipped: dict[str, str]  # symbol -> why it gave none
    windows: int
    bars: dict[str, int]  # bars before `until` per symbol
    first_bar: str
    last_bar: str  # the latest bar read: always before `until`
    data_digest: str
    data_dir: str
    tokenizer: StageResult
    predictor: StageResult
    seconds: float

    def to_dict(self) -> dict:
        return {
            "format": REPORT_FORMAT,
            "settings": self.config.to_dict(),
            "data": {
                "digest": self.data_digest,
                "dir": self.data_dir,
                "symbols": self.symbols,
                "skipped": self.skipped,
                "bars": self.bars,
                "windows": self.windows,
                "first_bar": self.first_bar,
                "last_bar": self.last_bar,
            },
            "tokenizer": asdict(self.tokenizer),
            "predictor": asdict(self.predictor),
            "seconds": self.seconds,
            "code_version": __version__,
            # Same seed and data give the same weights bit for bit with the same torch and thread count.
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        }

    def summary(self) -> str:
        return (
            f"pretrained {self.config.size} base on {self.windows:,} windows of {len(self.symbols)} symbols "
            f"(bars before {self.config.until[:10]}) in {self.seconds:.0f}s: tokenizer loss "
            f"{self.tokenizer.first_loss:.4f} -> {self.tokenizer.final_loss:.4f} ({self.tokenizer.steps} steps), "
            f"token loss {self.predictor.first_loss:.4f} -> {self.predictor.final_loss:.4f} "
            f"({self.predictor.steps} steps); wrote {self.out_dir}"
        )


# -- data -------------------------------------------------------------------------------


def bars_between(store: DataStore, symbols: Sequence[str], start=None, end=None) -> dict[str, pd.DataFrame]:
    """Each symbol's bars with start <= timestamp < end (either bound optional); symbols without any are left out."""
    lower = to_utc(start) if start is not None else None
    upper = to_utc(end) if end is not None else None
    found = {}
    for symbol in symbols:
        bars = store.load(symbol)
        keep = np.ones(len(bars), dtype=bool)
        if lower is not None:
            keep &= (bars["timestamp"] >= lower).to_numpy()
        if upper is not None:
            keep &= (bars["timestamp"] < upper).to_numpy()
        if keep.any():
            found[symbol] = bars[keep].reset_index(drop=True)
    return found


def window_dataset(store: DataStore, bars: Mapping[str, pd.DataFrame], lookback: int, horizon: int,
                   stride: int = 1) -> BarWindowDataset:
    """All (lookback + horizon)-bar windows that lie wholly inside the given bars (no events)."""
    return BarWindowDataset(
        bars, list(bars), start=min(frame["timestamp"].iloc[0] for frame in bars.values()),
        end=max(frame["timestamp"].iloc[-1] for frame in bars.values()) + pd.Timedelta(1, "ns"),
        lookback=lookback, horizon=horizon, stride=stride, calendar=EventCalendar(),
        asset_classes={s: store.asset_class(s) for s in bars},
    )


def held_out_windows(store: DataStore, since, lookback: int, horizon: int, symbols: Sequence[str] | None = None,
                     stride: int = 1) -> BarWindowDataset:
    """Windows made only of bars at or after `since`: what a base pretrained until `since` has never seen."""
    bars = bars_between(store, list(symbols) if symbols is not None else store.symbols(), start=since)
    if not bars:
        raise DataError(f"no bars at or after {to_utc(since):%Y-%m-%d} in {store.root} to evaluate on")
    return window_dataset(store, bars, lookback, horizon, stride)


def bars_digest(bars: Mapping[str, pd.DataFrame]) -> str:
    """sha256 of exactly the bars a pre-training reads: symbols, timestamps and features."""
    digest = hashlib.sha256()
    for symbol in sorted(bars):
        frame = bars[symbol]
        digest.update(symbol.encode() + b"\0")
        digest.update(pd.DatetimeIndex(frame["timestamp"]).asi8.tobytes())
        digest.update(np.ascontiguousarray(frame[FEATURE_COLUMNS].to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()


def batch_indices(n_samples: int, steps: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """`steps` batches of sample indices: seeded shuffles, one after another, no repeat within a pass."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_samples)
    position = 0
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if position == len(order):
                order, position = rng.permutation(n_samples), 0
            take = min(batch_size - len(batch), len(order) - position)
            batch.extend(order[position:position + take])
            position += take
        yield np.asarray(batch, dtype=np.int64)


def collate(dataset: BarWindowDataset, indices: np.ndarray) -> dict[str, torch.Tensor]:
    items = [dataset[int(i)] for i in indices]
    return {key: torch.stack([item[key] for item in items]) for key in ("x", "stamp")}


# -- the two stages ---------------------------------------------------------------------


def _optimizer(params, lr: float, config: PretrainConfig, steps: int):
    """AdamW with a linear warm-up then cosine decay to a tenth of the peak LR."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_fraction * steps))
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup), eta_min=lr / 10),
        ],
        milestones=[warmup],
    )
    return optimizer, scheduler


class _StageLog:
    """Per-step losses, a tqdm bar with loss and bars/s, and the stage's summary."""

    def __init__(self, name: str, steps: int, bars_per_step: int, progress: bool):
        from tqdm import tqdm

        self.steps, self.bars_per_step = steps, bars_per_step
        self.losses: list[float] = []
        self.parts: list[dict[str, float]] = []
        self.started = time.monotonic()
        self.bar = tqdm(total=steps, desc=name, unit="step", disable=not progress, file=sys.stderr,
                        mininterval=0.5 if sys.stderr.isatty() else 10.0, dynamic_ncols=True)

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
    for indices in batch_indices(len(dataset), config.tokenizer_steps, config.batch_size, config.seed):
        x = collate(dataset, indices)["x"]
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
    for indices in batch_indices(len(dataset), config.predictor_steps, config.batch_size, config.seed + 1):
        loss = _next_token_loss(predictor, tokenizer, collate(dataset, indices))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        stage.step(float(loss.detach()))
    predictor.eval()
    return stage.result()


# -- measuring a base on held-out windows ----------------------------------------------


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


# -- the output folder ------------------------------------------------------------------


def read_pretrain_report(folder: str | os.PathLike) -> dict | None:
    """The pretrain.json of a folder written by `pretrain_base`, else None."""
    path = Path(folder) / REPORT_NAME
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) and values.get("format") == REPORT_FORMAT else None


def check_output_folder(out_dir: Path, force: bool) -> None:
    """Refuse an output folder that holds anything other than a previous pre-training (unless force)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a folder path for the pretrained base")
    if force or not any(out_dir.iterdir()) or read_pretrain_report(out_dir) is not None:
        return
    raise ConfigError(
        f"--out {out_dir} already exists and is not the output of an earlier `kronos-rolling model pretrain` "
        f"(no {REPORT_NAME}); choose a new folder, or pass --force to replace it and everything in it"
    )


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder to out_dir, replacing what was there."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.replaced-", dir=out_dir.parent))
    os.replace(out_dir, retired / out_dir.name)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


# -- the whole pre-training -------------------------------------------------------------


def pretrain_base(store: DataStore, out_dir: str | os.PathLike, *, until, size: str = "tiny",
                  symbols: Sequence[str] | None = None, tokenizer_steps: int = PretrainConfig.tokenizer_steps,
                  predictor_steps: int = PretrainConfig.predictor_steps,
                  batch_size: int = PretrainConfig.batch_size, lookback: int = PretrainConfig.lookback,
                  horizon: int = PretrainConfig.horizon, tokenizer_lr: float = PretrainConfig.tokenizer_lr,
                  predictor_lr: float = PretrainConfig.predictor_lr, seed: int = PretrainConfig.seed,
                  force: bool = False, progress: bool = True) -> PretrainReport:
    """Pre-train a tokenizer, then a predictor, of `size` on the store's bars before `until`.

    Writes out_dir/tokenizer, out_dir/predictor (hub format) and out_dir/pretrain.json, all
    at once at the end. Deterministic on CPU for a given seed, data and thread count.
    """
    config = PretrainConfig(
        until=until, size=size, symbols=tuple(symbols) if symbols is not None else None,
        tokenizer_steps=tokenizer_steps, predictor_steps=predictor_steps, batch_size=batch_size,
        lookback=lookback, horizon=horizon, tokenizer_lr=tokenizer_lr, predictor_lr=predictor_lr, seed=seed,
    )
    return run_pretraining(store, Path(out_dir), config, force=force, progress=progress)


def run_pretraining(store: DataStore, out_dir: Path, config: PretrainConfig, *, force: bool = False,
                    progress: bool = True) -> PretrainReport:
    """`pretrain_base` for a ready-made config."""
    out_dir = Path(out_dir).expanduser()
    check_output_folder(out_dir, force)
    started = time.monotonic()
    dataset, bars, skipped = _pretraining_dataset(store, config)

    spec = MODEL_SIZES[config.size]
    # Forked RNG: seeding here must not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        tokenizer = KronosTokenizer.from_config(spec.tokenizer)
        predictor = Kronos.from_config(spec.predictor)
        tokenizer_result = train_tokenizer(tokenizer, dataset, config, progress)
        predictor_result = train_predictor(predictor, tokenizer, dataset, config, progress)

    stamps = pd.concat([frame["timestamp"] for frame in bars.values()])
    report = PretrainReport(
        out_dir=out_dir,
        config=config,
        symbols=[s for s in dataset.symbols if dataset.samples_per_symbol[s]],
        skipped=skipped,
        windows=len(dataset),
        bars={s: len(frame) for s, frame in bars.items()},
        first_bar=stamps.min().isoformat(),
        last_bar=stamps.max().isoformat(),
        data_digest=bars_digest(bars),
        data_dir=str(store.root),
        tokenizer=tokenizer_result,
        predictor=predictor_result,
        seconds=time.monotonic() - started,
    )
    _write_output(out_dir, tokenizer, predictor, report, force)
    return report


def _pretraining_dataset(store: DataStore, config: PretrainConfig):
    """Windows over the bars before `until`, plus those bars and the symbols that gave none (and why)."""
    wanted = list(config.symbols) if config.symbols is not None else store.symbols()
    for symbol in wanted:
        store.path_of(symbol)  # an unknown symbol is an error naming the symbols there are
    bars = bars_between(store, wanted, end=config.until)
    skipped = {s: f"no bars before {config.until[:10]}" for s in wanted if s not in bars}
    if not bars:
        earliest = min((store.summary(s).first for s in wanted), default=None)
        raise DataError(
            f"no bars before --until {config.until[:10]} in {store.root}"
            + (f" (the earliest bar is {earliest:%Y-%m-%d})" if earliest is not None else "")
            + "; pass a later --until, or import longer history with `kronos-rolling data import`"
        )
    dataset = window_dataset(store, bars, config.lookback, config.horizon, config.stride)
    for symbol, count in dataset.samples_per_symbol.items():
        if count == 0:
            skipped[symbol] = f"fewer than {config.window} consecutive bars before {config.until[:10]}"
    if config.symbols is not None and skipped:
        raise DataError(
            "cannot pre-train on " + "; ".join(f"{s}: {why}" for s, why in skipped.items())
            + f" (each symbol needs {config.window} consecutive bars before --until); "
            "drop those symbols, pass a later --until or a shorter --lookback"
        )
    if len(dataset) == 0:
        raise DataError(
            f"no window of {config.window} consecutive bars before --until {config.until[:10]} in {store.root}; "
            "pass a later --until or a shorter --lookback"
        )
    return dataset, {s: bars[s] for s in dataset.symbols}, skipped


def _write_output(out_dir: Path, tokenizer: KronosTokenizer, predictor: Kronos, report: PretrainReport,
                  force: bool) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.pretrain-", dir=out_dir.parent))
    try:
        tokenizer.save_pretrained(staging / "tokenizer")
        predictor.save_pretrained(staging / "predictor")
        (staging / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        check_output_folder(out_dir, force)  # again: something may have appeared while we trained
        _replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- a cached base for tests ------------------------------------------------------------

# A few seconds on two cores, yet clearly better than random weights on held-out bars.
TEST_BASE_SETTINGS = dict(tokenizer_steps=60, predictor_steps=80, batch_size=16, lookback=48, horizon=16)


def is_current_pretrain(folder: str | os.PathLike, config: PretrainConfig, store: DataStore) -> bool:
    """Whether `folder` holds a complete base pre-trained with `config` on the store's current bars."""
    folder = Path(folder)
    found = read_pretrain_report(folder)
    if found is None or found.get("settings") != config.to_dict():
        return False
    if not all((folder / part / name).is_file()
               for part in ("tokenizer", "predictor") for name in ("config.json", "model.safetensors")):
        return False
    symbols = list(config.symbols) if config.symbols is not None else store.symbols()
    return found.get("data", {}).get("digest") == bars_digest(bars_between(store, symbols, end=config.until))


def pretrained_tiny_base(cache_dir: str | os.PathLike, *, until=DEFAULT_UNTIL, seed: int = 0,
                         store: DataStore | None = None) -> Path:
    """A tiny base pre-trained on the bundled history before `until`, built once per cache folder.

    Reused when cache_dir/pretrain.json records the same settings and data digest; otherwise
    (re)built. Meant for a session-scoped pytest fixture.
    """
    from filelock import FileLock

    cache_dir = Path(cache_dir)
    store = store if store is not None else DataStore(BUNDLED_DATA_DIR)
    config = PretrainConfig(until=until, size="tiny", seed=seed, **TEST_BASE_SETTINGS)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir.parent / f".{cache_dir.name}.lock")):
        if not is_current_pretrain(cache_dir, config, store):
            run_pretraining(store, cache_dir, config, force=True, progress=False)
    return cache_dir


# -- command line -----------------------------------------------------------------------


@click.command("pretrain")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder to write: tokenizer/, predictor/ (hub format) and pretrain.json.")
@click.option("--size", type=click.Choice(list(MODEL_SIZES)), default="tiny", show_default=True,
              help="Model size to build (tiny: trains in about a minute on two cores).")
@click.option("--until", default=DEFAULT_UNTIL, show_default=True,
              help="Train on bars strictly before this date (UTC); evaluate the base only after it.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help=f"Data folder (default: ${DATA_DIR_ENV}, else the bundled sample data).")
@click.option("--symbol", "symbols", multiple=True,
              help="Train on this symbol only (repeatable; default: every symbol with bars before --until).")
@click.option("--tokenizer-steps", type=int, default=PretrainConfig.tokenizer_steps, show_default=True)
@click.option("--predictor-steps", type=int, default=PretrainConfig.predictor_steps, show_default=True)
@click.option("--batch-size", type=int, default=PretrainConfig.batch_size, show_default=True)
@click.option("--lookback", type=int, default=PretrainConfig.lookback, show_default=True,
              help="Bars of context per window (each window adds --horizon bars).")
@click.option("--horizon", type=int, default=PretrainConfig.horizon, show_default=True)
@click.option("--seed", type=int, default=PretrainConfig.seed, show_default=True)
@click.option("--force", is_flag=True, help="Replace --out even if it holds something other than a pretrained base.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def pretrain(out_dir, size, until, data_dir, symbols, tokenizer_steps, predictor_steps, batch_size, lookback,
             horizon, seed, force, quiet):
    """Pre-train a small Kronos base (tokenizer, then predictor) on history before --until."""
    report = pretrain_base(
        DataStore(data_dir), out_dir, until=until, size=size, symbols=list(symbols) or None,
        tokenizer_steps=tokenizer_steps, predictor_steps=predictor_steps, batch_size=batch_size,
        lookback=lookback, horizon=horizon, seed=seed, force=force, progress=not quiet,
    )
    click.echo(report.summary())
