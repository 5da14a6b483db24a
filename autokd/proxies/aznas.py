"""AZ-NAS (Lee and Ham, CVPR 2024): expressivity, progressivity, trainability and complexity of a network.

The four scores are read from the outputs of the model's blocks (`autokd.proxies.base.blocks`) in one forward
and one backward pass on Gaussian noise; the authors rank candidates by each and sum log(rank / N) over the four,
which autokd leaves to the aggregation (against a fixed reference sample).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from autokd.errors import AutokdError
from autokd.proxies.base import Probe, Proxy, blocks, reinit_, scoring_mode

#: the authors' log(p + eps) in the eigen-entropy, and 1 / (sigma + eps) in trainability
ENTROPY_EPS = 1e-8
SIGMA_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class BlockRecord:
    """One block call: its input (a leaf that requires grad) and its output, (B, C, H, W) or tokens (B, N, C)."""

    input: torch.Tensor
    output: torch.Tensor


def as_rows(features: torch.Tensor) -> torch.Tensor:
    """Features as rows of channels: (B*H*W, C) from (B, C, H, W), (B*N, C) from tokens (B, N, C)."""
    if features.dim() == 4:
        return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    if features.dim() == 3:
        return features.reshape(-1, features.shape[2])
    raise AutokdError(
        f"'aznas' reads block outputs of shape (B, C, H, W) or (B, N, C), got {tuple(features.shape)}: "
        "drop 'aznas' for this model"
    )


def eigen_entropy(features: torch.Tensor) -> float:
    """Expressivity of one block: entropy of the normalised eigenvalues of the channel covariance.

    Rows (B*H*W or B*N) centred per channel, Sigma = F^T F / rows, p = eig(Sigma) / sum, -sum p log(p + 1e-8).
    Eigenvalues are clamped at 0 (rounding makes the smallest slightly negative); nan for features with no
    variance at all (a cell of `none` ops outputs zeros).
    """
    rows = as_rows(features.detach()).float()
    rows = rows - rows.mean(0, keepdim=True)
    sigma = (rows.T @ rows).double() / rows.shape[0]
    s = torch.linalg.eigvalsh(sigma).clamp_min(0)
    p = s / s.sum()
    return float(-(p * torch.log(p + ENTROPY_EPS)).sum())


def block_trainability(grad_in: torch.Tensor, grad_out: torch.Tensor) -> float | None:
    """2 - sigma - 1/sigma of M = g_in^T g_out / rows (sigma its largest singular value); None for identity blocks.

    A grad_in of higher resolution is folded onto grad_out's grid by PixelUnshuffle (zero-padded first when the
    sizes do not divide), as the authors do at a stride.
    """
    if grad_in.shape == grad_out.shape and torch.equal(grad_in, grad_out):
        return None
    if grad_in.dim() == 4 and grad_out.dim() == 4 and grad_in.shape[2:] != grad_out.shape[2:]:
        stride = math.ceil(grad_in.shape[2] / grad_out.shape[2])
        pad_h = grad_out.shape[2] * stride - grad_in.shape[2]
        pad_w = grad_out.shape[3] * stride - grad_in.shape[3]
        grad_in = F.pixel_unshuffle(F.pad(grad_in, (0, pad_w, 0, pad_h)), stride)
    grid = slice(2, None) if grad_out.dim() == 4 else slice(0, 2)
    if (
        grad_in.dim() != grad_out.dim()
        or grad_in.shape[0] != grad_out.shape[0]
        or grad_in.shape[grid] != grad_out.shape[grid]
    ):
        raise AutokdError(
            f"'aznas' cannot match a block's input gradient {tuple(grad_in.shape)} to its output gradient "
            f"{tuple(grad_out.shape)}: drop 'aznas' for this model"
        )
    g_in, g_out = as_rows(grad_in).float(), as_rows(grad_out).float()
    matrix = (g_in.T @ g_out).double() / g_out.shape[0]
    sigma = float(torch.linalg.matrix_norm(matrix, ord=2))
    return 2.0 - sigma - 1.0 / (sigma + SIGMA_EPS)


def record_blocks(model: nn.Module, images: torch.Tensor) -> list[BlockRecord]:
    """Run `model` on `images` (call with grad enabled), keeping each block's input and output.

    Each block's input is replaced by a detached leaf (its clone enters the block), so one backward pass gives
    every block's input gradient from its own output alone.
    """
    found = blocks(model)
    if not found:
        raise AutokdError(
            f"'aznas' reads block outputs; {type(model).__name__} has no blocks (modules named like "
            "BasicBlock, Bottleneck or Block): drop 'aznas' for this model"
        )
    inputs: dict[int, list[torch.Tensor]] = {}
    records: list[BlockRecord] = []

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        leaf = args[0].detach().requires_grad_(True)
        inputs.setdefault(id(module), []).append(leaf)
        return (leaf.clone(), *args[1:])

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        records.append(BlockRecord(inputs[id(module)].pop(), output))

    handles = [h for b in found for h in (b.register_forward_pre_hook(pre_hook), b.register_forward_hook(hook))]
    try:
        forward = getattr(model, "forward_features", None)
        (forward if callable(forward) else model)(images)
    finally:
        for handle in handles:
            handle.remove()
    if not records:
        raise AutokdError(f"'aznas' found blocks in {type(model).__name__} but none ran: drop 'aznas' for it")
    return records


def worst_if_nan(value: float) -> float:
    """The authors' reading of a score left undefined by the network (nan): the worst, -inf."""
    return -math.inf if math.isnan(value) else value


def rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random +-1 tensor shaped and placed like `like`, drawn on the CPU from `generator`."""
    signs = torch.randint(0, 2, like.shape, generator=generator, dtype=torch.int8) * 2 - 1
    return signs.to(device=like.device, dtype=like.dtype)


def _aznas(probe: Probe) -> dict[str, float]:
    """AZ-NAS's expressivity, progressivity, trainability (higher = better each) and complexity (MACs).

    Reference: cvlab-yonsei/AZ-NAS @ d41d5245 : NB201/ZeroShotProxy/compute_az_nas_score.py with
    NB201/custom/tss_model.py and NB201/tss_general.ipynb (NAS-Bench-201), @ c84b00b8 :
    ImageNet_MBV2/ZeroShotProxy/compute_az_nas_score.py (CNNs) and @ 3d6e8c4b :
    ImageNet_AutoFormer/lib/training_free/indicators/az_nas.py (ViTs):
    - input: standard normal noise shaped like the scoring batch (all three codes score on torch.randn; the
      NB201 notebook gives real images only to zico, snip, grasp, te_nas and gradsign), drawn from the reference
      seed, so the scoring batch's images are not read;
    - features = for CNNs the stem's output (the first block's input: tss_model.extract_cell_features starts with
      it) and then each block's output, (B*H*W, C); for ViTs the block outputs alone, (B*N, C). expressivity = sum
      of the eigen-entropies of the channel covariances; progressivity = min over consecutive features of the
      entropy increase (the authors define none for ViTs: NaN then);
    - trainability: a Rademacher (+-1) vector at each block output is sent back to the block input by autograd,
      PixelUnshuffle on a resolution change, M = g_in^T g_out / (B*H*W), score 2 - sigma - 1/sigma of its
      largest singular value; the mean over blocks. An identity block (g_in == g_out) scores -inf in the CNN
      code, so one makes the mean -inf; the ViT code skips it;
    - a score left nan (features with no variance, e.g. an all-`none` NAS-Bench-201 cell) is -inf, as the
      authors return it;
    - complexity = the candidate's MACs (`probe.cost`; the NB201 notebook reads the benchmark's FLOPs).
    autokd's choices: BatchNorm on batch statistics (the CNN code runs in train mode); block input = what enters
    each block (the authors pair consecutive features, which is the same for chained blocks); eigenvalues in
    float64 clamped at 0 (the authors' float32 eigvalsh turns some rank-deficient covariances into nan through
    rounding, which they then rank last). CNNs are re-initialised as the CNN code does (Kaiming-normal fan-in,
    norms 1/0) on a copy: as built, timm ResNets zero the last BatchNorm of every residual branch, so each block
    starts as the identity of its input and expressivity and trainability read the shortcut alone; ViTs are
    scored as built, as the AutoFormer code does.
    """
    model, device = probe.model, next(probe.model.parameters()).device
    generator = torch.Generator().manual_seed(probe.ref.seed)
    with torch.inference_mode(False):  # scoring may run in inference mode: the copy and input need autograd
        if any(isinstance(m, nn.Conv2d) for b in blocks(model) for m in b.modules()):
            model = copy.deepcopy(model)
            reinit_(model, generator)
        noise = torch.randn(probe.batch.images.shape, generator=generator, dtype=probe.batch.images.dtype).to(device)
    with (
        scoring_mode(model, batch_stats=True, seed=probe.ref.seed),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        records = record_blocks(model, noise)
        tokens = records[0].output.dim() == 3
        features = [r.output for r in records] if tokens else [records[0].input, *(r.output for r in records)]
        entropies = [eigen_entropy(f) for f in features]
        grads_out = [rademacher(r.output, generator) for r in records]
        grads_in = torch.autograd.grad(
            [r.output for r in records], [r.input for r in records], grads_out, allow_unused=True
        )
    identity = None if tokens else -math.inf
    scores = [block_trainability(g_in, g_out) for g_in, g_out in zip(grads_in, grads_out) if g_in is not None]
    scores = [identity if s is None else s for s in scores]
    scores = [s for s in scores if s is not None]
    steps = np.diff(entropies)
    return {
        "az_expressivity": worst_if_nan(float(np.sum(entropies))),
        "az_progressivity": math.nan if tokens or not steps.size else worst_if_nan(float(np.min(steps))),
        "az_trainability": worst_if_nan(float(np.mean(scores)) if scores else math.nan),
        "az_complexity": float(probe.cost.macs),
    }


AZNAS = Proxy("aznas", _aznas, outputs=("az_expressivity", "az_progressivity", "az_trainability", "az_complexity"))
AZNAS_PROXIES: tuple[Proxy, ...] = (AZNAS,)
