"""Logit distillation losses on tensors: vanilla KD, DKD, DIST, NKD, logit standardisation, top-k targets.

Each loss takes student logits (B, C) and teacher logits (B, C) and treats the teacher as a constant.
Teacher probabilities p (e.g. rebuilt from a top-k cache) go in as `probs_to_logits(p) = log p`: log p
differs from the teacher's logits by one constant per row, and softmax, the row std and the Pearson
correlation of softmaxes are all blind to such a shift, so KD, DKD, DIST, NKD and logit standardisation
give the same value on log p as on the logits. The only differences are the clamp of zero probabilities
and what the cache dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation Z(z) = (z - mean) / (std + eps) per row (Sun et al. CVPR'24, unbiased std)."""
    return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + eps)


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch."""
    log_ps = F.log_softmax(student / temperature, dim=-1)
    log_pt = F.log_softmax(teacher.detach() / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)


def dkd_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD (Zhao et al. CVPR'22) as mdistiller's dkd_loss: T^2 * (alpha * TCKD + beta * NCKD)."""
    gt = F.one_hot(target, student.shape[-1]).bool()
    zs, zt = student / temperature, teacher.detach() / temperature
    # TCKD: KL between the binary (target, non-target) distributions, from log-sum-exps (no log of 0)
    log_bs, log_bt = _binary_log_probs(zs, gt), _binary_log_probs(zt, gt)
    tckd = F.kl_div(log_bs, log_bt, reduction="batchmean", log_target=True)
    # NCKD: KL between the softmaxes over the non-target classes; the target logit is pushed down by 1000
    log_ps = F.log_softmax(zs - 1000.0 * gt, dim=-1)
    log_pt = F.log_softmax(zt - 1000.0 * gt, dim=-1)
    nckd = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    return temperature**2 * (alpha * tckd + beta * nckd)


def _binary_log_probs(z: Tensor, gt: Tensor) -> Tensor:
    """log [p_target, 1 - p_target] of softmax(z), shape (B, 2)."""
    log_total = torch.logsumexp(z, dim=-1)
    log_target = z.masked_select(gt) - log_total
    log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=-1) - log_total
    return torch.stack([log_target, log_rest], dim=-1)


def dkd_warmup(epoch: float, warmup_epochs: float) -> float:
    """DKD's loss ramp min(epoch / warmup, 1); `epoch` counts from 1 as in mdistiller (fractions are fine)."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)


def dist_loss(
    student: Tensor, teacher: Tensor, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0
) -> Tensor:
    """DIST (Huang et al. NeurIPS'22): tau^2 * (beta * inter-class + gamma * intra-class (1 - Pearson))."""
    ys = F.softmax(student / tau, dim=-1)
    yt = F.softmax(teacher.detach() / tau, dim=-1)
    inter = 1.0 - _pearson(ys, yt).mean()  # each sample's row of class probabilities
    intra = 1.0 - _pearson(ys.T, yt.T).mean()  # each class's column over the batch
    return tau**2 * (beta * inter + gamma * intra)


def _pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of matching rows (eps as torchdistill's DISTLoss)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


def nkd_loss(
    student: Tensor, teacher: Tensor, target: Tensor, temperature: float = 1.0, gamma: float = 1.5
) -> Tensor:
    """NKD (Yang et al. ICCV'23) as cls_KD: -p_t^(t) log p_s^(t) - gamma T^2 sum_{i!=t} p^_t,i log p^_s,i."""
    teacher = teacher.detach()
    b, c = student.shape
    index = target[:, None]
    pt_target = F.softmax(teacher, -1).gather(1, index)  # at T = 1, as the reference
    target_term = -(pt_target * F.log_softmax(student, -1).gather(1, index)).mean()
    keep = torch.ones_like(student, dtype=torch.bool).scatter_(1, index, False)  # drop the target column
    log_ps = F.log_softmax(student[keep].view(b, c - 1) / temperature, dim=-1)
    pt = F.softmax(teacher[keep].view(b, c - 1) / temperature, dim=-1)
    return target_term - gamma * temperature**2 * (pt * log_ps).sum(-1).mean()


def topk_to_probs(values: Tensor, indices: Tensor, num_classes: int) -> Tensor:
    """Dense teacher probabilities (B, C) from cached top-k (B, k) probabilities and class indices, as in
    TinyViT: the mass left by the top-k is spread uniformly over the other classes; rows then sum to 1."""
    values = values.float()
    k = values.shape[-1]
    rest = (1.0 - values.sum(-1, keepdim=True)).clamp_min(0.0) / max(num_classes - k, 1)
    probs = rest.expand(-1, num_classes).clone().scatter_(1, indices.long(), values)
    return probs / probs.sum(-1, keepdim=True)


def probs_to_logits(probs: Tensor, min_prob: float = 1e-12) -> Tensor:
    """log p, usable as teacher logits by every loss here (see the module note); zeros clamp to min_prob."""
    return probs.float().clamp_min(min_prob).log()
