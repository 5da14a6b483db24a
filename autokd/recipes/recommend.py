"""Recipes for a new task: the candidate grid, the task's profile, and the ranking by the KB's meta-model.

The grid is every KD preset with 2-3 settings of its main knobs, one knob at a time: the temperature (tau for
DIST), the loss weight, the learning rate. `recommend` fits a `MetaModel` on the KB rows of the same pair kind
(CNN->CNN, CNN->ViT, ...), its shrink toward the recipes' KB average chosen by leave-one-task-out on those rows
(`autokd.recipes.loto.recipe_model`), and ranks the grid by predicted gain over training without KD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch.nn as nn

from autokd.errors import AutokdError
from autokd.recipes.kb import (
    family_kind,
    pair_columns,
    pair_kind,
    read_kbs,
    recipe_columns,
    rows_for_pair,
)
from autokd.recipes.loto import recipe_model
from autokd.recipes.meta_model import MetaModel
from autokd.recipes.recipe import PRESETS, Recipe, default_recipe

#: preset -> (temperature key, alternative temperatures), the alternative weights, the lr factor
TEMPERATURES = {"kd": ("temperature", (2.0, 1.0)), "dkd": ("temperature", (2.0, 1.0)),
                 "dist": ("tau", (2.0, 4.0)), "nkd": ("temperature", (2.0, 4.0)),
                 "kd_ls": ("temperature", (1.0, 4.0)), "fitnet": ("temperature", (2.0, 1.0)),
                 "kd_adamw": ("temperature", (2.0, 4.0)), "minilm": ("temperature", (2.0, 4.0))}
_WEIGHTS: dict[str, tuple[str, dict[str, Any]]] = {
    "kd": ("w=0.5/0.5", {"ce_weight": 0.5, "kd_weight": 0.5}),
    "dkd": ("beta=2", {"loss_params": {"beta": 2.0}}),
    "dist": ("w=2", {"kd_weight": 2.0}),
    "nkd": ("gamma=0.5", {"loss_params": {"gamma": 0.5}}),
    "kd_ls": ("w=3", {"kd_weight": 3.0}),
    "fitnet": ("fw=10", {"feature_weight": 10.0}),
    "kd_adamw": ("w=0.1/0.9", {"ce_weight": 0.1, "kd_weight": 0.9}),
    "minilm": ("fw=10", {"feature_weight": 10.0}),
}
LR_FACTOR = 2.0


def candidate_grid(teacher_family: str = "cifar_resnet", student_family: str = "cifar_resnet") -> dict[str, Recipe]:
    """recipe_id -> Recipe: every KD preset that suits the pair, at its defaults and with one knob changed
    (two other temperatures, another loss weight, twice the lr). MiniLM needs ViTs on both sides."""
    grid: dict[str, Recipe] = {}
    both_vit = family_kind(teacher_family) == family_kind(student_family) == "vit"
    for name in PRESETS:
        if name == "none" or (name == "minilm" and not both_vit):
            continue
        base = Recipe.load(name)
        grid[name] = base
        key, temperatures = TEMPERATURES[name]
        for t in temperatures:
            grid[f"{name}:T={t:g}"] = base.replace(loss_params={**base.loss_params, key: t})
        label, change = _WEIGHTS[name]
        if "loss_params" in change:
            change = {"loss_params": {**base.loss_params, **change["loss_params"]}}
        grid[f"{name}:{label}"] = base.replace(**change)
        grid[f"{name}:lr={base.lr * LR_FACTOR:g}"] = base.replace(lr=base.lr * LR_FACTOR)
    return grid


def grid_frame(grid: dict[str, Recipe]) -> pd.DataFrame:
    """The grid as KB recipe columns, one row per recipe_id."""
    return pd.DataFrame([recipe_columns(r, rid, rid.split(":")[0]) for rid, r in grid.items()])


def task_profile(teacher: Any, student: nn.Module, student_family: str, data: Any, img_size: int, *,
                 sample: int = 256, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """The task and pair columns of a KB row for `teacher` (an autokd Teacher), `student` and `data`:
    dataset meta-features, the teacher measured on a held-out sample, both models' MACs and params."""
    from autokd.cost import count_macs, count_params
    from autokd.data.meta import meta_features, teacher_meta_features

    features = meta_features(data, seed=seed)
    features["resolution"] = min(features["resolution"], img_size)  # what the models see
    features.update(teacher_meta_features(teacher.model, teacher.transform(), data, sample=sample, seed=seed,
                                          device=device))
    pair = pair_columns(teacher.family, student_family, count_macs(teacher.model, img_size),
                        count_macs(student, img_size), count_params(teacher.model), count_params(student))
    return {**features, **pair}


