import random

import numpy as np
import pytest
import torch

from autokd.data import IMAGENET_MEAN, IMAGENET_STD, synthetic_dataset
from autokd.recipes import Recipe, topk_to_probs
from autokd.spaces.cifar_resnet import CifarResNet
from autokd.teachers import Teacher
from autokd.train import SeededViews, TeacherCache, derive_seed, seeded_rng, topk_targets, train_student
from autokd.train.inputs import Inputs, recipe_transform


def tiny(num_classes=5, seed=0):
    torch.manual_seed(seed)
    return CifarResNet(depths=(1, 1, 1), widths=(8, 16, 32), num_classes=num_classes)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_classes=5, train_size=96, test_size=20, img_size=32)


@pytest.fixture(scope="module")
def teacher():
    model = tiny(seed=7).eval()
    return Teacher(model=model, name="tiny_teacher", pretrained=True, img_size=32, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, crop_pct=1.0, interpolation="bilinear", family="cifar_resnet",
                   num_classes=5)


def cached_recipe(preset="kd", **changes):
    # standard augmentation: every (epoch, sample) is a different random view
    base = dict(epochs=2, batch_size=16, lr=0.05, augmentation="standard", teacher_cache=True)
    return Recipe.load(preset).replace(**{**base, **changes})


def test_views_replay_from_the_seed_and_leave_the_global_rngs_alone(data):
    transform = recipe_transform("standard", Inputs(32, IMAGENET_MEAN, IMAGENET_STD, 1.0, "bilinear"))
    views = SeededViews(data.train, range(len(data.train)), transform, seed=3)
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    a, label, index, seed = views[(1, 5)]
    assert (torch.rand(1), random.random(), np.random.rand()) == expected  # the RNGs are as before
    b = views[(1, 5)][0]
    assert torch.equal(a, b) and index == 5 and label == data.train.labels[5]
    assert seed == derive_seed(3, 1, 5) and seed != derive_seed(3, 2, 5) and seed != derive_seed(4, 1, 5)
    assert not torch.equal(a, views[(2, 5)][0])  # another epoch, another view
    with seeded_rng(seed):
        assert torch.equal(transform(data.train.load_image(5)), a)


def test_topk_rebuild_is_exact_when_k_covers_all_classes():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    values, indices = topk_targets(logits, 5)
    assert torch.allclose(topk_to_probs(values, indices, 5), logits.softmax(-1), atol=1e-6)
    values, indices = topk_targets(logits, 2)
    probs = topk_to_probs(values, indices, 5)
    assert torch.allclose(probs.sum(-1), torch.ones(6)) and torch.equal(probs.topk(2).indices, indices)


