"""Leave-one-task-out evaluation of the recommender: does the meta-model pick better recipes than a fixed rule?

For each task, the meta-model is fitted on the other tasks' rows; for each (task, pair) of the held-out task it
ranks the recipes that were run there, and the truth is their mean gain over seeds. Reported per (task, pair):
the gain of the top-1, the best gain among the top-k (AutoDistiller runs the top 5), the best recipe's gain, the
gain of the recipe best on average over the training tasks, of the default rule, and the expected gain of a
recipe (and of the best of k recipes) drawn at random, the chance level; each regret is the best gain minus
that gain. The meta-model's shrink toward the recipes' average gain (`recipe_model`) is chosen inside each fold, by
a leave-one-task-out over that fold's training tasks alone: the held-out task never informs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from autokd.recipes.kb import RECIPE_FEATURES, TASK_FEATURES
from autokd.recipes.meta_model import MetaModel
from autokd.recipes.recipe import default_recipe


def expected_best_of_random(gains: Sequence[float], k: int) -> float:
    """The expected best gain of k recipes drawn at random without replacement from `gains` (exact): the
    chance-level counterpart of the meta-model's best of its top k."""
    values = sorted(gains, reverse=True)
    n, k = len(values), min(k, len(values))
    return float(sum(g * comb(n - i, k - 1) for i, g in enumerate(values, 1)) / comb(n, k))


def kb_default(unit: pd.DataFrame) -> str:
    """The recipe_id that today's default rule picks for the student of `unit` (its preset at defaults)."""
    return default_recipe(str(unit["student_family"].iloc[0]))


def leave_one_task_out(table: pd.DataFrame, *, top: int = 5, task_column: str = "task",
                       unit_columns: Sequence[str] = ("task", "teacher_family", "student_family"),
                       recipe_column: str = "recipe_id", outcome: str = "gain",
                       task_columns: Sequence[str] = TASK_FEATURES, pipeline_columns: Sequence[str] = RECIPE_FEATURES,
                       default: Callable[[pd.DataFrame], str] | None = kb_default,
                       make_model: Callable[[pd.DataFrame], MetaModel] | None = None) -> pd.DataFrame:
    """One row per (task, pair) unit of `table` with the gains and regrets above; `default` names the default
    rule's recipe for a unit (None: no default column). `make_model(train)` gives the unfitted meta-model for a
    fold's training rows (default: `recipe_model`, whose shrink is chosen on those rows alone). Units with fewer
    than 2 recipes are skipped."""
    if make_model is None:
        def make_model(train: pd.DataFrame) -> MetaModel:
            return recipe_model(train, task_column=task_column, unit_columns=unit_columns,
                                recipe_column=recipe_column, outcome=outcome, task_columns=task_columns,
                                pipeline_columns=pipeline_columns)
    table = table[table[outcome].notna()]
    rows = []
    for task in sorted(table[task_column].unique(), key=str):
        train = table[table[task_column] != task]
        if train[task_column].nunique() < 1 or len(train) < 2:
            continue
        model = make_model(train).fit(train)
        unit_means = train.groupby([*unit_columns, recipe_column])[outcome].mean()
        on_average = unit_means.groupby(recipe_column).mean()  # each training unit counts once
        for key, unit in table[table[task_column] == task].groupby(list(unit_columns), sort=True):
            truth = unit.groupby(recipe_column)[outcome].mean()
            if len(truth) < 2:
                continue
            columns = list(dict.fromkeys([recipe_column, *pipeline_columns]))
            candidates = unit.drop_duplicates(recipe_column)[columns]
            features = unit[list(task_columns)].mean(numeric_only=True)
            ranked = model.rank(features.to_dict(), candidates)[recipe_column].tolist()
            best = truth.max()
            fixed = on_average.reindex(truth.index).dropna()
            row = dict(zip(unit_columns, key if isinstance(key, tuple) else (key,)))
            row.update({"recipes": len(truth), "shrink": model.shrink, "best_recipe": truth.idxmax(), "best_gain": best,
                        "top1_recipe": ranked[0], "top1_gain": truth[ranked[0]],
                        f"top{top}_gain": truth[ranked[:top]].max(),
                        "random1_gain": float(truth.mean()),
                        f"random{top}_gain": expected_best_of_random(truth.tolist(), top),
                        "fixed_recipe": fixed.idxmax() if len(fixed) else None,
                        "fixed_gain": truth[fixed.idxmax()] if len(fixed) else float("nan")})
            if default is not None:
                name = default(unit)
                row.update({"default_recipe": name, "default_gain": truth.get(name, float("nan"))})
            rows.append(row)
    frame = pd.DataFrame(rows)
    for what in ("top1", f"top{top}", "random1", f"random{top}", "fixed",
                 *(("default",) if default is not None else ())):
        if len(frame):
            frame[f"{what}_regret"] = frame["best_gain"] - frame[f"{what}_gain"]
    return frame


