"""Eval and train transforms from a model's input config, built by timm (`timm.data.create_transform`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import AugmentOp, posterize

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
    transform = create_transform(img_size, is_training=True, mean=tuple(mean), std=tuple(std),
                                 interpolation=interpolation, **augment)
    for op in _augment_ops(transform):
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_any_bits
    return transform


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, with 0 bits kept giving the black image it meant: RandAugment's 'inc1' posterize reaches
    0 bits at magnitude 10, which Pillow 11+ refuses (older Pillow returned a black image)."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep, **kwargs)


def _augment_ops(transform: Any) -> list[AugmentOp]:
    """The timm auto-augment ops inside a composed transform (RandAugment, AutoAugment, AugMix)."""
    ops = []
    for t in getattr(transform, "transforms", ()):
        ops += [op for op in getattr(t, "ops", ()) if isinstance(op, AugmentOp)]
        ops += [op for sub in getattr(t, "policy", ()) for op in sub if isinstance(op, AugmentOp)]
    return ops
