"""`train_student` and `train_students`: distil a teacher into one student, or into many on one teacher pass.

Per step: the teacher's output (live, under inference_mode, or from the top-k cache), each student's forward in
bf16 autocast (CUDA) or fp32 (CPU), the recipe's KDLoss, backward, clipping, optimiser, per-step LR schedule.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from autokd.data.datasets import ImageDataset
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.teachers import Teacher
from autokd.train import distributed as D
from autokd.train.cache import DEFAULT_TOPK
from autokd.train.checkpoint import FORMAT, atomic_save, load_checkpoint
from autokd.train.inputs import HELDOUT_FRACTION, Inputs
from autokd.train.results import TrainResult, record_in_study
from autokd.train.step import cpu_state
from autokd.train.students import Student
from autokd.train.trainer import Trainer, TrainOptions


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
    heldout: float = HELDOUT_FRACTION,
    decode_once: bool = True,
) -> TrainResult:
    """Train `student` (in place) on `data.train` with `recipe`, distilling `teacher`; write out/results.json,
    out/best.pt and out/last.pt.

    A stratified `heldout` share of train is kept out of training: it is evaluated every epoch and picks
    best.pt (0: no selection, best.pt is the last epoch). The test split is read once, after the last epoch,
    for `top1`; without a test split `top1` is the held-out figure. Under torchrun each process trains its share
    of every global batch (`recipe.batch_size` is the global batch). `resume` continues from out/last.pt.
    `max_steps` stops early, keeping a resumable checkpoint. `baseline` also trains a copy of the student
    without KD (out/baseline/) and reports the gain. Inputs use the teacher's size and normalisation; without a
    teacher, `img_size`, else the student's search size, else the data's own; `inputs` sets them outright.
    `evaluate_teacher=False` skips the teacher's accuracy (teacher_top1 is then None). With
    `recipe.teacher_cache`, the teacher's top `cache_topk` probabilities are kept under `cache_dir` (default
    ~/.cache/autokd/teacher_outputs, or $AUTOKD_CACHE/teacher_outputs). `num_workers` defaults to 0 on the
    CPU and up to 8 per GPU. `decode_once` keeps a small dataset's decoded pixels in a file under
    ~/.cache/autokd/pixels, so no image is decoded twice (data/pixels.py)."""
    return train_students([student], teacher, data, recipe, [out], device=device, resume=resume, seed=seed,
                          baseline=baseline, num_workers=num_workers, max_steps=max_steps,
                          compile_teacher=compile_teacher, compile_student=compile_student, log_every=log_every,
                          img_size=img_size, cache_dir=cache_dir, cache_topk=cache_topk, progress=progress,
                          inputs=inputs, evaluate_teacher=evaluate_teacher, heldout=heldout,
                          decode_once=decode_once)[0]


def train_students(
    students: Sequence[nn.Module | Student],
    teacher: Teacher | None,
    data: ImageDataset,
    recipe: Recipe,
    outs: Sequence[str | Path],
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
    heldout: float = HELDOUT_FRACTION,
    decode_once: bool = True,
) -> list[TrainResult]:
    """`train_student` for several students at once, one output folder each: every batch is loaded and the
    teacher run (or read from its cache) once, then each student steps on it. Each student ends as it would
    trained alone with the same seed, unless it draws random numbers itself (dropout, drop-path)."""
    if not students:
        raise AutokdError("give at least one student")
    options = TrainOptions(seed, num_workers, max_steps, compile_teacher, compile_student, log_every,
                           img_size, cache_dir, cache_topk, progress, inputs, evaluate_teacher, heldout, decode_once)
    info = D.setup(device)
    try:
        metas = [s if isinstance(s, Student) else Student(s, type(s).__name__) for s in students]
        outs = [Path(o) for o in outs]
        inits = [_initial_state(m.model, o, resume) for m, o in zip(metas, outs)] if baseline else None
        trainer = Trainer(metas, teacher, data, recipe, outs, info, options, resume=resume)  # checks inputs
        if inits is not None and info.is_main:
            for init, out in zip(inits, outs):
                if not (out / "init.pt").exists():
                    atomic_save({"format": FORMAT, "model": init}, out / "init.pt")
        results = trainer.run()
        if baseline and recipe.needs_teacher and all(r.stopped is None for r in results):
            base_options = replace(options, max_steps=None, compile_teacher=False, inputs=trainer.inputs)
            _with_baselines(results, metas, inits, data, recipe, outs, info, base_options, resume)
        if info.is_main:
            for meta, out, result in zip(metas, outs, results):
                result.save(out / "results.json")
                if meta.study:
                    record_in_study(result, meta.study["storage"], meta.study["study"], meta.study.get("trial"))
        return results
    finally:
        D.teardown(info)


def no_kd(recipe: Recipe) -> Recipe:
    """The same recipe (optimiser, schedule, augmentation) with cross-entropy only: the no-KD baseline."""
    return recipe.replace(loss="none", loss_params={}, logit_standardize=False, ce_weight=1.0, kd_weight=0.0,
                          feature_loss=None, feature_weight=0.0, feature_params={}, teacher_cache=False)


def _initial_state(model: nn.Module, out: Path, resume: bool) -> dict[str, torch.Tensor]:
    """The student's initial weights for the baseline (kept in out/init.pt for a resumed run)."""
    if resume and (out / "init.pt").is_file():
        return load_checkpoint(out / "init.pt")["model"]
    return cpu_state(model)


def _with_baselines(results: list[TrainResult], metas: list[Student], inits: list[dict], data: ImageDataset,
                    recipe: Recipe, outs: list[Path], info: D.DistInfo, options: TrainOptions,
                    resume: bool) -> None:
    """Train every student's copy from its initial weights without KD (in out/baseline/); add the gains."""
    copies = []
    for meta, init in zip(metas, inits):
        model = copy.deepcopy(meta.model).cpu()
        model.load_state_dict(init)
        copies.append(Student(model, meta.name, meta.spec, meta.img_size))
    folders = [out / "baseline" for out in outs]
    again = resume and all((f / "last.pt").is_file() for f in folders)
    bases = Trainer(copies, None, data, no_kd(recipe), folders, info, options, resume=again).run()
    for result, base, folder in zip(results, bases, folders):
        if info.is_main:
            base.save(folder / "results.json")
        result.baseline_top1 = base.top1
        result.gain = result.top1 - base.top1
