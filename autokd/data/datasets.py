"""Labelled image datasets from an ImageFolder directory, a zip in the same layout, or CIFAR python pickles.

`load_data(path)` picks the reader; `load_data(None)` gives the embedded synthetic demo set (see demo.py).
Images are decoded with PIL and converted to RGB; a timm transform (transforms.py) turns them into tensors.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from autokd.errors import AutokdError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TRAIN_SPLITS = ("train", "training")
TEST_SPLITS = ("test", "val", "valid", "validation")  # first found is the test split

Transform = Callable[[Image.Image], object]


class LabeledImages(Dataset):
    """Labelled images; `dataset[i]` is `(transform(image), label)` (the PIL image when no transform)."""

    def __init__(self, labels: Sequence[int], transform: Transform | None = None):
        self.labels = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def open_image(self, index: int) -> Image.Image:
        """The image, opened lazily (reading `.size` decodes only the header)."""
        raise NotImplementedError

    def load_image(self, index: int) -> Image.Image:
        """The decoded RGB image; an unreadable one is an error that names its file."""
        try:
            return self.open_image(index).convert("RGB")
        except (OSError, SyntaxError, ValueError, zipfile.BadZipFile) as err:  # PIL raises these for bad files
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise AutokdError(f"cannot read image {self.where(index)!r} ({reason}): remove or replace the file, "
                              "then run again") from None

    def where(self, index: int) -> str:
        """Where image `index` comes from, for messages."""
        return f"#{index}"

    def __getitem__(self, index: int):
        image = self.load_image(index)
        return (image if self.transform is None else self.transform(image)), self.labels[index]

    def view(self, indices: Sequence[int], transform: Transform | None = None) -> LabeledView:
        """The images at `indices`, with their own transform (e.g. train augmentation on the search split)."""
        return LabeledView(self, indices, transform if transform is not None else self.transform)


class LabeledView(Dataset):
    """A subset of a LabeledImages with its own transform; the base dataset is not changed."""

    def __init__(self, base: LabeledImages, indices: Sequence[int], transform: Transform | None):
        self.base = base
        self.indices = [int(i) for i in indices]
        self.transform = transform
        self.labels = [base.labels[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image = self.base.load_image(self.indices[index])
        return (image if self.transform is None else self.transform(image)), self.labels[index]


class FileImages(LabeledImages):
    """Images stored as files on disk."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Transform | None = None):
        super().__init__(labels, transform)
        self.paths = list(paths)

    def open_image(self, index: int) -> Image.Image:
        return Image.open(self.paths[index])

    def where(self, index: int) -> str:
        return str(self.paths[index])


class ZipImages(LabeledImages):
    """Images read straight from a zip archive; each process (DataLoader worker) opens its own handle."""

    def __init__(self, zip_path: Path, members: Sequence[str], labels: Sequence[int],
                 transform: Transform | None = None):
        super().__init__(labels, transform)
        self.zip_path = Path(zip_path)
        self.members = list(members)
        self._zip: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.zip_path), os.getpid()
        return self._zip

    def open_image(self, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self._archive().read(self.members[index])))

    def where(self, index: int) -> str:
        return f"{self.zip_path}/{self.members[index]}"

    def __getstate__(self) -> dict:
        # an open ZipFile cannot be pickled to spawned workers; they reopen it
        return {**self.__dict__, "_zip": None, "_pid": None}


class ArrayImages(LabeledImages):
    """Images held in memory as a uint8 array of shape (N, H, W, 3)."""

    def __init__(self, pixels: np.ndarray, labels: Sequence[int], transform: Transform | None = None):
        super().__init__(labels, transform)
        self.pixels = pixels

    def open_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index])


