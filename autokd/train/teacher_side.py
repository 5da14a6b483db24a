"""The teacher's side of a training run: one forward pass per batch (live) or the rows of the top-k cache."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from autokd.data.pixels import CACHE_ROOT
from autokd.recipes import Recipe, feature_tap, topk_to_probs
from autokd.teachers import Teacher
from autokd.train import distributed as D
from autokd.train.cache import TeacherCache, teacher_fingerprint, topk_targets
from autokd.train.step import Batch, TeacherOutputs

log = logging.getLogger("autokd")

DEFAULT_CACHE_DIR = CACHE_ROOT / "teacher_outputs"


class TeacherSide:
    """The teacher on the device, frozen; `outputs(images, batch)` is what every student's loss reads."""

    def __init__(self, teacher: Teacher | None, recipe: Recipe, info: D.DistInfo, *, cache: TeacherCache | None,
                 compile: bool = False, autocast: torch.dtype | None = None):
        self.teacher, self.recipe, self.info, self.cache, self.autocast = teacher, recipe, info, cache, autocast
        self.model: nn.Module | None = None
        if teacher is not None:
            t = teacher.model.to(info.device).eval()
            if info.device.type == "cuda":
                t = t.to(memory_format=torch.channels_last)
            for p in t.parameters():
                p.requires_grad_(False)
            self.model = t
        self.tap = None
        self.forward = self.model
        if compile and self.model is not None and recipe.needs_teacher:
            self.forward = torch.compile(self.model)

    def attach_tap(self) -> None:
        """Tap the live teacher's features for a feature loss (after the losses have sized their projectors
        on a sample, which a tap would otherwise capture)."""
        if self.recipe.feature_loss and self.recipe.needs_teacher and self.cache is None:
            self.tap = feature_tap(self.recipe, self.model)

    def outputs(self, images: torch.Tensor, batch: Batch, view_epoch: int, num_classes: int) -> TeacherOutputs:
        """Live logits (and features), or probabilities rebuilt from the cache (misses run live and are kept)."""
        if not self.recipe.needs_teacher:
            return TeacherOutputs()
        if self.cache is None:
            logits, features = self._live(images)
            return TeacherOutputs(logits=logits, features=features)
        prob, index, found = self.cache.lookup(view_epoch, batch.indices, batch.seeds)
        prob, index = torch.from_numpy(prob.astype(np.float32)), torch.from_numpy(index.astype(np.int64))
        if not found.all():
            miss = ~found
            rows = torch.from_numpy(miss)
            logits, _ = self._live(images[rows.to(images.device)])
            values, classes = (t.cpu() for t in topk_targets(logits, self.cache.topk))
            values = values.half()
            self.cache.store(view_epoch, batch.indices[miss], batch.seeds[miss], values, classes)
            prob[rows], index[rows] = values.float(), classes  # the stored fp16 values, so cold = warm
        device = self.info.device
        prob, index = prob.to(device, non_blocking=True), index.to(device, non_blocking=True)
        return TeacherOutputs(probs=topk_to_probs(prob, index, num_classes))

    def _live(self, images: torch.Tensor):
        with torch.inference_mode(), torch.autocast(self.info.device.type, dtype=self.autocast,
                                                    enabled=self.autocast is not None):
            logits = self.forward(images)
            features = self.tap.get() if self.tap is not None else None
        # inference tensors cannot be saved for backward: clone them into ordinary tensors
        logits = logits.float().clone()
        if features is not None:
            features = (tuple(f.clone() for f in features) if isinstance(features, tuple)
                        else features.clone())
        return logits, features

    def close(self) -> None:
        if self.tap is not None:
            self.tap.remove()
        if self.cache is not None:
            self.cache.flush()


def open_cache(teacher: Teacher, data, train_tf, seed: int, cache_dir: str | Path | None, topk: int,
               info: D.DistInfo) -> TeacherCache:
    """The top-k cache of `teacher` on these views (its fingerprint hashes the weights, on the CPU)."""
    fingerprint = teacher_fingerprint(teacher.name, teacher.model)
    cache = TeacherCache.open(Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR, teacher=fingerprint,
                              data=data, transform=repr(train_tf), seed=seed, topk=topk)
    if info.is_main:
        log.info("teacher cache: %s (top-%d, %d bytes per sample per epoch)", cache.folder, cache.topk,
                 cache.dtype.itemsize)
    return cache
