"""One student's side of a training run: its model, loss, optimiser and schedule, and the optimiser step.

A Trainer holds one `StudentRun` per student; every student steps on the same batch and teacher outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from autokd.errors import AutokdError
from autokd.recipes import KDLoss, Recipe, build_loss, feature_tap
from autokd.train import distributed as D
from autokd.train.students import Student


@dataclass
class Batch:
    """One local batch on the device; `indices` (into data.train) and `seeds` key the teacher cache."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray
    seeds: np.ndarray


@dataclass
class TeacherOutputs:
    """What the loss reads from the teacher for one batch: live logits (and features) or cached probs."""

    logits: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    features: Any = None


class DistillStep(nn.Module):
    """Student forward plus the recipe's loss in one module, so DDP also syncs the loss's own parameters
    (the FitNet projector). Returns (total loss, student logits)."""

    def __init__(self, student: nn.Module, criterion: KDLoss, tap):
        super().__init__()
        self.student, self.criterion, self.tap = student, criterion, tap

    def forward(self, images, targets, teacher_logits, teacher_probs, teacher_features, epoch):
        logits = self.student(images)
        features = self.tap.get() if self.tap is not None else None
        loss, _ = self.criterion(logits, targets, teacher_logits, teacher_probs=teacher_probs,
                                 student_features=features, teacher_features=teacher_features, epoch=epoch)
        return loss, logits

    def no_weight_decay(self) -> set[str]:
        """The student's own exemptions (e.g. a ViT's position embedding), for timm's optimiser factory."""
        own = self.student.no_weight_decay() if hasattr(self.student, "no_weight_decay") else set()
        return {f"student.{name}" for name in own}


