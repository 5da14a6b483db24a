"""Proxies for transformer students: TF-TAS's DSS (Zhou et al., "Training-free Transformer Architecture Search",
CVPR 2022).

DSS-indicator = synaptic diversity of the multi-head self-attention (MSA) weights + synaptic saliency of the
other linear (MLP) weights, both from one SynFlow-style pass. Reference code: cvlab-yonsei/AZ-NAS @ 1eafcaf7 :
ImageNet_AutoFormer/lib/training_free/indicators/dss.py with @ eb645a60 : .../training_free/p_utils.py
(get_layer_metric_array_dss) and .../compute_indicators.py (the sum), as the AZ-NAS authors re-ran TF-TAS
(decemberzhou/TF_TAS). As that code does:

1. Every parameter and floating buffer is replaced by its absolute value (`linearize`); the net is in eval mode.
2. One all-ones image at the scoring batch's resolution (1 x 3 x H x W); R = sum of the logits; dR/dW by one
   backward pass.
3. For each MSA linear layer (qkv and the output projection): |nuclear_norm(dR/dW) * nuclear_norm(W)|.
4. For each other linear layer except the classifier (MLP fc1, fc2): sum |dR/dW * W|.
5. The classifier: sum |dR/dW * W|, counted twice (get_layer_metric_array_dss appends the head once as a
   sampled Linear and once more as the 1000-way layer); the patch-embedding conv is not counted.
6. DSS = the sum of all these terms; higher = better.

Where autokd deviates, and why: the authors pick MSA layers by AutoFormer's class name ('qkv') or a square
weight (in == out, the projection); here every nn.Linear inside a module whose class name contains
'Attention' (timm's Attention: qkv, proj; separate q/k/v too). Both agree on AutoFormer and timm ViTs unless an
MLP is square (mlp_ratio 1), which the authors' rule would count as MSA. The classifier is
`model.get_classifier()`, not "the layer with 1000 outputs". The model is not changed: the absolute values
are taken in a functional call, not in place and restored from the signs afterwards as the authors do.
Computed in float32, as theirs.

DSS reads attention blocks: a CNN (no attention module with linear layers) raises AutokdError naming 'dss'.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from autokd.errors import AutokdError
from autokd.proxies.base import Probe, Proxy, scoring_mode


def linear_roles(model: nn.Module) -> tuple[list[str], list[str], str | None]:
    """Module names of the MSA linears, the other linears, and the classifier (None if not an nn.Linear)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    head_name = next((n for n, m in model.named_modules() if m is head and isinstance(m, nn.Linear)), None)
    attention, other = [], []
    inside: set[int] = set()
    for name, module in model.named_modules():
        if "Attention" in type(module).__name__:
            inside |= {id(m) for m in module.modules()}
        if isinstance(module, nn.Linear) and name != head_name:
            (attention if id(module) in inside else other).append(name)
    return attention, other, head_name


def _dss(probe: Probe) -> dict[str, float]:
    """TF-TAS DSS: sum of nuclear-norm products over MSA linears + saliency of MLP linears and (2x) the head."""
    model = probe.model
    attention, other, head = linear_roles(model)
    if not attention:
        raise AutokdError(
            f"'dss' reads attention blocks (the linear layers of MSA modules); {type(model).__name__} has none: "
            "use 'dss' for transformer students only"
        )
    device = next(model.parameters()).device
    layers = attention + other + ([head] if head is not None else [])
    with (
        scoring_mode(model, batch_stats=False, seed=probe.ref.seed),
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device.type, enabled=False),
    ):
        params = {n: p.detach().abs() for n, p in model.named_parameters()}
        buffers = {n: b.detach().abs() if b.is_floating_point() else b for n, b in model.named_buffers()}
        weights = [params[f"{name}.weight"].requires_grad_(True) for name in layers]
        ones = torch.ones(1, *probe.batch.images.shape[1:], device=device, dtype=weights[0].dtype)
        output = functional_call(model, (params, buffers), (ones,))
        grads = torch.autograd.grad(output.sum(), weights, allow_unused=True)
    score = 0.0
    with torch.no_grad():
        for index, (name, weight, grad) in enumerate(zip(layers, weights, grads)):
            if grad is None:
                continue
            if index < len(attention):
                nuclear = torch.linalg.matrix_norm(grad, ord="nuc") * torch.linalg.matrix_norm(weight, ord="nuc")
                score += float(nuclear.abs())
            else:
                score += float((grad * weight).abs().sum()) * (2 if name == head else 1)
    return {"dss": score}


DSS = Proxy("dss", _dss, outputs=("dss",))
TRANSFORMER_PROXIES = (DSS,)
