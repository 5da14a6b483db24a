"""Sandwich KD training of a band's supernet, with atomic checkpoints that resume exactly.

Each step trains the band's largest and smallest subnets and `random_subnets` random in-band ones on one batch
(the sandwich rule), accumulating their gradients for one optimiser step. Each subnet's loss is the recipe's
CE + logit KD against the teacher (`KDLoss`), plus `relation_weight` times a relation loss: MiniLM-v2 Q-Q, K-K,
V-V self-attention relations of the last layer when teacher and student are transformers with the same tokens,
else the sample-relation loss on their final features (DisWOT's relation term, any pair of families).

Under torchrun each process takes every world_size-th batch of the loader and runs the same subnets (one seed),
their gradients are averaged over processes before each step, and rank 0 alone writes the checkpoint. On CUDA
the forward passes run in bf16 autocast, CNN supernets and their inputs channels_last (as `autokd train`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from autokd.device import autocast_dtype
from autokd.errors import AutokdError
from autokd.io import write_json
from autokd.proxies.base import relation_gram
from autokd.recipes import FeatureCapture, KDLoss, QKVCapture, Recipe, minilm_loss
from autokd.spaces import ArchSpec
from autokd.supernet.bands import BandSpace
from autokd.supernet.base import Supernet
from autokd.train import distributed as D
from autokd.train.checkpoint import atomic_save, rng_state, seed_everything, set_rng_state
from autokd.train.step import build_optimizer, warmup_cosine

log = logging.getLogger("autokd")

FORMAT = "autokd-supernet-1"
CHECKPOINT = "supernet.pt"
MAX_RELATION_HEADS = 12  # AutoDistil's and MiniLM-v2's count
MAX_RESAMPLES = 100  # in-band draws per random subnet before the supernet is declared too small


def sample_relation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """||G_t - G_s||_F^2 / B^2 between the row-normalised B x B sample-relation Grams of two features."""
    gs, gt = relation_gram(student), relation_gram(teacher.detach())
    return (gs - gt).pow(2).sum() / gs.shape[0] ** 2


def relation_heads(student_width: int, teacher_width: int) -> int:
    """The most relation heads (at most 12) that split both Q/K/V widths evenly."""
    common = math.gcd(student_width, teacher_width)
    return max(h for h in range(1, MAX_RELATION_HEADS + 1) if common % h == 0)


def is_transformer(model: nn.Module) -> bool:
    return any(n.endswith("attn.qkv") and isinstance(m, nn.Linear) for n, m in model.named_modules())


class TeacherTargets:
    """The frozen teacher's logits, final features and, for a transformer teacher of a ViT supernet, its
    last-layer Q, K, V: (logits, features, qkv or None) per batch."""

    def __init__(self, teacher: nn.Module, supernet: Supernet):
        self.model = teacher.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.minilm = is_transformer(teacher) and supernet.space.family == "vit"
        self.features = FeatureCapture(teacher)
        self.qkv = QKVCapture(teacher) if self.minilm else None

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...] | None]:
        logits = self.model(images).float()
        return logits, self.features.get(), self.qkv.get() if self.qkv is not None else None

    def close(self) -> None:
        self.features.remove()
        if self.qkv is not None:
            self.qkv.remove()


def subnet_loss(supernet: Supernet, spec: ArchSpec, images: Tensor, labels: Tensor, teacher: TeacherTargets,
                targets: tuple[Tensor, Tensor, Any], criterion: KDLoss, relation_weight: float) -> tuple[Tensor, str]:
    """(loss, relation kind) of one subnet on one batch."""
    skeleton = supernet.skeleton(spec)
    qkv = QKVCapture(skeleton) if teacher.minilm else None
    try:
        features, logits = supernet.forward_parts(images, spec)
        student_qkv = qkv.get() if qkv is not None else None
    finally:
        if qkv is not None:
            qkv.remove()
    teacher_logits, teacher_features, teacher_qkv = targets
    loss, _ = criterion(logits, labels, teacher_logits)
    if relation_weight <= 0:
        return loss, "none"
    if student_qkv is not None and student_qkv[0].shape[1] == teacher_qkv[0].shape[1]:
        heads = relation_heads(student_qkv[0].shape[-1], teacher_qkv[0].shape[-1])
        return loss + relation_weight * minilm_loss(student_qkv, teacher_qkv, heads), "minilm"
    # MiniLM needs the teacher's token count; a subnet with another patch grid (or a CNN) compares samples
    return loss + relation_weight * sample_relation_loss(features, teacher_features), "relation"


def sandwich_specs(supernet: Supernet, band: BandSpace, largest: ArchSpec, smallest: ArchSpec,
                   rng: random.Random, random_subnets: int = 2) -> list[ArchSpec]:
    """[largest, smallest, then `random_subnets` random in-band specs that the supernet holds]."""
    picked = []
    for _ in range(random_subnets):
        for _ in range(MAX_RESAMPLES):
            spec = band.sample(rng)
            if supernet.contains(spec):
                picked.append(spec)
                break
        else:
            raise AutokdError(f"{MAX_RESAMPLES} random specs of {band.band} were all outside the supernet: "
                              "build it from a larger pool (band_supernet(pool=...))")
    return [largest, smallest, *picked]


def sandwich_step(supernet: Supernet, specs: list[ArchSpec], images: Tensor, labels: Tensor,
                  teacher: TeacherTargets, criterion: KDLoss, optimizer: torch.optim.Optimizer, *,
                  relation_weight: float = 1.0, grad_clip: float | None = None, autocast: torch.dtype | None = None,
                  info: D.DistInfo | None = None) -> list[tuple[float, str]]:
    """One optimiser step on the summed gradients of `specs` (each loss divided by their number), averaged over
    the processes of `info`; forward passes in `autocast` when given; returns each subnet's (loss, relation kind)."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(images, autocast):
        targets = teacher(images)
    losses, kinds = [], []
    for spec in specs:
        with _autocast(images, autocast):
            loss, kind = subnet_loss(supernet, spec, images, labels, teacher, targets, criterion, relation_weight)
        (loss / len(specs)).backward()
        losses.append(loss.detach())
        kinds.append(kind)
    values = torch.stack(losses).tolist()  # one host-device sync per step
    bad = next(((spec, v) for spec, v in zip(specs, values) if not math.isfinite(v)), None)
    if average_gradients(supernet, info, bad is not None):
        where = f"{bad[1]} on {bad[0].short()}" if bad is not None else "not finite on another process"
        raise AutokdError(f"the supernet loss became {where}: lower the learning rate or set grad_clip in the "
                          "recipe")
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(supernet.parameters(), grad_clip)
    optimizer.step()
    return list(zip(values, kinds))


