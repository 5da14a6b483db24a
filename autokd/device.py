"""Turn `--device` into a torch.device, or a one-line error when this machine cannot give it."""

from __future__ import annotations

import torch

from autokd.errors import AutokdError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' is this process's GPU (cuda:`local_rank`) when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AutokdError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AutokdError(f"--device {name}: this machine has no usable CUDA GPU; use --device cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise AutokdError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s); use cuda:0 "
                          f"to cuda:{torch.cuda.device_count() - 1}")
    return device


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype of training on `device`: bf16 on a CUDA GPU, None (full precision) elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else None
