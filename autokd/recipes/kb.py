"""The knowledge base of KD runs: one pandas table, one row per (task, teacher-student pair, recipe, seed).

Column groups (`COLUMNS`):
- task: the dataset's meta-features (`autokd.data.meta`): classes, train size, resolution, class balance, and the
  teacher measured on a held-out sample (accuracy, mean entropy, ECE, a linear probe of its pooled features);
- pair: teacher and student family, MACs and params, and their ratios (teacher / student);
- recipe: the knobs of the `Recipe` (loss, temperature, weights, label smoothing, augmentation, mixup, cutmix,
  optimiser, lr, epochs), its `recipe_id` in the candidate grid and the whole recipe as JSON;
- outcome: student accuracy, the no-KD accuracy of the same student and schedule, their difference `gain`
  (percentage points), and the run's `status` ("done", or "diverged": its loss became NaN/inf, and its accuracy
  is a constant prediction's);
- provenance: task name, seed, source ("run" or "published"), autokd and torch versions, time, a unique `key`.

The user's KB is CSV at `--kb`, default ~/.cache/autokd/kb.csv or $AUTOKD_KB: autokd's commands append their
runs there. Appends hold a file lock and write a temporary file renamed over the old one, so readers never see
half a table and concurrent writers lose nothing. Recommendations read it together with the starter KB that
ships with autokd (`STARTER_KB`, built by benchmarks/recipes/build_recipe_kb.py), which no command writes to.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from autokd.errors import AutokdError
from autokd.io import write_csv
from autokd.recipes.recipe import Recipe

TASK_COLUMNS = ("num_classes", "train_size", "resolution", "class_balance", "teacher_acc", "teacher_entropy",
                "teacher_ece", "probe_acc")
PAIR_COLUMNS = ("teacher_family", "student_family", "pair_kind", "teacher_macs", "student_macs", "teacher_params",
                "student_params", "macs_ratio", "params_ratio")
RECIPE_COLUMNS = ("recipe_id", "preset", "loss", "temperature", "ce_weight", "kd_weight", "feature_loss",
                  "feature_weight", "logit_standardize", "label_smoothing", "augmentation", "mixup", "cutmix",
                  "optimizer", "lr", "epochs", "recipe_json")
OUTCOME_COLUMNS = ("student_acc", "no_kd_acc", "gain", "status")
#: a finished run, or one whose loss became NaN/inf (its accuracy is a constant prediction's: 100 / classes)
STATUSES = ("done", "diverged")
PROVENANCE_COLUMNS = ("task", "seed", "source", "autokd_version", "torch_version", "created", "key")
COLUMNS = TASK_COLUMNS + PAIR_COLUMNS + RECIPE_COLUMNS + OUTCOME_COLUMNS + PROVENANCE_COLUMNS
#: numeric features the meta-model reads for a task and a pair, and the recipe knobs it reads
TASK_FEATURES = TASK_COLUMNS + ("teacher_macs", "student_macs", "macs_ratio", "params_ratio")
RECIPE_FEATURES = ("loss", "temperature", "ce_weight", "kd_weight", "feature_loss", "feature_weight",
                   "logit_standardize", "label_smoothing", "augmentation", "mixup", "cutmix", "optimizer", "lr")
SOURCES = ("run", "published")
#: the starter KB that ships inside the package: read with the user's KB, never appended to by a command
STARTER_KB = Path(__file__).resolve().parent / "data" / "starter_kb.csv"


def kb_path(path: str | Path | None = None) -> Path:
    """`path`, else $AUTOKD_KB, else ~/.cache/autokd/kb.csv."""
    return Path(path or os.environ.get("AUTOKD_KB") or Path.home() / ".cache" / "autokd" / "kb.csv").expanduser()


def family_kind(family: str) -> str:
    """'vit' for transformer families, 'cnn' for the others (the KB groups pairs by these kinds)."""
    return "vit" if family in ("vit", "deit", "swin") else "cnn"


def pair_kind(teacher_family: str, student_family: str) -> str:
    """The kind of a teacher-student pair, e.g. 'cnn->vit'."""
    return f"{family_kind(teacher_family)}->{family_kind(student_family)}"


def recipe_columns(recipe: Recipe, recipe_id: str, preset: str) -> dict[str, Any]:
    """The recipe group of a KB row."""
    params = recipe.loss_params
    return {
        "recipe_id": recipe_id, "preset": preset, "loss": recipe.loss,
        "temperature": float(params.get("temperature", params.get("tau", 1.0))),
        "ce_weight": recipe.ce_weight, "kd_weight": recipe.kd_weight, "feature_loss": recipe.feature_loss or "none",
        "feature_weight": recipe.feature_weight, "logit_standardize": bool(recipe.logit_standardize),
        "label_smoothing": recipe.label_smoothing, "augmentation": recipe.augmentation, "mixup": recipe.mixup,
        "cutmix": recipe.cutmix, "optimizer": recipe.optimizer, "lr": recipe.lr, "epochs": recipe.epochs,
        "recipe_json": recipe.replace(teacher_cache=False).to_json(),  # how the teacher ran is no knob
    }


def pair_columns(teacher_family: str, student_family: str, teacher_macs: int, student_macs: int,
                 teacher_params: int, student_params: int) -> dict[str, Any]:
    """The pair group of a KB row."""
    return {"teacher_family": teacher_family, "student_family": student_family,
            "pair_kind": pair_kind(teacher_family, student_family), "teacher_macs": teacher_macs,
            "student_macs": student_macs, "teacher_params": teacher_params, "student_params": student_params,
            "macs_ratio": teacher_macs / max(student_macs, 1), "params_ratio": teacher_params / max(student_params, 1)}


def make_row(task: str, task_features: dict[str, Any], pair: dict[str, Any], recipe: dict[str, Any],
             student_acc: float, no_kd_acc: float | None, seed: int, source: str = "run",
             status: str = "done") -> dict[str, Any]:
    """One complete KB row; `key` identifies the run (task, pair, recipe, seed), so an append never doubles it."""
    import torch

    import autokd

    if source not in SOURCES:
        raise AutokdError(f"unknown KB source {source!r}: use {' or '.join(SOURCES)}")
    if status not in STATUSES:
        raise AutokdError(f"unknown KB run status {status!r}: use {' or '.join(STATUSES)}")
    no_kd = float("nan") if no_kd_acc is None else float(no_kd_acc)
    key = row_key(task, pair, recipe["recipe_json"], seed, source)
    row = {**{c: task_features.get(c, float("nan")) for c in TASK_COLUMNS}, **pair, **recipe,
           "student_acc": float(student_acc), "no_kd_acc": no_kd, "gain": float(student_acc) - no_kd,
           "status": status, "task": task, "seed": seed, "source": source, "autokd_version": autokd.__version__,
           "torch_version": torch.__version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "key": key}
    return {c: row[c] for c in COLUMNS}


def row_key(task: str, pair: dict[str, Any], recipe_json: str, seed: int, source: str = "run") -> str:
    """The key of a KB row: one run of a recipe (as JSON) on a task and pair with a seed."""
    return "|".join(str(v) for v in (task, pair["teacher_family"], pair["student_family"], pair["student_macs"],
                                     recipe_json, seed, source))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> int:
    """Add `rows` (from `make_row`) to the KB at `path` under a file lock, atomically; rows whose key is already
    there are skipped. Returns how many were added."""
    path = kb_path(path)
    new = pd.DataFrame(list(rows), columns=list(COLUMNS))
    with _locked(path):
        old = read_kb(path, missing_ok=True)
        new = new[~new["key"].isin(old["key"])].drop_duplicates("key")
        if len(new):
            write_csv(path, pd.concat([old, new], ignore_index=True) if len(old) else new)
    return len(new)


def read_kb(path: str | Path, *, missing_ok: bool = False) -> pd.DataFrame:
    """The KB table at `path`, checked: another format or missing columns raise one AutokdError line."""
    path = kb_path(path)
    if not path.is_file():
        if missing_ok:
            return pd.DataFrame(columns=list(COLUMNS))
        raise AutokdError(f"no knowledge base at {str(path)!r}: autokd train and autokd run on real data add "
                          "their runs there; give --kb PATH for another")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AutokdError(f"knowledge base {str(path)!r} is not a CSV table ({reason}): give a KB written by "
                          "autokd") from None
    if "status" not in frame.columns:  # written before the column existed: it held finished runs only
        frame["status"] = "done"
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise AutokdError(f"knowledge base {str(path)!r} lacks column(s) {', '.join(missing[:6])}"
                          f"{' ...' if len(missing) > 6 else ''}: it is not an autokd KB (see autokd/recipes/kb.py)")
    return frame[list(COLUMNS)]


def read_kbs(path: str | Path | None = None, *, starter: bool = True) -> tuple[pd.DataFrame, list[Path]]:
    """The starter KB (with `starter`) and the user's KB at `kb_path(path)` (where it exists) as one table, a run
    in both counted once; and the files read."""
    user = kb_path(path)
    sources = [*([STARTER_KB] if starter else []), *([user] if user.is_file() and user != STARTER_KB else [])]
    if not sources:
        raise AutokdError(f"no knowledge base at {str(user)!r}: autokd train and autokd run on real data add their "
                          "runs there; give --kb PATH for another, or leave out --no-starter-kb")
    frames = [read_kb(p) for p in sources]
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return table.drop_duplicates("key", keep="last").reset_index(drop=True), sources


def describe_sources(sources: Sequence[Path]) -> str:
    """The KB files read, for a table title: 'the starter KB and ~/.cache/autokd/kb.csv'."""
    return " and ".join("the starter KB" if p == STARTER_KB else str(p) for p in sources)


def rows_for_pair(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of pair kind `kind` whose gain is known (the meta-model's training rows)."""
    return frame[(frame["pair_kind"] == kind) & frame["gain"].notna()].reset_index(drop=True)
