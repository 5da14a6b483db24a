"""`Trainer`: the epoch loop of one run that trains one or many students on one teacher pass per batch.

Per batch: the images are loaded once, the teacher runs once (or its rows are read from the top-k cache), then
every student takes its optimiser step on them. Every epoch: each student is evaluated on the held-out split,
then its last.pt (and best.pt) is written atomically; SIGTERM writes last.pt mid-epoch. After the last epoch
each student is evaluated once on the test split.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from autokd.cost import count_params, measure_cost, measure_latency
from autokd.data.datasets import ImageDataset
from autokd.data.pixels import CACHE_ROOT, decode_once
from autokd.device import autocast_dtype
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.teachers import Teacher
from autokd.train import distributed as D
from autokd.train.cache import DEFAULT_TOPK
from autokd.train.checkpoint import (
    FORMAT,
    atomic_save,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from autokd.train.inputs import HELDOUT_FRACTION, Inputs, TrainData, check_inputs
from autokd.train.metrics import Metrics, evaluate
from autokd.train.results import TrainResult
from autokd.train.step import Batch, StudentRun
from autokd.train.students import Student
from autokd.train.teacher_side import TeacherSide, open_cache
from autokd.train.watch import progress_bar, sigterm_flag

log = logging.getLogger("autokd")


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
    heldout: float = HELDOUT_FRACTION
    decode_once: bool = True


class Trainer:
    """One run of one or many students on the same batches and teacher outputs: set-up, the epoch loop
    (`run`), one step of every student (`step`), checkpoints, one TrainResult per student."""

    def __init__(self, students: Student | nn.Module | Sequence[Student | nn.Module], teacher: Teacher | None,
                 data: ImageDataset, recipe: Recipe, outs: str | Path | Sequence[str | Path], info: D.DistInfo,
                 options: TrainOptions = TrainOptions(), *, resume: bool = False):
        metas = [s if isinstance(s, Student) else Student(s, type(s).__name__)
                 for s in (students if isinstance(students, Sequence) else [students])]
        outs = [Path(o) for o in ([outs] if isinstance(outs, (str, Path)) else outs)]
        if len(outs) != len(metas) or len(set(outs)) != len(outs):
            raise AutokdError(f"give one distinct output folder per student ({len(metas)} students, "
                              f"{len(set(outs))} folders)")
        self.teacher, self.data, self.recipe, self.info, self.options = teacher, data, recipe, info, options
        self.seed, self.max_steps, self.log_every = options.seed, options.max_steps, max(1, options.log_every)
        self.device = info.device
        self.cuda = self.device.type == "cuda"
        self.notes: list[str] = []
        self.autocast = autocast_dtype(self.device)
        for meta in metas:
            check_inputs(meta.model, teacher, data, recipe)
        states = [load_checkpoint(o / "last.pt") for o in outs] if resume else None  # read once
        for o in outs:
            if not resume and (o / "last.pt").exists():
                raise AutokdError(f"{str(o)!r} already holds a training run (last.pt): resume it with "
                                  "--resume or give another --out folder")
        if options.inputs is not None:
            self.inputs = options.inputs
        elif teacher is not None:
            self.inputs = Inputs.of(teacher)
        else:
            size = options.img_size or metas[0].img_size or min(data.train.open_image(0).size)
            self.inputs = Inputs(size, crop_pct=0.875 if size > 64 else 1.0)
        self.img_size = self.inputs.img_size
        if options.decode_once:
            data = decode_once(data, CACHE_ROOT / "pixels") or data
        self.loaders = TrainData(data, recipe, self.inputs, info, seed=self.seed, heldout=options.heldout,
                                 num_workers=options.num_workers, cuda=self.cuda)
        self.steps_per_epoch = self.loaders.steps_per_epoch
        # before the teacher moves to the device: its fingerprint hashes the weights on the CPU
        views = self.loaders.augment or self.loaders.train_tf  # what decides a cached row
        cache = (open_cache(teacher, data, views, self.seed, options.cache_dir, options.cache_topk, info)
                 if recipe.teacher_cache else None)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.teacher_side = TeacherSide(teacher, recipe, info, cache=cache, compile=options.compile_teacher,
                                        autocast=self.autocast)
        sample = self.loaders.sample()
        self.students: list[StudentRun] = []
        for meta, out in zip(metas, outs):
            seed_everything(self.seed + info.rank)  # each loss's own init as if its student trained alone
            self.students.append(StudentRun(meta, out, recipe, self.teacher_side.model, sample, info,
                                            self.steps_per_epoch, compile=options.compile_student))
        self.teacher_side.attach_tap()
        seed_everything(self.seed + info.rank)  # a resumed run then restores the checkpoint's RNG states
        self.mixup = self._mixup()
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.teacher_metrics: Metrics | None = None
        self.train_images, self.train_seconds = 0, 0.0
        self.stop: str | None = None
        if states is not None:
            self._restore(states)

    def _mixup(self):
        r = self.recipe
        if (r.mixup > 0 or r.cutmix > 0) and r.teacher_cache:
            self.notes.append("mixup/cutmix are off with the teacher cache: a mixed view depends on the "
                              "batch, so its teacher output cannot be keyed by (sample, seed)")
        elif r.mixup > 0 or r.cutmix > 0:
            from timm.data import Mixup

            # label smoothing is applied once, by KDLoss's cross-entropy
            return Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, label_smoothing=0.0,
                         num_classes=self.data.num_classes)
        return None

    @property
    def view_epoch(self) -> int:
        """The epoch that sets the views' seeds (and cache rows): 0 throughout without augmentation."""
        return self.epoch if self.loaders.views.vary else 0

    # -------------------------------------------------------------------------------------------- training
    def run(self) -> list[TrainResult]:
        """Train every student to the recipe's last epoch (or a stop request); one result per student."""
        start = time.perf_counter()
        if self.info.is_main:
            for s in self.students:
                s.out.mkdir(parents=True, exist_ok=True)
        show = self.options.progress and self.info.is_main
        try:
            with sigterm_flag() as self.sigterm, progress_bar(show) as self.bar:
                while self.epoch < self.recipe.epochs and self.stop is None:
                    if self._train_epoch():
                        self._end_epoch()
                    else:  # stopped mid-epoch: keep the position
                        self._save()
        finally:
            for s in self.students:
                s.remove_tap()
            self.teacher_side.close()
        if self.stop is not None and self.info.is_main:
            planned = self.stop.startswith("max_steps")  # the caller's plan (a --refine rung), not an interruption
            log.log(logging.DEBUG if planned else logging.INFO, "stopped: %s; resume from last.pt in %s", self.stop,
                    ", ".join(str(s.out) for s in self.students))
        final = self._final_metrics()
        seconds = time.perf_counter() - start
        return [self._report(s, metrics, seconds) for s, metrics in zip(self.students, final)]

    def step(self, batch: Batch) -> list[torch.Tensor]:
        """One optimiser step of every student on `batch` (one teacher pass); returns their losses."""
        images, targets = batch.images, batch.labels
        if self.mixup is not None:  # never with the cache: the teacher sees the mixed view live
            images, targets = self.mixup(images, targets)
        teacher = self.teacher_side.outputs(images, batch, self.view_epoch, self.data.num_classes)
        epoch = self.epoch + (self.step_in_epoch + 1) / self.steps_per_epoch  # 1-based, fractional, for DKD
        return [s.step(images, targets, batch.labels, teacher, epoch, self.autocast) for s in self.students]

    def _train_epoch(self) -> bool:
        """Train until the epoch ends (True) or a stop request (False); `self.stop` says why."""
        loaders = self.loaders
        loaders.sampler.set_epoch(self.epoch, skip=self.step_in_epoch * loaders.local_batch)
        for s in self.students:
            s.trainable.train()
        cache = self.teacher_side.cache
        if cache is not None:
            if self.info.is_main:
                cache.prepare(self.view_epoch, create=True)
            D.barrier(self.info)
            cache.prepare(self.view_epoch, create=False)
        task = None
        if self.bar is not None:
            task = self.bar.add_task(f"epoch {self.epoch + 1}/{self.recipe.epochs}",
                                     total=self.steps_per_epoch, completed=self.step_in_epoch,
                                     loss=float("nan"), acc=float("nan"), ips=0.0)
        epoch_start = tick = time.perf_counter()
        epoch_images = tick_images = 0
        for images, labels, indices, seeds in loaders.train_loader:
            batch = Batch(images.to(self.device, non_blocking=True),
                          labels.to(self.device, non_blocking=True), indices.numpy(), seeds.numpy())
            if loaders.augment is not None:
                batch.images = loaders.augment(batch.images, batch.seeds)
            if self.cuda:
                batch.images = batch.images.contiguous(memory_format=torch.channels_last)
            self.step(batch)
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
                    loss, acc = self.students[0].running()
                    self.bar.update(task, completed=self.step_in_epoch, loss=loss, acc=acc,
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
        for s in self.students:
            s.close_epoch(epoch_images / max(seconds, 1e-9))
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

    def _check_finite(self) -> None:
        for s in self.students:
            s.check_finite(self.epoch, self.global_step)

    def _evaluate(self, model: nn.Module, loader) -> Metrics:
        return evaluate(model, loader, self.info, channels_last=self.cuda, autocast_dtype=self.autocast)

    def _end_epoch(self) -> None:
        """Evaluate every student on the held-out split (if any), keep its best, write its checkpoints."""
        best = []
        for s in self.students:
            row: dict[str, Any] = {"epoch": self.epoch + 1, **s.epoch_train, "lr": s.optimizer.param_groups[0]["lr"]}
            is_best = self.loaders.heldout_loader is None  # no selection: the last epoch is the one kept
            if self.loaders.heldout_loader is not None:
                m = self._evaluate(s.model, self.loaders.heldout_loader)
                row |= {"heldout_top1": m.top1, "heldout_top5": m.top5, "heldout_ece": m.ece}
                is_best = m.top1 > s.best_top1
                if is_best:
                    s.best_top1, s.best_epoch = m.top1, self.epoch + 1
            else:
                s.best_epoch = self.epoch + 1
            s.history.append(row)
            best.append(is_best)
            if self.info.is_main:
                heldout = (f", held-out top-1 {row['heldout_top1']:.2f}%" if "heldout_top1" in row else "")
                log.info("%s epoch %d/%d: loss %.4f, train top-1 %.2f%%%s, %.0f img/s", s.meta.name,
                         self.epoch + 1, self.recipe.epochs, row["train_loss"], row["train_top1"], heldout,
                         row["images_per_second"])
        self.epoch += 1
        self.step_in_epoch = 0
        self._save(best)

    def _final_metrics(self) -> list[Metrics | None]:
        """Each student on the final split (test, read once here; else held-out), after the last epoch."""
        loader = self.loaders.final_loader
        if self.stop is not None and self.epoch < self.recipe.epochs:
            return [None] * len(self.students)
        if self.teacher_side.model is not None and self.options.evaluate_teacher and self.teacher_metrics is None:
            self.teacher_metrics = self._evaluate(self.teacher_side.model, loader)
        return [self._evaluate(s.model, loader) for s in self.students]

    # ---------------------------------------------------------------------------------------- checkpoints
    def _settings(self, s: StudentRun) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "seed": self.seed, "student": s.meta.name,
                "params": count_params(s.model), "data": [self.data.name, len(self.data.train)],
                "teacher": self.teacher.name if self.teacher else None, "img_size": self.img_size,
                "heldout": self.options.heldout}

    def _save(self, best: Sequence[bool] | None = None) -> None:
        """Every student's last.pt (and best.pt), with every process's RNG state, written by rank 0."""
        self._check_finite()
        cache = self.teacher_side.cache
        if cache is not None:
            cache.flush()
        rngs = [rng_state()]
        if self.info.distributed:
            rngs = [None] * self.info.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        position = {"format": FORMAT, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                    "global_step": self.global_step, "rng": rngs, "world_size": self.info.world_size,
                    "teacher_metrics": None if self.teacher_metrics is None else vars(self.teacher_metrics),
                    "train_images": self.train_images, "train_seconds": self.train_seconds,
                    "cache": None if cache is None else {"folder": str(cache.folder), "epoch": self.view_epoch,
                                                         "step_in_epoch": self.step_in_epoch}}
        for i, s in enumerate(self.students):
            state = {**position, **s.state(), "settings": self._settings(s)}
            if self.info.is_main:
                atomic_save(state, s.out / "last.pt")
                if best is not None and best[i]:
                    atomic_save(s.student_file(self.img_size, self.data.num_classes, list(self.data.classes)),
                                s.out / "best.pt")
        D.barrier(self.info)

    def _restore(self, states: list[dict[str, Any]]) -> None:
        keys = ("epoch", "step_in_epoch", "global_step")
        if len({tuple(st.get(k) for k in keys) for st in states}) > 1:
            raise AutokdError("the students' checkpoints stand at different steps (the run was killed while "
                              "writing them): resume each student on its own")
        for s, state in zip(self.students, states):
            old, new = state.get("settings", {}), self._settings(s)
            diff = [k for k in new if old.get(k) != new[k]]
            if diff:
                raise AutokdError(f"the checkpoint in {str(s.out)!r} was made with a different "
                                  f"{', '.join(diff)}: resume with the original settings, or give another --out")
            s.restore(state)
        state = states[0]
        for name in (*keys, "train_images", "train_seconds"):
            setattr(self, name, state[name])
        if state["teacher_metrics"] is not None:
            self.teacher_metrics = Metrics(**state["teacher_metrics"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:
            set_rng_state(rngs[0])
            self.notes.append(f"resumed on {self.info.world_size} processes from a checkpoint of "
                              f"{len(rngs)}: data order and views are the same, dropout/mixup draws differ")
        if self.info.is_main:
            log.info("resuming at epoch %d, step %d", self.epoch + 1, self.step_in_epoch)

    # ---------------------------------------------------------------------------------------------- report
    def _report(self, s: StudentRun, final: Metrics | None, seconds: float) -> TrainResult:
        model = s.model
        cost = measure_cost(model, self.img_size)
        latency = measure_latency(model, self.img_size, self.device) * 1e3 if self.info.is_main else float("nan")
        tm = self.teacher_metrics
        cache = None
        if self.teacher_side.cache is not None:
            cache = self.teacher_side.cache.usage()
            if self.info.is_main and s is self.students[0]:
                log.info("teacher cache: %d hits, %d misses; %.1f MB on disk in %s", cache["hits"],
                         cache["misses"], cache["disk_bytes"] / 1e6, cache["folder"])
        heldout = [h["heldout_top1"] for h in s.history if "heldout_top1" in h]
        nan = float("nan")
        return TrainResult(
            top1=final.top1 if final else nan, top5=final.top5 if final else nan,
            ece=final.ece if final else nan, best_top1=max(s.best_top1, 0.0) if heldout else nan,
            best_epoch=s.best_epoch, teacher_top1=tm.top1 if tm else None,
            teacher_top5=tm.top5 if tm else None,
            macs=cost.macs, params=cost.params, latency_ms=latency,
            best_checkpoint=str(s.out / "best.pt"), last_checkpoint=str(s.out / "last.pt"),
            epochs=self.epoch, images_per_second=self.train_images / max(self.train_seconds, 1e-9),
            eval_split=self.loaders.final_split, eval_images=self.loaders.final_images, student=s.meta.name,
            teacher=self.teacher.name if self.teacher else None, recipe=self.recipe.to_dict(),
            device=str(self.device), world_size=self.info.world_size, seconds=seconds, stopped=self.stop,
            cache=cache, notes=s.meta.notes + (self.teacher.notes if self.teacher else []) + self.notes,
            history=s.history, heldout_top1=heldout[-1] if heldout else None,
            heldout_images=self.loaders.heldout_images, students_together=len(self.students),
        )
