"""Studies in a storage (the storage itself is opened by autokd.storage)."""

from __future__ import annotations

import optuna


def find_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """Whether a study of this name exists in the storage."""
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage=storage))
