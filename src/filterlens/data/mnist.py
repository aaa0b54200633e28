"""MNIST from the original IDX files (``train-images-idx3-ubyte[.gz]`` and friends)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .base import ArrayDataset, DataError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_CLASSES = tuple(str(i) for i in range(10))
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read the IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - offset < count * dtype.itemsize:
        raise DataError(f"{path} is truncated")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find_file(d: Path, base: str) -> Path | None:
    for sub in (d, d / "mnist", d / "MNIST" / "raw", d / "MNIST"):
        for name in (base, base + ".gz"):
            if (sub / name).is_file():
                return sub / name
    return None


def find_mnist(dirs: list[Path], split: str) -> tuple[Path, Path] | None:
    img_name, lab_name = MNIST_FILES[split]
    for d in dirs:
        if not d.is_dir():
            continue
        img, lab = _find_file(d, img_name), _find_file(d, lab_name)
        if img and lab:
            return img, lab
    return None


def read_mnist(images: Path, labels: Path, split: str) -> ArrayDataset:
    x = read_idx(images)
    y = read_idx(labels).astype(np.int64)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(f"{images} does not hold uint8 images (shape {x.shape}, {x.dtype})")
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return ArrayDataset(np.ascontiguousarray(x[:, :, :, None]), y, MNIST_CLASSES, "mnist", split, source=str(images))


def not_found_message(dirs: list[Path], split: str) -> str:
    where = ", ".join(str(d) for d in dirs)
    files = ", ".join(f + ".gz" for f in MNIST_FILES[split])
    return (
        f"MNIST ({split}) not found (looked in: {where}). Put {files} (the original IDX files, e.g. from "
        f"{MNIST_URL}) in one of those directories or a 'mnist' folder inside one, or pass --data-dir / "
        f"set FILTERLENS_DATA."
    )
