"""What both benchmarks share: device and AMP choice, timing, the machine's matmul peak, tables and JSON output."""

from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from autokd import io as autokd_io
from autokd.device import resolve_device  # noqa: F401  (the benchmarks' --device)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NOISE_NOTE = ("timings on a shared machine are noisy: compare the ratios within one run, not absolute numbers "
              "across runs")


def use_amp(flag: str, device: torch.device) -> bool:
    """bf16 autocast only on a GPU ('auto' and 'on'); always off on the CPU."""
    return device.type == "cuda" and flag in ("auto", "on")


def autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall seconds of a `with` block, synchronising the GPU at both ends."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> Timer:
        sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.start


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048,
                seconds: float = 2.0) -> float:
    """The machine's dense matmul rate in FLOP/s (2 * n^3 per product): the best of repeated size^3 products."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, cuBLAS handle
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        with Timer(device) as t:
            a @ b
        best, spent = min(best, t.seconds), spent + t.seconds
    return 2 * size**3 / best


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(title: str, columns: list[str], rows: list[list[Any]], notes: list[str] = ()) -> None:
    """A rich table (floats to 4 significant digits), then one line per note."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get the whole table
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table of `rows` under `columns` (cells as given, str() of each)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def write_json(result: dict[str, Any], path: Path) -> Path:
    return autokd_io.write_json(path, result)
