"""Seed-driven training views: the augmentation of sample i in epoch e is a pure function of (seed, e, i).

So the teacher-output cache can be keyed by (sample, seed), and the teacher and every student see the same
view; a resumed run also replays exactly the views it would have seen. The sampler yields (epoch, index)
pairs, which keeps this true in persistent DataLoader workers that never see the main process's epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from autokd.data.datasets import LabeledImages, Transform


def derive_seed(base_seed: int, epoch: int, index: int) -> int:
    """A 32-bit augmentation seed for sample `index` in `epoch` (NumPy's SeedSequence mixes the three)."""
    return int(np.random.SeedSequence([base_seed, epoch, index]).generate_state(1)[0])


@contextmanager
def seeded_rng(seed: int, numpy: bool = True) -> Iterator[None]:
    """Seed Python, NumPy (unless `numpy=False`) and torch (CPU) RNGs for the block, then restore their
    previous states. NumPy's state costs ~0.1 ms to save and restore: timm's auto-augment policies draw from
    it, its standard train pipeline does not."""
    py, pt = random.getstate(), torch.get_rng_state()
    npy = np.random.get_state() if numpy else None
    random.seed(seed)
    if numpy:
        np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # torch.manual_seed also seeds every accelerator: 0.1 ms more
    try:
        yield
    finally:
        random.setstate(py)
        if npy is not None:
            np.random.set_state(npy)
        torch.set_rng_state(pt)


class SeededViews(Dataset):
    """Train views of `base[indices]`: `views[(epoch, index)]` is (image, label, index, seed), `index` being
    the sample's index in `base`, and the transform run under `seeded_rng(derive_seed(seed, epoch, index))`.
    With `vary=False` (a deterministic transform) every epoch uses the seeds of epoch 0; `numpy=False` when
    the transform draws nothing from NumPy (timm's standard pipeline)."""

    def __init__(self, base: LabeledImages, indices: Sequence[int], transform: Transform, seed: int,
                 vary: bool = True, numpy: bool = True):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.vary = vary
        self.numpy = numpy

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = derive_seed(self.seed, epoch if self.vary else 0, index)
        image = self.base.load_image(index)
        with seeded_rng(seed, self.numpy):
            view = self.transform(image)
        return view, self.base.labels[index], index, seed


class EpochSampler(Sampler):
    """This process's share of a seeded shuffle of `indices` for one epoch, as (epoch, index) pairs.

    The order is torch's DistributedSampler (seeded by seed + epoch, rank r takes every world_size-th
    item), so the union of the processes' local batches at step s is the single-process global batch s.
    `set_epoch(epoch, skip)` starts the epoch after `skip` local samples (a resumed, interrupted epoch).
    """

    def __init__(self, indices: Sequence[int], *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.sampler = DistributedSampler(range(len(self.indices)), num_replicas=world_size, rank=rank,
                                          shuffle=shuffle, seed=seed, drop_last=True)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self.sampler)[self.skip:]
        return iter([(self.epoch, int(self.indices[i])) for i in order])

    def __len__(self) -> int:
        return len(self.sampler) - self.skip
