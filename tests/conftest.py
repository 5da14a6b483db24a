import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STUDENT = {"space": "cifar_resnet", "depths": (1, 1, 1), "widths": (8, 16, 16), "shortcut": "A"}


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


@pytest.fixture
def shared_ground_truth() -> Path:
    path = SHARED / "ground_truth"
    if not (path / "nb201_200ep.csv").exists():
        pytest.skip("../shared/ground_truth is not present")
    return path


@pytest.fixture
def folder(tmp_path):
    """A tiny ImageFolder: 10 classes x (10 train + 2 test) images of 32 px, colour-coded so they are learnable."""
    rng = np.random.default_rng(0)
    for c in range(10):
        for split, n in (("train", 10), ("test", 2)):
            d = tmp_path / "data" / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (32, 32, 3)) + np.array([25 * c, 255 - 25 * c, 128])
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return tmp_path / "data"


@pytest.fixture
def weights(tmp_path):
    """A 'trained' ResNet-20 checkpoint in the akamaster format (random values: only the format matters)."""
    from autokd.spaces.cifar_resnet import CifarResNet

    path = tmp_path / "r20.th"
    state = {f"module.{k}": v for k, v in CifarResNet(depths=(3, 3, 3)).state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 91.7}, path)
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The throw-away PostgreSQL server that `.ci/run` starts (its URL in AUTOKD_TEST_POSTGRES_URL)."""
    from autokd.errors import AutokdError
    from autokd.storage import open_storage

    url = os.environ.get("AUTOKD_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: .ci/run starts one and sets AUTOKD_TEST_POSTGRES_URL")
    try:
        open_storage(url)  # creates Optuna's tables once, before workers race to
    except AutokdError as err:
        pytest.fail(f"AUTOKD_TEST_POSTGRES_URL is set but the server cannot be used: {err}")
    return url


@pytest.fixture(autouse=True)
def private_kb(tmp_path, monkeypatch):
    """The knowledge base that `autokd train` and `run` append to is the test's own, never the user's."""
    monkeypatch.setenv("AUTOKD_KB", str(tmp_path / "kb.csv"))
    return tmp_path / "kb.csv"


@pytest.fixture(scope="session")
def tiny_teacher():
    """A function: a small CIFAR ResNet trained briefly on `data` (without KD), as a trained teacher."""
    from autokd.data import IMAGENET_MEAN, IMAGENET_STD
    from autokd.recipes import Recipe
    from autokd.spaces.cifar_resnet import CifarResNet
    from autokd.teachers import Teacher
    from autokd.train import train_student

    def make(data, folder: Path) -> Teacher:
        torch.manual_seed(1)
        model = CifarResNet(depths=(1, 1, 1), widths=(8, 16, 32), num_classes=data.num_classes)
        recipe = Recipe.load("none").replace(epochs=3, batch_size=16, lr=0.1, augmentation="none")
        train_student(model, None, data, recipe, folder, progress=False)
        return Teacher(model=model.eval(), name="tiny", pretrained=True, img_size=32, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, crop_pct=1.0, interpolation="bilinear", family="cifar_resnet",
                       num_classes=data.num_classes)

    return make


@pytest.fixture
def student_yaml(tmp_path):
    """A student spec file as `autokd search` writes it (OUT/top/1.yaml): the `STUDENT` spec at 32 px."""
    import yaml

    from autokd.spaces import ArchSpec

    path = tmp_path / "1.yaml"
    spec = ArchSpec.make(**STUDENT)
    path.write_text(yaml.safe_dump({"spec": spec.as_dict(), "search": {"img_size": 32, "num_classes": 10}}))
    return path
