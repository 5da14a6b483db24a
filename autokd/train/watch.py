"""How a run is watched and stopped: a rich progress bar, and SIGTERM turned into a flag the loop polls."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich import progress as rp


@contextmanager
def sigterm_flag() -> Iterator[threading.Event]:
    """An Event set by SIGTERM while the block runs (in the main thread; elsewhere it never fires)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def progress_bar(enabled: bool):
    """A rich progress bar showing loss, train accuracy and images per second (None when disabled)."""
    if not enabled:
        yield None
        return
    fields = "loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1f}%  {task.fields[ips]:.0f} img/s"
    bar = rp.Progress(rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                      rp.TextColumn(fields), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), transient=True)
    with bar:
        yield bar

