import numpy as np
import pytest
import torch

from autokd.data import load_data
from autokd.data.tensor_augment import BatchAugment, uniforms
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.spaces.cifar_resnet import CifarResNet
from autokd.teachers import Teacher
from autokd.train import train_student
from tests.test_pixels import write_jpeg_zip

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def batch(n=4, size=20, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def test_uniforms_are_a_pure_function_of_seed_and_counter():
    u = uniforms(np.array([1, 2, 1]), 5)
    assert u.shape == (3, 5) and (u >= 0).all() and (u < 1).all()
    assert np.array_equal(u[0], u[2]) and not np.array_equal(u[0], u[1])
    assert np.array_equal(uniforms(np.array([2]), 3)[0], u[1, :3])
    many = uniforms(np.arange(20000), 1)[:, 0]
    assert abs(many.mean() - 0.5) < 0.01 and abs((many < 0.25).mean() - 0.25) < 0.01


def test_full_crop_without_jitter_is_normalise_or_its_mirror():
    images = batch()
    augment = BatchAugment(20, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0)
    seeds = np.arange(16)[:4] * 7 + 3
    out = augment(images, seeds)
    plain = (images.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    flipped = uniforms(seeds, 8)[:, 4] < 0.5
    assert flipped.any() and not flipped.all()  # these seeds exercise both
    for i in range(4):
        expected = plain[i].flip(-1) if flipped[i] else plain[i]
        assert torch.allclose(out[i], expected, atol=1e-4)


def test_a_view_depends_on_its_seed_alone_not_on_the_batch():
    images = batch(n=5)
    augment = BatchAugment(16, MEAN, STD, scale=(0.5, 1.0))
    seeds = np.array([11, 12, 13, 14, 15])
    out = augment(images, seeds)
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(augment(images[2:3], seeds[2:3])[0], out[2])
    assert torch.equal(augment(images, seeds), out)
    assert not torch.allclose(augment(images, seeds + 100), out)
    boxes = augment.boxes(seeds, 20, 20)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 400
    assert (boxes >= 0).all() and (boxes <= 20).all() and (areas >= 0.5 - 1e-9).all() and (areas <= 1).all()


def test_brightness_scales_the_image_by_its_factor():
    images = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    augment = BatchAugment(8, (0, 0, 0), (1, 1, 1), scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.4)
    seeds = np.array([5])
    factor = 0.6 + 0.8 * uniforms(seeds, 8)[0, 5]
    # a flat grey image: contrast and saturation leave it alone, brightness scales it
    assert torch.allclose(augment(images, seeds) * 255, torch.full((1, 3, 8, 8), 100 * factor), atol=1e-3)


def test_tensor_augmentation_trains_and_its_teacher_cache_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr("autokd.train.trainer.CACHE_ROOT", tmp_path / "px")
    data = load_data(write_jpeg_zip(tmp_path / "d.zip", per_class=16))
    torch.manual_seed(9)
    teacher = Teacher(model=CifarResNet(depths=(1, 1, 1), widths=(4, 8, 8), num_classes=3).eval(), name="t",
                      pretrained=True, img_size=16, mean=MEAN, std=STD, crop_pct=1.0, interpolation="bilinear",
                      family="cifar_resnet", num_classes=3)
    recipe = Recipe.load("kd").replace(epochs=2, batch_size=8, lr=0.05, augmentation="tensor", teacher_cache=True)
    models = []
    for name in ("cold", "warm"):
        torch.manual_seed(0)
        model = CifarResNet(depths=(1, 1, 1), widths=(4, 8, 8), num_classes=3)
        result = train_student(model, teacher, data, recipe, tmp_path / name, cache_dir=tmp_path / "cache",
                               progress=False)
        models.append(model)
    assert result.cache["misses"] == 0 and result.cache["hits"] > 0
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(AutokdError, match="augmentation 'tensor' works on small datasets"):
        train_student(models[0], teacher, data, recipe, tmp_path / "off", progress=False, decode_once=False)
