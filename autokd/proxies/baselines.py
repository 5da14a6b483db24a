"""Baseline zero-cost proxies that DisWOT must beat: NASWOT, SynFlow, grad-norm, and plain params and MACs.

All ignore the teacher. Higher = better for each, as the literature ranks with them.
"""

from __future__ import annotations

import copy

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

    Runs on a float64 copy (the model is untouched) with every parameter replaced by its absolute value, on
    one all-ones image of the scoring batch's size. BatchNorm is made the identity (weight 1, bias 0, running
    mean 0, variance 1, eval) and left out of the sum, as in the authors' BN-free networks; this also undoes
    timm's zero-initialised last BN of residual blocks, which would cut every residual branch.
    """
    model = copy.deepcopy(probe.model).double()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    skip = set()
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            if norm.affine:
                norm.weight.fill_(1.0)
                norm.bias.zero_()
                skip |= {norm.weight, norm.bias}
        params = [p for p in model.parameters() if p not in skip]
        for p in params:
            p.abs_().requires_grad_(True)
    images = probe.batch.images
    ones = torch.ones(1, *images.shape[1:], dtype=torch.float64, device=params[0].device)
    with (
        scoring_mode(model, batch_stats=False, seed=probe.ref.seed),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        grads = torch.autograd.grad(model(ones).sum(), params, allow_unused=True)
    with torch.no_grad():
        score = sum(float((p * g).abs().sum()) for p, g in zip(params, grads) if g is not None)
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