def test_cached_soft_targets_equal_the_live_teachers_on_the_same_views(data, teacher, tmp_path):
    recipe = cached_recipe()
    result = train_student(tiny(), teacher, data, recipe, tmp_path / "run", cache_dir=tmp_path / "cache", heldout=0,
                           cache_topk=3, progress=False)
    usage = result.cache
    steps = 2 * (96 // 16)
    assert usage["misses"] == steps * 16 and usage["hits"] == 0  # a cold cache: every row computed once
    assert usage["epochs_on_disk"] == 2 and usage["topk"] == 3
    assert usage["bytes_per_sample"] == 4 + 1 + 3 * 2 + 3 * 2  # seed, flag, int16 indices, fp16 probabilities
    files = sorted((tmp_path / "cache").rglob("epoch_*.npy"))
    assert usage["disk_bytes"] == sum(f.stat().st_size for f in files) > 2 * 96 * usage["bytes_per_sample"]

    cache = TeacherCache(files[0].parent, 96, 5, 3, {})
    transform = recipe_transform("standard", Inputs(32, tuple(teacher.mean), tuple(teacher.std), 1.0, "bilinear"))
    views = SeededViews(data.train, range(96), transform, seed=0)
    for epoch in (0, 1):
        indices = np.arange(96)
        seeds = np.array([derive_seed(0, epoch, i) for i in indices])
        prob, index, found = cache.lookup(epoch, indices, seeds)
        assert found.all()
        images = torch.stack([views[(epoch, int(i))][0] for i in indices])
        with torch.no_grad():
            live_values, live_index = topk_targets(teacher.model(images), 3)
        assert np.array_equal(index, live_index.numpy())
        assert np.allclose(prob.astype(np.float32), live_values.numpy(), rtol=1e-3, atol=1e-4)  # fp16 storage
        wrong = cache.lookup(epoch, indices, seeds + 1)[2]
        assert not wrong.any()  # a row is never served for another view


def test_later_runs_reuse_the_cache_for_other_students_and_recipes(data, teacher, tmp_path):
    first = train_student(tiny(seed=1), teacher, data, cached_recipe("kd"), tmp_path / "a",
                          cache_dir=tmp_path / "cache", heldout=0, progress=False)
    second = train_student(tiny(seed=2), teacher, data, cached_recipe("dkd"), tmp_path / "b",
                           cache_dir=tmp_path / "cache", heldout=0, progress=False)
    assert first.cache["folder"] == second.cache["folder"]
    assert second.cache["misses"] == 0 and second.cache["hits"] == 2 * 96
    # another augmentation seed is another set of views: a new cache
    third = train_student(tiny(seed=2), teacher, data, cached_recipe("kd", epochs=1), tmp_path / "c", seed=1,
                          cache_dir=tmp_path / "cache", heldout=0, progress=False)
    assert third.cache["folder"] != first.cache["folder"] and third.cache["hits"] == 0


def test_a_warm_cache_trains_exactly_as_a_cold_one(data, teacher, tmp_path):
    recipe = cached_recipe("kd", epochs=1)
    cold, warm = tiny(seed=4), tiny(seed=4)
    train_student(cold, teacher, data, recipe, tmp_path / "cold", cache_dir=tmp_path / "cache", heldout=0,
                  progress=False)
    result = train_student(warm, teacher, data, recipe, tmp_path / "warm", cache_dir=tmp_path / "cache", heldout=0,
                           progress=False)
    assert result.cache["misses"] == 0
    for a, b in zip(cold.state_dict().values(), warm.state_dict().values()):
        assert torch.equal(a, b)


def test_cache_turns_mixup_off_and_says_so(data, teacher, tmp_path):
    recipe = cached_recipe("kd", epochs=1, mixup=0.8)
    result = train_student(tiny(), teacher, data, recipe, tmp_path / "run", cache_dir=tmp_path / "cache", heldout=0,
                           max_steps=1, progress=False)
    assert any("mixup/cutmix are off with the teacher cache" in note for note in result.notes)


def test_without_augmentation_every_epoch_reuses_the_first_epochs_rows(data, teacher, tmp_path):
    recipe = cached_recipe("kd", epochs=3, augmentation="none")
    result = train_student(tiny(), teacher, data, recipe, tmp_path / "run", cache_dir=tmp_path / "cache", heldout=0,
                           progress=False)
    assert (result.cache["misses"], result.cache["hits"], result.cache["epochs_on_disk"]) == (96, 2 * 96, 1)


def test_views_without_numpy_rng_are_the_same_views_and_leave_numpy_alone(data):
    transform = recipe_transform("standard", Inputs(32, IMAGENET_MEAN, IMAGENET_STD, 1.0, "bilinear"))
    fast = SeededViews(data.train, range(len(data.train)), transform, seed=3, numpy=False)
    full = SeededViews(data.train, range(len(data.train)), transform, seed=3)
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    for key in [(0, 1), (3, 7)]:
        assert torch.equal(fast[key][0], full[key][0])  # timm's standard pipeline draws nothing from NumPy
    assert np.array_equal(np.random.get_state()[1], before)
