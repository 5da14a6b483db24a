import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import build_recipe_kb as build  # noqa: E402

from autokd.recipes.kb import COLUMNS, read_kb  # noqa: E402


def test_tasks_change_the_real_images_as_named(shared_data):
    cifar = shared_data / "cifar10-jpeg.zip"
    clean = build.make_task(build.Task("c", cifar, 200, test=100))
    assert len(clean.train) == 200 and len(clean.test) == 100 and np.bincount(clean.train.labels).tolist() == [20] * 10
    noisy = build.make_task(build.Task("n", cifar, 200, change="noisy", test=100))
    flipped = np.mean(np.asarray(noisy.train.labels) != np.asarray(clean.train.labels))
    assert 0.2 < flipped < 0.4  # 30% of the labels moved to another class
    tail = build.make_task(build.Task("t", cifar, 500, change="longtail", test=100))
    counts = np.bincount(tail.train.labels)
    assert counts[0] == 50 and counts[-1] == 2 and (np.diff(counts) <= 0).all()
    animals = build.make_task(build.Task("a", cifar, 120, change="animals", test=60))
    assert animals.classes == ["bird", "cat", "deer", "dog", "frog", "horse"] and max(animals.train.labels) == 5
    assert animals.test.labels and max(animals.test.labels) == 5
    gray = build.make_task(build.Task("g", cifar, 20, change="gray", test=10))
    pixels = np.asarray(gray.train.load_image(0))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_published_rows_are_marked_and_give_the_tables_gains():
    rows = build.published_rows()
    assert len(rows) == sum(len(m) for *_, m in build.PUBLISHED) and all(list(r) == list(COLUMNS) for r in rows)
    assert {r["source"] for r in rows} == {"published"}
    dkd = next(r for r in rows if r["task"] == "c100-pub:resnet32x4-resnet8x4" and r["recipe_id"] == "dkd")
    assert dkd["gain"] == pytest.approx(76.32 - 72.50) and dkd["teacher_acc"] == pytest.approx(0.7942)


@pytest.mark.slow
def test_small_build_writes_keyed_rows_and_a_rerun_trains_nothing(shared_data, tmp_path):
    import subprocess

    out, runs = tmp_path / "kb.csv", tmp_path / "runs"
    argv = [sys.executable, str(Path(build.__file__)), "--small", "--out", str(out), "--runs", str(runs),
            "--device", "cpu"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = read_kb(out)
    assert sorted(rows["recipe_id"]) == ["dist", "kd:T=2"]
    assert (rows["task"] == "c10-small").all() and rows["epochs"].eq(1).all() and rows["gain"].notna().all()
    assert rows["teacher_acc"].between(0, 1).all() and (rows["train_size"] == 200).all()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "c10-small" not in again.stdout  # every row is there: nothing trained
    assert len(read_kb(out)) == 2