@dataclass
class ImageDataset:
    """A labelled image dataset: class names, a train part, an optional test part and where it came from."""

    name: str
    classes: list[str]
    train: LabeledImages
    test: LabeledImages | None
    is_real: bool = True
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_transform(self, transform: Transform | None, test_transform: Transform | None = None) -> None:
        """Set the transform of the train part and of the test part (which defaults to the same)."""
        self.train.transform = transform
        if self.test is not None:
            self.test.transform = test_transform if test_transform is not None else transform

    def describe(self) -> str:
        """One line saying what the data is."""
        test = f", {len(self.test)} test" if self.test is not None else ", no test split"
        sizes = f"{self.num_classes} classes, {len(self.train)} train{test} images"
        if not self.is_real:
            return f"{self.name}: synthetic demo images, not real data ({sizes})"
        return f"{self.name}: {sizes} ({self.source})"


def load_data(path: str | Path | None, *, img_size: int = 32, seed: int = 0) -> ImageDataset:
    """Read the dataset at `path` (folder, .zip, CIFAR pickle folder); None gives the synthetic demo set."""
    if path is None:
        from autokd.data.demo import synthetic_dataset

        return synthetic_dataset(img_size=img_size, seed=seed)
    path = Path(path).expanduser()
    if not path.exists():
        raise AutokdError(f"data path {str(path)!r} does not exist: give an ImageFolder directory, a .zip in "
                          "the same layout or a CIFAR python folder (or leave --data out for the demo set)")
    if path.is_file():
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        raise AutokdError(f"data file {str(path)!r} is not a zip archive: give a .zip or a directory")
    if (path / "batches.meta").is_file() or ((path / "meta").is_file() and (path / "train").is_file()):
        return _load_cifar_pickles(path)
    return _load_folder(path)


def _load_folder(root: Path) -> ImageDataset:
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    splits = _imagefolder_layout(files, f"directory {str(root)!r}")
    classes, (train, test) = _index_splits(splits, f"directory {str(root)!r}")
    return ImageDataset(
        name=root.name,
        classes=classes,
        train=FileImages([root / f for f in train[0]], train[1]),
        test=None if test is None else FileImages([root / f for f in test[0]], test[1]),
        source=f"image folder {root}",
    )


def _load_zip(path: Path) -> ImageDataset:
    with zipfile.ZipFile(path) as archive:
        files = sorted(
            info.filename
            for info in archive.infolist()
            if not info.is_dir() and PurePosixPath(info.filename).suffix.lower() in IMAGE_EXTENSIONS
        )
    splits = _imagefolder_layout(files, f"zip {str(path)!r}")
    classes, (train, test) = _index_splits(splits, f"zip {str(path)!r}")
    return ImageDataset(
        name=path.stem,
        classes=classes,
        train=ZipImages(path, *train),
        test=None if test is None else ZipImages(path, *test),
        source=f"zip {path}",
    )


def _imagefolder_layout(files: list[str], where: str) -> dict[str, list[tuple[str, str]]]:
    """Map split -> [(file, class)] for `class/x.jpg` or `split/class/x.jpg` (under one optional root)."""
    files = [f for f in files if not any(part.startswith((".", "__MACOSX")) for part in f.split("/"))]
    if not files:
        raise AutokdError(f"{where} holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...): "
                          "put them in <class>/<image> or train/<class>/<image> folders")
    parts = [f.split("/") for f in files]
    # strip a single wrapping folder such as `cifar10/train/cat/0001.jpg`
    while all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
        if parts[0][0].lower() in TRAIN_SPLITS:
            break
        parts = [p[1:] for p in parts]
    depths = {len(p) for p in parts}
    layout_hint = (f"{where} is not in ImageFolder layout: use <class>/<image> or "
                   "train/<class>/<image> with an optional test/ or val/ split")
    if depths == {2}:
        return {"train": [(f, p[0]) for f, p in zip(files, parts)]}
    if depths != {3}:
        raise AutokdError(layout_hint)
    splits: dict[str, list[tuple[str, str]]] = {}
    for f, p in zip(files, parts):
        splits.setdefault(p[0].lower(), []).append((f, p[1]))
    known = set(TRAIN_SPLITS) | set(TEST_SPLITS)
    if not set(splits) <= known or not set(splits) & set(TRAIN_SPLITS):
        raise AutokdError(f"{layout_hint} (found top-level folders {sorted(splits)})")
    train = next(splits[s] for s in TRAIN_SPLITS if s in splits)
    test = next((splits[s] for s in TEST_SPLITS if s in splits), None)
    return {"train": train} if test is None else {"train": train, "test": test}


