import io
import pickle
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from autokd.data import (
    LabeledImages,
    eval_transform,
    load_data,
    meta_features,
    scoring_batch,
    split_indices,
    synthetic_dataset,
    train_transform,
)
from autokd.data.split import scoring_indices
from autokd.errors import AutokdError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TO_TENSOR = eval_transform(16, crop_pct=1.0, interpolation="bilinear")


def _png(colour, size=(16, 16), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def _write_folder(root: Path, layout: dict[str, dict[str, int]], size=(16, 16)) -> None:
    """layout: split ('' for none) -> class -> number of images; image j of class i has red = 10 * i + j."""
    for split, classes in layout.items():
        for i, (name, count) in enumerate(sorted(classes.items())):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                _png((10 * i + j, 0, 0), size).save(folder / f"{j:03d}.png")


def _write_zip(path: Path, names: list[str], size=(16, 16)) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for k, name in enumerate(names):
            buffer = io.BytesIO()
            _png((k, 0, 0), size).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())


# ---- sources


def test_folder_with_train_and_test_splits(tmp_path):
    _write_folder(tmp_path, {"train": {"cat": 3, "dog": 4}, "test": {"cat": 1, "dog": 2}})
    (tmp_path / "train" / "README.txt").write_text("not an image")
    _png(128, mode="L").save(tmp_path / "train" / "dog" / "gray.png")  # grayscale becomes RGB
    data = load_data(tmp_path)
    assert data.classes == ["cat", "dog"] and data.is_real
    assert len(data.train) == 8 and len(data.test) == 3
    assert Counter(data.train.labels) == {0: 3, 1: 5}
    image, label = data.train[1]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == 0
    assert image.getpixel((0, 0)) == (1, 0, 0)  # cat/001.png
    gray = data.train.load_image(data.train.paths.index(tmp_path / "train" / "dog" / "gray.png"))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (128, 128, 128)
    view = data.train.view([4, 0], transform=TO_TENSOR)  # its own transform; the base keeps none
    assert len(view) == 2 and view.labels == [1, 0] and view[1][0].shape == (3, 16, 16)
    assert isinstance(data.train[0][0], Image.Image)
    data.set_transform(TO_TENSOR)
    x, y = data.test[2]
    assert x.shape == (3, 16, 16) and y == 1


def test_flat_folder_has_no_test_split_and_val_counts_as_test(tmp_path):
    _write_folder(tmp_path / "flat", {"": {"a": 2, "b": 2, "c": 1}})
    data = load_data(tmp_path / "flat")
    assert data.classes == ["a", "b", "c"] and len(data.train) == 5 and data.test is None
    assert "no test split" in data.describe()
    _write_folder(tmp_path / "tv", {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    assert len(load_data(tmp_path / "tv").test) == 2


def test_zip_in_imagefolder_layout_under_a_wrapping_folder(tmp_path):
    names = [f"ds/train/{c}/{i}.png" for c in ("x", "y") for i in range(3)]
    names += ["ds/val/y/0.png", "ds/notes.txt"]
    _write_zip(tmp_path / "ds.zip", names)
    data = load_data(tmp_path / "ds.zip")
    assert data.classes == ["x", "y"] and len(data.train) == 6 and len(data.test) == 1
    assert data.train.load_image(4).getpixel((0, 0)) == (4, 0, 0)
    assert data.test.labels == [1] and data.test.load_image(0).getpixel((0, 0)) == (6, 0, 0)


def test_zip_dataset_works_in_dataloader_workers(tmp_path):
    _write_zip(tmp_path / "d.zip", [f"{c}/{i}.png" for c in ("a", "b") for i in range(8)])
    data = load_data(tmp_path / "d.zip")
    data.train.load_image(0)  # opens a handle in this process; workers must open their own
    clone = pickle.loads(pickle.dumps(data.train))
    assert clone._zip is None and clone.load_image(3).getpixel((0, 0)) == (3, 0, 0)
    data.set_transform(eval_transform(8, crop_pct=1.0, interpolation="bilinear"))
    batches = list(DataLoader(data.train, batch_size=4, num_workers=2))
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == [0] * 8 + [1] * 8 and batches[0][0].shape == (4, 3, 8, 8)


def _write_cifar_pickles(root: Path, per_batch: int = 6) -> None:
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, offset in (("data_batch_1", 0), ("data_batch_2", 1), ("test_batch", 2)):
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 10 + offset, 20, 30  # planes R, G, B
        data[0, 1] = 99  # red of pixel (row 0, col 1)
        labels = [(offset + i) % 3 for i in range(per_batch)]
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"plane", b"car", b"bird"], b"num_vis": 3072}, f)


