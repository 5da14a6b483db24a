"""`train_student`: distil a teacher into a student with a Recipe, on one CPU, one GPU or many (torchrun).

Per step: the teacher's output (live, under inference_mode, or from the top-k cache), the student forward in
bf16 autocast (CUDA) or fp32 (CPU), the recipe's KDLoss, backward, clipping, optimiser, per-step LR schedule.
Every epoch: evaluation, then last.pt (and best.pt) written atomically; SIGTERM writes last.pt mid-epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from rich import progress as rp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from autokd.cost import count_params, measure_cost, measure_latency
from autokd.data.datasets import ImageDataset
from autokd.data.split import split_indices
from autokd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from autokd.errors import AutokdError
from autokd.recipes import KDLoss, Recipe, build_loss, feature_tap, topk_to_probs
from autokd.teachers import Teacher
from autokd.train import distributed as D
from autokd.train.cache import DEFAULT_TOPK, TeacherCache, teacher_fingerprint, topk_targets
from autokd.train.checkpoint import FORMAT, atomic_save, load_checkpoint, rng_state, set_rng_state
from autokd.train.metrics import Metrics, evaluate
from autokd.train.results import TrainResult, record_in_study
from autokd.train.students import Student
from autokd.train.views import EpochSampler, SeededViews

log = logging.getLogger("autokd")

CACHE_ROOT = Path(os.environ.get("AUTOKD_CACHE", Path.home() / ".cache" / "autokd"))
DEFAULT_CACHE_DIR = CACHE_ROOT / "teacher_outputs"
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Inputs:
    """The input pipeline: size, normalisation, eval crop and interpolation (the teacher's, if any)."""

    img_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @classmethod
    def of(cls, teacher: Teacher) -> Inputs:
        return cls(teacher.img_size, tuple(teacher.mean), tuple(teacher.std), teacher.crop_pct,
                   teacher.interpolation)


@dataclass(frozen=True)
class TrainOptions:
    """How to run (not what to learn: that is the Recipe); see `train_student` for each field."""

    seed: int = 0
    num_workers: int | None = None
    max_steps: int | None = None
    compile_teacher: bool = False
    compile_student: bool = False
    log_every: int = 50
    img_size: int | None = None
    cache_dir: str | Path | None = None
    cache_topk: int = DEFAULT_TOPK
    progress: bool = True
    inputs: Inputs | None = None  # overrides the pipeline (the baseline uses its KD run's)
    evaluate_teacher: bool = True


def train_student(
    student: nn.Module | Student,
    teacher: Teacher | None,
    data: ImageDataset,
    recipe: Recipe,
    out: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    seed: int = 0,
    baseline: bool = False,
    num_workers: int | None = None,
    max_steps: int | None = None,
    compile_teacher: bool = False,
    compile_student: bool = False,
    log_every: int = 50,
    img_size: int | None = None,
    cache_dir: str | Path | None = None,
    cache_topk: int = DEFAULT_TOPK,
    progress: bool = True,
    inputs: Inputs | None = None,
    evaluate_teacher: bool = True,
) -> TrainResult:
    """Train `student` (in place) on `data.train` with `recipe`, distilling `teacher`; write out/results.json,
    out/best.pt and out/last.pt; evaluate on data.test, else on a held-out tenth of train.

    Under torchrun each process trains its share of every global batch (`recipe.batch_size` is the global
    batch). `resume` continues from out/last.pt. `max_steps` stops early, keeping a resumable checkpoint.
    `baseline` also trains a copy of the student without KD (out/baseline/) and reports the gain. Inputs use
    the teacher's size and normalisation; without a teacher, `img_size`, else the student's search size, else
    the data's own (the short side of its first image); `inputs` sets them outright. `evaluate_teacher=False`
    skips the teacher's accuracy on the eval split (teacher_top1 is then None). With `recipe.teacher_cache`,
    the teacher's top `cache_topk` probabilities are kept under `cache_dir` (default ~/.cache/autokd/teacher_outputs, or
    $AUTOKD_CACHE/teacher_outputs). `num_workers` defaults to 0 on the CPU and up to 8 per GPU."""
    options = TrainOptions(seed, num_workers, max_steps, compile_teacher, compile_student, log_every,
                           img_size, cache_dir, cache_topk, progress, inputs, evaluate_teacher)
    info = D.setup(device)
    try:
        meta = student if isinstance(student, Student) else Student(student, type(student).__name__)
        out = Path(out)
        init = _initial_state(meta.model, out, resume) if baseline else None
        trainer = Trainer(meta, teacher, data, recipe, out, info, options, resume=resume)  # checks the inputs
        if init is not None and info.is_main and not (out / "init.pt").exists():
            atomic_save({"format": FORMAT, "model": init}, out / "init.pt")
        result = trainer.run()
        if baseline and recipe.needs_teacher and result.stopped is None:
            base_options = replace(options, max_steps=None, compile_teacher=False,
                                   inputs=Inputs.of(teacher))
            result = _with_baseline(result, meta, init, data, recipe, out, info, base_options, resume)
        if info.is_main:
            result.save(out / "results.json")
            if meta.study:
                record_in_study(result, meta.study["storage"], meta.study["study"], meta.study.get("trial"))
        return result
    finally:
        D.teardown(info)


def check_inputs(student: nn.Module, teacher: Teacher | None, data: ImageDataset, recipe: Recipe) -> None:
    """Refuse what cannot give a useful run: KD without a (trained) teacher, class counts that differ."""
    if recipe.needs_teacher:
        if teacher is None:
            raise AutokdError(f"recipe loss {recipe.loss!r} distils a teacher but none was given: give "
                              "--teacher, or use the 'none' recipe to train without KD")
        if not teacher.pretrained:
            raise AutokdError(f"teacher {teacher.name} is randomly initialised: distilling it would teach "
                              "noise; give its trained weights (--teacher-weights PATH) or use the 'none' "
                              "recipe")
        if not teacher.head_trained:
            raise AutokdError(f"teacher {teacher.name}'s weights predict other classes, so its head for these "
                              f"{data.num_classes} classes is untrained: fine-tune it first (autokd "
                              "finetune-teacher) and pass its best.pt as --teacher-weights")
    if teacher is not None and teacher.num_classes != data.num_classes:
        raise AutokdError(f"the data has {data.num_classes} classes but teacher {teacher.name}'s head has "
                          f"{teacher.num_classes}: resolve the teacher with num_classes={data.num_classes} "
                          "and fine-tune it on this data first (autokd finetune-teacher)")
    head = student.get_classifier() if hasattr(student, "get_classifier") else None
    outputs = getattr(head, "out_features", None)
    if outputs is not None and outputs != data.num_classes:
        raise AutokdError(f"the student predicts {outputs} classes but the data has {data.num_classes}: "
                          f"build it with num_classes={data.num_classes}")


def no_kd(recipe: Recipe) -> Recipe:
    """The same recipe (optimiser, schedule, augmentation) with cross-entropy only: the no-KD baseline."""
    return recipe.replace(loss="none", loss_params={}, logit_standardize=False, ce_weight=1.0, kd_weight=0.0,
                          feature_loss=None, feature_weight=0.0, feature_params={}, teacher_cache=False)


def _initial_state(model: nn.Module, out: Path, resume: bool) -> dict[str, torch.Tensor]:
    """The student's initial weights for the baseline (kept in out/init.pt for a resumed run)."""
    if resume and (out / "init.pt").is_file():
        return load_checkpoint(out / "init.pt")["model"]
    return _cpu_state(model)


def _with_baseline(result: TrainResult, meta: Student, init: dict, data: ImageDataset, recipe: Recipe,
                   out: Path, info: D.DistInfo, options: TrainOptions, resume: bool) -> TrainResult:
    model = copy.deepcopy(meta.model).cpu()
    model.load_state_dict(init)
    folder = out / "baseline"
    student = Student(model, meta.name, meta.spec, meta.img_size)
    base = Trainer(student, None, data, no_kd(recipe), folder, info, options,
                   resume=resume and (folder / "last.pt").is_file()).run()
    if info.is_main:
        base.save(folder / "results.json")
    result.baseline_top1 = base.top1
    result.gain = result.top1 - base.top1
    return result


@dataclass
class Batch:
    """One local batch on the device; `indices` (into data.train) and `seeds` key the teacher cache."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray
    seeds: np.ndarray


class Trainer:
    """One training run: set-up, the epoch loop (`run`), one optimiser step (`step`), checkpoints, the report.

    `train_student` is the entry point; a Trainer is built directly only to drive `step` (the benchmarks)."""

    def __init__(self, student: nn.Module | Student, teacher: Teacher | None, data: ImageDataset,
                 recipe: Recipe, out: Path, info: D.DistInfo, options: TrainOptions = TrainOptions(), *,
                 resume: bool = False):
        if not isinstance(student, Student):
            student = Student(student, type(student).__name__)
        self.meta, self.teacher, self.data, self.recipe, self.out, self.info = (
            student, teacher, data, recipe, Path(out), info)
        self.options = options
        self.seed, self.max_steps, self.log_every = options.seed, options.max_steps, max(1, options.log_every)
        self.device = info.device
        self.cuda = self.device.type == "cuda"
        self.notes: list[str] = []
        seed_everything(self.seed + info.rank)  # a resumed run then restores the checkpoint's RNG states
        check_inputs(student.model, teacher, data, recipe)
        state = load_checkpoint(self.out / "last.pt") if resume else None  # read once, restored below
        if not resume and (self.out / "last.pt").exists():
            raise AutokdError(f"{str(self.out)!r} already holds a training run (last.pt): resume it with "
                              "--resume or give another --out folder")
        if options.inputs is not None:
            self.inputs = options.inputs
        elif teacher is not None:
            self.inputs = Inputs.of(teacher)
        else:
            size = options.img_size or student.img_size or min(data.train.open_image(0).size)
            self.inputs = Inputs(size, crop_pct=0.875 if size > 64 else 1.0)
        self.img_size = self.inputs.img_size
        self._build_data(options.num_workers)
        # before the teacher moves to the device: its fingerprint hashes the weights on the CPU
        self.cache = self._open_cache(options.cache_dir, options.cache_topk) if recipe.teacher_cache else None
        self._build_model(options.compile_teacher, options.compile_student)
        self._build_optim()
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.best_top1, self.best_epoch, self.history = -1.0, -1, []
        self.teacher_metrics: Metrics | None = None
        self.train_images, self.train_seconds = 0, 0.0
        self.bad_loss = torch.zeros((), dtype=torch.bool, device=self.device)
        self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
        if state is not None:
            self._restore(state)

    # ----------------------------------------------------------------------------------------------- set-up
    def _build_data(self, num_workers: int | None) -> None:
        data, recipe, info = self.data, self.recipe, self.info
        i = self.inputs
        self.eval_tf = eval_transform(i.img_size, i.mean, i.std, i.crop_pct, i.interpolation)
        self.train_tf = _train_transform(recipe.augmentation, i.img_size, i.mean, i.std, i.crop_pct,
                                         i.interpolation)
        if data.test is not None:
            train_idx, eval_base = np.arange(len(data.train)), data.test
            eval_idx, self.eval_split = np.arange(len(data.test)), "test"
        else:
            train_idx, eval_idx = split_indices(data.train.labels, VAL_FRACTION, seed=0)
            eval_base, self.eval_split = data.train, "heldout"
        if recipe.batch_size % info.world_size:
            raise AutokdError(f"batch size {recipe.batch_size} does not split over {info.world_size} "
                              f"processes: give a multiple of {info.world_size} (it is the global batch)")
        self.local_batch = recipe.batch_size // info.world_size
        if (recipe.mixup > 0 or recipe.cutmix > 0) and not recipe.teacher_cache and self.local_batch % 2:
            raise AutokdError(f"mixup/cutmix pair the images of a batch, but each process gets "
                              f"{self.local_batch}: give an even batch size per process")
        if len(train_idx) < recipe.batch_size:
            raise AutokdError(f"the train split has {len(train_idx)} images, fewer than one batch of "
                              f"{recipe.batch_size}: lower batch_size in the recipe")
        if num_workers is None:  # the CPU trains on the CPU: no workers to compete with it
            per_gpu = (os.cpu_count() or 2) // max(1, torch.cuda.device_count()) - 1
            num_workers = min(8, max(1, per_gpu)) if self.cuda else 0
        loader_kw = dict(num_workers=num_workers, pin_memory=self.cuda, persistent_workers=num_workers > 0)
        # without augmentation every epoch shows the same view: one set of seeds (and cached rows) for all
        self.train_views = SeededViews(data.train, train_idx, self.train_tf, self.seed,
                                       vary=recipe.augmentation != "none")
        self.sampler = EpochSampler(train_idx, seed=self.seed, rank=info.rank, world_size=info.world_size)
        self.train_loader = DataLoader(self.train_views, batch_size=self.local_batch, sampler=self.sampler,
                                       drop_last=True, **loader_kw)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        shard = eval_base.view(eval_idx[info.rank::info.world_size], self.eval_tf)
        self.eval_loader = DataLoader(shard, batch_size=max(self.local_batch, 64), shuffle=False, **loader_kw)
        self.eval_images = len(eval_idx)

    def _build_model(self, compile_teacher: bool, compile_student: bool) -> None:
        recipe, device = self.recipe, self.device
        model = self.meta.model.to(device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.model = model
        self.teacher_model = None
        if self.teacher is not None:
            t = self.teacher.model.to(device).eval()
            if self.cuda:
                t = t.to(memory_format=torch.channels_last)
            for p in t.parameters():
                p.requires_grad_(False)
            self.teacher_model = t
        sample = torch.stack([self.eval_tf(self.data.train.load_image(i)) for i in range(2)])
        live = recipe.needs_teacher and not recipe.teacher_cache
        criterion = build_loss(recipe, model, self.teacher_model if recipe.needs_teacher else None, sample)
        self.s_tap = feature_tap(recipe, model) if recipe.feature_loss else None
        self.t_tap = feature_tap(recipe, self.teacher_model) if recipe.feature_loss and live else None
        self.step_module = _DistillStep(model, criterion, self.s_tap)
        self.trainable = self.step_module
        if self.info.distributed:
            self.trainable = DistributedDataParallel(self.step_module,
                                                     device_ids=[device.index] if self.cuda else None)
        if compile_student:
            self.trainable = torch.compile(self.trainable)
        self.teacher_fn = self.teacher_model
        if compile_teacher and self.teacher_model is not None and recipe.needs_teacher:
            self.teacher_fn = torch.compile(self.teacher_model)
        self.autocast = torch.bfloat16 if self.cuda else None

    def _build_optim(self) -> None:
        from timm.optim import create_optimizer_v2

        r = self.recipe
        kwargs = {"betas": (r.momentum, 0.999)} if r.optimizer == "adamw" else {"momentum": r.momentum}
        if self.cuda:
            kwargs["fused"] = True  # one kernel for the whole update
        opt = "adamw" if r.optimizer == "adamw" else "momentum"  # timm's "momentum" is SGD without Nesterov
        self.optimizer = create_optimizer_v2(self.step_module, opt=opt, lr=r.lr, weight_decay=r.weight_decay,
                                             **kwargs)
        total = r.epochs * self.steps_per_epoch
        warm = min(int(round(r.warmup_epochs * self.steps_per_epoch)), total - 1)

        def factor(step: int) -> float:  # linear warm-up, then cosine to zero, per optimiser step
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.mixup = None
        if (r.mixup > 0 or r.cutmix > 0) and r.teacher_cache:
            self.notes.append("mixup/cutmix are off with the teacher cache: a mixed view depends on the "
                              "batch, so its teacher output cannot be keyed by (sample, seed)")
        elif r.mixup > 0 or r.cutmix > 0:
            from timm.data import Mixup

            # label smoothing is applied once, by KDLoss's cross-entropy
            self.mixup = Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, label_smoothing=0.0,
                               num_classes=self.data.num_classes)

    def _open_cache(self, cache_dir: str | Path | None, topk: int) -> TeacherCache:
        fingerprint = teacher_fingerprint(self.teacher.name, self.teacher.model)
        cache = TeacherCache.open(Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR, teacher=fingerprint,
                                  data=self.data, transform=repr(self.train_tf), seed=self.seed, topk=topk)
        if self.info.is_main:
            log.info("teacher cache: %s (top-%d, %d bytes per sample per epoch)", cache.folder, cache.topk,
                     cache.dtype.itemsize)
        return cache

    @property
    def view_epoch(self) -> int:
        """The epoch that sets the views' seeds (and cache rows): 0 throughout without augmentation."""
        return self.epoch if self.train_views.vary else 0

    # ---------------------------------------------------------------------------------------- checkpoints
    def _settings(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "seed": self.seed, "student": self.meta.name,
                "params": count_params(self.model), "data": [self.data.name, len(self.data.train)],
                "teacher": self.teacher.name if self.teacher else None, "img_size": self.img_size}

    def _checkpoint(self) -> dict[str, Any]:
        rngs = [rng_state()]
        if self.info.distributed:
            rngs = [None] * self.info.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        return {
            "format": FORMAT,
            "model": _cpu_state(self.model),
            "loss": _cpu_state(self.step_module.criterion),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no gradient scaler
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "rng": rngs,
            "world_size": self.info.world_size,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "teacher_metrics": None if self.teacher_metrics is None else vars(self.teacher_metrics),
            "train_images": self.train_images,
            "train_seconds": self.train_seconds,
            "epoch_sums": D.all_sum(self.info, self.epoch_sums.clone()).tolist(),
            "cache": None if self.cache is None else {"folder": str(self.cache.folder),
                                                      "epoch": self.view_epoch,
                                                      "step_in_epoch": self.step_in_epoch},
            "settings": self._settings(),
        }

    def _save(self, best: bool = False) -> None:
        """last.pt (and best.pt), from every process's RNG state, written by rank 0; never after a NaN."""
        self._check_finite()
        if self.cache is not None:
            self.cache.flush()
        state = self._checkpoint()
        if self.info.is_main:
            atomic_save(state, self.out / "last.pt")
            if best:
                atomic_save(self._student_file(), self.out / "best.pt")
        D.barrier(self.info)

    def _student_file(self) -> dict[str, Any]:
        spec = self.meta.spec.as_dict() if self.meta.spec is not None else None
        return {"format": "autokd-student-1", "model": _cpu_state(self.model), "student": self.meta.name,
                "spec": spec, "num_classes": self.data.num_classes, "img_size": self.img_size,
                "epoch": self.best_epoch, "top1": self.best_top1, "classes": list(self.data.classes)}

    def _restore(self, state: dict[str, Any]) -> None:
        old, new = state["settings"], self._settings()
        diff = [k for k in new if old.get(k) != new[k]]
        if diff:
            raise AutokdError(f"the checkpoint in {str(self.out)!r} was made with a different "
                              f"{', '.join(diff)}: resume with the original settings, or give another --out")
        try:
            self.model.load_state_dict(state["model"])
            self.step_module.criterion.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            for name in ("epoch", "step_in_epoch", "global_step", "best_top1", "best_epoch", "history",
                         "train_images", "train_seconds"):
                setattr(self, name, state[name])
            sums, rngs, teacher_metrics = state["epoch_sums"], state["rng"], state["teacher_metrics"]
        except (RuntimeError, KeyError, ValueError) as e:
            raise AutokdError(f"checkpoint {str(self.out / 'last.pt')!r} does not fit this student "
                              f"({type(e).__name__}); resume with the original student or start afresh"
                              ) from None
        if self.info.is_main:  # the interrupted epoch's running sums, already summed over processes
            self.epoch_sums = torch.tensor(sums, dtype=torch.float64, device=self.device)
        if teacher_metrics is not None:
            self.teacher_metrics = Metrics(**teacher_metrics)
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:
            set_rng_state(rngs[0])
            self.notes.append(f"resumed on {self.info.world_size} processes from a checkpoint of "
                              f"{len(rngs)}: data order and views are the same, dropout/mixup draws differ")
        if self.info.is_main:
            log.info("resuming %s at epoch %d, step %d", self.out, self.epoch + 1, self.step_in_epoch)

    # -------------------------------------------------------------------------------------------- training
    def run(self) -> TrainResult:
        start = time.perf_counter()
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.teacher_model is not None and self.teacher_metrics is None and self.options.evaluate_teacher:
            self.teacher_metrics = evaluate(self.teacher_model, self.eval_loader, self.info,
                                            channels_last=self.cuda, autocast_dtype=self.autocast)
        self.stop: str | None = None
        show = self.options.progress and self.info.is_main
        try:
            with _sigterm_flag() as self.sigterm, _progress(show) as self.bar:
                while self.epoch < self.recipe.epochs and self.stop is None:
                    if self._train_epoch():
                        self._end_epoch()
                    else:  # stopped mid-epoch: keep the position
                        self._save()
        finally:
            for tap in (self.s_tap, self.t_tap):  # give the models back their own forward_features
                if tap is not None:
                    tap.remove()
            if self.cache is not None:
                self.cache.flush()
        if self.stop is not None and self.info.is_main:
            log.info("stopped: %s; resume from %s", self.stop, self.out / "last.pt")
        return self._report(time.perf_counter() - start)

    def _train_epoch(self) -> bool:
        """Train until the epoch ends (True) or a stop request (False); `self.stop` says why."""
        self.sampler.set_epoch(self.epoch, skip=self.step_in_epoch * self.local_batch)
        self.trainable.train()
        if self.cache is not None:
            if self.info.is_main:
                self.cache.prepare(self.view_epoch, create=True)
            D.barrier(self.info)
            self.cache.prepare(self.view_epoch, create=False)
        task = None
        if self.bar is not None:
            task = self.bar.add_task(f"epoch {self.epoch + 1}/{self.recipe.epochs}",
                                     total=self.steps_per_epoch, completed=self.step_in_epoch,
                                     loss=float("nan"), acc=float("nan"), ips=0.0)
        sums = self.epoch_sums
        epoch_start = tick = time.perf_counter()
        epoch_images = tick_images = 0
        for images, labels, indices, seeds in self.train_loader:
            batch = Batch(images.to(self.device, non_blocking=True),
                          labels.to(self.device, non_blocking=True), indices.numpy(), seeds.numpy())
            if self.cuda:
                batch.images = batch.images.contiguous(memory_format=torch.channels_last)
            loss, logits = self.step(batch)
            with torch.no_grad():  # Python numbers and device tensors only: no host-device sync per step
                n = len(batch.labels)
                sums[0] += loss.detach().double() * n
                sums[1] += (logits.argmax(1) == batch.labels).sum()
                sums[2] += n
            self.step_in_epoch += 1
            self.global_step += 1
            images_now = len(batch.labels) * self.info.world_size
            epoch_images += images_now
            tick_images += images_now
            at_log = self.step_in_epoch % self.log_every == 0 or self.step_in_epoch == self.steps_per_epoch
            if at_log:
                self._check_finite()
                now = time.perf_counter()
                if task is not None:
                    loss_avg, acc = (sums[0] / sums[2]).item(), (100 * sums[1] / sums[2]).item()
                    self.bar.update(task, completed=self.step_in_epoch, loss=loss_avg, acc=acc,
                                    ips=tick_images / max(now - tick, 1e-9))
                tick, tick_images = now, 0
            self._poll_stop(at_log)
            if self.stop is not None and self.step_in_epoch < self.steps_per_epoch:
                break
        seconds = time.perf_counter() - epoch_start
        self.train_seconds += seconds
        self.train_images += epoch_images
        if task is not None:
            self.bar.remove_task(task)
        if self.step_in_epoch < self.steps_per_epoch:
            return False
        totals = D.all_sum(self.info, sums.clone())
        self.epoch_sums = torch.zeros_like(sums)
        self.epoch_train = {"train_loss": (totals[0] / totals[2]).item(),
                            "train_top1": (100 * totals[1] / totals[2]).item(),
                            "images_per_second": epoch_images / max(seconds, 1e-9)}
        return True

    def _poll_stop(self, at_log: bool) -> None:
        """Set `self.stop` on max_steps or SIGTERM (under DDP all processes agree, at logging steps)."""
        if self.max_steps is not None and self.global_step >= self.max_steps:
            self.stop = f"max_steps={self.max_steps} reached"
        elif self.info.distributed:
            if at_log and D.any_true(self.info, self.sigterm.is_set()):
                self.stop = "SIGTERM"
        elif self.sigterm.is_set():
            self.stop = "SIGTERM"

    def step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on `batch`; returns the loss and the student's logits."""
        images, targets = batch.images, batch.labels
        if self.mixup is not None:  # never with the cache: the teacher sees the mixed view live
            images, targets = self.mixup(images, targets)
        teacher_logits, teacher_probs, teacher_features = self._teacher_outputs(images, batch)
        epoch = self.epoch + (self.step_in_epoch + 1) / self.steps_per_epoch  # 1-based, fractional, for DKD
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            loss, logits = self.trainable(images, targets, teacher_logits, teacher_probs, teacher_features,
                                          epoch)
        self.bad_loss |= ~torch.isfinite(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.step_module.parameters(), self.recipe.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss, logits

    def _teacher_outputs(self, images: torch.Tensor, batch: Batch):
        """(logits, probs, features): live logits (and features), or probabilities rebuilt from the cache."""
        if not self.recipe.needs_teacher:
            return None, None, None
        if self.cache is None:
            logits, features = self._live_teacher(images)
            return logits, None, features
        prob, index, found = self.cache.lookup(self.view_epoch, batch.indices, batch.seeds)
        prob, index = torch.from_numpy(prob.astype(np.float32)), torch.from_numpy(index.astype(np.int64))
        if not found.all():
            miss = ~found
            rows = torch.from_numpy(miss)
            logits, _ = self._live_teacher(images[rows.to(self.device)])
            values, classes = (t.cpu() for t in topk_targets(logits, self.cache.topk))
            values = values.half()
            self.cache.store(self.view_epoch, batch.indices[miss], batch.seeds[miss], values, classes)
            prob[rows], index[rows] = values.float(), classes  # the stored fp16 values, so cold = warm
        prob, index = prob.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)
        probs = topk_to_probs(prob, index, self.data.num_classes)
        return None, probs, None

    def _live_teacher(self, images: torch.Tensor):
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast,
                                                    enabled=self.autocast is not None):
            logits = self.teacher_fn(images)
            features = self.t_tap.get() if self.t_tap is not None else None
        # inference tensors cannot be saved for backward: clone them into ordinary tensors
        logits = logits.float().clone()
        if features is not None:
            features = (tuple(f.clone() for f in features) if isinstance(features, tuple)
                        else features.clone())
        return logits, features

    def _check_finite(self) -> None:
        if D.any_true(self.info, bool(self.bad_loss.item())):
            last = self.out / "last.pt"
            kept = (f"the last good checkpoint is {str(last)!r}" if last.exists()
                    else "no checkpoint was written")
            raise AutokdError(f"the loss became NaN or inf in epoch {self.epoch + 1} (by step "
                              f"{self.global_step}); {kept}: lower the learning rate or set grad_clip")

    def _end_epoch(self) -> None:
        metrics = evaluate(self.model, self.eval_loader, self.info, channels_last=self.cuda,
                           autocast_dtype=self.autocast)
        row = {"epoch": self.epoch + 1, **self.epoch_train, "top1": metrics.top1, "top5": metrics.top5,
               "ece": metrics.ece, "lr": self.optimizer.param_groups[0]["lr"]}
        self.history.append(row)
        best = metrics.top1 > self.best_top1
        if best:
            self.best_top1, self.best_epoch = metrics.top1, self.epoch + 1
        if self.info.is_main:
            log.info("epoch %d/%d: loss %.4f, train top-1 %.2f%%, %s top-1 %.2f%% top-5 %.2f%% ECE %.4f, "
                     "%.0f img/s", self.epoch + 1, self.recipe.epochs, row["train_loss"], row["train_top1"],
                     self.eval_split, metrics.top1, metrics.top5, metrics.ece, row["images_per_second"])
        self.epoch += 1
        self.step_in_epoch = 0
        self._save(best=best)

    # ---------------------------------------------------------------------------------------------- report
    def _report(self, seconds: float) -> TrainResult:
        last = self.history[-1] if self.history else {"top1": 0.0, "top5": 0.0, "ece": 0.0}
        model = self.model
        cost = measure_cost(model, self.img_size)
        latency = float("nan")
        if self.info.is_main:
            latency = measure_latency(model, self.img_size, self.device) * 1e3
        tm = self.teacher_metrics
        cache = None
        if self.cache is not None:
            cache = self.cache.usage()
            if self.info.is_main:
                log.info("teacher cache: %d hits, %d misses; %.1f MB on disk in %s", cache["hits"],
                         cache["misses"], cache["disk_bytes"] / 1e6, cache["folder"])
        return TrainResult(
            top1=last["top1"], top5=last["top5"], ece=last["ece"], best_top1=max(self.best_top1, 0.0),
            best_epoch=self.best_epoch, teacher_top1=tm.top1 if tm else None,
            teacher_top5=tm.top5 if tm else None,
            macs=cost.macs, params=cost.params, latency_ms=latency,
            best_checkpoint=str(self.out / "best.pt"), last_checkpoint=str(self.out / "last.pt"),
            epochs=self.epoch, images_per_second=self.train_images / max(self.train_seconds, 1e-9),
            eval_split=self.eval_split, eval_images=self.eval_images, student=self.meta.name,
            teacher=self.teacher.name if self.teacher else None, recipe=self.recipe.to_dict(),
            device=str(self.device), world_size=self.info.world_size, seconds=seconds, stopped=self.stop,
            cache=cache, notes=self.meta.notes + (self.teacher.notes if self.teacher else []) + self.notes,
            history=self.history,
        )