class StudentRun:
    """One student in a run: model, loss, optimiser, LR schedule, its running sums, best epoch and history."""

    def __init__(self, meta: Student, out: Path, recipe: Recipe, teacher_model: nn.Module | None,
                 sample: torch.Tensor, info: D.DistInfo, steps_per_epoch: int, *, compile: bool = False):
        self.meta, self.out, self.recipe, self.info = meta, Path(out), recipe, info
        device = info.device
        model = meta.model.to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        criterion = build_loss(recipe, model, teacher_model if recipe.needs_teacher else None, sample)
        self.tap = feature_tap(recipe, model) if recipe.feature_loss else None
        self.step_module = DistillStep(model, criterion, self.tap)
        self.trainable: nn.Module = self.step_module
        if info.distributed:
            self.trainable = DistributedDataParallel(self.step_module,
                                                     device_ids=[device.index] if device.type == "cuda" else None)
        if compile:
            self.trainable = torch.compile(self.trainable)
        self.optimizer = build_optimizer(self.step_module, recipe, fused=device.type == "cuda")
        self.scheduler = warmup_cosine(self.optimizer, recipe, steps_per_epoch)
        self.bad_loss = torch.zeros((), dtype=torch.bool, device=device)
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, correct, n
        self.best_top1, self.best_epoch = -1.0, -1
        self.history: list[dict[str, Any]] = []
        self.epoch_train: dict[str, float] = {}

    def step(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, teacher: TeacherOutputs,
             epoch: float, autocast: torch.dtype | None) -> torch.Tensor:
        """One optimiser step; adds the loss and accuracy on `labels` to the running sums; returns the loss."""
        with torch.autocast(self.info.device.type, dtype=autocast, enabled=autocast is not None):
            loss, logits = self.trainable(images, targets, teacher.logits, teacher.probs, teacher.features,
                                          epoch)
        self.bad_loss |= ~torch.isfinite(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.step_module.parameters(), self.recipe.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():  # device tensors only: no host-device sync per step
            n = len(labels)
            self.sums[0] += loss.detach().double() * n
            self.sums[1] += (logits.argmax(1) == labels).sum()
            self.sums[2] += n
        return loss

    def running(self) -> tuple[float, float]:
        """This process's mean loss and train accuracy (percent) so far in the epoch."""
        s = self.sums
        return (s[0] / s[2]).item(), (100 * s[1] / s[2]).item()

    def close_epoch(self, images_per_second: float) -> None:
        """Sum the epoch's running figures over processes and start new ones."""
        totals = D.all_sum(self.info, self.sums.clone())
        self.sums = torch.zeros_like(self.sums)
        self.epoch_train = {"train_loss": (totals[0] / totals[2]).item(),
                            "train_top1": (100 * totals[1] / totals[2]).item(),
                            "images_per_second": images_per_second}

    def check_finite(self, epoch: int, step: int) -> None:
        if D.any_true(self.info, bool(self.bad_loss.item())):
            last = self.out / "last.pt"
            kept = (f"the last good checkpoint is {str(last)!r}" if last.exists()
                    else "no checkpoint was written")
            raise AutokdError(f"{self.meta.name}: the loss became NaN or inf in epoch {epoch + 1} (by step "
                              f"{step}); {kept}: lower the learning rate or set grad_clip")

    def state(self) -> dict[str, Any]:
        """This student's part of a checkpoint (the running sums summed over processes)."""
        return {"model": cpu_state(self.model), "loss": cpu_state(self.step_module.criterion),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": None,  # bf16 autocast needs no gradient scaler
                "best_top1": self.best_top1, "best_epoch": self.best_epoch, "history": self.history,
                "epoch_sums": D.all_sum(self.info, self.sums.clone()).tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load `state()` back; refuses a checkpoint of another student in one line."""
        try:
            self.model.load_state_dict(state["model"])
            self.step_module.criterion.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.best_top1, self.best_epoch, self.history = (state["best_top1"], state["best_epoch"],
                                                             state["history"])
            sums = state["epoch_sums"]
        except (RuntimeError, KeyError, ValueError) as e:
            raise AutokdError(f"checkpoint {str(self.out / 'last.pt')!r} does not fit this student "
                              f"({type(e).__name__}); resume with the original student or start afresh"
                              ) from None
        if self.info.is_main:  # the interrupted epoch's running sums, already summed over processes
            self.sums = torch.tensor(sums, dtype=torch.float64, device=self.info.device)

    def student_file(self, img_size: int, num_classes: int, classes: list[str]) -> dict[str, Any]:
        """What best.pt holds: the weights and what is needed to rebuild and use the student."""
        spec = self.meta.spec.as_dict() if self.meta.spec is not None else None
        return {"format": "autokd-student-1", "model": cpu_state(self.model), "student": self.meta.name,
                "spec": spec, "num_classes": num_classes, "img_size": img_size, "epoch": self.best_epoch,
                "top1": self.best_top1, "classes": classes}

    def remove_tap(self) -> None:
        if self.tap is not None:  # give the model back its own forward_features
            self.tap.remove()


def build_optimizer(module: nn.Module, recipe: Recipe, *, fused: bool = False) -> torch.optim.Optimizer:
    """timm's optimiser factory with the recipe's settings (weight decay off for norms, biases, embeddings)."""
    from timm.optim import create_optimizer_v2

    r = recipe
    kwargs: dict[str, Any] = {"betas": (r.momentum, 0.999)} if r.optimizer == "adamw" else {"momentum": r.momentum}
    if fused:
        kwargs["fused"] = True  # one kernel for the whole update
    opt = "adamw" if r.optimizer == "adamw" else "momentum"  # timm's "momentum" is SGD without Nesterov
    return create_optimizer_v2(module, opt=opt, lr=r.lr, weight_decay=r.weight_decay, **kwargs)


def warmup_cosine(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """Linear warm-up over `recipe.warmup_epochs`, then cosine to zero, stepped per optimiser step."""
    total = recipe.epochs * steps_per_epoch
    warm = min(int(round(recipe.warmup_epochs * steps_per_epoch)), total - 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