def test_cifar_pickle_folder(tmp_path):
    _write_cifar_pickles(tmp_path / "cifar-10-batches-py")
    data = load_data(tmp_path / "cifar-10-batches-py")
    assert data.classes == ["plane", "car", "bird"]
    assert len(data.train) == 12 and len(data.test) == 6
    assert data.train.labels[:7] == [0, 1, 2, 0, 1, 2, 1]
    image = data.train.load_image(6)  # first image of data_batch_2
    assert image.size == (32, 32) and image.getpixel((0, 0)) == (11, 20, 30)
    assert image.getpixel((1, 0)) == (99, 20, 30)


def test_cifar_pickle_errors(tmp_path):
    _write_cifar_pickles(tmp_path / "broken")
    (tmp_path / "broken" / "data_batch_2").write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(AutokdError, match="cannot read CIFAR pickle .*data_batch_2"):
        load_data(tmp_path / "broken")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    _write_cifar_pickles(tmp_path / "evil")
    (tmp_path / "evil" / "batches.meta").write_bytes(pickle.dumps({b"label_names": Evil()}))
    with pytest.raises(AutokdError, match="builtins.print is not allowed"):
        load_data(tmp_path / "evil")


@pytest.mark.realdata
def test_real_cifar10_and_imagenette_zips(shared_data):
    cifar = load_data(shared_data / "cifar10-jpeg.zip")
    assert cifar.classes == CIFAR_CLASSES and cifar.is_real
    assert len(cifar.train) == 50_000 and len(cifar.test) == 10_000
    assert Counter(cifar.test.labels) == {c: 1000 for c in range(10)}
    image, label = cifar.test[5000]
    assert image.size == (32, 32) and image.mode == "RGB" and label == 5
    nette = load_data(shared_data / "imagenette-160.zip")
    assert nette.classes[0] == "n01440764" and len(nette.classes) == 10
    assert len(nette.train) == 6000 and len(nette.test) == 3925  # val/ is the test split
    assert min(nette.train.load_image(0).size) == 160
    features = meta_features(nette)
    assert (features["resolution"], features["train_size"], features["class_balance"]) == (160, 6000, 1.0)


# ---- synthetic default


def test_synthetic_default_is_labelled_not_real_and_seeded():
    data = load_data(None)
    assert data.is_real is False and "synthetic demo images, not real data" in data.describe()
    assert len(data.classes) == 10 and len(data.train) == 2000 and len(data.test) == 500
    assert Counter(data.train.labels) == {c: 200 for c in range(10)}
    same = synthetic_dataset(seed=0)
    other = synthetic_dataset(seed=1, img_size=48)
    a = np.asarray(data.train.load_image(7))
    assert a.shape == (32, 32, 3) and np.array_equal(a, np.asarray(same.train.load_image(7)))
    assert not np.array_equal(np.asarray(data.train.load_image(7)), np.asarray(data.test.load_image(7)))
    assert np.asarray(other.train.load_image(7)).shape == (48, 48, 3)
    with pytest.raises(IndexError):
        data.train.load_image(2000)


