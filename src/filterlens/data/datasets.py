"""Load a data set by name, decoding the raw files once into a cache."""

from __future__ import annotations

import os
from pathlib import Path

from . import cifar, mnist
from .base import ArrayDataset, DataError, DataNotFoundError, cache_path, file_fingerprint, load_cache, save_cache
from .paths import cache_dir, data_dirs

DATASETS = ("cifar10", "mnist")

#: Per-channel mean/std of the training sets (inputs in [0, 1]); models normalise internally.
NORMALIZATION = {
    "cifar10": (cifar.CIFAR10_MEAN, cifar.CIFAR10_STD),
    "mnist": ((0.1307,), (0.3081,)),
}

_SPLITS = ("train", "test")


def dataset_key(name: str) -> str:
    """The canonical name of a data set (``CIFAR-10`` -> ``cifar10``); raises ``DataError`` if unknown."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return key


def _check(name: str, split: str) -> str:
    key = dataset_key(name)
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; use train or test")
    return key


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    download: bool = True,
    use_cache: bool = True,
) -> ArrayDataset:
    """One split of ``cifar10`` or ``mnist`` as uint8 NHWC arrays with int64 labels.

    The raw files are looked up in ``data_dir`` (or ``$FILTERLENS_DATA``, ``../shared/data`` and the
    cache); the decoded arrays are cached (``cache``, ``$FILTERLENS_CACHE`` or ``~/.cache/filterlens``),
    keyed by the raw file's path, size and modification time, so a second load takes a moment.
    CIFAR-10 is downloaded into the cache when it is nowhere to be found and ``download`` is set.
    """
    key = _check(name, split)
    cdir = cache_dir(cache)
    if data_dir is not None and not Path(data_dir).expanduser().exists():
        raise DataNotFoundError(f"the data directory {data_dir} does not exist")
    dirs = data_dirs(data_dir, cache)
    if key == "cifar10":
        return _load_cifar10(split, dirs, cdir, download, use_cache)
    return _load_mnist(split, dirs, cdir, use_cache)


def _try_cache(cdir: Path, name: str, split: str, src: Path, use_cache: bool) -> tuple[str, ArrayDataset | None]:
    fp = file_fingerprint(src)
    if not use_cache:
        return fp, None
    return fp, load_cache(cache_path(cdir, name, split, fp), name, split)


def _store(cdir: Path, name: str, fp: str, parts: dict[str, ArrayDataset], use_cache: bool) -> None:
    if not use_cache:
        return
    for split, ds in parts.items():
        try:
            save_cache(cache_path(cdir, name, split, fp), ds)
        except OSError:  # a read-only cache only costs speed
            pass


def _load_cifar10(split: str, dirs: list[Path], cdir: Path, download: bool, use_cache: bool) -> ArrayDataset:
    found = cifar.find_cifar10(dirs)
    if found is None:
        if not download:
            raise DataNotFoundError(cifar.not_found_message(dirs))
        try:
            path = cifar.download_cifar10(cdir)
        except DataNotFoundError as e:
            raise DataNotFoundError(cifar.not_found_message(dirs, f"the download failed ({e})")) from None
        found = ("python", path)
    kind, src = found
    fp, ds = _try_cache(cdir, f"cifar10-{kind}", split, src, use_cache)
    if ds is not None:
        ds.name = "cifar10"
        return ds
    parts = cifar.read_cifar10_python(src) if kind == "python" else read_image_folder_cifar(src)
    if split not in parts:
        raise DataError(f"{src} has no {split} split")
    _store(cdir, f"cifar10-{kind}", fp, parts, use_cache)
    return parts[split]


def read_image_folder_cifar(src: Path) -> dict[str, ArrayDataset]:
    from .imagefolder import read_image_folder

    parts = read_image_folder(src, "cifar10", mode="RGB")
    for ds in parts.values():
        if ds.images.shape[1:] != (32, 32, 3):
            raise DataError(f"{src}: CIFAR-10 images must be 32x32 RGB, got {ds.images.shape[1:]}")
        if ds.num_classes != 10:
            raise DataError(f"{src}: CIFAR-10 needs 10 class folders, found {ds.num_classes}")
    return parts


def _load_mnist(split: str, dirs: list[Path], cdir: Path, use_cache: bool) -> ArrayDataset:
    found = mnist.find_mnist(dirs, split)
    if found is None:
        raise DataNotFoundError(mnist.not_found_message(dirs, split))
    images, labels = found
    fp, ds = _try_cache(cdir, "mnist", split, images, use_cache)
    if ds is not None:
        return ds
    ds = mnist.read_mnist(images, labels, split)
    _store(cdir, "mnist", fp, {split: ds}, use_cache)
    return ds


def load_image_folder(path: str | os.PathLike, split: str = "train", *, mode: str = "RGB") -> ArrayDataset:
    """One split of any image folder (directory or ``.tar.gz``), without caching."""
    from .imagefolder import read_image_folder

    parts = read_image_folder(Path(path), Path(path).name, mode=mode)
    if split not in parts:
        raise DataError(f"{path} has no {split} split (found: {', '.join(sorted(parts))})")
    return parts[split]
