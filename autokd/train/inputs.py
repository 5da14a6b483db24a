"""The input side of a training run: image size and normalisation, the train/held-out/test splits, loaders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from autokd.data.datasets import ImageDataset
from autokd.data.pixels import MAX_SIDE, DecodedImages
from autokd.data.split import split_indices
from autokd.data.tensor_augment import BatchAugment, to_uint8_tensor
from autokd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.teachers import Teacher
from autokd.train import distributed as D
from autokd.train.views import EpochSampler, SeededViews

HELDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class Inputs:
    """The input pipeline: size, normalisation, eval crop and interpolation (the teacher's, if any)."""

    img_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @classmethod
    def of(cls, teacher: Teacher) -> Inputs:
        return cls(teacher.img_size, tuple(teacher.mean), tuple(teacher.std), teacher.crop_pct,
                   teacher.interpolation)


def recipe_transform(augmentation: str, inputs: Inputs):
    """'none': the eval pipeline; 'standard': timm's train pipeline; 'tensor': the image as a uint8 tensor (the
    batch is augmented on the device by `batch_augment`); else a timm auto-augment string on top of timm's.
    At 64 px or less, random resized crops keep at least half the image (timm's 8% is for ImageNet)."""
    i = inputs
    if augmentation == "none":
        return eval_transform(i.img_size, i.mean, i.std, i.crop_pct, i.interpolation)
    if augmentation == "tensor":
        return to_uint8_tensor
    kwargs: dict[str, Any] = {"scale": crop_scale(i.img_size)} if i.img_size <= 64 else {}
    if augmentation != "standard":
        kwargs["auto_augment"] = augmentation
    return train_transform(i.img_size, i.mean, i.std, i.interpolation, **kwargs)


def crop_scale(img_size: int) -> tuple[float, float]:
    """The area share a random resized crop keeps: at least half at 64 px or less, timm's 8% above."""
    return (0.5, 1.0) if img_size <= 64 else (0.08, 1.0)


def batch_augment(augmentation: str, inputs: Inputs, data: ImageDataset) -> BatchAugment | None:
    """The on-device batch augmentation of the 'tensor' preset (None for the others); it needs images of one
    size, decoded once (a small dataset)."""
    if augmentation != "tensor":
        return None
    if not any(isinstance(part, DecodedImages) for part in (data.train, getattr(data.train, "base", None))):
        raise AutokdError(f"augmentation 'tensor' works on small datasets of same-size images (at most "
                          f"{MAX_SIDE} px, kept decoded); {data.name} is not one: use augmentation 'standard'")
    return BatchAugment(inputs.img_size, inputs.mean, inputs.std, scale=crop_scale(inputs.img_size))


def train_steps_per_epoch(data: ImageDataset, recipe: Recipe, heldout: float = HELDOUT_FRACTION,
                          world_size: int = 1) -> int:
    """The optimiser steps of one epoch: what `TrainData` gives for this data, recipe and held-out share."""
    n = len(split_indices(data.train.labels, heldout, seed=0)[0]) if heldout > 0 else len(data.train)
    return (n // world_size) // (recipe.batch_size // world_size)


class TrainData:
    """Seeded train views and their sampler, the held-out split that selects checkpoints, the test split.

    With a test split and `heldout` > 0, a stratified `heldout` share of train is kept out of training and
    evaluated every epoch; the test split is read once, after the last epoch. With `heldout` = 0 nothing is
    evaluated per epoch (no selection). Without a test split the held-out share is also the final report."""

    def __init__(self, data: ImageDataset, recipe: Recipe, inputs: Inputs, info: D.DistInfo, *, seed: int,
                 heldout: float = HELDOUT_FRACTION, num_workers: int | None = None, cuda: bool = False):
        self.data, self.inputs, self.info = data, inputs, info
        i = inputs
        self.eval_tf = eval_transform(i.img_size, i.mean, i.std, i.crop_pct, i.interpolation)
        self.train_tf = recipe_transform(recipe.augmentation, inputs)
        self.augment = batch_augment(recipe.augmentation, inputs, data)
        if not 0 <= heldout < 1:
            raise AutokdError(f"the held-out share must be in [0, 1), not {heldout}")
        if data.test is None and heldout == 0:
            raise AutokdError("the data has no test split, so a held-out share of train is the only place to "
                              "measure the student: give heldout > 0")
        if heldout > 0:
            train_idx, heldout_idx = split_indices(data.train.labels, heldout, seed=0)
        else:
            train_idx, heldout_idx = np.arange(len(data.train)), np.zeros(0, dtype=np.int64)
        self.final_split = "test" if data.test is not None else "heldout"
        if recipe.batch_size % info.world_size:
            raise AutokdError(f"batch size {recipe.batch_size} does not split over {info.world_size} "
                              f"processes: give a multiple of {info.world_size} (it is the global batch)")
        self.local_batch = recipe.batch_size // info.world_size
        if (recipe.mixup > 0 or recipe.cutmix > 0) and not recipe.teacher_cache and self.local_batch % 2:
            raise AutokdError(f"mixup/cutmix pair the images of a batch, but each process gets "
                              f"{self.local_batch}: give an even batch size per process")
        if len(train_idx) < recipe.batch_size:
            raise AutokdError(f"the train split has {len(train_idx)} images, fewer than one batch of "
                              f"{recipe.batch_size}: lower batch_size in the recipe")
        if num_workers is None:  # the CPU trains on the CPU: no workers to compete with it
            per_gpu = (os.cpu_count() or 2) // max(1, torch.cuda.device_count()) - 1
            num_workers = min(8, max(1, per_gpu)) if cuda else 0
        self.loader_kw = dict(num_workers=num_workers, pin_memory=cuda, persistent_workers=num_workers > 0)
        # without augmentation every epoch shows the same view: one set of seeds (and cached rows) for all
        self.views = SeededViews(data.train, train_idx, self.train_tf, seed, vary=recipe.augmentation != "none",
                                 numpy=recipe.augmentation not in ("none", "standard", "tensor"))
        self.sampler = EpochSampler(train_idx, seed=seed, rank=info.rank, world_size=info.world_size)
        self.train_loader = DataLoader(self.views, batch_size=self.local_batch, sampler=self.sampler,
                                       drop_last=True, **self.loader_kw)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        self.heldout_images = len(heldout_idx)
        self.heldout_loader = self._eval_loader(data.train, heldout_idx) if len(heldout_idx) else None
        test_idx = np.arange(len(data.test)) if data.test is not None else None
        self.test_loader = self._eval_loader(data.test, test_idx) if data.test is not None else None
        self.final_loader = self.test_loader if data.test is not None else self.heldout_loader
        self.final_images = len(data.test) if data.test is not None else len(heldout_idx)

    def _eval_loader(self, base, indices: np.ndarray) -> DataLoader:
        shard = base.view(indices[self.info.rank::self.info.world_size], self.eval_tf)
        return DataLoader(shard, batch_size=max(self.local_batch, 64), shuffle=False, **self.loader_kw)

    def sample(self, n: int = 2) -> torch.Tensor:
        """The first `n` train images through the eval transform (to size the loss's projections)."""
        return torch.stack([self.eval_tf(self.data.train.load_image(i)) for i in range(n)])


def check_inputs(student: nn.Module, teacher: Teacher | None, data: ImageDataset, recipe: Recipe) -> None:
    """Refuse what cannot give a useful run: KD without a (trained) teacher, class counts that differ."""
    if recipe.needs_teacher:
        if teacher is None:
            raise AutokdError(f"recipe loss {recipe.loss!r} distils a teacher but none was given: give "
                              "--teacher, or use the 'none' recipe to train without KD")
        if not teacher.pretrained:
            raise AutokdError(f"teacher {teacher.name} is randomly initialised: distilling it would teach "
                              "noise; give its trained weights (--teacher-weights PATH) or use the 'none' "
                              "recipe")
        if not teacher.head_trained:
            raise AutokdError(f"teacher {teacher.name}'s weights predict other classes, so its head for these "
                              f"{data.num_classes} classes is untrained: fine-tune it first (autokd "
                              "finetune-teacher) and pass its best.pt as --teacher-weights")
    if teacher is not None and teacher.num_classes != data.num_classes:
        raise AutokdError(f"the data has {data.num_classes} classes but teacher {teacher.name}'s head has "
                          f"{teacher.num_classes}: resolve the teacher with num_classes={data.num_classes} "
                          "and fine-tune it on this data first (autokd finetune-teacher)")
    head = student.get_classifier() if hasattr(student, "get_classifier") else None
    outputs = getattr(head, "out_features", None)
    if outputs is not None and outputs != data.num_classes:
        raise AutokdError(f"the student predicts {outputs} classes but the data has {data.num_classes}: "
                          f"build it with num_classes={data.num_classes}")
