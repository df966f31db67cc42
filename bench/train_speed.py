"""LoRA fine-tune vs full-parameter fine-tune: time per step and peak memory, same model and data.

    python bench/train_speed.py                      # Kronos-small shape, the training default batch (32)
    python bench/train_speed.py --batch-size 8
    python bench/train_speed.py --device cuda        # on a GPU machine
    python bench/train_speed.py --precision bf16     # the training's bf16 autocast

Each mode runs in a fresh process (so peak memory is that mode's own): load a
Kronos-small-shaped predictor and Kronos-Tokenizer-base-shaped tokenizer (random
weights), build real training samples from the bundled crypto data, then time
`--steps` optimiser steps after one warm-up step. The step is the training step of
kronos_rolling.training.loop (tokenizer encode without grad, teacher-forced forward with the
event embedding, both token losses, backward, clipping, AdamW), timed in three phases:
forward (encode, forward, loss), backward, and update (clipping, AdamW).

Peak memory is the growth of the peak from just before the first step to the end (model
weights, loaded before, are excluded on both sides; what training adds is gradients,
optimiser state and activations). On CPU it is the process's peak resident set,
measured in a second run of each mode with a fixed glibc mmap threshold, so that freed
tensors go back to the system and the peak follows live memory rather than the
allocator's high-water heap (that setting slows steps, so times come from the first
run). On CUDA it is torch's peak of allocated memory. LoRA runs with the training
default (no LoRA dropout) and with dropout 0.05, which keeps a dropped copy of each
adapted layer's input for the backward pass and draws a random mask per layer.
Printed: each mode, its phases and its ratios to full fine-tuning, then an estimate of
a monthly Kronos-base retrain on an RTX 4060 from FLOPs per token and the achieved FLOP
rate (method in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from kronos_rolling import TRAINING_PRECISIONS
from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.store import DataStore
from kronos_rolling.model.config import MODEL_SIZES, LoraSettings
from kronos_rolling.model.device import resolve_device
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.lora import attach_lora
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.training.config import TrainConfig
from kronos_rolling.training.loop import ConditionedKronos, _step_loss

KRONOS_BASE = dict(n_layers=12, d_model=832, ff_dim=2048)
RTX_4060_PEAK = {"fp32": 15.1e12, "bf16": 60.0e12}  # dense FLOP/s, NVIDIA spec sheet (Ada AD107)


MODES = {"full": None, "lora": None, "lora-drop0.05": 0.05}  # mode -> LoRA dropout (None: the default)


def run_mode(mode: str, steps: int, batch_size: int, lookback: int, horizon: int, device_name: str,
             precision: str) -> dict:
    torch.manual_seed(0)
    device = resolve_device(device_name)
    cuda = device.type == "cuda"
    spec = MODEL_SIZES["small"]
    tokenizer = KronosTokenizer.from_config(spec.tokenizer).eval()
    predictor = Kronos.from_config(spec.predictor)
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    store = DataStore()
    calendar = store.events()
    vocabulary = EventVocabulary.from_types(calendar.event_types())
    events = EventEmbedding(vocabulary.size, predictor.d_model)
    if mode != "full":
        dropout = MODES[mode]
        model = attach_lora(predictor, LoraSettings() if dropout is None else LoraSettings(dropout=dropout))
    else:
        model = predictor
    module = ConditionedKronos(model, events).to(device)
    tokenizer.to(device)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    dataset = BarWindowDataset(store, store.symbols_for("crypto"), "2017-09-01", "2019-09-01", lookback, horizon,
                               vocabulary, calendar=calendar, max_samples=(steps + 1) * batch_size, seed=0)
    batches = []
    for start in range(0, (steps + 1) * batch_size, batch_size):
        items = [dataset[i] for i in range(start, start + batch_size)]
        batches.append({k: torch.stack([it[k] for it in items]) for k in items[0]})

    def now():
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def step(batch):
        """One training step; returns the seconds of its forward, backward and update phases."""
        start = now()
        with torch.no_grad():  # as training did before tokens were cached (training/tokens.py)
            s1, s2 = tokenizer.encode(batch["x"].to(device), half=True)
        loss = _step_loss(module, {**batch, "s1": s1, "s2": s2}, device, precision=precision)
        forward = now()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = now()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        end = now()
        return forward - start, backward - forward, end - backward

    def peak_bytes():
        if cuda:
            return torch.cuda.max_memory_allocated(device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    peak_before = peak_bytes()
    step(batches[0])  # warm-up: allocator, optimiser state
    phases = np.array([step(batch) for batch in batches[1:]])
    peak_after = peak_bytes()
    middle = phases[np.argsort(phases.sum(axis=1))[len(phases) // 2]]  # the median step, by its phases
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in predictor.parameters())
    return {
        "mode": mode, "step_s": float(middle.sum()), "forward_s": float(middle[0]),
        "backward_s": float(middle[1]), "update_s": float(middle[2]), "steps": steps,
        "peak_growth_mb": (peak_after - peak_before) / 2**20, "peak_mb": peak_after / 2**20,
        "trainable": trainable, "predictor_params": total, "tokens_per_step": batch_size * (lookback + horizon - 1),
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads",
    }


def flops_per_token(n_layers: int, d_model: int, ff_dim: int, seq: int, lora: bool) -> float:
    """Training FLOPs per token of the predictor's transformer blocks (matmuls only).

    Forward: 2 x (4 d^2 attention projections + 3 d f SwiGLU) per layer, plus attention
    scores and values 2 x 2 x seq x d (causal: half of that on average). Backward: the
    input gradients cost one forward again; weight gradients another, which LoRA skips
    for every frozen matrix (its own low-rank weights are negligible).
    """
    dense = 2 * (4 * d_model * d_model + 3 * d_model * ff_dim)
    attention = 2 * 2 * seq * d_model / 2
    forward = n_layers * (dense + attention)
    backward = n_layers * (dense + attention) + (0 if lora else n_layers * dense)
    return forward + backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                        help="samples per step (default: the training default, %(default)s)")
    parser.add_argument("--lookback", type=int, default=128)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--precision", choices=TRAINING_PRECISIONS, default="float32")
    parser.add_argument("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_mode(args.worker, args.steps, args.batch_size, args.lookback, args.horizon, args.device,
                                  args.precision)))
        return

    # On CPU a second run of each mode measures memory with a fixed mmap threshold (see above).
    environments = [os.environ]
    if resolve_device(args.device).type == "cpu":
        environments.append({**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    results = {}
    for mode in MODES:
        runs = []
        for env in environments:
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps", str(args.steps),
                                  "--batch-size", str(args.batch_size), "--lookback", str(args.lookback),
                                  "--horizon", str(args.horizon), "--device", args.device,
                                  "--precision", args.precision],
                                 capture_output=True, text=True, check=True, env=env)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        results[mode] = {**runs[0], "peak_growth_mb": runs[-1]["peak_growth_mb"], "peak_mb": runs[-1]["peak_mb"]}
    full, lora = results["full"], results["lora"]
    seq = args.lookback + args.horizon - 1
    print(f"Kronos-small shape, batch {args.batch_size} x {seq} tokens, {full['device']}, {args.precision}, "
          f"median of {args.steps} steps")
    print(f"{'mode':<14} {'trainable':>12} {'s/step':>8} {'forward':>8} {'backward':>9} {'update':>7} "
          f"{'peak growth MB':>15} {'time/full':>10} {'memory/full':>12}")
    for r in results.values():
        print(f"{r['mode']:<14} {r['trainable']:>12,} {r['step_s']:>8.3f} {r['forward_s']:>8.3f} "
              f"{r['backward_s']:>9.3f} {r['update_s']:>7.3f} {r['peak_growth_mb']:>15.0f} "
              f"{r['step_s'] / full['step_s']:>10.2f} {r['peak_growth_mb'] / full['peak_growth_mb']:>12.2f}")
    print("goals for LoRA: time per step <= 0.60x, peak memory growth <= 0.50x of full fine-tuning")
    # LoRA still runs the whole forward and the backward through every frozen layer (the
    # event embedding at the input is trained): its forward alone bounds what it can save.
    print(f"LoRA's forward alone is {lora['forward_s'] / full['step_s']:.2f}x of a full fine-tuning step; "
          f"its backward is {lora['backward_s'] / full['backward_s']:.2f}x of full's backward")

    # Achieved FLOP rate here, from the measured LoRA step and the FLOP model.
    small = dict(n_layers=8, d_model=512, ff_dim=1024)
    achieved = flops_per_token(**small, seq=seq, lora=True) * lora["tokens_per_step"] / lora["step_s"]
    print(f"achieved here: {achieved / 1e9:.1f} GFLOP/s (LoRA, transformer matmuls only)")

    # A monthly crypto retrain of Kronos-base: the bundled crypto class over two years
    # (hourly BTCUSD + three daily series), every bar an origin (stride 1), 5 epochs.
    samples = 17_520 + 3 * 730
    tokens = samples * seq * 5
    per_token = flops_per_token(**KRONOS_BASE, seq=seq, lora=True)
    total = per_token * tokens * 1.15  # + tokenizer encode and the inner validation pass
    print(f"Kronos-base monthly retrain: {samples:,} samples x {seq} tokens x 5 epochs = {tokens / 1e6:.0f}M tokens, "
          f"{total / 1e15:.1f} PFLOP")
    for precision, peak in RTX_4060_PEAK.items():
        for mfu in (0.25, 0.40):
            hours = total / (peak * mfu) / 3600
            print(f"  RTX 4060 {precision} at {mfu:.0%} of peak: {hours:.2f} h")
    print(f"  at the rate achieved here ({full['device']}): {total / achieved / 3600:.1f} h")


if __name__ == "__main__":
    main()
