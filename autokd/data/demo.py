"""The embedded synthetic dataset behind `make demo`: procedural images made on the fly, nothing downloaded.

Each class is an oriented colour grating (its angle and hue set by the class) with a random phase, frequency
jitter, a bright blob at a random place and pixel noise: learnable, not trivial, and NOT real images.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from autokd.data.datasets import ImageDataset, LabeledImages


class SyntheticImages(LabeledImages):
    """`size` procedural images of `num_classes` classes; image i is a pure function of (seed, split, i)."""

    def __init__(self, size: int, num_classes: int, img_size: int, seed: int, split: int):
        super().__init__([i % num_classes for i in range(size)])
        self.num_classes, self.img_size, self.seed, self.split = num_classes, img_size, seed, split

    def open_image(self, index: int) -> Image.Image:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return Image.fromarray(_render(self.labels[index], self.num_classes, self.img_size,
                                       np.random.default_rng((self.seed, self.split, index))))


def _render(label: int, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * label / num_classes + rng.normal(0, 0.15 * np.pi / num_classes)
    freq = rng.uniform(3.0, 5.0)
    wave = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    hue = (label / num_classes + rng.normal(0, 0.03)) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.7, 1.0), dtype=np.float32)
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.2)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    image = 0.5 + 0.3 * wave[..., None] * colour + 0.3 * blob[..., None] * rng.uniform(0, 1, 3)
    image += rng.normal(0, 0.12, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def synthetic_dataset(num_classes: int = 10, train_size: int = 2000, test_size: int = 500,
                      img_size: int = 32, seed: int = 0) -> ImageDataset:
    """The synthetic demo dataset (is_real=False): seeded, class-balanced, generated on the fly."""
    classes = [f"grating_{round(180 * c / num_classes):03d}deg" for c in range(num_classes)]
    return ImageDataset(
        name="synthetic-demo",
        classes=classes,
        train=SyntheticImages(train_size, num_classes, img_size, seed, split=0),
        test=SyntheticImages(test_size, num_classes, img_size, seed, split=1),
        is_real=False,
        source="synthetic demo images, not real data",
    )
