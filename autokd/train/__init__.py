"""The distillation trainer: the loop, the teacher-output cache, checkpoints, DDP, metrics and results."""

from autokd.train.cache import TeacherCache, teacher_fingerprint, topk_targets
from autokd.train.checkpoint import atomic_save, load_checkpoint
from autokd.train.distill import no_kd, train_student, train_students
from autokd.train.finetune import finetune_teacher
from autokd.train.inputs import Inputs
from autokd.train.metrics import ClassificationMeter, Metrics, evaluate
from autokd.train.results import TrainResult, record_in_study
from autokd.train.step import Batch
from autokd.train.students import (
    Student,
    build_from_spec,
    resolve_student,
    student_from_timm,
    student_from_trial,
    student_from_yaml,
    student_space,
)
from autokd.train.trainer import Trainer, TrainOptions
from autokd.train.views import EpochSampler, SeededViews, derive_seed, seeded_rng

__all__ = [
    "Batch",
    "ClassificationMeter",
    "EpochSampler",
    "Inputs",
    "Metrics",
    "SeededViews",
    "Student",
    "TeacherCache",
    "TrainOptions",
    "TrainResult",
    "Trainer",
    "atomic_save",
    "build_from_spec",
    "derive_seed",
    "evaluate",
    "finetune_teacher",
    "load_checkpoint",
    "no_kd",
    "record_in_study",
    "resolve_student",
    "seeded_rng",
    "student_from_timm",
    "student_from_trial",
    "student_from_yaml",
    "student_space",
    "teacher_fingerprint",
    "topk_targets",
    "train_student",
    "train_students",
]
