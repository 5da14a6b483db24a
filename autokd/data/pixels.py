"""Decode each image once: a uint8 (N, H, W, 3) memory-mapped file of a small dataset's pixels.

Row i is decoded on its first use and read from the file ever after, by every epoch, DataLoader worker, later
run and process on the machine (the file is keyed by the images' content and the decoded size). The images it
returns equal the decoded files', so every transform gives exactly what it gives on the JPEG path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from autokd.data.datasets import FileImages, ImageDataset, LabeledImages, ZipImages
from autokd.data.split import SubsetImages

log = logging.getLogger("autokd")

CACHE_ROOT = Path(os.environ.get("AUTOKD_CACHE", Path.home() / ".cache" / "autokd"))
MAX_SIDE = 96  # larger images go through DataLoader workers instead (decoded per epoch, in parallel)
MAX_BYTES = 4 << 30


def content_digest(images: LabeledImages) -> str:
    """A digest of what the images are: the zip's bytes, or every file's path, size and mtime."""
    h = hashlib.blake2b(digest_size=12)
    if isinstance(images, ZipImages):
        h.update(json.dumps(images.members).encode())
        st = os.stat(images.zip_path)
        h.update(_file_digest(str(images.zip_path), st.st_size, st.st_mtime_ns).encode())
    elif isinstance(images, FileImages):
        for p in images.paths:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        raise TypeError(f"no content digest for {type(images).__name__}")
    h.update(np.asarray(images.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The bytes of a file, hashed once per process for a given size and modification time (every Trainer of a
    refine or ground-truth build opens the same zip)."""
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


class DecodedImages(LabeledImages):
    """`base`'s images as stored rows of a uint8 file under `folder`, each decoded once (to `size` = (H, W);
    an image of another size is resized to it with bicubic filtering and counted in `resized`)."""

    def __init__(self, base: LabeledImages, folder: Path, size: tuple[int, int]):
        super().__init__(base.labels, base.transform)
        self.base, self.size = base, (int(size[0]), int(size[1]))
        key = f"{content_digest(base)}-{self.size[0]}x{self.size[1]}-rgb-bicubic"
        self.pixels_path = Path(folder) / f"{key}.u8.npy"
        self.filled_path = Path(folder) / f"{key}.filled.npy"
        self.decoded = self.resized = 0
        self._open()

    def _open(self) -> None:
        n, (h, w) = len(self.base), self.size
        self.pixels_path.parent.mkdir(parents=True, exist_ok=True)
        for path, shape in ((self.pixels_path, (n, h, w, 3)), (self.filled_path, (n,))):
            if not path.exists():  # created whole under a temporary name, then renamed: never half a header
                tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
                os.replace(tmp, path)
        self.pixels = np.lib.format.open_memmap(self.pixels_path, mode="r+")
        self.filled = np.lib.format.open_memmap(self.filled_path, mode="r+")

    def open_image(self, index: int) -> Image.Image:
        if not self.filled[index]:
            image = self.base.load_image(index)
            if image.size != (self.size[1], self.size[0]):
                image = image.resize((self.size[1], self.size[0]), Image.BICUBIC)
                self.resized += 1
            self.pixels[index] = np.asarray(image)
            self.filled[index] = 1  # after the pixels: a reader never sees a flagged row half-written
            self.decoded += 1
        return Image.fromarray(np.asarray(self.pixels[index]))

    def load_image(self, index: int) -> Image.Image:
        return self.open_image(index)

    def fill(self) -> int:
        """Decode every row not yet stored; returns how many were decoded now."""
        before = self.decoded
        for i in np.flatnonzero(self.filled[:] == 0):
            self.open_image(int(i))
        self.pixels.flush()
        self.filled.flush()
        return self.decoded - before

    def __getstate__(self) -> dict:
        # workers reopen the file: pickling a memmap would copy every row
        return {k: v for k, v in self.__dict__.items() if k not in ("pixels", "filled")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()


def decode_once(data: ImageDataset, folder: Path) -> ImageDataset | None:
    """`data` with its train and test images read from decoded-pixel files under `folder`, or None where that
    does not pay: images already in memory, or larger than MAX_SIDE, or too many bytes."""
    parts = {}
    for name in ("train", "test"):
        images = getattr(data, name)
        if images is None:
            continue
        inner, wrap = (images.base, images) if isinstance(images, SubsetImages) else (images, None)
        if not isinstance(inner, (ZipImages, FileImages)) or not len(inner):
            return None
        w, h = inner.open_image(0).size
        if max(w, h) > MAX_SIDE or len(inner) * w * h * 3 > MAX_BYTES:
            return None
        try:
            decoded = DecodedImages(inner, folder, (h, w))
        except OSError as e:
            log.warning("images are decoded every epoch: cannot keep decoded pixels in %s (%s)", folder, e)
            return None
        parts[name] = SubsetImages(decoded, wrap.indices) if wrap is not None else decoded
    return ImageDataset(data.name, data.classes, parts["train"], parts.get("test"), data.is_real, data.source)
