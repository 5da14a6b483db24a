"""Feature distillation: FitNet-style MSE through a learned projector, and MiniLM-v2 attention relations.

Features are what timm's `forward_features` returns: a CNN map (B, C, H, W), ViT tokens (B, N, C) or a pooled
vector (B, C). `FeatureCapture` and `QKVCapture` record them during an ordinary `model(x)` call, so they work
under DDP; attach them before wrapping the model in DDP or torch.compile.
"""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from autokd.errors import AutokdError


class FeatureProjector(nn.Module):
    """Maps a student feature onto the teacher's, for a FitNet-style MSE.

    Both features are viewed as a grid (B, C, H, W): CNN maps as they are, ViT tokens as their square
    patch grid (prefix tokens such as CLS dropped), pooled vectors as 1x1. That grid is the common space of
    heterogeneous CNN<->ViT pairs (OFA-KD's "tokens are a grid" view, without its logit-space heads).
    The student grid is resized to the teacher's (adaptive average pool when larger, bilinear when smaller),
    then a learned 1x1 conv + BN maps its channels to the teacher's. The teacher side is only reshaped,
    never learned, so the MSE cannot collapse by shrinking both sides.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        teacher_size: tuple[int, int],
        student_prefix: int = 0,
        teacher_prefix: int = 0,
    ):
        super().__init__()
        self.teacher_size = tuple(teacher_size)
        self.student_prefix, self.teacher_prefix = student_prefix, teacher_prefix
        self.proj = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(teacher_channels),
        )

    @classmethod
    def from_shapes(
        cls,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        student_prefix: int | None = None,
        teacher_prefix: int | None = None,
    ) -> FeatureProjector:
        """A projector for features of these shapes, batch included: (B, C, H, W), (B, N, C) or (B, C).
        Prefix tokens (CLS, registers) are inferred as the fewest that leave a square grid, unless given."""
        s_channels, _, s_prefix = _grid_shape(tuple(student_shape), student_prefix, "student")
        t_channels, t_size, t_prefix = _grid_shape(tuple(teacher_shape), teacher_prefix, "teacher")
        return cls(s_channels, t_channels, t_size, s_prefix, t_prefix)

    def forward(self, student: Tensor) -> Tensor:
        """The student feature in the teacher's grid layout (B, C_t, H_t, W_t)."""
        x = _to_grid(student, self.student_prefix)
        if x.shape[-2:] != self.teacher_size:
            larger = x.shape[-2] >= self.teacher_size[0] and x.shape[-1] >= self.teacher_size[1]
            if larger:
                x = F.adaptive_avg_pool2d(x, self.teacher_size)
            else:
                x = F.interpolate(x, size=self.teacher_size, mode="bilinear", align_corners=False)
        return self.proj(x)

    def target(self, teacher: Tensor) -> Tensor:
        """The teacher feature in its grid layout (no learned weights, detached)."""
        return _to_grid(teacher.detach(), self.teacher_prefix)


def fitnet_loss(student: Tensor, teacher: Tensor, projector: FeatureProjector) -> Tensor:
    """FitNet-style hint loss: MSE between the projected student feature and the teacher feature."""
    return F.mse_loss(projector(student).float(), projector.target(teacher).float())


def _grid_shape(shape: tuple[int, ...], prefix: int | None, who: str) -> tuple[int, tuple[int, int], int]:
    """(channels, (H, W), prefix tokens) of a feature of this shape."""
    if len(shape) == 4:
        return shape[1], (shape[2], shape[3]), 0
    if len(shape) == 2:
        return shape[1], (1, 1), 0
    if len(shape) == 3:
        tokens = shape[1]
        candidates = [prefix] if prefix is not None else range(min(tokens, 9))
        for p in candidates:
            side = math.isqrt(max(tokens - p, 0))
            if side > 0 and side * side == tokens - p:
                return shape[2], (side, side), p
        tried = "0-8" if prefix is None else prefix
        raise AutokdError(
            f"{who} tokens {shape} do not form a square patch grid after {tried} prefix tokens: "
            "use a square image and patch grid, or pass the number of prefix tokens"
        )
    raise AutokdError(f"{who} feature shape {shape} is not (B, C, H, W), (B, N, C) or (B, C)")


