"""Open Optuna storages (RDB or journal file); bad URLs become one-line errors that never show a password.

Below every layer that reads or writes a study: search, train (results mirrored into the study) and the CLI.
"""

from __future__ import annotations

import importlib.util
import re
import time
import warnings
from urllib.parse import unquote

import optuna
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from autokd.errors import AutokdError

HEARTBEAT_SECONDS = 60  # a running trial's heartbeat; one silent for 3 beats is failed and retried
MAX_RETRIES = 2  # a trial killed this many times is left failed
MEMORY = "memory"  # the storage URL of Optuna's in-memory storage
_PASSWORD = re.compile(r"^([\w+.-]+://[^:/@?#]*:)(.*)@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def masked_url(url: str) -> str:
    """`url` with any password replaced by ***: the form to print, log or write to a file."""
    return _QUERY_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


def _scrub(text: str, url: str) -> str:
    """`text` (an error message) with the URL's password, as written or decoded, replaced by ***."""
    found = [m.group(2) for m in [_PASSWORD.search(url)] if m]
    found += [m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(url)]
    for secret in {s for f in found for s in (f, unquote(f)) if s}:
        text = text.replace(secret, "***")
    return text


def _driver_url(url: str) -> str:
    """A plain postgresql:// URL names SQLAlchemy's default driver (psycopg 3 from SQLAlchemy 2.1); use psycopg2,
    the `postgres` extra, when only it is installed."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def open_storage(url: str, heartbeat: int = HEARTBEAT_SECONDS) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage (SQLite, PostgreSQL, MySQL), a journal file (`*.log`/`*.jsonl` path), or `memory`
    (Optuna's in-memory storage: one process, nothing kept after it; for notebooks and replays).

    RDB storages beat a heartbeat every `heartbeat` seconds for each running trial; a trial whose worker died is
    failed after three silent beats and queued again with the same architecture (Optuna's retry callback)."""
    if url == MEMORY:
        return optuna.storages.InMemoryStorage()
    if "://" not in url:
        if url.endswith((".log", ".jsonl")):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url))
        raise AutokdError(
            f"storage {masked_url(url)!r} is not a URL: use sqlite:///path/autokd.db, postgresql://user:pass@host/db,"
            " or a journal file ending in .log"
        )
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        storage = _rdb_storage(url, engine_kwargs, heartbeat)
    except ImportError as err:  # Optuna re-raises the driver's ModuleNotFoundError as a plain ImportError
        missing = getattr(err.__cause__, "name", None) or err.name or "its database driver"
        fix = "pip install 'autokd[postgres]'" if url.startswith("postgresql") else "install it with pip"
        raise AutokdError(f"storage {masked_url(url)!r} needs the database driver {missing!r}: {fix}") from None
    except Exception as err:  # sqlalchemy raises many types for an unreachable database
        text = _scrub(str(err).strip(), url)
        reason = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
        fix = "that its folder exists and is writable" if url.startswith("sqlite") else \
            "the URL and that the database server is running"
        raise AutokdError(f"cannot open storage {masked_url(url)!r}: {reason.strip()}; check {fix}") from None
    if url.startswith("sqlite"):
        _use_wal(storage)
    return storage


def _rdb_storage(url: str, engine_kwargs: dict, heartbeat: int, attempts: int = 5) -> optuna.storages.RDBStorage:
    def make() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                _driver_url(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRIES),
            )

    for attempt in range(attempts - 1):
        try:
            return make()
        except (IntegrityError, OperationalError, ProgrammingError) as err:
            # workers started together race to create Optuna's tables; SQLite says "table ... already exists"
            if isinstance(err, OperationalError) and "already exists" not in str(err):
                raise
            time.sleep(0.2 * (attempt + 1))
    return make()


def _use_wal(storage: optuna.storages.RDBStorage) -> None:
    """SQLite in write-ahead-log mode: a trial's ~50 small commits cost 0.04 s instead of 0.4 s, and readers
    never block the writer. It needs every worker on one host, as SQLite does anyway."""

    @event.listens_for(storage.engine, "connect")
    def _pragmas(connection, _record):
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")

    storage.engine.dispose()
