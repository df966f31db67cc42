"""Pre-train a small Kronos base on history that ends before a cut-off date.

The offline demo and the tests need a base that has seen real markets, not random
weights, and the released checkpoints are not reachable here. The output is written to
a hidden sibling folder and renamed into place at the end, so a failed run never leaves
a half-written base.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from kronos_rolling.data.store import DataStore
from kronos_rolling.errors import ConfigError, DataError
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.training.pretrain.config import (
    REPORT_NAME,
    PretrainConfig,
    PretrainReport,
    read_pretrain_report,
)
from kronos_rolling.training.pretrain.data import (
    bars_between,
    bars_digest,
    window_dataset,
)
from kronos_rolling.training.pretrain.stages import train_predictor, train_tokenizer


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
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
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
