"""Data-parallel training under torchrun: process group setup and the few collectives training needs.

`torchrun --nproc_per_node=N -m cnnc train SPEC ...` runs N processes (gloo on CPU, NCCL on CUDA).
Each takes its share of every batch (the batch size stays the global one); gradients are averaged
by DistributedDataParallel; metrics are summed over processes; only rank 0 writes anything.
Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join_world(device_type: str) -> World:
    """Join torchrun's process group, if this process was started by torchrun with N > 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def leave_world(world: World) -> None:
    """Destroy the process group. Whatever still holds it (DistributedDataParallel) is collected first:
    a gloo group that outlived destroy_process_group into the interpreter's exit aborted the process
    (SIGABRT, "terminate called without an active exception") in about 1 run of 7."""
    if world.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def sum_over_processes(world: World, values: Tensor) -> Tensor:
    if world.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def max_over_processes(world: World, values: Tensor) -> Tensor:
    if world.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def gather(world: World, value: Any) -> list[Any]:
    """Every process's `value`, in rank order (on every process)."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def share_buffers(world: World, module: nn.Module) -> None:
    """Give every process rank 0's buffers (batch-norm statistics drift apart in the last step)."""
    if world.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
