"""Train augmentation of a whole uint8 batch as tensor ops, on the batch's device (the GPU when there is one).

What timm's standard train pipeline does one PIL image at a time (random resized crop, horizontal flip, colour
jitter, normalise), done for the batch at once. Sample i's view is a pure function of its seed (counter-based
hash), so the teacher-output cache keys it by (sample, seed) as it does the PIL views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

_GRAY = (0.299, 0.587, 0.114)


def uniforms(seeds: np.ndarray, n: int) -> np.ndarray:
    """`n` uniform numbers in [0, 1) per seed (SplitMix64 of seed and counter): shape (len(seeds), n)."""
    x = (np.asarray(seeds, dtype=np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
         + np.arange(1, n + 1, dtype=np.uint64)[None, :] * np.uint64(0xBF58476D1CE4E5B9))
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class BatchAugment:
    """Random resized crop to `size` (area share in `scale`, aspect ratio in `ratio`), flip with p = 0.5,
    brightness, contrast and saturation factors in [1 - jitter, 1 + jitter], then (x / 255 - mean) / std."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], *,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 jitter: float = 0.4):
        self.size, self.scale, self.ratio, self.jitter = size, tuple(scale), tuple(ratio), jitter
        self.mean, self.std = tuple(mean), tuple(std)

    def __repr__(self) -> str:
        return (f"BatchAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, jitter={self.jitter}, "
                f"mean={self.mean}, std={self.std})")

    def boxes(self, seeds: np.ndarray, height: int, width: int) -> np.ndarray:
        """Each sample's crop (x1, y1, x2, y2) in pixels, from its seed."""
        u = uniforms(seeds, 4)
        area = height * width * (self.scale[0] + u[:, 0] * (self.scale[1] - self.scale[0]))
        log_r = math.log(self.ratio[0]) + u[:, 1] * (math.log(self.ratio[1]) - math.log(self.ratio[0]))
        aspect = np.exp(log_r)
        w = np.minimum(np.sqrt(area * aspect), width)
        h = np.minimum(np.sqrt(area / aspect), height)
        x1, y1 = u[:, 2] * (width - w), u[:, 3] * (height - h)
        return np.stack([x1, y1, x1 + w, y1 + h], axis=1)

    def __call__(self, images: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
        """`images`: uint8 (B, 3, H, W) on any device; returns float32 (B, 3, size, size), normalised."""
        b, _, height, width = images.shape
        device = images.device
        boxes = torch.as_tensor(self.boxes(seeds, height, width), dtype=torch.float32, device=device)
        rois = torch.cat([torch.arange(b, device=device, dtype=torch.float32)[:, None], boxes], dim=1)
        # sampling_ratio=-1: ceil(crop / output) samples per output pixel and axis, averaged (antialiasing)
        x = roi_align(images.float(), rois, (self.size, self.size), spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True)
        u = torch.as_tensor(uniforms(seeds, 8)[:, 4:], dtype=torch.float32, device=device)
        x = torch.where((u[:, 0] < 0.5)[:, None, None, None], x.flip(-1), x)
        lo, span = 1 - self.jitter, 2 * self.jitter
        bright, contrast, sat = ((lo + span * u[:, k])[:, None, None, None] for k in (1, 2, 3))
        gray_w = torch.tensor(_GRAY, device=device)[None, :, None, None]
        x = (x * bright).clamp_(0, 255)
        mean = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean).clamp_(0, 255)
        gray = (x * gray_w).sum(1, keepdim=True)
        x = ((x - gray) * sat + gray).clamp_(0, 255)
        mean_t = torch.tensor(self.mean, device=device)[None, :, None, None] * 255
        std_t = torch.tensor(self.std, device=device)[None, :, None, None] * 255
        return (x - mean_t) / std_t


def to_uint8_tensor(image) -> torch.Tensor:
    """A PIL RGB image as a uint8 (3, H, W) tensor (the loader's only work under BatchAugment)."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
