"""The held-out split of the TRAIN part that search scores on, and the fixed scoring batch drawn from it.

Search never touches the test split: selection uses `heldout` indices of `data.train` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from autokd.data.datasets import ImageDataset, LabeledImages, Transform
from autokd.errors import AutokdError

log = logging.getLogger("autokd")

#: the part of the training split a search scores on, and the seed that picks it; training subsets avoid it
HELDOUT_FRACTION, SPLIT_SEED = 0.1, 0


def split_indices(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of train indices into (train_idx, heldout_idx), both sorted.

    Each class gives round(n_c * val_fraction) images to the held-out part (at least one while it keeps one).
    """
    if not 0.0 < val_fraction < 1.0:
        raise AutokdError(f"held-out fraction must be between 0 and 1, got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    heldout = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        take = min(max(round(len(members) * val_fraction), 1), len(members) - 1)
        heldout.append(members[:take])
    heldout_idx = np.sort(np.concatenate(heldout)) if heldout else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), heldout_idx)
    return train_idx.astype(np.int64), heldout_idx.astype(np.int64)


def scoring_indices(labels: Sequence[int], heldout_idx: Sequence[int], batch_size: int,
                    seed: int) -> np.ndarray:
    """`batch_size` held-out indices, class-balanced by round-robin over classes in a seeded order."""
    labels = np.asarray(labels)
    heldout_idx = np.asarray(heldout_idx)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels[heldout_idx]))
    queues = [list(rng.permutation(heldout_idx[labels[heldout_idx] == c])) for c in classes]
    chosen: list[int] = []
    while len(chosen) < batch_size and any(queues):
        for queue in queues:
            if queue and len(chosen) < batch_size:
                chosen.append(int(queue.pop()))
    return np.asarray(chosen, dtype=np.int64)


def scoring_batch(
    data: ImageDataset, batch_size: int, seed: int, transform: Transform, *,
    val_fraction: float = HELDOUT_FRACTION, split_seed: int = SPLIT_SEED,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed, seeded, class-balanced batch (images [B,3,H,W], labels [B]) from the held-out train split.

    The held-out split is set by `split_seed` and stays put; `seed` picks the batch inside it. Only the B
    chosen images are decoded. A held-out split smaller than B gives all of it (with a warning).
    """
    _, heldout_idx = split_indices(data.train.labels, val_fraction, split_seed)
    idx = scoring_indices(data.train.labels, heldout_idx, batch_size, seed)
    if len(idx) < batch_size:
        log.warning("scoring batch has %d images, fewer than the %d asked: the held-out split is small",
                    len(idx), batch_size)
    images = torch.stack([transform(data.train.load_image(int(i))) for i in idx])
    labels = torch.tensor([data.train.labels[i] for i in idx], dtype=torch.long)
    return images, labels


def stratified_subset(labels: Sequence[int], n: int, seed: int, exclude: Sequence[int] = ()) -> np.ndarray:
    """`n` indices with the same share of every class (as far as n allows), none from `exclude`; sorted."""
    labels = np.asarray(labels)
    allowed = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude, dtype=np.int64))
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picked = [rng.permutation(allowed[labels[allowed] == c])[:k] for c, k in zip(classes, per)]
    return np.sort(np.concatenate(picked))


def subset_data(data: ImageDataset, train: int | None, test: int | None, seed: int) -> ImageDataset:
    """The dataset with a stratified subset of its training split (never the search's held-out scoring part)
    and of its test split."""
    if train:
        _, heldout = split_indices(data.train.labels, HELDOUT_FRACTION, SPLIT_SEED)
        data.train = SubsetImages(data.train, stratified_subset(data.train.labels, train, seed, heldout))
    if test and data.test is not None and test < len(data.test):
        data.test = SubsetImages(data.test, stratified_subset(data.test.labels, test, seed))
    return data


class SubsetImages(LabeledImages):
    """Some images of another LabeledImages, as a LabeledImages (the trainer reads its labels and images)."""

    def __init__(self, base: LabeledImages, indices: Sequence[int]):
        super().__init__([base.labels[i] for i in indices], base.transform)
        self.base, self.indices = base, [int(i) for i in indices]

    def open_image(self, index: int):
        return self.base.open_image(self.indices[index])
