"""Eval and train transforms from a model's input config, built by timm (`timm.data.create_transform`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.data import create_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   crop_pct: float = 0.875, interpolation: str = "bicubic"):
    """Resize, centre crop (`crop_pct`), to tensor, normalise: timm's `is_training=False` pipeline."""
    return create_transform(img_size, is_training=False, mean=tuple(mean), std=tuple(std), crop_pct=crop_pct,
                            interpolation=interpolation)


def train_transform(img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    interpolation: str = "bicubic", **augment: Any):
    """timm's `is_training=True` pipeline (random resized crop, flip, colour jitter; `augment` overrides, e.g.
    `auto_augment='rand-m9-mstd0.5'`, `scale=(0.5, 1.0)`, `re_prob=0.25`)."""
    return create_transform(img_size, is_training=True, mean=tuple(mean), std=tuple(std),
                            interpolation=interpolation, **augment)
