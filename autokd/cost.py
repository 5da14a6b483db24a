"""Compute cost of a model: exact MACs (fvcore, attention counted), params, latency; the budget check.

Convention: 1 FLOP in a budget = 1 multiply-add (MAC), as fvcore, timm's tables and the papers count.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from autokd.errors import AutokdError

MAX_MACS = 1e18  # far above any image model: 5.7e7 times ViT-B/16 at 224 px (17.6 G)
_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([KMGT]?)\s*(?:FLOPS?|MACS?)?\s*$", re.IGNORECASE)


def parse_macs(text: str | float | int) -> int:
    """Parse '1GFLOP', '500MFLOPs', '1.5G', '300M', '2e9' (1 FLOP = 1 MAC) into a MAC count."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _BUDGET_RE.match(str(text))
        if not match:
            raise AutokdError(
                f"cannot read budget {text!r}: use a number with an optional K/M/G/T unit, "
                "e.g. 1GFLOP, 500MFLOPs, 1.5G, 300M or 2e9 (1 FLOP = 1 multiply-add)"
            )
        value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not 0 < value <= MAX_MACS:  # also refuses inf and nan ('1e400')
        raise AutokdError(f"budget {text!r} is out of range: give a positive number of MACs up to "
                          f"{MAX_MACS:.0e}, e.g. 1GFLOP")
    return int(round(value))


def format_macs(macs: float) -> str:
    """'1.26 GMACs'-style text."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(macs) >= scale:
            return f"{macs / scale:.3g} {unit}MACs"
    return f"{macs:.0f} MACs"


@dataclass(frozen=True)
class Budget:
    """A limit on MACs, and optionally on parameters."""

    macs: int
    params: int | None = None

    @classmethod
    def parse(cls, macs: str | float | int, params: str | float | int | None = None) -> Budget:
        return cls(parse_macs(macs), None if params is None else parse_macs(params))

    def fits(self, cost: Cost) -> bool:
        return cost.macs <= self.macs and (self.params is None or cost.params <= self.params)

    def slack(self, cost: Cost) -> float:
        """Fraction of the MAC budget left unused (negative when over)."""
        return 1.0 - cost.macs / self.macs

    def __str__(self) -> str:
        text = format_macs(self.macs)
        return text if self.params is None else f"{text}, {self.params / 1e6:.3g} M params"


@dataclass(frozen=True)
class Cost:
    """The measured cost of one model at one input size."""

    macs: int
    params: int


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def _sdpa_handle(inputs, outputs) -> int:
    # MACs of softmax(q k^T) v: q k^T is (B,H,N,D)x(B,H,D,M), the product with v is (B,H,N,M)x(B,H,M,Dv).
    q, k, v = (i.type().sizes() for i in inputs[:3])
    *batch, n, d = q
    m, dv = k[-2], v[-1]
    b = 1
    for s in batch:
        b *= s
    return b * n * m * (d + dv)


def count_macs(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3) -> int:
    """Exact MACs of one forward pass at batch 1, counted by fvcore with attention included."""
    from fvcore.nn import FlopCountAnalysis

    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, h, w, dtype=param.dtype, device=param.device)
    was_training = model.training
    threads = torch.get_num_threads()
    # A batch-1 trace is all per-op overhead: extra threads only add synchronisation (0.05 s vs 0.14-0.36 s).
    torch.set_num_threads(1)
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, x)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # fvcore traces with torch.jit, deprecated in torch 2.x
            return int(analysis.total())
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)


def measure_cost(model: nn.Module, img_size: int) -> Cost:
    """MACs (fvcore) and params of a built model."""
    return Cost(macs=count_macs(model, img_size), params=count_params(model))


@torch.no_grad()
def measure_latency(
    model: nn.Module, img_size: int, device: str | torch.device = "cpu", batch_size: int = 1, repeats: int = 20
) -> float:
    """Median seconds per forward pass on `device`, after warm-up."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]