class _DistillStep(nn.Module):
    """Student forward plus the recipe's loss in one module, so DDP also syncs the loss's own parameters
    (the FitNet projector). Returns (total loss, student logits)."""

    def __init__(self, student: nn.Module, criterion: KDLoss, tap):
        super().__init__()
        self.student, self.criterion, self.tap = student, criterion, tap

    def forward(self, images, targets, teacher_logits, teacher_probs, teacher_features, epoch):
        logits = self.student(images)
        features = self.tap.get() if self.tap is not None else None
        loss, _ = self.criterion(logits, targets, teacher_logits, teacher_probs=teacher_probs,
                                 student_features=features, teacher_features=teacher_features, epoch=epoch)
        return loss, logits

    def no_weight_decay(self) -> set[str]:
        """The student's own exemptions (e.g. a ViT's position embedding), for timm's optimiser factory."""
        own = self.student.no_weight_decay() if hasattr(self.student, "no_weight_decay") else set()
        return {f"student.{name}" for name in own}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): mixup, dropout and the loss's own init follow `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _train_transform(augmentation: str, img_size: int, mean, std, crop_pct: float, interpolation: str):
    """'none': the eval pipeline; 'standard': timm's train pipeline; else a timm auto-augment string on top.
    At 64 px or less, random resized crops keep at least half the image (timm's 8% is for ImageNet)."""
    if augmentation == "none":
        return eval_transform(img_size, mean, std, crop_pct, interpolation)
    kwargs: dict[str, Any] = {"scale": (0.5, 1.0)} if img_size <= 64 else {}
    if augmentation != "standard":
        kwargs["auto_augment"] = augmentation
    return train_transform(img_size, mean, std, interpolation, **kwargs)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """An Event set by SIGTERM while the block runs (in the main thread; elsewhere it never fires)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress(enabled: bool):
    """A rich progress bar showing loss, train accuracy and images per second (None when disabled)."""
    if not enabled:
        yield None
        return
    fields = "loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1f}%  {task.fields[ips]:.0f} img/s"
    bar = rp.Progress(rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                      rp.TextColumn(fields), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), transient=True)
    with bar:
        yield bar