def _index_splits(splits: dict[str, list[tuple[str, str]]], where: str):
    """Class names (sorted train folders) and per split (files, labels); test classes must exist in train."""
    classes = sorted({c for _, c in splits["train"]})
    _check_classes(classes, where)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for _, c in splits.get("test", []) if c not in index})
    if unknown:
        raise AutokdError(f"{where}: test classes {unknown[:5]} have no train folder; "
                          "give every test class a train/<class> folder")
    out = []
    for split in ("train", "test"):
        items = splits.get(split)
        out.append(None if items is None else ([f for f, _ in items], [index[c] for _, c in items]))
    return classes, out


def _check_classes(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        raise AutokdError(f"{where} has {len(classes)} class ({classes}): distillation needs at least 2 "
                          "classes, one folder of images per class")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of lists and numpy arrays) and refuses any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any failure means the same thing to the user
        raise AutokdError(f"cannot read CIFAR pickle {str(path)!r} ({type(e).__name__}: {e}); "
                          "give the unpacked cifar-10-batches-py folder") from None
    if not isinstance(obj, dict):
        raise AutokdError(f"CIFAR pickle {str(path)!r} holds a {type(obj).__name__}, not a dict; "
                          "give the unpacked cifar-10-batches-py folder")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_part(files: list[Path]) -> ArrayImages | None:
    if not files:
        return None
    pixels, labels = [], []
    for path in files:
        batch = _read_pickle(path)
        key = next((k for k in ("labels", "fine_labels") if k in batch), None)
        if "data" not in batch or key is None:
            raise AutokdError(f"CIFAR pickle {str(path)!r} has no 'data'/'labels': "
                              "give the unpacked cifar-10-batches-py folder")
        data = np.asarray(batch["data"], dtype=np.uint8)
        side = int(round((data.shape[1] / 3) ** 0.5))
        if data.ndim != 2 or side * side * 3 != data.shape[1]:
            raise AutokdError(f"CIFAR pickle {str(path)!r}: rows of {data.shape[1:]} values are not square "
                              "RGB images; give the unpacked cifar-10-batches-py folder")
        pixels.append(data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1))
        labels.extend(int(y) for y in batch[key])
    return ArrayImages(np.ascontiguousarray(np.concatenate(pixels)), labels)


def _load_cifar_pickles(root: Path) -> ImageDataset:
    if (root / "batches.meta").is_file():  # CIFAR-10 layout
        meta = _read_pickle(root / "batches.meta")
        names = meta.get("label_names")
        train_files = sorted(root.glob("data_batch_*"))
        test_files = [root / "test_batch"] if (root / "test_batch").is_file() else []
    else:  # CIFAR-100 layout: train, test, meta
        meta = _read_pickle(root / "meta")
        names = meta.get("fine_label_names")
        train_files = [root / "train"]
        test_files = [root / "test"] if (root / "test").is_file() else []
    if not train_files:
        raise AutokdError(f"CIFAR folder {str(root)!r} has no data_batch_* files: give the complete "
                          "cifar-10-batches-py folder")
    train = _cifar_part(train_files)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in (names or [])]
    if not classes:
        classes = [str(i) for i in range(max(train.labels) + 1)]
    _check_classes(classes, f"CIFAR folder {str(root)!r}")
    return ImageDataset(name=root.name, classes=classes, train=train, test=_cifar_part(test_files),
                        source=f"CIFAR python pickles {root}")
