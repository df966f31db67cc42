"""Running the same training under `torchrun --nproc-per-node N` (DistributedDataParallel).

NCCL on GPU, gloo on CPU; only rank 0 writes checkpoints and talks to MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def distributed_from_env() -> Distributed:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


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
