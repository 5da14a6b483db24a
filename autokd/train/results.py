"""What a training run hands back: TrainResult, written as out/results.json and mirrored into the study."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autokd.io import write_json

log = logging.getLogger("autokd")


@dataclass
class TrainResult:
    """Accuracy (percent), calibration, cost and speed of a trained student, and where its checkpoints are.

    `top1`/`top5`/`ece` are the final student's on `eval_split` ('test', read once after the last epoch; or
    'heldout' of train when the data has no test split); nan for a run stopped early. `best_top1` is the best
    epoch's held-out top-1, the epoch that best.pt holds (nan without a held-out split: no selection).
    `heldout_top1` is the last epoch's held-out figure. `gain` is top1 minus the no-KD baseline's top1.
    """

    top1: float
    top5: float
    ece: float
    best_top1: float
    best_epoch: int
    teacher_top1: float | None
    teacher_top5: float | None
    macs: int
    params: int
    latency_ms: float
    best_checkpoint: str
    last_checkpoint: str
    epochs: int
    images_per_second: float
    eval_split: str
    eval_images: int
    student: str
    teacher: str | None
    recipe: dict[str, Any]
    device: str
    world_size: int
    seconds: float
    stopped: str | None = None
    baseline_top1: float | None = None
    gain: float | None = None
    cache: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    heldout_top1: float | None = None
    heldout_images: int = 0
    students_together: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The headline numbers (what goes into a study's user_attrs)."""
        keys = ("top1", "top5", "ece", "best_top1", "teacher_top1", "macs", "params", "latency_ms", "epochs",
                "images_per_second", "eval_split", "heldout_top1", "baseline_top1", "gain", "stopped")
        return {k: getattr(self, k) for k in keys} | {"recipe": self.recipe.get("loss"),
                                                       "checkpoint": self.best_checkpoint}

    def save(self, path: Path) -> None:
        """Write as JSON, atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> TrainResult:
        return cls(**json.loads(Path(path).read_text()))


def record_in_study(result: TrainResult, storage: str, study_name: str, trial: int | None) -> bool:
    """Add the result to the search study as the study user_attr `trained/<trial>` (Optuna does not let a
    finished trial change; the dashboard shows study attributes). False, with a warning, when it cannot."""
    import optuna

    from autokd.storage import open_storage

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
        study.set_user_attr(f"trained/{trial if trial is not None else 'student'}", result.summary())
        return True
    except Exception as e:  # the run's results.json is already safe; the study is a mirror
        log.warning("could not record the result in study %r at %s (%s: %s)", study_name, storage,
                    type(e).__name__, e)
        return False