def test_synthetic_classes_are_learnable():
    """Nearest class mean of the phase-free Fourier magnitude separates the classes: labels carry signal."""
    data = synthetic_dataset()

    def features(part, n):
        x = np.stack([np.abs(np.fft.fft2(np.asarray(part.load_image(i), np.float32), axes=(0, 1))).ravel()
                      for i in range(n)])
        return x, np.asarray(part.labels[:n])

    x_train, y_train = features(data.train, 200)
    x_test, y_test = features(data.test, 100)
    means = np.stack([x_train[y_train == c].mean(0) for c in range(10)])
    predicted = ((x_test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == y_test).mean() > 0.8


# ---- errors


def test_data_errors(tmp_path):
    with pytest.raises(AutokdError, match="does not exist"):
        load_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutokdError, match="holds no images"):
        load_data(tmp_path / "empty")
    _write_folder(tmp_path / "one", {"train": {"only": 3}})
    with pytest.raises(AutokdError, match="at least 2"):
        load_data(tmp_path / "one")
    _write_folder(tmp_path / "deep" / "a" / "b", {"": {"c": 1, "d": 1}})
    _write_folder(tmp_path / "deep" / "e", {"": {"f": 1}})
    with pytest.raises(AutokdError, match="not in ImageFolder layout"):
        load_data(tmp_path / "deep")
    _write_zip(tmp_path / "flat.zip", ["a.png", "b.png"])
    with pytest.raises(AutokdError, match="not in ImageFolder layout"):
        load_data(tmp_path / "flat.zip")
    _write_zip(tmp_path / "splits.zip", ["holdout/a/1.png", "other/b/1.png"])
    with pytest.raises(AutokdError, match=r"not in ImageFolder layout.*\['holdout', 'other'\]"):
        load_data(tmp_path / "splits.zip")
    _write_zip(tmp_path / "noimg.zip", ["a/readme.txt"])
    with pytest.raises(AutokdError, match="holds no images"):
        load_data(tmp_path / "noimg.zip")
    _write_zip(tmp_path / "testonly.zip", ["train/a/1.png", "train/b/1.png", "test/c/1.png"])
    with pytest.raises(AutokdError, match="no train folder"):
        load_data(tmp_path / "testonly.zip")
    (tmp_path / "file.tar").write_bytes(b"x")
    with pytest.raises(AutokdError, match="not a zip"):
        load_data(tmp_path / "file.tar")


# ---- split and scoring batch


