"""Tokens computed once: a training step with the frozen tokenizer's tokens cached, against
the step as it was (tokenizer encode in every step of every epoch).

Kronos-small-shaped predictor with LoRA (the training default) and a Kronos-Tokenizer-base-
shaped tokenizer (random weights), real windows of the bundled crypto data (128 + 16
bars), batch 32, CPU float32. In the same run:

- "encode every step" (before): the tokenizer encodes the batch's windows, then the
  training step (`training.loop._step_loss`, backward, clipping, AdamW);
- "tokens cached" (now, epochs 2 and later, and epoch 1 too once the cache exists): the
  same step on the tokens read from the cache;
- the one-off costs: encoding every window once (`training.tokens.window_tokens`, cold)
  and reading them back from the cache folder (warm, a later run or a resumed one).

Steps alternate between the two variants on the same batches; medians are compared.

    python bench/token_cache.py
    python bench/token_cache.py --steps 6 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.events import EventVocabulary
from kronos_rolling.data.store import DataStore
from kronos_rolling.model.config import MODEL_SIZES, LoraSettings
from kronos_rolling.model.events import EventEmbedding
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.lora import attach_lora
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.training.loop import ConditionedKronos, _step_loss
from kronos_rolling.training.tokens import TokenizedWindows, window_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each variant")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--windows", type=int, default=2048, help="windows encoded for the one-off cost")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    spec = MODEL_SIZES["small"]
    tokenizer = KronosTokenizer.from_config(spec.tokenizer).eval()
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    predictor = Kronos.from_config(spec.predictor)
    for p in predictor.parameters():
        p.requires_grad_(False)
    store = DataStore()
    calendar = store.events()
    vocabulary = EventVocabulary.from_types(calendar.event_types())
    module = ConditionedKronos(attach_lora(predictor, LoraSettings()), EventEmbedding(vocabulary.size, 512)).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    dataset = BarWindowDataset(store, store.symbols_for("crypto"), "2017-09-01", "2019-09-01", 128, 16, vocabulary,
                               calendar=calendar, max_samples=args.windows, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tokens = window_tokens(dataset, tokenizer, cpu, Path(tmp))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        window_tokens(dataset, tokenizer, cpu, Path(tmp))
        warm = time.perf_counter() - start

    windows = TokenizedWindows(dataset, tokens)
    raw = DataLoader(dataset, batch_size=args.batch_size)
    cached = DataLoader(windows, batch_size=args.batch_size)

    def step(batch) -> None:
        loss = _step_loss(module, batch, cpu)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    def before(batch) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            s1, s2 = tokenizer.encode(batch["x"], half=True)
        step({**batch, "s1": s1, "s2": s2})
        return time.perf_counter() - start

    def now(batch) -> float:
        start = time.perf_counter()
        step(batch)
        return time.perf_counter() - start

    times_before, times_now, times_encode, same = [], [], [], True
    for index, (raw_batch, cached_batch) in enumerate(zip(raw, cached)):
        if index > args.steps:
            break
        start = time.perf_counter()
        with torch.no_grad():
            s1, _ = tokenizer.encode(raw_batch["x"], half=True)
        t_encode = time.perf_counter() - start
        same &= torch.equal(s1, cached_batch["s1"])
        t_before, t_now = before(raw_batch), now(cached_batch)
        if index:  # the first pair warms up
            times_before.append(t_before)
            times_now.append(t_now)
            times_encode.append(t_encode)

    b, n, e = statistics.median(times_before), statistics.median(times_now), statistics.median(times_encode)
    print(f"Kronos-small + LoRA, Tokenizer-base shape, 128+16 bars, batch {args.batch_size}, CPU float32, "
          f"{args.threads} thread(s), {args.steps} steps each; load avg {os.getloadavg()[0]:.1f}")
    print(f"step, encode every step (before):  {b * 1e3:8.1f} ms")
    print(f"step, tokens cached (epoch >= 2):  {n * 1e3:8.1f} ms   -> {n / b:.2f}x the time, {b / n:.2f}x faster")
    print(f"encode of one batch alone:         {e * 1e3:8.1f} ms   = {e / (n + e):.1%} of a step that encodes "
          f"(what caching removes from every step)")
    print(f"tokens of {len(dataset)} windows: encoded once in {cold:.1f} s ({cold / len(dataset) * 1e3:.2f} ms each), "
          f"read back from the cache in {warm:.2f} s")
    print(f"cached tokens equal a fresh encode of the same batches: {same}")


if __name__ == "__main__":
    main()
