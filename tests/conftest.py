import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data from the repo root; the test is skipped where it is absent (a user's machine)."""
    path = SHARED / "data"
    if not (path / "cifar10-jpeg.zip").exists():
        pytest.skip("../shared/data is not present")
    return path


@pytest.fixture
def shared_teachers() -> Path:
    path = SHARED / "teachers"
    if not path.is_dir():
        pytest.skip("../shared/teachers is not present")
    return path
