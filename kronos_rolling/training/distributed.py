"""Running the same training under `torchrun --nproc-per-node N` (DistributedDataParallel).

NCCL on GPU, gloo on CPU; only rank 0 writes checkpoints and talks to MLflow. Which rank
this process is comes from torchrun's variables through the settings (`Distributed`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kronos_rolling.settings import Distributed


def init_distributed(dist_info: Distributed, device: torch.device) -> None:
    if dist_info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _all_mean(value: float, count: int, dist_info: Distributed) -> float:
    """Sample-weighted mean of a per-rank average across ranks."""
    if not dist_info.enabled:
        return value
    totals = torch.tensor([value * count, float(count)], dtype=torch.float64)
    dist.all_reduce(totals)
    return float(totals[0] / max(totals[1], 1.0))
