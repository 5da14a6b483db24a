"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

from autokd.errors import AutokdError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path` to write in the block: renamed over `path` when the block succeeds,
    removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` when it is, or can become, a folder this process may write to; else a one-line error, before any
    work is done."""
    path = Path(path).expanduser()
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AutokdError(f"{flag} {str(path)!r} cannot be created: {str(ancestor)!r} is a file; give a folder path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise AutokdError(f"{flag} {str(path)!r} cannot be written: {str(ancestor)!r} is read-only for this user; "
                          "give a folder you can write to")
    _probe_dir(path, flag)
    return path


def _probe_dir(path: Path, flag: str) -> None:
    """Create `path` (and its missing parents) and a file in it, then remove all that again: permissions alone do
    not tell (a superuser, a read-only or virtual file system such as /proc)."""
    created = []
    try:
        for folder in reversed([path, *path.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        probe = path / f".autokd-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        reason = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)
        raise AutokdError(f"{flag} {str(path)!r} cannot be created or written ({reason}); give a folder you can "
                          "write to") from None
    finally:
        for folder in reversed(created):
            with suppress(OSError):
                folder.rmdir()


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """`data` as indented JSON, written atomically."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_yaml(path: str | Path, data: Any) -> Path:
    """`data` as block-style YAML (keys in their order), written atomically."""
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_csv(path: str | Path, frame: Any) -> Path:
    """A pandas DataFrame as CSV without its index, written atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)
