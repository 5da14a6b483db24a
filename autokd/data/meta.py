"""Dataset meta-features for the recipe recommender (AutoDistiller's knowledge base)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from autokd.data.datasets import ImageDataset


def meta_features(data: ImageDataset, sample: int = 64, seed: int = 0) -> dict[str, Any]:
    """Classes, train size, resolution (median short side of a sample), class balance (min/max count)."""
    counts = Counter(data.train.labels)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(data.train), size=min(sample, len(data.train)), replace=False)
    short_sides = [min(data.train.open_image(int(i)).size) for i in picks]  # header only, no decode
    return {
        "num_classes": data.num_classes,
        "train_size": len(data.train),
        "resolution": int(np.median(short_sides)),
        "class_balance": min(counts.values()) / max(counts.values()),
        "is_real": data.is_real,
    }
