"""Fine-tune a teacher on the user's data (cross-entropy, no KD) before distilling from it."""

from __future__ import annotations

from pathlib import Path

from autokd.data import ImageDataset
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.teachers import Teacher
from autokd.train.distill import train_student
from autokd.train.inputs import Inputs
from autokd.train.results import TrainResult
from autokd.train.students import Student


def finetune_teacher(teacher: Teacher, data: ImageDataset, recipe: Recipe, out: str | Path, *, device: str = "auto",
                     resume: bool = False, seed: int = 0, num_workers: int | None = None,
                     progress: bool = True) -> TrainResult:
    """Train the teacher itself on `data` with `recipe` (normally the `none` preset); out/best.pt is a weights
    file for `resolve_teacher(..., weights=out/best.pt)`."""
    if not teacher.pretrained:
        raise AutokdError("fine-tuning starts from trained weights: give --teacher-weights (or cached timm weights)")
    if recipe.needs_teacher:
        raise AutokdError(f"fine-tune the teacher with a recipe without KD (e.g. none), not {recipe.loss!r}")
    model = teacher.model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    student = Student(model=model, name=teacher.name, img_size=teacher.img_size)
    # the teacher's own size, normalisation, crop and interpolation: the inputs it will be distilled on
    return train_student(student, None, data, recipe, out, device=device, resume=resume, seed=seed,
                         num_workers=num_workers, progress=progress, inputs=Inputs.of(teacher))