@dataclass
class Recommendation:
    """The grid ranked by predicted gain (`mean`, `low`, `high`, with `rank`), the nearest KB tasks with their
    best recipe, and the KB rows the model was fitted on."""

    ranked: pd.DataFrame
    nearest: pd.DataFrame
    rows: pd.DataFrame
    grid: dict[str, Recipe]
    model: MetaModel | None = None
    sources: list[Path] = field(default_factory=list)  # the KB files read

    def recipe(self, rank: int = 1) -> Recipe:
        return self.grid[self.ranked["recipe_id"].iloc[rank - 1]]


def fallback_note(kind: str, student_family: str) -> str:
    """What `--recipe auto` does when nothing can be recommended."""
    return f"falling back to the default rule ({default_recipe(student_family)} for a {kind} pair)"


def recommend(kb: pd.DataFrame | str | None, profile: dict[str, Any], *, nearest: int = 3,
              trees: int = 200, seed: int = 0, starter: bool = True) -> Recommendation:
    """Rank the candidate grid for the task and pair in `profile` (see `task_profile`) with a meta-model fitted
    on the rows of the same pair kind of `kb`: a table, or the user's KB path (None: the default one), read with
    the starter KB when `starter`."""
    kind = pair_kind(profile["teacher_family"], profile["student_family"])
    table, sources = (kb, []) if isinstance(kb, pd.DataFrame) else read_kbs(kb, starter=starter)
    rows = rows_for_pair(table, kind)
    if rows["task"].nunique() < 1 or len(rows) < 2:
        raise AutokdError(f"the knowledge base has no {kind} runs with a known gain (it holds "
                          f"{', '.join(sorted(table['pair_kind'].dropna().unique())) or 'no runs'}); autokd "
                          "train and autokd run on real data add their runs to your KB")
    model = recipe_model(rows, trees=trees, seed=seed).fit(rows)
    grid = candidate_grid(profile["teacher_family"], profile["student_family"])
    ranked = model.rank(profile, grid_frame(grid))
    close = model.nearest_tasks(profile, rows, "task", k=nearest)
    per_task = rows.groupby(["task", "recipe_id"])["gain"].mean().reset_index()
    best = per_task.loc[per_task.groupby("task")["gain"].idxmax()].set_index("task")
    close["best_recipe"] = close["task"].map(best["recipe_id"])
    close["best_gain"] = close["task"].map(best["gain"])
    close["runs"] = close["task"].map(rows.groupby("task").size())
    return Recommendation(ranked, close, rows, grid, model, sources)


def auto_recipe(kb: str | None, profile: dict[str, Any], starter: bool = True) -> tuple[Recipe, str]:
    """The top recommendation and a line saying so; when the KB cannot recommend, the default rule's preset
    and the line saying why."""
    try:
        rec = recommend(kb, profile, starter=starter)
    except AutokdError as err:
        kind = pair_kind(profile["teacher_family"], profile["student_family"])
        return (Recipe.load(default_recipe(profile["student_family"])),
                f"--recipe auto: {err}; {fallback_note(kind, profile['student_family'])}")
    top = rec.ranked.iloc[0]
    return rec.recipe(1), (f"--recipe auto: {top['recipe_id']} (predicted gain {top['mean']:+.2f} pt, "
                           f"{top['low']:+.2f} to {top['high']:+.2f}; {len(rec.rows)} KB runs)")


_SCHEDULE_KEYS = ("epochs", "warmup_epochs", "batch_size", "teacher_cache")


def grid_id(recipe: Recipe, teacher_family: str = "cifar_resnet", student_family: str = "cifar_resnet") -> str:
    """The recipe_id of the grid recipe that `recipe` is, up to its schedule length and batch size, else
    'custom'."""
    def knobs(r: Recipe) -> dict[str, Any]:
        data = {k: v for k, v in r.to_dict().items() if k not in _SCHEDULE_KEYS}
        data["loss_params"] = {k: v for k, v in r.loss_params.items() if k != "warmup_epochs"}
        return data

    want = knobs(recipe)
    for rid, candidate in candidate_grid(teacher_family, student_family).items():
        if knobs(candidate) == want:
            return rid
    return "custom"


def kb_rows_of_results(results: list[Any], profile: dict[str, Any], recipe: Recipe, seed: int) -> list[dict]:
    """KB rows for finished `TrainResult`s of one recipe on the task and pair of `profile` (the no-KD accuracy is
    the run's own baseline when it trained one, else unknown)."""
    from autokd.recipes.kb import PAIR_COLUMNS, make_row

    rid = grid_id(recipe, profile["teacher_family"], profile["student_family"])
    columns = recipe_columns(recipe, rid, rid.split(":")[0] if rid != "custom" else recipe.loss)
    pair = {k: profile[k] for k in PAIR_COLUMNS}
    return [make_row(profile["task"], profile, pair, columns, r.top1, r.baseline_top1, seed)
            for r in results if r.stopped is None]
