"""What `autokd recommend`, `train` and `run` do with the knowledge base, as library calls: profile a task for a
resolved teacher and student, pick the `--recipe auto` recipe, add finished runs, tune, and show the ranking."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from autokd.recipes.kb import append_rows, describe_sources, pair_columns
from autokd.recipes.recipe import Recipe, with_overrides
from autokd.recipes.recommend import Recommendation, auto_recipe, kb_rows_of_results, task_profile


def profile_of(teacher: Any, student: Any, data: Any, *, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """The KB's task and pair features for an autokd Teacher, a Student and the data (measures the teacher on
    a held-out sample); the task is named after the data."""
    from autokd.device import resolve_device
    from autokd.train import student_space

    profile = task_profile(teacher, student.model, student_space(student), data, teacher.img_size, seed=seed,
                           device=str(resolve_device(device)))
    return {**profile, "task": data.name}


def student_profile(profile: dict[str, Any], student: Any, img_size: int) -> dict[str, Any]:
    """`profile` with the pair columns of another student of the same teacher and task."""
    from autokd.cost import count_macs, count_params
    from autokd.train import student_space

    pair = pair_columns(profile["teacher_family"], student_space(student), profile["teacher_macs"],
                        count_macs(student.model, img_size), profile["teacher_params"], count_params(student.model))
    return {**profile, **pair}


def recipe_auto(kb: str | None, profile: dict[str, Any], starter: bool = True,
                **overrides: Any) -> tuple[Recipe, str]:
    """`--recipe auto`: the top recommendation from the user's KB `kb` and (with `starter`) the starter KB, or
    the default rule with the reason; with the command-line overrides (epochs, batch_size, lr, teacher_cache);
    and the line to show."""
    recipe, note = auto_recipe(kb, profile, starter)
    return with_overrides(recipe, **overrides), note


def add_runs(kb: str | None, results: Sequence[Any], profiles: Sequence[dict[str, Any]], recipe: Recipe,
             seed: int) -> int:
    """Append finished TrainResults (one profile each) of `recipe` to the KB; returns how many rows were new."""
    rows = [row for result, profile in zip(results, profiles)
            for row in kb_rows_of_results([result], profile, recipe, seed)]
    return append_rows(kb, rows)


def tune_student(rec: Recommendation, teacher: Any, student: Any, data: Any, profile: dict[str, Any], out: Path,
                 config: Any, *, top: int, kb: str | None, device: str, progress: bool) -> pd.DataFrame:
    """`--tune`: the recipe study for `student` (every trial starts from its current weights), warm-started with
    the `top` recommendations of `rec`."""
    from autokd.search.recipe_tune import tune_recipes

    initial = copy.deepcopy(student.model.state_dict())

    def make_student():
        model = copy.deepcopy(student.model)
        model.load_state_dict(initial)
        return model

    start = [(rid, rec.grid[rid]) for rid in rec.ranked["recipe_id"].head(top)]
    return tune_recipes(make_student, teacher, data, profile, start, out, config, kb=kb, device=device,
                        progress=progress)


def recommend_table(rec: Recommendation, top: int) -> Table:
    """The top recipes with their predicted gain and interval."""
    table = Table(title=f"recipes by predicted KD gain over no KD (pt; 10-90% over trees), from {len(rec.rows)} "
                        f"runs on {rec.rows['task'].nunique()} tasks in {describe_sources(rec.sources)}")
    for col in ("rank", "recipe", "loss", "T", "CE/KD weight", "optimizer", "lr", "gain", "interval"):
        table.add_column(col, no_wrap=True)
    for row in rec.ranked.head(top).to_dict("records"):
        table.add_row(str(row["rank"]), row["recipe_id"], row["loss"], f"{row['temperature']:g}",
                      f"{row['ce_weight']:g}/{row['kd_weight']:g}", row["optimizer"], f"{row['lr']:g}",
                      f"{row['mean']:+.2f}", f"{row['low']:+.2f} .. {row['high']:+.2f}")
    return table


def nearest_table(rec: Recommendation) -> Table:
    """The KB tasks nearest to this one, with the best recipe measured there."""
    table = Table(title="nearest tasks in the knowledge base (standardised meta-features)")
    for col in ("task", "distance", "runs", "best recipe there", "its gain"):
        table.add_column(col, no_wrap=True)
    for row in rec.nearest.to_dict("records"):
        table.add_row(str(row["task"]), f"{row['distance']:.2f}", str(row["runs"]), str(row["best_recipe"]),
                      f"{row['best_gain']:+.2f}")
    return table
