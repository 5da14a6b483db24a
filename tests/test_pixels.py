import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from autokd.data import load_data, subset_data
from autokd.data.pixels import DecodedImages, decode_once
from autokd.recipes import Recipe
from autokd.spaces.cifar_resnet import CifarResNet
from autokd.train import SeededViews, train_student
from autokd.train.inputs import Inputs, recipe_transform


def write_jpeg_zip(path, classes=3, per_class=12, size=(20, 20), odd=None):
    """An ImageFolder zip of noisy JPEGs (train/ and test/); `odd` is the name of one image of another size."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for split, n in (("train", per_class), ("test", 4)):
            for c in range(classes):
                for j in range(n):
                    name = f"{split}/c{c}/{j:03d}.jpg"
                    shape = (size[1] + 6, size[0] + 2) if name == odd else (size[1], size[0])
                    pixels = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
                    archive.writestr(name, buffer.getvalue())
    return path


@pytest.fixture
def jpegs(tmp_path):
    return load_data(write_jpeg_zip(tmp_path / "d.zip", odd="train/c1/002.jpg"))


def test_decoded_rows_equal_the_jpeg_path_image_for_image_and_view_for_view(jpegs, tmp_path):
    decoded = decode_once(jpegs, tmp_path / "px")
    assert isinstance(decoded.train, DecodedImages) and isinstance(decoded.test, DecodedImages)
    odd = jpegs.train.members.index("train/c1/002.jpg")
    for i in range(len(jpegs.train)):
        if i != odd:
            assert np.array_equal(np.asarray(decoded.train.load_image(i)), np.asarray(jpegs.train.load_image(i)))
    assert decoded.train.load_image(odd).size == (20, 20) and decoded.train.resized == 1
    transform = recipe_transform("standard", Inputs(16, crop_pct=1.0, interpolation="bilinear"))
    jpeg_views = SeededViews(jpegs.train, range(len(jpegs.train)), transform, seed=3)
    cached_views = SeededViews(decoded.train, range(len(jpegs.train)), transform, seed=3)
    for key in [(0, 0), (1, 0), (2, 7), (5, 35)]:
        assert torch.equal(jpeg_views[key][0], cached_views[key][0])  # same seed, same augmentation


def test_each_image_is_decoded_once_across_readers_and_processes(jpegs, tmp_path):
    first = decode_once(jpegs, tmp_path / "px").train
    for _ in range(3):
        for i in range(len(first)):
            first.load_image(i)
    assert first.decoded == len(first) == 36
    again = decode_once(jpegs, tmp_path / "px").train  # another run: the rows are on disk
    assert again.pixels_path == first.pixels_path and again.fill() == 0 and again.decoded == 0
    worker = pickle.loads(pickle.dumps(again))  # a DataLoader worker: reopens the file, copies no pixels
    assert len(pickle.dumps(again)) < 20_000 < again.pixels.nbytes
    assert np.array_equal(np.asarray(worker.load_image(5)), np.asarray(first.load_image(5)))


def test_a_file_made_for_one_size_or_content_is_not_reused_for_another(jpegs, tmp_path):
    a = DecodedImages(jpegs.train, tmp_path, (20, 20))
    b = DecodedImages(jpegs.train, tmp_path, (12, 12))
    assert a.pixels_path != b.pixels_path and b.load_image(0).size == (12, 12)
    other = load_data(write_jpeg_zip(tmp_path / "e.zip", per_class=11))
    c = DecodedImages(other.train, tmp_path, (20, 20))
    assert c.pixels_path != a.pixels_path


def test_subsets_read_the_rows_of_their_base(tmp_path):
    data = subset_data(load_data(write_jpeg_zip(tmp_path / "d.zip", per_class=20)), 24, None, seed=0)
    decoded = decode_once(data, tmp_path / "px")
    assert len(decoded.train) == 24 and decoded.train.labels == data.train.labels
    for i in range(24):
        assert np.array_equal(np.asarray(decoded.train.load_image(i)), np.asarray(data.train.load_image(i)))
    assert decoded.train.base.decoded == 24  # only the rows the subset reads


def test_training_on_decoded_pixels_is_exactly_training_on_jpegs(tmp_path, monkeypatch):
    jpegs = load_data(write_jpeg_zip(tmp_path / "same_size.zip"))  # no image to resize: exactly equal
    monkeypatch.setattr("autokd.train.trainer.CACHE_ROOT", tmp_path / "cache")
    recipe = Recipe.load("none").replace(epochs=2, batch_size=8, lr=0.05, augmentation="standard")
    models = []
    for name, flag in (("jpeg", False), ("decoded", True)):
        torch.manual_seed(0)
        model = CifarResNet(depths=(1, 1, 1), widths=(4, 8, 8), num_classes=3)
        train_student(model, None, jpegs, recipe, tmp_path / name, progress=False, img_size=16,
                      decode_once=flag)
        models.append(model)
    assert len(list((tmp_path / "cache" / "pixels").glob("*.u8.npy"))) == 2  # train and test
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)