def _to_grid(x: Tensor, prefix: int) -> Tensor:
    if x.ndim == 4:
        return x
    if x.ndim == 2:
        return x[:, :, None, None]
    x = x[:, prefix:]
    side = math.isqrt(x.shape[1])
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def minilm_loss(
    student_qkv: tuple[Tensor, ...], teacher_qkv: tuple[Tensor, ...], relation_heads: int = 12
) -> Tensor:
    """MiniLM-v2 relation loss: for X in Q, K, V (B, N, D), split into A_r heads of width d_r = D / A_r, form
    softmax(X X^T / sqrt(d_r)) (B, A_r, N, N) and take KL(teacher || student) per row; mean over rows, heads,
    batch and the three relations."""
    if len(student_qkv) != len(teacher_qkv):
        raise ValueError(f"{len(student_qkv)} student relations but {len(teacher_qkv)} teacher relations")
    total = 0.0
    for xs, xt in zip(student_qkv, teacher_qkv):
        if xs.shape[:2] != xt.shape[:2]:
            raise AutokdError(
                f"MiniLM relations need the same tokens: student {tuple(xs.shape[:2])} vs teacher "
                f"{tuple(xt.shape[:2])} (batch, tokens); give both models the same image and patch size"
            )
        log_rs = _relation_log_probs(xs, relation_heads, "student")
        log_rt = _relation_log_probs(xt.detach(), relation_heads, "teacher")
        total = total + F.kl_div(log_rs, log_rt, reduction="none", log_target=True).sum(-1).mean()
    return total / len(student_qkv)


def _relation_log_probs(x: Tensor, heads: int, who: str) -> Tensor:
    b, n, d = x.shape
    if d % heads:
        raise AutokdError(
            f"MiniLM relation_heads={heads} does not divide the {who} width {d}: set "
            "feature_params.relation_heads to a common divisor of the student and teacher widths"
        )
    x = x.float().reshape(b, n, heads, d // heads).transpose(1, 2)
    return F.log_softmax(x @ x.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)


class FeatureCapture:
    """Records what `model.forward_features` returns during `model(x)` (it wraps the instance's method)."""

    def __init__(self, model: nn.Module):
        if not callable(getattr(model, "forward_features", None)):
            raise AutokdError(
                f"{type(model).__name__} has no forward_features(): FitNet needs timm's interface; "
                "build the model with timm or add forward_features / forward_head"
            )
        self.model, self.output = model, None
        original = model.forward_features

        def forward_features(*args, **kwargs):
            self.output = original(*args, **kwargs)
            return self.output

        model.forward_features = forward_features

    def get(self) -> Tensor:
        """The features of the last forward pass (each pass is read once)."""
        if self.output is None:
            raise RuntimeError("no forward pass since the last get(): call the model first")
        output, self.output = self.output, None
        return output

    def remove(self) -> None:
        vars(self.model).pop("forward_features", None)


class QKVCapture:
    """Records Q, K, V of the last attention block of a timm ViT: its `attn.qkv` Linear output, split in 3."""

    def __init__(self, model: nn.Module):
        layers = [m for n, m in model.named_modules() if n.endswith("attn.qkv") and isinstance(m, nn.Linear)]
        if not layers:
            raise AutokdError(
                f"{type(model).__name__} has no '...attn.qkv' Linear layer: MiniLM needs a timm "
                "VisionTransformer-style model; use feature_loss fitnet or none for this pair"
            )
        self.output = None
        self._handle = layers[-1].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.output = output

    def get(self) -> tuple[Tensor, Tensor, Tensor]:
        """(Q, K, V), each (B, N, D) with the heads concatenated, from the last forward pass (read once)."""
        if self.output is None:
            raise RuntimeError("no forward pass since the last get(): call the model first")
        output, self.output = self.output, None
        q, k, v = output.chunk(3, dim=-1)
        return q, k, v

    def remove(self) -> None:
        self._handle.remove()
