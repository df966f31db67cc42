"""Decode step at batch 1 on CPU against the memory-bandwidth floor, and greedy parity.

For each model shape (Kronos-small, Kronos-base; random weights built by the reference
implementation with seed 0, saved in the hub format and loaded into ours):

- weights read per step: every parameter a cached single-bar step reads in full (the
  transformer blocks, the fusion projection, the final norm, the dependency layer's
  key/value/output projections and norm, both heads). Embedding tables are left out
  (one row each is read), and so is the dependency layer's query projection: a
  generation projects the whole s1 vocabulary once and each step reads one row of it.
- read bandwidth: the best of several `sum()` passes over a 256 MiB float32 tensor, on
  the same number of threads as the step, measured before and after the steps (the
  larger figure is kept: the lower, stricter floor).
- floor = weight bytes / bandwidth; step = the median over `--steps` single-bar steps
  (best median of `--repeats` runs) of `generate.decode_step`, the step `generate` runs,
  greedy, after a `--lookback`-bar window pass (the KV cache holds that many bars).
- parity: our greedy forecast against the reference's `auto_regressive_inference` on
  the same weights and inputs (identical tokens give forecasts equal to float rounding).

    python bench/decode_step.py                      # small and base, 1 thread
    python bench/decode_step.py --sizes small --steps 128
    python bench/decode_step.py --sizes small --products   # + one-row product bandwidth, three ways
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _decoding import median, step_times

import model as reference  # kronos-model-arch, the released implementation (test/bench only)
import torch

from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.generate import Sampling, generate
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer


def read_bandwidth(repeats: int = 7) -> float:
    """Bytes per second of the best sum() over a 256 MiB float32 tensor."""
    data = torch.ones(64 * 1024 * 1024)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best


def step_weight_bytes(model: Kronos) -> int:
    """Bytes of the parameters a cached decode step reads in full."""
    skipped = {id(model.dep_layer.cross_attn.q_proj.weight), id(model.dep_layer.cross_attn.q_proj.bias)}
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in skipped:
                total += param.numel() * param.element_size()
    return total


def product_bandwidths(model: Kronos, repeats: int = 9) -> dict[str, float]:
    """GB/s of one row times every block weight of `model`, three ways: nn.Linear on the
    row-major weights, the contiguous transposed copy (what a decode uses on CPU), and
    bfloat16 weights and row (the candidate bf16 option)."""
    weights = [m.weight.detach() for m in model.transformer.modules() if isinstance(m, torch.nn.Linear)]
    transposed = [w.t().contiguous() for w in weights]
    halves = [w.bfloat16() for w in weights]
    rows = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    ways = {
        "nn.Linear, float32": (lambda: [torch.nn.functional.linear(rows[w.shape[1]], w) for w in weights], 4),
        "transposed copy, float32": (lambda: [rows[w.shape[0]] @ w for w in transposed], 4),
        "nn.Linear, bfloat16": (lambda: [torch.nn.functional.linear(rows[w.shape[1]].bfloat16(), w)
                                         for w in halves], 2),
    }
    count = sum(w.numel() for w in weights)
    best = {name: float("inf") for name in ways}
    for _ in range(repeats):  # interleaved, so that background load hits every way alike
        for name, (run, _) in ways.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: count * size / best[name] / 1e9 for name, (_, size) in ways.items()}


def build(size_name: str, tmp: Path):
    size = MODEL_SIZES[size_name]
    torch.manual_seed(0)
    ref_model = reference.Kronos(**size.predictor.to_dict()).eval()
    ref_tokenizer = reference.KronosTokenizer(**size.tokenizer.to_dict()).eval()
    ref_model.save_pretrained(tmp / size_name / "predictor")
    ref_tokenizer.save_pretrained(tmp / size_name / "tokenizer")
    ours = Kronos.from_pretrained(tmp / size_name / "predictor").eval()
    tokenizer = KronosTokenizer.from_pretrained(tmp / size_name / "tokenizer").eval()
    return ref_model, ref_tokenizer, ours, tokenizer


def inputs(lookback: int, pred_len: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, lookback, 6, generator=generator)
    columns = [torch.randint(low, high, (1, lookback + pred_len), generator=generator)
               for low, high in [(0, 60), (0, 24), (0, 7), (1, 32), (1, 13)]]
    stamps = torch.stack(columns, dim=-1).float()
    return x, stamps[:, :lookback], stamps[:, lookback:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--threads", type=int, default=1, help="threads of the decode step and of the bandwidth pass")
    parser.add_argument("--lookback", type=int, default=256)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parity-lookback", type=int, default=64)
    parser.add_argument("--parity-steps", type=int, default=24)
    parser.add_argument("--products", action="store_true",
                        help="also time one-row products: nn.Linear vs transposed copy vs bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"CPU float32, {args.threads} thread(s), batch 1, greedy; lookback {args.lookback}, {args.steps} steps; "
          f"load avg {os.getloadavg()[0]:.1f}")
    print(f"{'size':>6} {'weights MB':>10} {'bandwidth GB/s':>14} {'floor ms':>8} {'step ms':>8} "
          f"{'step/floor':>10} {'greedy parity':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for size_name in args.sizes.split(","):
            ref_model, ref_tokenizer, ours, tokenizer = build(size_name, Path(tmp))
            max_context = MODEL_SIZES[size_name].max_context
            # Parity first (also warms up the kernels).
            x, x_stamp, y_stamp = inputs(args.parity_lookback, args.parity_steps, seed=1)
            mine = generate(ours, tokenizer, x, x_stamp, y_stamp, args.parity_steps, top_k=1,
                            max_context=max_context)[:, 0]
            theirs = reference.kronos.auto_regressive_inference(
                ref_tokenizer, ref_model, x, x_stamp, y_stamp, max_context, args.parity_steps, clip=5, T=1.0,
                top_k=1, top_p=0.9, sample_count=1)
            theirs = torch.from_numpy(theirs[:, -args.parity_steps:]).float()
            parity = float((mine - theirs).abs().max())

            bandwidth = read_bandwidth()
            step = min(median(step_times(ours, 1, args.lookback, args.steps, max_context, Sampling(top_k=1)))
                       for _ in range(args.repeats))
            bandwidth = max(bandwidth, read_bandwidth())
            weights = step_weight_bytes(ours)
            floor = weights / bandwidth
            verdict = "identical" if parity < 1e-4 else f"DIFFER {parity:.2e}"
            print(f"{size_name:>6} {weights / 1e6:>10.1f} {bandwidth / 1e9:>14.1f} {floor * 1e3:>8.2f} "
                  f"{step * 1e3:>8.2f} {step / floor:>9.2f}x {verdict:>14}", flush=True)
            if args.products:
                rates = product_bandwidths(ours)
                print("        one-row products over the block weights: " + ", ".join(
                    f"{name} {rate:.1f} GB/s" for name, rate in rates.items()), flush=True)


if __name__ == "__main__":
    main()