def _autocast(images: Tensor, dtype: torch.dtype | None):
    return torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None)


def precision_for(device: str | torch.device, family: str) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, channels_last) of supernet training: bf16, and channels_last for a CNN family, on CUDA
    (as `autokd train`); full precision and the default layout elsewhere."""
    return autocast_dtype(device), torch.device(device).type == "cuda" and family != "vit"


def average_gradients(module: nn.Module, info: D.DistInfo | None, flag: bool = False) -> bool:
    """Average the gradients of `module` over the processes of `info` in one all-reduce, which also carries
    `flag`; returns whether any process set it (its own `flag` on a single process)."""
    if info is None or not info.distributed:
        return flag
    grads = [p.grad for p in module.parameters() if p.grad is not None]  # the same set on every rank
    flat = torch.cat([*(g.reshape(-1) for g in grads), torch.tensor([float(flag)], device=info.device)])
    D.all_sum(info, flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g)).div_(info.world_size)
        offset += g.numel()
    return bool(flat[-1].item() > 0)


class EveryNth:
    """Items rank, rank + n, rank + 2n, ... of a sized iterable, len(items) // n of them on every rank (the
    remainder is dropped, so all processes take the same number of steps)."""

    def __init__(self, items, rank: int, n: int):
        self.items, self.rank, self.n = items, rank, n

    def __len__(self) -> int:
        return len(self.items) // self.n

    def __iter__(self):
        return itertools.islice(iter(self.items), self.rank, len(self) * self.n, self.n)


def shard_batches(loader: Iterable, info: D.DistInfo) -> Iterable:
    """This process's batches of `loader`: every world_size-th from its rank (the loader itself on one process).
    A map-style DataLoader loads only those, in the order the whole loader would give them."""
    if not info.distributed:
        return loader
    if (isinstance(loader, DataLoader) and loader.batch_sampler is not None
            and not isinstance(loader.dataset, IterableDataset)):
        return DataLoader(loader.dataset, batch_sampler=EveryNth(loader.batch_sampler, info.rank, info.world_size),
                          num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                          multiprocessing_context=loader.multiprocessing_context,
                          persistent_workers=loader.persistent_workers)
    return EveryNth(loader, info.rank, info.world_size)


@dataclass(frozen=True)
class SupernetRun:
    """What a supernet training needs besides the model and data: the band, its anchors and the settings."""

    band: BandSpace
    largest: ArchSpec
    smallest: ArchSpec
    recipe: Recipe
    relation_weight: float = 1.0
    random_subnets: int = 2
    seed: int = 0


def train_supernet(supernet: Supernet, teacher: nn.Module, loader, run: SupernetRun, out: str | Path, *,
                   device: str | torch.device = "cpu", resume: bool = True, stop_after: int | None = None,
                   on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train `supernet` for `run.recipe.epochs` epochs over `loader` (batches of images, labels, ...); writes
    out/supernet.pt (atomic, every epoch) and out/progress.json; resumes from supernet.pt when it exists.
    `stop_after` ends this call after that many epochs (a resumed call continues the same schedule);
    `on_epoch(entry)` gets each epoch's history entry on rank 0 once it is saved. Under torchrun each process
    trains on its share of the batches (an epoch is len(loader) // world_size steps of world_size batches)."""
    owned = not torch.distributed.is_initialized()
    info = D.setup(str(device))  # joins torchrun's process group; a single process otherwise
    try:
        return _train(supernet, teacher, loader, run, Path(out), info, resume, stop_after, on_epoch)
    finally:
        if owned:
            D.teardown(info)


