"""Checkpoints that are never half-written (tmp file + os.replace) and load with `weights_only=True`.

A training checkpoint holds only tensors and plain Python values: the model, optimiser and scheduler states,
the position (epoch, step), every RNG state and the run's settings, so a resumed run continues exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autokd.errors import AutokdError
from autokd.io import atomic_path

FORMAT = "autokd-train-1"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file next to `path`, fsync it, then rename it over `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint written by `atomic_save`; a missing or corrupt file is a one-line AutokdError."""
    path = Path(path)
    if not path.is_file():
        raise AutokdError(f"no checkpoint at {str(path)!r} to resume from: give the --out folder of an "
                          "earlier `autokd train` run, or leave out --resume to start afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AutokdError(f"checkpoint {str(path)!r} is corrupt or not an autokd checkpoint "
                          f"({type(e).__name__}); delete it to start afresh") from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != FORMAT:
        raise AutokdError(f"checkpoint {str(path)!r} is not an autokd training checkpoint (format {found!r}, "
                          f"expected {FORMAT!r}); give the --out folder of an `autokd train` run")
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(value: Any) -> Any:
    return [_to_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): mixup, dropout and the loss's own init follow `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