def loto_summary(frame: pd.DataFrame) -> dict[str, float]:
    """The mean of every gain and regret column, and how often the top-1 is at least as good as each baseline."""
    summary = {c: float(frame[c].mean()) for c in frame.columns if c.endswith(("_gain", "_regret"))}
    for base in ("fixed", "default"):
        if f"{base}_gain" in frame:
            known = frame[f"{base}_gain"].notna()
            summary[f"top1_at_least_{base}"] = float((frame["top1_gain"][known] >= frame[f"{base}_gain"][known])
                                                      .mean()) if known.any() else float("nan")
    summary["units"] = len(frame)
    return summary


SHRINKS = (0.0, 0.5, 1.0)


def recipe_model(train: pd.DataFrame, *, shrinks: Sequence[float] = SHRINKS, task_column: str = "task",
                 unit_columns: Sequence[str] = ("task", "teacher_family", "student_family"),
                 recipe_column: str = "recipe_id", outcome: str = "gain",
                 task_columns: Sequence[str] = TASK_FEATURES, pipeline_columns: Sequence[str] = RECIPE_FEATURES,
                 trees: int = 200, seed: int = 0) -> MetaModel:
    """The unfitted meta-model for `train`, its `shrink` toward the recipes' average gain chosen from `shrinks` by
    the lowest mean top-1 regret of a leave-one-task-out within `train` (the first on a tie; the first alone
    when `train` has fewer than 3 tasks)."""
    def model(shrink: float) -> MetaModel:
        return MetaModel(task_columns, pipeline_columns, outcome, trees=trees, seed=seed, shrink=shrink,
                         task_column=task_column)

    if len(shrinks) == 1 or train[task_column].nunique() < 3:
        return model(shrinks[0])
    regrets = []
    for shrink in shrinks:
        frame = leave_one_task_out(train, top=1, task_column=task_column, unit_columns=unit_columns,
                                   recipe_column=recipe_column, outcome=outcome, task_columns=task_columns,
                                   pipeline_columns=pipeline_columns, default=None,
                                   make_model=lambda _train, s=shrink: model(s))
        regrets.append(frame["top1_regret"].mean() if len(frame) else float("inf"))
    return model(shrinks[int(np.argmin(regrets))])


def paired_difference_ci(frame: pd.DataFrame, a: str, b: str, *, resamples: int = 2000, level: float = 0.95,
                         seed: int = 0) -> dict[str, float]:
    """Mean of `frame[b] - frame[a]` over the units where both are known, with a percentile bootstrap interval
    over units (seeded): for regrets, positive means `a` is better."""
    both = frame[[a, b]].dropna()
    diff = (both[b] - both[a]).to_numpy(float)
    if diff.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "units": 0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high), "units": int(diff.size)}


def seed_agreement(table: pd.DataFrame, *, unit_columns: Sequence[str] = ("task", "teacher_family", "student_family"),
                   recipe_column: str = "recipe_id", outcome: str = "gain", seed_column: str = "seed") -> pd.DataFrame:
    """How well two seeds of the same runs agree, per unit with recipes run on two or more seeds: Kendall tau of
    the recipes' outcomes between two seeds, and the regret on one seed of the recipe best on the other (both
    ways, averaged): what picking by a perfect one-seed truth costs, the noise level of the regrets."""
    rows = []
    for key, unit in table[table[outcome].notna()].groupby(list(unit_columns), sort=True):
        wide = unit.pivot_table(index=recipe_column, columns=seed_column, values=outcome).dropna()
        if wide.shape[1] < 2 or len(wide) < 2:
            continue
        first, second = wide.iloc[:, 0], wide.iloc[:, 1]
        regret = ((second.max() - second[first.idxmax()]) + (first.max() - first[second.idxmax()])) / 2
        row = dict(zip(unit_columns, key if isinstance(key, tuple) else (key,)))
        row.update({"recipes": len(wide), "seeds": f"{wide.columns[0]},{wide.columns[1]}",
                    "kendall_tau": float(kendalltau(first, second).statistic), "cross_seed_regret": float(regret),
                    "seed_sd": float((first - second).std(ddof=1) / np.sqrt(2))})
        rows.append(row)
    return pd.DataFrame(rows)
