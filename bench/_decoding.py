"""Shared by the decoding benches: time the production decode step (`generate.decode_step`)."""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from kronos_rolling.model.generate import Sampling, TokenSequences, decode_step
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.layers import KVCache, transposed_weights


@torch.no_grad()
def step_times(model: Kronos, rows: int, lookback: int, steps: int, max_context: int,
               sampling: Sampling, device: torch.device = torch.device("cpu")) -> list[float]:
    """Seconds of each of `steps` cached single-bar steps after a `lookback`-bar window pass,
    on `rows` rows of random tokens, exactly as `generate` runs them."""
    total = lookback + steps + 1
    if total > max_context:
        raise ValueError(f"lookback + steps must stay within max_context {max_context}")
    generator = torch.Generator().manual_seed(0)
    vocab = 2 ** model.s1_bits
    columns = [torch.randint(low, high, (rows, total), generator=generator)
               for low, high in [(0, 60), (0, 24), (0, 7), (1, 32), (1, 13)]]
    sequences = TokenSequences(
        s1=torch.randint(0, vocab, (rows, total), generator=generator).to(device),
        s2=torch.randint(0, 2 ** model.s2_bits, (rows, total), generator=generator).to(device),
        stamps=torch.stack(columns, dim=-1).float().to(device),
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.eval()
    layout = transposed_weights(model) if device.type == "cpu" else contextlib.nullcontext()  # as generate does
    with layout:
        cache = KVCache(capacity=max_context)
        query_table = model.s2_query_table()
        decode_step(model, sequences, slice(0, lookback), cache, query_table, sampling)
        times = []
        sync()
        for known in range(lookback + 1, lookback + steps + 1):
            start = time.perf_counter()
            decode_step(model, sequences, slice(known - 1, known), cache, query_table, sampling)
            sync()
            times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)
