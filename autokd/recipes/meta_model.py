"""A meta-model over any table of (task features, pipeline knobs, outcome) rows, AutoDistiller-style.

    model = MetaModel(task_columns=["num_classes", "teacher_acc"], pipeline_columns=["loss", "lr"],
                      outcome="gain").fit(table)
    ranked = model.rank({"num_classes": 10, "teacher_acc": 0.9}, candidates)   # best predicted first
    close = model.nearest_tasks({"num_classes": 10, "teacher_acc": 0.9}, task_column="task")

The regressor is a scikit-learn random forest over the task columns and the one-hot coded pipeline columns; the
interval of a prediction is the spread (quantiles) of its trees' predictions. With `shrink` > 0 a prediction is
pulled toward the pipeline's average outcome over the training tasks (each task once, by `task_column`): with few
tasks, the forest's task-specific guesses are noisy and the average is the stronger rule. Nothing here knows
about KD: any knowledge base with those three kinds of columns works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from autokd.errors import AutokdError


@dataclass
class MetaModel:
    """Predicts `outcome` from `task_columns` (numeric) and `pipeline_columns` (numeric or categorical)."""

    task_columns: Sequence[str]
    pipeline_columns: Sequence[str]
    outcome: str
    trees: int = 200
    interval: tuple[float, float] = (0.1, 0.9)
    seed: int = 0
    min_leaf: int = 1
    bootstrap: bool = True  # False: every tree sees every row (deterministic, no spread)
    shrink: float = 0.0  # weight of the pipeline's average outcome over tasks (1: that average alone, where known)
    task_column: str | None = None  # a row's task, so that each task counts once in that average (None: each row)
    _forest: Any = field(default=None, repr=False)
    _design: list[str] = field(default_factory=list, repr=False)
    _fill: pd.Series | None = field(default=None, repr=False)
    _average: pd.Series | None = field(default=None, repr=False)

    def fit(self, table: pd.DataFrame) -> MetaModel:
        """Fit on the rows of `table` whose outcome is known; returns self."""
        from sklearn.ensemble import RandomForestRegressor

        missing = [c for c in (*self.task_columns, *self.pipeline_columns, self.outcome) if c not in table.columns]
        if missing:
            raise AutokdError(f"the meta-model's table lacks column(s) {', '.join(missing)}")
        rows = table[table[self.outcome].notna()]
        if len(rows) < 2:
            raise AutokdError(f"the meta-model needs at least 2 rows with a known {self.outcome!r}, got {len(rows)}")
        x = self._encode(rows, fit=True)
        self._forest = RandomForestRegressor(n_estimators=self.trees, min_samples_leaf=self.min_leaf,
                                             bootstrap=self.bootstrap,
                                             random_state=self.seed, n_jobs=1).fit(x, rows[self.outcome].to_numpy())
        groups = [rows[self.task_column] if self.task_column else pd.RangeIndex(len(rows)), self._key(rows)]
        per_task = rows[self.outcome].groupby(groups).mean()
        self._average = per_task.groupby(level=1).mean()
        return self

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`mean`, `low` and `high` (the `interval` quantiles over the trees) of the outcome for each row."""
        if self._forest is None:
            raise AutokdError("the meta-model is not fitted: call fit(table) first")
        x = self._encode(frame, fit=False)
        per_tree = np.stack([tree.predict(x) for tree in self._forest.estimators_])
        low, high = np.quantile(per_tree, self.interval, axis=0)
        out = pd.DataFrame({"mean": per_tree.mean(0), "low": low, "high": high}, index=frame.index)
        if self.shrink > 0:
            average = self._key(frame).map(self._average)
            known = average.notna()  # a pipeline the table never ran keeps the forest's prediction
            for column in out.columns:
                out.loc[known, column] = (1 - self.shrink) * out.loc[known, column] + self.shrink * average[known]
        return out

    def rank(self, task: Mapping[str, Any], candidates: pd.DataFrame) -> pd.DataFrame:
        """`candidates` (pipeline columns, any others kept) for the task `task`, with `mean`/`low`/`high`,
        best predicted first, with a 1-based `rank` column."""
        frame = candidates.copy()
        for column in self.task_columns:
            frame[column] = task[column]
        predicted = pd.concat([candidates, self.predict(frame)], axis=1)
        predicted = predicted.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)
        predicted.insert(0, "rank", range(1, len(predicted) + 1))
        return predicted

    def nearest_tasks(self, task: Mapping[str, Any], table: pd.DataFrame, task_column: str,
                      k: int = 3) -> pd.DataFrame:
        """The `k` tasks of `table` closest to `task` in the task columns, each standardised over `table`'s
        tasks (a column that varies by less than 1% of its mean over the tasks, e.g. the MACs ratio of one
        student and teacher at one resolution, tells none apart and is left out): `task_column` and `distance`,
        nearest first."""
        tasks = table.groupby(task_column)[list(self.task_columns)].mean()
        std = tasks.std(ddof=0)
        varying = [c for c in tasks.columns if std[c] > 0.01 * abs(tasks[c].mean())]
        tasks, mean, std = tasks[varying], tasks[varying].mean(), std[varying]
        point = pd.Series({c: float(task[c]) for c in varying}, dtype=float)
        z = ((tasks - mean) / std).fillna(0)
        distance = np.sqrt((((point - mean) / std).fillna(0) - z).pow(2).sum(axis=1))
        return distance.sort_values(kind="stable").head(k).rename("distance").reset_index()

    def _key(self, frame: pd.DataFrame) -> pd.Series:
        """One string per row naming its pipeline (the pipeline columns' values; None and NaN alike, 2 and 2.0
        alike, as a table read back from CSV has them)."""
        return frame[list(self.pipeline_columns)].map(_cell).agg("|".join, axis=1)

    def _encode(self, frame: pd.DataFrame, fit: bool) -> np.ndarray:
        """Task columns as floats (missing: the column's training median), pipeline columns one-hot coded
        when they are not numeric."""
        parts = [frame[list(self.task_columns)].astype(float)]
        for column in self.pipeline_columns:
            values = frame[column]
            if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
                parts.append(values.astype(float).to_frame(column))
            else:
                parts.append(pd.get_dummies(values.astype(str), prefix=column, prefix_sep="=", dtype=float))
        x = pd.concat(parts, axis=1)
        if fit:
            self._design = list(x.columns)
            self._fill = x.median()
        x = x.reindex(columns=self._design, fill_value=0.0)
        return x.fillna(self._fill).fillna(0.0).to_numpy()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.number)):
        return repr(float(value))
    return str(value)
