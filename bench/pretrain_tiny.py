"""Default tiny pre-training: how long it takes and what it learns, against references from the same run.

Runs `kronos-rolling model pretrain` with its defaults (bundled data, bars before
2017-01-01), then scores the result on windows made only of bars from 2017-12-01 on
(never seen), against: the same tokenizer with a randomly initialised predictor, a
predictor that only knows how often each token occurs in the training windows (so a
lower loss than that means the context is used), and a randomly initialised tokenizer.

    python bench/pretrain_tiny.py                       # defaults, about a minute on 2 cores
    python bench/pretrain_tiny.py --tokenizer-steps 60 --predictor-steps 80 --batch-size 16 --lookback 48
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from kronos_rolling.data.store import BUNDLED_DATA_DIR, DataStore
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.training.pretrain.config import DEFAULT_UNTIL, PretrainConfig
from kronos_rolling.training.pretrain.data import (
    bars_between,
    held_out_windows,
    window_dataset,
)
from kronos_rolling.training.pretrain.measure import (
    evaluate_base,
    frequency_baseline_loss,
)
from kronos_rolling.training.pretrain.run import pretrain_base

BUDGET_SECONDS = 90.0  # the demo's share for pre-training (the whole demo: < 10 minutes on 2 cores)
HELD_OUT_FROM = "2017-12-01"  # where the replay and the demo start evaluating


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer-steps", type=int, default=PretrainConfig.tokenizer_steps)
    parser.add_argument("--predictor-steps", type=int, default=PretrainConfig.predictor_steps)
    parser.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    parser.add_argument("--lookback", type=int, default=PretrainConfig.lookback)
    parser.add_argument("--horizon", type=int, default=PretrainConfig.horizon)
    parser.add_argument("--held-out-windows", type=int, default=512)
    args = parser.parse_args()

    store = DataStore(BUNDLED_DATA_DIR)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "base"
        started, cpu_started = time.perf_counter(), time.process_time()
        report = pretrain_base(
            store, out, until=DEFAULT_UNTIL, tokenizer_steps=args.tokenizer_steps,
            predictor_steps=args.predictor_steps, batch_size=args.batch_size, lookback=args.lookback,
            horizon=args.horizon, progress=False,
        )
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        print(report.summary())
        print(f"wall time {seconds:.1f}s (tokenizer {report.tokenizer.seconds:.1f}s, "
              f"predictor {report.predictor.seconds:.1f}s, rest {seconds - report.tokenizer.seconds - report.predictor.seconds:.1f}s); "
              f"{seconds / BUDGET_SECONDS:.2f}x the {BUDGET_SECONDS:.0f}s budget; CPU time {cpu_seconds:.1f}s; "
              f"load average now {os.getloadavg()[0]:.2f}")

        tokenizer = KronosTokenizer.from_pretrained(out / "tokenizer")
        predictor = Kronos.from_pretrained(out / "predictor")
    held = held_out_windows(store, HELD_OUT_FROM, args.lookback, args.horizon)
    fit = window_dataset(store, bars_between(store, store.symbols(), end=DEFAULT_UNTIL), args.lookback, args.horizon)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        random_tokenizer = KronosTokenizer.from_config(MODEL_SIZES["tiny"].tokenizer)
        random_predictor = Kronos.from_config(MODEL_SIZES["tiny"].predictor)
    n = args.held_out_windows
    pretrained = evaluate_base(tokenizer, predictor, held, max_windows=n)
    untrained_predictor = evaluate_base(tokenizer, random_predictor, held, max_windows=n)
    untrained_tokenizer = evaluate_base(random_tokenizer, None, held, max_windows=n)
    frequencies = frequency_baseline_loss(tokenizer, fit, held, max_windows=n)
    print(f"held-out windows: {pretrained.windows} of {len(held)} ({', '.join(held.symbols)}), bars from {HELD_OUT_FROM}")
    print(f"token loss (nats): pretrained {pretrained.token_loss:.3f} | random predictor "
          f"{untrained_predictor.token_loss:.3f} (ratio {pretrained.token_loss / untrained_predictor.token_loss:.2f}) | "
          f"token frequencies only {frequencies:.3f} (ratio {pretrained.token_loss / frequencies:.2f})")
    print(f"reconstruction MSE (normalised bars): pretrained tokenizer {pretrained.reconstruction_mse:.4f} | "
          f"random tokenizer {untrained_tokenizer.reconstruction_mse:.4f} "
          f"(ratio {pretrained.reconstruction_mse / untrained_tokenizer.reconstruction_mse:.3f})")


if __name__ == "__main__":
    main()
