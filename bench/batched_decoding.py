"""Batched decoding: tokens/s against batch size (N sample paths x B series in one batch).

Kronos-small shape with the Kronos-Tokenizer-base shape (random weights, seed 0), CPU
float32, sampling with top-p 0.9 and a seed, as the evaluation samples its K paths per
origin. A batch of R rows is B series x N paths (`generate(..., samples=N)` on B
series), decoded together: each step feeds R bars through the predictor at once, so the
weights are read once per step for all rows instead of once per row.

Per-step time: the median over `--steps` single-bar steps of `generate.decode_step` (the
step `generate` runs) after a `--lookback`-bar window pass, best median of `--repeats`
runs, so the lookback pass, the tokenizer encode and the final decode are left out;
tokens/s = R / step time. The ratio is against batch 1 in the same run.

    python bench/batched_decoding.py
    python bench/batched_decoding.py --threads 2 --steps 32
"""

from __future__ import annotations

import argparse
import os

import torch
from _decoding import median, step_times

from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.generate import Sampling
from kronos_rolling.model.kronos import Kronos

# (series, paths per series): rows = series x paths
SHAPES = [(1, 1), (1, 2), (1, 4), (1, 8), (1, 16), (2, 16), (4, 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lookback", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = MODEL_SIZES["small"]
    torch.manual_seed(0)
    model = Kronos(**size.predictor.to_dict()).eval()

    sampling = Sampling(top_p=0.9, generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(args.threads)
    step_times(model, 1, 16, 2, size.max_context, sampling)  # warm-up
    print(f"Kronos-small, CPU float32, {args.threads} thread(s), top-p 0.9 sampling, lookback {args.lookback}, "
          f"{args.steps} steps; load avg {os.getloadavg()[0]:.1f}")
    print(f"{'series':>6} {'paths':>5} {'batch':>5} {'step ms':>8} {'tokens/s':>9} {'vs batch 1':>10}")
    base = None
    for series, paths in SHAPES:
        rows = series * paths
        step = min(median(step_times(model, rows, args.lookback, args.steps, size.max_context, sampling))
                   for _ in range(args.repeats))
        rate = rows / step
        base = base or rate
        print(f"{series:>6} {paths:>5} {rows:>5} {step * 1e3:>8.2f} {rate:>9.1f} {rate / base:>9.1f}x", flush=True)
    print(f"load avg {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
