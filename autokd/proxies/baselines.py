"""Baseline zero-cost proxies that DisWOT must beat: NASWOT, SynFlow, grad-norm, and plain params and MACs.

All ignore the teacher. Higher = better for each, as the literature ranks with them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from autokd.proxies.base import Probe, Proxy, scoring_mode


def _naswot(probe: Probe) -> dict[str, float]:
    """NASWOT (Mellor et al. 2021): log|det K| with K = sum over activations of c c^T + (1-c)(1-c)^T.

    c is the binary code (pre-activation > 0) of every ReLU/GELU/SiLU unit for each image of the batch, so
    K_ij counts the units on which images i and j agree; distinct codes (a more expressive net) give a larger
    log-det.
    Read from the shared forward pass (BatchNorm on batch statistics).
    """
    kernel = probe.outputs.activation_kernel
    return {"naswot": float(torch.linalg.slogdet(kernel).logabsdet)}


def _synflow(probe: Probe) -> dict[str, float]:
    """SynFlow (Tanaka et al. 2020): sum |theta * dR/dtheta|, R = sum of the output of |theta| on all-ones.

    Runs in float64 with every parameter replaced by its absolute value (`functional_call` on copies of the
    tensors; the model is untouched), on one all-ones image of the scoring batch's size. BatchNorm is made the
    identity (weight 1, bias 0, running mean 0, variance 1, eval) and left out of the sum, as in the authors'
    BN-free networks; this also undoes timm's zero-initialised last BN of residual blocks, which would cut every
    residual branch.
    """
    model = probe.model
    identity: dict[str, torch.Tensor] = {}
    for prefix, norm in model.named_modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            dot = f"{prefix}." if prefix else ""
            if norm.track_running_stats:
                identity[f"{dot}running_mean"] = torch.zeros_like(norm.running_mean, dtype=torch.float64)
                identity[f"{dot}running_var"] = torch.ones_like(norm.running_var, dtype=torch.float64)
            if norm.affine:
                identity[f"{dot}weight"] = torch.ones_like(norm.weight, dtype=torch.float64)
                identity[f"{dot}bias"] = torch.zeros_like(norm.bias, dtype=torch.float64)
    params = {name: p.detach().double().abs().requires_grad_(True) for name, p in model.named_parameters()
              if name not in identity}
    buffers = {name: b.double() if b.is_floating_point() else b for name, b in model.named_buffers()
               if name not in identity}
    images = probe.batch.images
    ones = torch.ones(1, *images.shape[1:], dtype=torch.float64, device=next(model.parameters()).device)
    with (
        scoring_mode(model, batch_stats=False, seed=probe.ref.seed),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        out = torch.func.functional_call(model, {**params, **buffers, **identity}, (ones,))
        grads = torch.autograd.grad(out.sum(), list(params.values()), allow_unused=True)
    with torch.no_grad():
        score = sum(float((p * g).abs().sum()) for p, g in zip(params.values(), grads) if g is not None)
    return {"synflow": score}


def _grad_norm(probe: Probe) -> dict[str, float]:
    """Grad-norm (Abdelfattah et al. 2021): sum over parameters of the L2 norm of d(mean CE)/d(param).

    One forward/backward on the scoring batch, BatchNorm on batch statistics; gradients are returned by
    autograd.grad, so the model's .grad fields are not touched.
    """
    model = probe.model
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    with (
        scoring_mode(model, batch_stats=True, seed=probe.ref.seed),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        loss = F.cross_entropy(model(probe.batch.images.to(device)), probe.batch.labels.to(device))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {"grad_norm": sum(float(g.norm()) for g in grads if g is not None)}


def _params(probe: Probe) -> dict[str, float]:
    """Parameter count (from the candidate's Cost): bigger ranks higher."""
    return {"params": float(probe.cost.params)}


def _macs(probe: Probe) -> dict[str, float]:
    """MACs at the scoring batch's image size (from the candidate's Cost): bigger ranks higher."""
    return {"macs": float(probe.cost.macs)}


NASWOT = Proxy("naswot", _naswot, outputs=("naswot",), reads_activation_codes=True)
SYNFLOW = Proxy("synflow", _synflow, outputs=("synflow",))
GRAD_NORM = Proxy("grad_norm", _grad_norm, outputs=("grad_norm",))
PARAMS = Proxy("params", _params, outputs=("params",))
MACS = Proxy("macs", _macs, outputs=("macs",))
