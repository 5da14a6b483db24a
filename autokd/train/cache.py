"""TinyViT-style teacher-output cache: top-k probabilities per (sample, augmentation seed), memory-mapped.

One .npy file per epoch under `root/<key>/`, one row per sample of the train part: the view's seed (uint32),
a filled flag, the top-k class indices (int16, int32 past 32767 classes) and probabilities (fp16). The key
hashes the teacher (name and weights), the data (name, size, labels), the train transform and the base seed,
so a run with the same teacher and views reuses rows that any earlier run (another student, another recipe)
wrote, and never reuses a row for a different view. `autokd.recipes.topk_to_probs` rebuilds the dense
target.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autokd.data.datasets import ImageDataset
from autokd.io import atomic_path, write_json

DEFAULT_TOPK = 10


def teacher_fingerprint(name: str, model: nn.Module) -> str:
    """Name plus a hash of every tensor in the state dict (so fine-tuned weights give a new key)."""
    h = hashlib.blake2b(name.encode(), digest_size=12)
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                 if value.numel() else b"")
    return h.hexdigest()


def data_fingerprint(data: ImageDataset) -> str:
    """Name, source, class names and the train labels."""
    labels = np.asarray(data.train.labels, dtype=np.int64).tobytes()
    text = json.dumps([data.name, data.source, data.classes, len(data.train)])
    return hashlib.blake2b(text.encode() + labels, digest_size=12).hexdigest()


def cache_key(teacher: str, data: str, transform: str, seed: int, topk: int) -> str:
    """A short stable digest of everything that decides a cached row."""
    text = json.dumps({"teacher": teacher, "data": data, "transform": transform, "seed": seed, "topk": topk})
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def topk_targets(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest softmax probabilities of `logits` (float32) and their class indices."""
    return logits.float().softmax(dim=-1).topk(k, dim=-1)


class TeacherCache:
    """Top-k teacher probabilities per sample and epoch, in memory-mapped .npy files under `folder`."""

    def __init__(self, folder: Path, num_samples: int, num_classes: int, topk: int, meta: dict[str, Any]):
        self.folder = Path(folder)
        self.num_samples, self.num_classes, self.topk = num_samples, num_classes, min(topk, num_classes)
        self.index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
        self.dtype = np.dtype([("seed", "<u4"), ("filled", "u1"), ("index", self.index_dtype, (self.topk,)),
                               ("prob", "<f2", (self.topk,))])
        self.meta = meta
        self._files: dict[int, np.memmap] = {}
        self.hits = self.misses = 0

    @classmethod
    def open(cls, root: Path, *, teacher: str, data: ImageDataset, transform: str, seed: int,
             topk: int = DEFAULT_TOPK) -> TeacherCache:
        """The cache for this teacher fingerprint, data, transform and seed under `root` (made when used)."""
        topk = min(topk, data.num_classes)
        key = cache_key(teacher, data_fingerprint(data), transform, seed, topk)
        meta = {"teacher": teacher, "data": data.name, "num_samples": len(data.train),
                "num_classes": data.num_classes, "topk": topk, "seed": seed, "transform": transform}
        return cls(Path(root) / key, len(data.train), data.num_classes, topk, meta)

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.npy"

    def prepare(self, epoch: int, create: bool = True) -> None:
        """Create (when `create`: one process only) and map the file of `epoch`."""
        if epoch in self._files:
            return
        path = self.path(epoch)
        if create and not path.exists():
            if not (self.folder / "meta.json").exists():
                write_json(self.folder / "meta.json", self.meta)
            with atomic_path(path) as tmp:
                np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(self.num_samples,)).flush()
        self._files[epoch] = np.load(path, mmap_mode="r+")

    def lookup(self, epoch: int, indices: np.ndarray,
               seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prob [B,k] fp16, index [B,k], found [B] bool) for the samples `indices` seen with `seeds`."""
        self.prepare(epoch, create=False)
        rows = self._files[epoch][indices]
        found = (rows["filled"] == 1) & (rows["seed"] == seeds.astype(np.uint32))
        hits = int(found.sum())
        self.hits += hits
        self.misses += len(found) - hits
        return rows["prob"], rows["index"], found

    def store(self, epoch: int, indices: np.ndarray, seeds: np.ndarray, prob: torch.Tensor,
              index: torch.Tensor) -> None:
        """Write rows for `indices` (values first, the filled flag last)."""
        self.prepare(epoch, create=False)
        rows = np.zeros(len(indices), dtype=self.dtype)
        rows["seed"] = seeds.astype(np.uint32)
        rows["index"] = index.to("cpu", torch.int64).numpy().astype(self.index_dtype)
        rows["prob"] = prob.to("cpu", torch.float16).numpy()
        rows["filled"] = 1
        self._files[epoch][indices] = rows

    def flush(self) -> None:
        for mm in self._files.values():
            mm.flush()

    def usage(self) -> dict[str, Any]:
        """Disk bytes of all epoch files, bytes mapped by this process, bytes per row, hit/miss counts."""
        files = sorted(self.folder.glob("epoch_*.npy")) if self.folder.exists() else []
        return {
            "folder": str(self.folder),
            "epochs_on_disk": len(files),
            "disk_bytes": sum(f.stat().st_size for f in files),
            "mapped_bytes": sum(mm.nbytes for mm in self._files.values()),
            "bytes_per_sample": self.dtype.itemsize,
            "topk": self.topk,
            "hits": self.hits,
            "misses": self.misses,
        }
