"""Open Optuna storages and studies; bad URLs become one-line errors."""

from __future__ import annotations

import optuna
from sqlalchemy import event

from autokd.errors import AutokdError


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage (SQLite, PostgreSQL, MySQL) or a journal file (`*.log`/`*.jsonl` path)."""
    if "://" not in url:
        if url.endswith((".log", ".jsonl")):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url))
        raise AutokdError(
            f"storage {url!r} is not a URL: use sqlite:///path/autokd.db, postgresql://user:pass@host/db, "
            "or a journal file ending in .log"
        )
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=60,
                                             grace_period=180)
    except ModuleNotFoundError as err:
        raise AutokdError(
            f"storage {url!r} needs the database driver {err.name!r}: pip install 'autokd[postgres]'"
        ) from None
    except Exception as err:  # sqlalchemy raises many types for an unreachable database
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AutokdError(f"cannot open storage {url!r}: {reason}") from None
    if url.startswith("sqlite"):
        _use_wal(storage)
    return storage


def _use_wal(storage: optuna.storages.RDBStorage) -> None:
    """SQLite in write-ahead-log mode: a trial's ~50 small commits cost 0.04 s instead of 0.4 s, and readers
    never block the writer. It needs every worker on one host, as SQLite does anyway."""

    @event.listens_for(storage.engine, "connect")
    def _pragmas(connection, _record):
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")

    storage.engine.dispose()


def find_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """Whether a study of this name exists in the storage."""
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage=storage))
