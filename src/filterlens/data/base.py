"""In-memory image data sets (uint8 arrays) and their on-disk cache."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FilterlensError


class DataError(FilterlensError):
    """A data set could not be found or read."""


class DataNotFoundError(DataError):
    """The raw files of a data set are not where they were looked for."""


@dataclass
class ArrayDataset:
    """Images as ``uint8`` NHWC (``images``) with ``int64`` labels.

    ``source`` says where the arrays came from; ``from_cache`` whether they were read from the
    decoded cache rather than decoded from the raw files.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str
    split: str
    source: str = ""
    from_cache: bool = False
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        n, h, w, c = self.images.shape
        return c, h, w

    def nchw(self) -> np.ndarray:
        """The images as ``uint8`` NCHW (a contiguous copy)."""
        return np.ascontiguousarray(self.images.transpose(0, 3, 1, 2))

    def tensors(self):
        """``(x, y)``: float32 NCHW tensor in [0, 1] and int64 labels."""
        import torch

        x = torch.from_numpy(self.nchw()).float().div_(255.0)
        return x, torch.from_numpy(self.labels.astype(np.int64))

    def subset(self, n: int | None, seed: int = 0) -> "ArrayDataset":
        """A class-balanced random subset of ``n`` examples (fixed by ``seed``); ``None``/too big = all.

        The order is shuffled too; the same ``n`` and ``seed`` always give the same examples.
        """
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise DataError(f"a subset needs a positive size, got {n}")
        rng = np.random.default_rng(seed)
        per_class = [rng.permutation(np.flatnonzero(self.labels == c)) for c in range(self.num_classes)]
        # Round-robin over the classes so every prefix is balanced as far as possible.
        take: list[int] = []
        depth = 0
        while len(take) < n:
            added = False
            for idx in per_class:
                if depth < len(idx) and len(take) < n:
                    take.append(int(idx[depth]))
                    added = True
            if not added:
                break
            depth += 1
        sel = np.array(take, dtype=np.int64)
        sel = sel[rng.permutation(len(sel))]
        return ArrayDataset(
            self.images[sel], self.labels[sel], self.classes, self.name, self.split,
            source=self.source, from_cache=self.from_cache,
            meta={**self.meta, "subset": {"n": int(n), "seed": int(seed), "of": len(self)}},
        )


def file_fingerprint(path: Path) -> str:
    """A short key for a raw source: its resolved path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_path(cache: Path, name: str, split: str, key: str) -> Path:
    return cache / f"{name}-{split}-{key}.npz"


def save_cache(path: Path, ds: ArrayDataset) -> None:
    """Write ``ds`` as an uncompressed ``.npz`` (atomically: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, images=ds.images, labels=ds.labels, classes=np.array(ds.classes), source=np.array(ds.source))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_cache(path: Path, name: str, split: str) -> ArrayDataset | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return ArrayDataset(
                z["images"], z["labels"].astype(np.int64), tuple(str(c) for c in z["classes"]),
                name, split, source=str(z["source"]), from_cache=True,
            )
    except Exception:  # a broken cache file is rebuilt, never fatal
        return None