def _train(supernet: Supernet, teacher: nn.Module, loader, run: SupernetRun, out: Path, info: D.DistInfo,
           resume: bool, stop_after: int | None, on_epoch: Callable[[dict[str, Any]], None] | None
           ) -> list[dict[str, Any]]:
    device = info.device
    autocast, channels_last = precision_for(device, supernet.space.family)
    seed_everything(run.seed)
    supernet.to(device).train()
    teacher = teacher.to(device)
    if channels_last:
        supernet.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    criterion = KDLoss(run.recipe)
    optimizer = build_optimizer(supernet, run.recipe, fused=device.type == "cuda")
    batches = shard_batches(loader, info)
    steps = len(batches)
    if steps == 0:
        raise AutokdError("the supernet's training loader is empty: give more images or a smaller batch")
    scheduler = warmup_cosine(optimizer, run.recipe, steps)
    rng = random.Random(run.seed)  # the same on every process: all run the same subnets
    history: list[dict[str, Any]] = []
    start = 0
    path = out / CHECKPOINT
    if resume and path.is_file():
        state = load_supernet_state(path)
        if state["config"] != json.dumps(supernet.config()) or state["settings"] != _settings(run):
            raise AutokdError(f"{str(path)!r} is the checkpoint of another supernet or other settings: resume "
                              "with the original ones, or give another output folder to start afresh")
        supernet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        rng.setstate(_rng_from(state["sampler"]))
        start, history = state["epoch"], state["history"]
    targets = TeacherTargets(teacher, supernet)
    try:
        for epoch in range(start, run.recipe.epochs):
            if stop_after is not None and epoch - start >= stop_after:
                break
            if hasattr(getattr(loader, "sampler", None), "set_epoch"):
                loader.sampler.set_epoch(epoch)
            began, sums, kinds = time.perf_counter(), [0.0, 0.0, 0.0], {}
            for batch in batches:
                images, labels = batch[0].to(device), batch[1].to(device)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                specs = sandwich_specs(supernet, run.band, run.largest, run.smallest, rng, run.random_subnets)
                losses = sandwich_step(supernet, specs, images, labels, targets, criterion, optimizer,
                                       relation_weight=run.relation_weight, grad_clip=run.recipe.grad_clip,
                                       autocast=autocast, info=info)
                scheduler.step()
                sums[0] += losses[0][0]
                sums[1] += losses[1][0]
                sums[2] += sum(loss for loss, _ in losses[2:]) / max(len(losses) - 2, 1)
                for _, kind in losses:
                    kinds[kind] = kinds.get(kind, 0) + 1
            if info.distributed:  # every process's batches count in the epoch's losses
                sums = (D.all_sum(info, torch.tensor(sums, device=device, dtype=torch.float64))
                        / info.world_size).tolist()
            history.append({"epoch": epoch + 1, "loss_largest": sums[0] / steps, "loss_smallest": sums[1] / steps,
                            "loss_random": sums[2] / steps, "relation": kinds, "lr": scheduler.get_last_lr()[0],
                            "seconds": time.perf_counter() - began})
            if info.is_main:
                _end_epoch(supernet, run, optimizer, scheduler, rng, history, out, on_epoch)
            D.barrier(info)  # the others wait for rank 0's checkpoint
    finally:
        targets.close()
    return history


