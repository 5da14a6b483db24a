"""torchrun support: one process per device, DistributedDataParallel, rank-0 logging and checkpoints.

Outside torchrun (no WORLD_SIZE in the environment) everything here is a no-op on a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from autokd.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank, the world size, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (NCCL on GPU, gloo on CPU), or describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and device not in ("auto", "cpu") and ":" not in device:
        device = f"{device}:{local_rank}"
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, dev)


def teardown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all processes (in place; returned for chaining)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_true(info: DistInfo, flag: bool) -> bool:
    """Whether `flag` is set on any process (each process must call it at the same point)."""
    if not info.distributed:
        return flag
    t = torch.tensor([float(flag)], device=info.device)
    return bool(all_sum(info, t).item() > 0)


def broadcast_object(info: DistInfo, obj):
    """Rank 0's `obj` on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