def test_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), [100, 50, 30, 7])
    train, heldout = split_indices(labels, 0.1, seed=3)
    again_train, again_heldout = split_indices(labels.tolist(), 0.1, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(heldout, again_heldout)
    assert not np.array_equal(heldout, split_indices(labels, 0.1, seed=4)[1])
    assert np.intersect1d(train, heldout).size == 0 and len(train) + len(heldout) == len(labels)
    assert Counter(labels[heldout].tolist()) == {0: 10, 1: 5, 2: 3, 3: 1}
    assert np.array_equal(heldout, np.sort(heldout))
    with pytest.raises(AutokdError, match="between 0 and 1"):
        split_indices(labels, 1.0, seed=0)


class _Recording(LabeledImages):
    """Synthetic stand-in that records which images were decoded; the test part refuses any access."""

    def __init__(self, labels, forbidden=False):
        super().__init__(labels)
        self.decoded: list[int] = []
        self.forbidden = forbidden

    def open_image(self, index):
        if self.forbidden:
            raise AssertionError("the test split was read")
        self.decoded.append(index)
        return Image.new("RGB", (16, 16), (index % 256, index // 256, 0))


def test_scoring_batch_is_seeded_balanced_and_only_from_heldout_train():
    data = synthetic_dataset(train_size=10)  # only for its shape; parts replaced below
    labels = np.repeat(np.arange(5), 60)  # 6 held out per class
    data.train, data.test = _Recording(labels.tolist()), _Recording([0, 1], forbidden=True)
    images, y = scoring_batch(data, 24, seed=0, transform=TO_TENSOR)
    assert images.shape == (24, 3, 16, 16) and y.dtype == torch.long
    assert sorted(Counter(y.tolist()).values()) == [4, 5, 5, 5, 5]  # round-robin over 5 classes
    _, heldout = split_indices(labels, 0.1, seed=0)
    assert len(data.train.decoded) == 24 and set(data.train.decoded) <= set(heldout.tolist())
    assert y.tolist() == labels[data.train.decoded].tolist()
    again, _ = scoring_batch(data, 24, seed=0, transform=TO_TENSOR)
    other, _ = scoring_batch(data, 24, seed=1, transform=TO_TENSOR)
    assert torch.equal(images, again) and not torch.equal(images, other)


def test_scoring_batch_smaller_than_asked_when_heldout_is_small(caplog):
    labels = [0, 0, 0, 1, 1, 1] * 5  # 15 per class: round(1.5) = 2 held out each
    idx = scoring_indices(labels, split_indices(labels, 0.1, 0)[1], batch_size=10, seed=0)
    assert len(idx) == 4 and sorted(np.asarray(labels)[idx].tolist()) == [0, 0, 1, 1]
    data = synthetic_dataset(train_size=30, num_classes=2)
    images, _ = scoring_batch(data, 10, seed=0, transform=eval_transform(32))
    assert images.shape[0] == 4 and "fewer than the 10 asked" in caplog.text


@pytest.mark.realdata
def test_scoring_batch_on_cifar_zip_is_fast_and_balanced(shared_data):
    data = load_data(shared_data / "cifar10-jpeg.zip")
    images, labels = scoring_batch(data, 64, seed=0, transform=eval_transform(32, crop_pct=1.0))
    assert images.shape == (64, 3, 32, 32)
    assert set(Counter(labels.tolist()).values()) == {6, 7}


# ---- transforms and meta-features


def test_transforms_follow_the_model_config():
    image = _png((255, 0, 0), size=(40, 20))
    half = (0.5, 0.5, 0.5)
    x = eval_transform(16, mean=half, std=half, crop_pct=1.0, interpolation="bilinear")(image)
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[1], -torch.ones(16, 16))
    t = train_transform(24, interpolation="bilinear", hflip=0.0, color_jitter=0.0)(image)
    assert t.shape == (3, 24, 24)


def test_meta_features(tmp_path):
    _write_folder(tmp_path / "a", {"train": {"x": 6, "y": 2}}, size=(30, 20))
    f = meta_features(load_data(tmp_path / "a"))
    assert f == {"num_classes": 2, "train_size": 8, "resolution": 20, "class_balance": 2 / 6, "is_real": True}
    assert meta_features(synthetic_dataset(img_size=24))["is_real"] is False


def test_subset_data_is_stratified_and_avoids_the_scoring_split():
    from collections import Counter

    from autokd.data import split_indices, subset_data

    data = synthetic_dataset(num_classes=4, train_size=400, test_size=100)
    _, heldout = split_indices(data.train.labels, 0.1, 0)
    sub = subset_data(data, train=40, test=20, seed=0)
    assert len(sub.train) == 40 and len(sub.test) == 20
    assert sorted(Counter(sub.train.labels).values()) == [10, 10, 10, 10]
    assert not set(sub.train.indices) & set(heldout.tolist())
    assert sub.train.labels[3] == sub.train.base.labels[sub.train.indices[3]]


def test_randaugment_posterize_at_full_magnitude_gives_a_black_image_instead_of_failing():
    """RandAugment 'inc1' keeps 0 bits at magnitude 10 (mstd noise reaches it), which Pillow 11+ refuses."""
    from autokd.data.transforms import _augment_ops, train_transform

    transform = train_transform(32, auto_augment="rand-m9-mstd0.5-inc1", scale=(0.5, 1.0))
    op = next(op for op in _augment_ops(transform) if op.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    image = Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8))
    assert np.asarray(op(image)).max() == 0
    op.magnitude = 5  # 2 bits kept: 0b11001000 -> 0b11000000
    assert np.asarray(op(image)).max() == 192
