"""The training objective of a recipe: CE + kd_weight * logit loss + feature_weight * feature loss.

Typical use in a training loop:

    loss_fn = build_loss(recipe, student, teacher, sample_images)  # its params go to the optimiser
    s_tap, t_tap = feature_tap(recipe, student), feature_tap(recipe, teacher)  # None without a feature loss
    total, parts = loss_fn(student(x), y, teacher(x), epoch=epoch + 1,
                           student_features=s_tap and s_tap.get(), teacher_features=t_tap and t_tap.get())
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from autokd.errors import AutokdError
from autokd.recipes.feature_losses import (
    FeatureCapture,
    FeatureProjector,
    QKVCapture,
    fitnet_loss,
    minilm_loss,
)
from autokd.recipes.logit_losses import (
    dist_loss,
    dkd_loss,
    dkd_warmup,
    kd_loss,
    nkd_loss,
    probs_to_logits,
    standardize,
)
from autokd.recipes.recipe import Recipe


class KDLoss(nn.Module):
    """A recipe's objective; `forward` returns (total, parts), parts being the detached weighted terms
    ('ce', 'kd', 'feature' when present) that sum to total. Holds the FitNet projector, whose parameters
    must be trained with the student's."""

    def __init__(self, recipe: Recipe, projector: FeatureProjector | None = None):
        super().__init__()
        if recipe.feature_loss == "fitnet" and projector is None:
            raise ValueError("the fitnet feature loss needs a FeatureProjector (build_loss makes one)")
        self.recipe = recipe
        self.projector = projector

    def forward(
        self,
        student_logits: Tensor,
        targets: Tensor,
        teacher_logits: Tensor | None = None,
        *,
        teacher_probs: Tensor | None = None,
        student_features: Tensor | tuple[Tensor, ...] | None = None,
        teacher_features: Tensor | tuple[Tensor, ...] | None = None,
        epoch: float | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Targets are class indices (B,) or soft targets (B, C) from mixup/cutmix; DKD and NKD take their
        argmax as the target class. Give the teacher as logits or as probabilities (e.g. `topk_to_probs`
        of a cache). `epoch` counts from 1 (fractions allowed) and drives DKD's warm-up ramp; features come
        from `feature_tap`. Losses are computed in float32."""
        recipe = self.recipe
        student_logits = student_logits.float()
        ce = F.cross_entropy(student_logits, targets, label_smoothing=recipe.label_smoothing)
        parts = {"ce": recipe.ce_weight * ce}
        if recipe.loss != "none" and recipe.kd_weight > 0:
            teacher = self._teacher_logits(teacher_logits, teacher_probs)
            labels = targets if targets.ndim == 1 else targets.argmax(-1)
            parts["kd"] = recipe.kd_weight * self._logit_loss(student_logits, teacher, labels, epoch)
        if recipe.feature_loss is not None and recipe.feature_weight > 0:
            if student_features is None or teacher_features is None:
                raise ValueError(f"feature loss {recipe.feature_loss!r} needs student and teacher features")
            if recipe.feature_loss == "fitnet":
                feature = fitnet_loss(student_features, teacher_features, self.projector)
            else:
                heads = recipe.feature_params["relation_heads"]
                feature = minilm_loss(student_features, teacher_features, heads)
            parts["feature"] = recipe.feature_weight * feature
        total = sum(parts.values())
        return total, {name: value.detach() for name, value in parts.items()}

    def _teacher_logits(self, logits: Tensor | None, probs: Tensor | None) -> Tensor:
        if (logits is None) == (probs is None):
            raise ValueError("give the teacher as exactly one of teacher_logits or teacher_probs")
        return (logits.float() if probs is None else probs_to_logits(probs)).detach()

    def _logit_loss(self, student: Tensor, teacher: Tensor, labels: Tensor, epoch: float | None) -> Tensor:
        recipe, params = self.recipe, dict(self.recipe.loss_params)
        if recipe.logit_standardize:
            student, teacher = standardize(student), standardize(teacher)
        if recipe.loss == "kd":
            return kd_loss(student, teacher, **params)
        if recipe.loss == "dist":
            return dist_loss(student, teacher, **params)
        if recipe.loss == "nkd":
            return nkd_loss(student, teacher, labels, **params)
        warmup = params.pop("warmup_epochs")
        if epoch is None and warmup > 0:
            raise ValueError("DKD's warm-up ramp needs the 1-based epoch: pass epoch=")
        ramp = 1.0 if epoch is None else dkd_warmup(epoch, warmup)
        return ramp * dkd_loss(student, teacher, labels, **params)


def build_loss(recipe: Recipe, student: nn.Module, teacher: nn.Module | None, sample_batch: Tensor) -> KDLoss:
    """The recipe's KDLoss for this pair, on the student's device. With a feature loss, both models run once
    on two images of `sample_batch` (in eval mode) to size the FitNet projector or check the MiniLM widths."""
    if recipe.needs_teacher and teacher is None and not recipe.teacher_cache:
        raise AutokdError(f"recipe loss {recipe.loss!r} needs a teacher: give one, or use the 'none' preset")
    projector = None
    if recipe.feature_loss is not None:
        if teacher is None:
            raise AutokdError(f"feature_loss {recipe.feature_loss!r} needs a teacher model")
        s_out, t_out = (_sample_features(recipe, m, sample_batch[:2]) for m in (student, teacher))
        if recipe.feature_loss == "fitnet":
            projector = FeatureProjector.from_shapes(
                s_out.shape,
                t_out.shape,
                getattr(student, "num_prefix_tokens", None),
                getattr(teacher, "num_prefix_tokens", None),
            )
        else:
            cpu = [tuple(x.cpu() for x in out) for out in (s_out, t_out)]
            minilm_loss(*cpu, recipe.feature_params["relation_heads"])  # raises on a width or token mismatch
    device = next(student.parameters()).device
    return KDLoss(recipe, projector).to(device)


def feature_tap(recipe: Recipe, model: nn.Module) -> FeatureCapture | QKVCapture | None:
    """What records the features the recipe's feature loss needs during `model(x)`; `.get()` reads them."""
    if recipe.feature_loss == "fitnet":
        return FeatureCapture(model)
    if recipe.feature_loss == "minilm":
        return QKVCapture(model)
    return None


@torch.no_grad()
def _sample_features(recipe: Recipe, model: nn.Module, images: Tensor) -> Tensor | tuple[Tensor, ...]:
    tap = feature_tap(recipe, model)
    was_training = model.training
    model.eval()  # keep BN running statistics untouched
    try:
        model(images.to(next(model.parameters()).device))
        return tap.get()
    finally:
        tap.remove()
        model.train(was_training)
