#!/usr/bin/env python
"""Is data loading ever the bottleneck of a CPU training step?

    python bench/data_loading.py [--lookback 512] [--horizon 32] [--batch-size 16] [--model mini|small]

Builds a `BarWindowDataset` over the bundled crypto series for a two-year window, then
measures in the same run:
  - construction time (per-symbol arrays, gap and event precomputation),
  - samples/s through `dataset[i]` and batches/s through a `DataLoader` (num_workers=0),
  - the reference: one CPU training step (tokenizer encode without grad, forward,
    cross-entropy on both token heads, backward, AdamW step) of a Kronos-mini (default,
    the cheaper step, so the harder comparison) or Kronos-small shaped model from the
    reference implementation (random weights),
and prints the ratio step time / batch loading time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.store import DataStore
from kronos_rolling.data.windows import select_training_window

TOKENIZER = dict(d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4, ffn_dropout_p=0.0,
                 attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=10, s2_bits=10, beta=0.05, gamma0=1.0,
                 gamma=1.1, zeta=0.05, group_size=4)
PREDICTORS = {
    "small": dict(n_layers=8, d_model=512, n_heads=8, ff_dim=1024),
    "mini": dict(n_layers=4, d_model=256, n_heads=4, ff_dim=512),
}


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def training_step_seconds(batch: dict, shape: dict, steps: int) -> float:
    from model.kronos import (  # the reference implementation (test dependency)
        Kronos,
        KronosTokenizer,
    )

    torch.manual_seed(0)
    tokenizer = KronosTokenizer(**TOKENIZER).eval()
    predictor = Kronos(s1_bits=10, s2_bits=10, ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0,
                       token_dropout_p=0.0, learn_te=True, **shape)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        with torch.no_grad():
            s1, s2 = tokenizer.encode(batch["x"], half=True)
        stamp = batch["stamp"].long()
        s1_logits, s2_logits = predictor(s1[:, :-1], s2[:, :-1], stamp[:, :-1], use_teacher_forcing=True,
                                         s1_targets=s1[:, 1:])
        loss = (loss_fn(s1_logits.flatten(0, 1), s1[:, 1:].flatten())
                + loss_fn(s2_logits.flatten(0, 1), s2[:, 1:].flatten()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    return best_of(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookback", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", choices=sorted(PREDICTORS), default="mini")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps after one warm-up (best kept)")
    args = parser.parse_args()
    torch.manual_seed(0)

    store = DataStore()
    window = select_training_window("2019-10-01")
    symbols = store.symbols_for("crypto")
    for symbol in symbols:  # read the files once so construction time is the dataset's own work
        store.load(symbol)
    started = time.perf_counter()
    dataset = BarWindowDataset(store, symbols, *window.fit_span, lookback=args.lookback, horizon=args.horizon)
    build = time.perf_counter() - started
    print(f"dataset: {len(dataset)} samples of {args.lookback}+{args.horizon} bars over {symbols}, "
          f"built in {build * 1000:.0f} ms (files already read)")

    order = np.random.default_rng(0).permutation(len(dataset))[:4000]
    seconds = best_of(lambda: [dataset[int(i)] for i in order], 3)
    per_sample = seconds / len(order)
    print(f"dataset[i]: {1 / per_sample:,.0f} samples/s ({per_sample * 1e6:.1f} us per sample)")

    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    batches = 200

    def load_batches():
        for n, _ in enumerate(loader):
            if n + 1 == batches:
                break

    per_batch = best_of(load_batches, 3) / batches
    print(f"DataLoader(batch_size={args.batch_size}, num_workers=0): {per_batch * 1000:.2f} ms per batch, "
          f"{args.batch_size / per_batch:,.0f} samples/s")

    batch = next(iter(loader))
    shape = PREDICTORS[args.model]
    step = training_step_seconds(batch, shape, args.steps)
    print(f"reference training step, Kronos-{args.model} shape ({shape['n_layers']} layers, d_model "
          f"{shape['d_model']}), batch {args.batch_size} x {args.lookback + args.horizon} bars: {step * 1000:.0f} ms")
    print(f"ratio: a training step takes {step / per_batch:,.0f}x as long as loading its batch "
          f"(loading = {per_batch / step:.3%} of a step)")


if __name__ == "__main__":
    main()