def _end_epoch(supernet: Supernet, run: SupernetRun, optimizer, scheduler, rng: random.Random,
               history: list[dict[str, Any]], out: Path, on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    """Rank 0's end of an epoch: the log line, supernet.pt, progress.json, then `on_epoch`."""
    entry = history[-1]
    log.info("supernet %s epoch %d/%d: loss largest %.4f smallest %.4f random %.4f", run.band.band,
             entry["epoch"], run.recipe.epochs, entry["loss_largest"], entry["loss_smallest"], entry["loss_random"])
    save_supernet(out / CHECKPOINT, supernet, run, optimizer, scheduler, rng, entry["epoch"], history)
    write_json(out / "progress.json", {"band": run.band.describe(), "epochs": run.recipe.epochs,
                                       "history": history})
    if on_epoch is not None:
        on_epoch(dict(entry))


def save_supernet(path: Path, supernet: Supernet, run: SupernetRun, optimizer, scheduler, rng: random.Random,
                  epoch: int, history: list[dict[str, Any]]) -> None:
    """The whole training state, atomically: a reader sees the previous epoch's file or this one."""
    version, internal, gauss = rng.getstate()
    atomic_save({"format": FORMAT, "config": json.dumps(supernet.config()), "settings": _settings(run),
                 "band": run.band.describe(),
                 "largest": run.largest.to_json(), "smallest": run.smallest.to_json(),
                 "model": {k: v.detach().cpu() for k, v in supernet.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                 "sampler": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                             "gauss": gauss},
                 "epoch": epoch, "history": history}, path)


def _settings(run: SupernetRun) -> str:
    """What a resumed run must share with the run that wrote the checkpoint, as JSON."""
    return json.dumps({"band": run.band.describe(), "largest": run.largest.to_json(),
                       "smallest": run.smallest.to_json(), "recipe": run.recipe.to_dict(),
                       "relation_weight": run.relation_weight, "random_subnets": run.random_subnets,
                       "seed": run.seed}, sort_keys=True, default=str)


def _rng_from(state: dict[str, Any]) -> tuple:
    return state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss"]


def load_supernet_state(path: str | Path) -> dict[str, Any]:
    """A supernet checkpoint (weights_only); a missing or foreign file is a one-line AutokdError."""
    path = Path(path)
    if not path.is_file():
        raise AutokdError(f"no supernet checkpoint at {str(path)!r}: give the supernet.pt of a supernet run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AutokdError(f"supernet checkpoint {str(path)!r} is corrupt ({type(e).__name__}); delete it to "
                          "train afresh") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AutokdError(f"{str(path)!r} is not an autokd supernet checkpoint: give the supernet.pt of a "
                          "supernet run")
    return state
