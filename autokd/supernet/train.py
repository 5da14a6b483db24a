"""Sandwich KD training of a band's supernet, with atomic checkpoints that resume exactly.

Each step trains the band's largest and smallest subnets and `random_subnets` random in-band ones on one batch
(the sandwich rule), accumulating their gradients for one optimiser step. Each subnet's loss is the recipe's
CE + logit KD against the teacher (`KDLoss`), plus `relation_weight` times a relation loss: MiniLM-v2 Q-Q, K-K,
V-V self-attention relations of the last layer when teacher and student are transformers with the same tokens,
else the sample-relation loss on their final features (DisWOT's relation term, any pair of families).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from autokd.errors import AutokdError
from autokd.io import write_json
from autokd.proxies.base import relation_gram
from autokd.recipes import FeatureCapture, KDLoss, QKVCapture, Recipe, minilm_loss
from autokd.spaces import ArchSpec
from autokd.supernet.bands import BandSpace
from autokd.supernet.base import Supernet
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
                  relation_weight: float = 1.0, grad_clip: float | None = None) -> list[tuple[float, str]]:
    """One optimiser step on the summed gradients of `specs` (each loss divided by their number); returns
    each subnet's (loss, relation kind)."""
    optimizer.zero_grad(set_to_none=True)
    targets = teacher(images)
    out = []
    for spec in specs:
        loss, kind = subnet_loss(supernet, spec, images, labels, teacher, targets, criterion, relation_weight)
        if not torch.isfinite(loss):
            raise AutokdError(f"the supernet loss became {loss.item()} on {spec.short()}: lower the learning rate "
                              "or set grad_clip in the recipe")
        (loss / len(specs)).backward()
        out.append((loss.item(), kind))
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(supernet.parameters(), grad_clip)
    optimizer.step()
    return out


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
                   device: str | torch.device = "cpu", resume: bool = True,
                   stop_after: int | None = None) -> list[dict[str, Any]]:
    """Train `supernet` for `run.recipe.epochs` epochs over `loader` (batches of images, labels, ...); writes
    out/supernet.pt (atomic, every epoch) and out/progress.json; resumes from supernet.pt when it exists.
    `stop_after` ends this call after that many epochs (a resumed call continues the same schedule)."""
    out, device = Path(out), torch.device(device)
    seed_everything(run.seed)
    supernet.to(device).train()
    teacher = teacher.to(device)
    criterion = KDLoss(run.recipe)
    optimizer = build_optimizer(supernet, run.recipe)
    steps = len(loader)
    if steps == 0:
        raise AutokdError("the supernet's training loader is empty: give more images or a smaller batch")
    scheduler = warmup_cosine(optimizer, run.recipe, steps)
    rng = random.Random(run.seed)
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
            for batch in loader:
                images, labels = batch[0].to(device), batch[1].to(device)
                specs = sandwich_specs(supernet, run.band, run.largest, run.smallest, rng, run.random_subnets)
                losses = sandwich_step(supernet, specs, images, labels, targets, criterion, optimizer,
                                       relation_weight=run.relation_weight, grad_clip=run.recipe.grad_clip)
                scheduler.step()
                sums[0] += losses[0][0]
                sums[1] += losses[1][0]
                sums[2] += sum(loss for loss, _ in losses[2:]) / max(len(losses) - 2, 1)
                for _, kind in losses:
                    kinds[kind] = kinds.get(kind, 0) + 1
            history.append({"epoch": epoch + 1, "loss_largest": sums[0] / steps, "loss_smallest": sums[1] / steps,
                            "loss_random": sums[2] / steps, "relation": kinds, "lr": scheduler.get_last_lr()[0],
                            "seconds": time.perf_counter() - began})
            log.info("supernet %s epoch %d/%d: loss largest %.4f smallest %.4f random %.4f", run.band.band,
                     epoch + 1, run.recipe.epochs, *(history[-1][k] for k in ("loss_largest", "loss_smallest",
                                                                                "loss_random")))
            save_supernet(path, supernet, run, optimizer, scheduler, rng, epoch + 1, history)
            write_json(out / "progress.json", {"band": run.band.describe(), "epochs": run.recipe.epochs,
                                               "history": history})
    finally:
        targets.close()
    return history


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
