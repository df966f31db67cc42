"""The GPU check, prepared to run in one go (under 10 minutes) on a GPU machine.

Measures, on the first CUDA device:

1. Kronos-base rolling fine-tune throughput, in float32 and in bf16 (the training's
   autocast): a Kronos-base-shaped predictor (12 x 832, random weights) with the training
   default LoRA (rank 8 on all seven block linears) and an event embedding, real windows
   of the bundled crypto data (128 + 16 bars, the training default), batch 32, the
   training step of `training.loop` on cached tokens (`_step_loss`, backward, clipping,
   AdamW). Tokens/s = batch x 143 / median step time.
2. The forecast decode step (`generate.decode_step`, the step `generate` runs) of
   Kronos-base at batch 1 (greedy) and batch 64 (top-p 0.9), median over the steps.
3. The retrain-time estimate for an RTX 4060 derived from them: the monthly crypto
   retrain's token count (19,710 windows x 143 tokens x 5 epochs, x 1.15 for the inner
   validation passes) times the training FLOPs per token (docs/benchmarks.md) gives the
   work; the FLOP rate measured here divided by this GPU's peak gives the utilisation
   reached; the 4060's time is the work at its peak (15.1 TFLOP/s fp32, 60 bf16 tensor)
   times that same utilisation (a bound for a GPU this model already fills; a small
   GPU is easier to fill, so the 4060's real time is likely lower).

Writes the figures as JSON (`--out`, default $OUT/gpu_check.json or ./gpu_check.json)
and prints them. `--smoke` runs the same code on CPU with tiny shapes and 2 steps, so a
test can run it anywhere (its figures mean nothing).

    python bench/gpu_check.py                 # on the GPU machine, ~3-6 minutes
    python bench/gpu_check.py --smoke --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _decoding import step_times  # noqa: E402

from kronos_rolling.data.dataset import BarWindowDataset  # noqa: E402
from kronos_rolling.data.events import EventVocabulary  # noqa: E402
from kronos_rolling.data.store import DataStore  # noqa: E402
from kronos_rolling.model.config import MODEL_SIZES, LoraSettings  # noqa: E402
from kronos_rolling.model.events import EventEmbedding  # noqa: E402
from kronos_rolling.model.generate import Sampling  # noqa: E402
from kronos_rolling.model.kronos import Kronos  # noqa: E402
from kronos_rolling.model.lora import attach_lora  # noqa: E402
from kronos_rolling.model.tokenizer import KronosTokenizer  # noqa: E402
from kronos_rolling.training.loop import ConditionedKronos, _step_loss  # noqa: E402
from kronos_rolling.training.tokens import TokenizedWindows, window_tokens  # noqa: E402

RTX_4060_PEAK = {"float32": 15.1e12, "bf16": 60.0e12}  # dense FLOP/s, NVIDIA spec sheet (Ada AD107)
# Dense peaks of GPUs this may run on (spec sheets); others: pass --peak-fp32/--peak-bf16.
KNOWN_PEAKS = {"H200": (67e12, 989e12), "H100": (67e12, 989e12), "A100": (19.5e12, 312e12),
               "L4": (30.3e12, 121e12), "RTX 4090": (82.6e12, 165e12), "RTX 4060": (15.1e12, 60e12)}
RETRAIN_WINDOWS, LOOKBACK, HORIZON, EPOCHS, OVERHEAD = 19_710, 128, 16, 5, 1.15


def flops_per_token(n_layers: int, d_model: int, ff_dim: int, seq: int) -> float:
    """LoRA training FLOPs per token of the blocks' products: forward 2(4d^2 + 3df) + attention
    2 x 2 x seq x d / 2 per layer; backward one forward again (input gradients; frozen weights
    get no weight gradients)."""
    per_layer = 2 * (4 * d_model * d_model + 3 * d_model * ff_dim) + 2 * 2 * seq * d_model / 2
    return 2 * n_layers * per_layer


def train_throughput(device, precision: str, spec, steps: int, batch_size: int, windows_cap: int) -> dict:
    torch.manual_seed(0)
    tokenizer = KronosTokenizer.from_config(spec.tokenizer).to(device).eval()
    predictor = Kronos.from_config(spec.predictor)
    for p in [*tokenizer.parameters(), *predictor.parameters()]:
        p.requires_grad_(False)
    store = DataStore()
    calendar = store.events()
    vocabulary = EventVocabulary.from_types(calendar.event_types())
    module = ConditionedKronos(attach_lora(predictor, LoraSettings()),
                               EventEmbedding(vocabulary.size, predictor.d_model)).to(device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5)
    dataset = BarWindowDataset(store, store.symbols_for("crypto"), "2017-09-01", "2019-09-01", LOOKBACK, HORIZON,
                               vocabulary, calendar=calendar, max_samples=windows_cap, seed=0)
    start = time.perf_counter()
    tokens = window_tokens(dataset, tokenizer, device)
    encode_s = time.perf_counter() - start
    loader = torch.utils.data.DataLoader(TokenizedWindows(dataset, tokens), batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    batches = iter(loader)
    for index in range(steps + 2):  # two warm-up steps
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        sync()
        begin = time.perf_counter()
        loss = _step_loss(module, batch, device, precision=precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sync()
        if index >= 2:
            times.append(time.perf_counter() - begin)
    step = statistics.median(times)
    token_count = batch_size * (LOOKBACK + HORIZON - 1)
    return {"precision": precision, "step_s": step, "tokens_per_s": token_count / step, "steps": steps,
            "batch_size": batch_size, "encode_windows": len(dataset), "encode_s": encode_s,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "loss_finite": bool(torch.isfinite(loss).item())}


def decode_figures(device, spec, steps: int) -> dict:
    torch.manual_seed(0)
    model = Kronos.from_config(spec.predictor).to(device).eval()
    out = {}
    for rows, sampling in [(1, Sampling(top_k=1)), (64, Sampling(top_p=0.9, generator=_generator(device)))]:
        times = step_times(model, rows, 256, steps, spec.max_context, sampling, device)
        out[f"batch_{rows}"] = {"step_ms": statistics.median(times) * 1e3,
                                "tokens_per_s": rows / statistics.median(times)}
    return out


def _generator(device):
    return torch.Generator(device=device).manual_seed(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 2 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peak-fp32", type=float, default=None, help="this GPU's dense fp32 FLOP/s")
    parser.add_argument("--peak-bf16", type=float, default=None, help="this GPU's dense bf16 FLOP/s")
    args = parser.parse_args()
    started = time.perf_counter()
    out = args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json"

    if args.smoke:
        device, size_name, steps, windows_cap, decode_steps = torch.device("cpu"), "tiny", 2, 64, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on the GPU machine, or pass --smoke to check the script on CPU")
        device, size_name, steps, windows_cap, decode_steps = torch.device("cuda"), "base", args.steps, 4096, 64
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    spec = MODEL_SIZES[size_name]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.processor()}"
    peak_fp32, peak_bf16 = next((peaks for key, peaks in KNOWN_PEAKS.items() if key in name), (None, None))
    peaks = {"float32": args.peak_fp32 or peak_fp32, "bf16": args.peak_bf16 or peak_bf16}

    config = spec.predictor
    per_token = flops_per_token(config.n_layers, config.d_model, config.ff_dim, LOOKBACK + HORIZON - 1)
    retrain_tokens = RETRAIN_WINDOWS * (LOOKBACK + HORIZON - 1) * EPOCHS * OVERHEAD
    report = {"device": name, "model": size_name, "smoke": args.smoke, "torch": torch.__version__,
              "flops_per_token": per_token, "retrain_tokens": retrain_tokens, "training": {}, "rtx_4060_hours": {}}
    for precision in ("float32", "bf16"):
        figures = train_throughput(device, precision, spec, steps, args.batch_size, windows_cap)
        rate = figures["tokens_per_s"] * per_token
        figures["flop_per_s"] = rate
        figures["retrain_hours_here"] = retrain_tokens / figures["tokens_per_s"] / 3600
        if peaks[precision]:
            utilisation = rate / peaks[precision]
            figures["utilisation"] = utilisation
            report["rtx_4060_hours"][precision] = (
                retrain_tokens * per_token / (RTX_4060_PEAK[precision] * utilisation) / 3600)
        report["training"][precision] = figures
        print(f"train {precision}: {figures['step_s'] * 1e3:.1f} ms/step, {figures['tokens_per_s']:,.0f} tokens/s, "
              f"{rate / 1e12:.2f} TFLOP/s, retrain here {figures['retrain_hours_here']:.3f} h", flush=True)
    report["decode"] = decode_figures(device, spec, decode_steps)
    for key, figures in report["decode"].items():
        print(f"decode {key}: {figures['step_ms']:.2f} ms/step, {figures['tokens_per_s']:,.0f} tokens/s", flush=True)
    for precision, hours in report["rtx_4060_hours"].items():
        print(f"RTX 4060 estimate, monthly crypto retrain, {precision}: {hours:.2f} h", flush=True)
    if not report["rtx_4060_hours"]:
        print("RTX 4060 estimate: this device's peak is unknown; pass --peak-fp32/--peak-bf16", flush=True)
    report["seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
