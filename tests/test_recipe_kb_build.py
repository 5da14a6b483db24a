import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
from autokd.recipes.kb import COLUMNS, read_kb  # noqa: E402
from benchmarks.recipes import build_recipe_kb as build  # noqa: E402


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


def test_a_diverged_run_is_a_row_at_a_constant_predictions_accuracy_and_is_not_run_again(tmp_path, monkeypatch):
    import argparse
    from types import SimpleNamespace

    from autokd.errors import AutokdError
    from autokd.recipes import Recipe

    calls = []

    def diverge(*args, **kwargs):
        calls.append(1)
        raise AutokdError("student: the loss became NaN or inf in epoch 1 (by step 3)")

    monkeypatch.setattr(build, "train_student", diverge)
    data = SimpleNamespace(num_classes=4)
    teacher = SimpleNamespace(img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, interpolation="bilinear")
    args = argparse.Namespace(device="cpu")
    spec = build.PAIRS["r56-r8"][1]
    for _ in range(2):
        assert build.train_one(spec, teacher, data, Recipe.load("dkd"), tmp_path / "dkd", 0, args, 32) == (
            25.0, "diverged")
    assert len(calls) == 1 and "NaN" in (tmp_path / "dkd" / "diverged.txt").read_text()
    monkeypatch.setattr(build, "train_student", lambda *a, **k: (_ for _ in ()).throw(AutokdError("disk full")))
    with pytest.raises(AutokdError, match="disk full"):  # any other failure still stops the build
        build.train_one(spec, teacher, data, Recipe.load("dkd"), tmp_path / "other", 0, args, 32)


def test_the_teacher_cache_is_used_where_the_recipe_allows_it_and_leaves_the_row_unchanged():
    import argparse

    from autokd.recipes import Recipe
    from autokd.recipes.kb import recipe_columns

    args = argparse.Namespace(epochs=3, batch_size=64, teacher_cache=True)
    assert build.schedule(Recipe.load("dist"), args).teacher_cache
    assert not build.schedule(Recipe.load("kd_adamw"), args).teacher_cache  # mixup: a mixed view has no cache key
    assert not build.schedule(Recipe.load("fitnet"), args).teacher_cache  # feature loss: live teacher features
    cached = build.schedule(Recipe.load("dist"), args)
    live = build.schedule(Recipe.load("dist"), argparse.Namespace(epochs=3, batch_size=64, teacher_cache=False))
    assert recipe_columns(cached, "dist", "dist") == recipe_columns(live, "dist", "dist")
