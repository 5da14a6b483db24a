"""The study's trials as a pandas table, the top-k leaderboard, and the top specs as YAML for `autokd train`."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from autokd.io import write_yaml
from autokd.spaces import ArchSpec

BASE_COLUMNS = ["trial", "space", "arch", "variants", "macs", "params", "budget_slack", "seed_arch"]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per complete trial: the spec, its cost and every score that was recorded."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = t.user_attrs
        spec = ArchSpec.from_dict(attrs["spec"])
        row = {
            "trial": t.number,
            "space": spec.space,
            "arch": spec.short(),
            "macs": int(attrs["macs"]),
            "params": int(attrs["params"]),
            "budget_slack": attrs["budget_slack"],
            "seed_arch": bool(attrs.get("seed_arch", False)),
            "spec_json": spec.to_json(),
        }
        row.update({k: v for k, v in attrs.items() if isinstance(v, float) and k not in row})
        rows.append(row)
    return pd.DataFrame(rows)


def leaderboard(study: optuna.Study, objective: str, top_k: int | None = None,
                fold: Callable[[ArchSpec], Hashable] | None = None) -> pd.DataFrame:
    """Complete trials sorted by `objective` (best first), with a 1-based rank. With `fold` (e.g. a space's
    `macro_key`), trials with equal keys fold into their best, and `variants` counts the distinct specs in each."""
    frame = trials_frame(study)
    if frame.empty:
        return frame
    frame = frame.sort_values([objective, "trial"], ascending=[False, True], kind="stable").reset_index(drop=True)
    if fold is not None:
        frame = fold_rows(frame, fold)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame if top_k is None else frame.head(top_k)


def fold_rows(frame: pd.DataFrame, fold: Callable[[ArchSpec], Hashable]) -> pd.DataFrame:
    """The first row of each fold key (`frame` is sorted best first), with `variants`: the distinct specs that
    share its key."""
    ids: dict[Hashable, int] = {}
    keys = pd.Series([ids.setdefault(fold(ArchSpec.from_json(s)), len(ids)) for s in frame["spec_json"]],
                     index=frame.index)
    variants = frame["spec_json"].groupby(keys).nunique()
    first = ~keys.duplicated()
    folded = frame[first].reset_index(drop=True)
    folded.insert(folded.columns.get_loc("arch") + 1, "variants", keys[first].map(variants).to_numpy())
    return folded


def write_top_specs(board: pd.DataFrame, folder: Path, meta: dict) -> list[Path]:
    """One YAML per leaderboard row: `folder/<rank>.yaml` with the spec, its cost and scores, and the search meta;
    the `<rank>.yaml` files of an earlier, longer leaderboard are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in board.to_dict("records"):
        spec = ArchSpec.from_json(row["spec_json"])
        scores = {k: v for k, v in row.items() if k not in {*BASE_COLUMNS, "rank", "spec_json"}}
        doc = {
            "spec": spec.as_dict(),
            "arch": spec.short(),  # e.g. a NAS-Bench-201 cell string, to look the student up in the benchmark
            "rank": int(row["rank"]),
            "trial": int(row["trial"]),
            "macs": int(row["macs"]),
            "params": int(row["params"]),
            **({"variants": int(row["variants"])} if "variants" in row else {}),
            "scores": {k: float(v) for k, v in scores.items()},
            "search": meta,
        }
        paths.append(write_yaml(folder / f"{int(row['rank'])}.yaml", doc))
    for stale in set(folder.glob("*.yaml")) - set(paths):
        if stale.stem.isdigit():
            stale.unlink()
    return paths
