"""CIFAR-10: the original python format (``cifar-10-python.tar.gz``) or an image folder."""

from __future__ import annotations

import os
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from .. import safe_pickle
from .base import ArrayDataset, DataError, DataNotFoundError, md5sum


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FILE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_MAX_MEMBER_BYTES = 512 << 20
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_TEST_BATCHES = ["test_batch"]
_IMAGE_FOLDER_NAMES = ("cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar10.tar.gz", "cifar10", "CIFAR10", "cifar-10")


def _unpickle(blob: bytes, what: str) -> dict:
    """One member of the archive: the official format is a pickle of a dict, read as plain data
    only (:mod:`filterlens.safe_pickle`): a crafted batch cannot run code."""
    try:
        d = safe_pickle.loads(blob, encoding="bytes")
    except safe_pickle.UnsafePickleError as exc:
        raise DataError(f"{what}: refused to read it: {exc}") from None
    except MemoryError:
        raise DataError(f"{what}: asks for more memory than is available") from None
    except Exception as exc:  # pickle raises assorted errors on damaged data
        raise DataError(f"{what}: not a CIFAR-10 batch ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(d, dict):
        raise DataError(f"{what}: not a CIFAR-10 batch (a pickled {type(d).__name__}, expected a dict)")
    return d


def _batches_to_arrays(blobs: list[bytes], names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for blob, name in zip(blobs, names or ["a CIFAR-10 batch"] * len(blobs)):
        d = _unpickle(blob, name)
        data = d.get(b"data", d.get("data"))
        labels = d.get(b"labels", d.get("labels"))
        if data is None or labels is None:
            raise DataError(f"{name}: a CIFAR-10 batch lacks 'data' or 'labels'")
        try:
            xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(labels, dtype=np.int64).reshape(-1))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name}: not a CIFAR-10 batch ({exc})") from None
        if len(xs[-1]) != len(ys[-1]):
            raise DataError(f"{name}: {len(xs[-1])} images but {len(ys[-1])} labels")
    return np.ascontiguousarray(np.concatenate(xs).transpose(0, 2, 3, 1)), np.concatenate(ys)


def read_cifar10_python(path: Path) -> dict[str, ArrayDataset]:
    """Both splits from ``cifar-10-python.tar.gz`` or an extracted ``cifar-10-batches-py`` folder."""
    path = Path(path)
    blobs: dict[str, bytes] = {}
    wanted = set(_TRAIN_BATCHES + _TEST_BATCHES + ["batches.meta"])
    if path.is_dir():
        for name in wanted:
            if (path / name).is_file():
                blobs[name] = (path / name).read_bytes()
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        if member.size > _MAX_MEMBER_BYTES:  # a batch is 30 MB; don't fill the memory
                            raise DataError(f"{path}: {member.name} holds {member.size:,} bytes, not a "
                                            "CIFAR-10 batch")
                        fh = tar.extractfile(member)
                        assert fh is not None
                        blobs[base] = fh.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read the CIFAR-10 archive {path}: {e}") from e
    missing = [b for b in _TRAIN_BATCHES + _TEST_BATCHES if b not in blobs]
    if missing:
        raise DataError(f"{path} is not a complete CIFAR-10 python archive (missing {', '.join(missing)})")
    classes = CIFAR10_CLASSES
    if "batches.meta" in blobs:
        meta = _unpickle(blobs["batches.meta"], f"{path}: batches.meta")
        names = meta.get(b"label_names", meta.get("label_names"))
        if isinstance(names, (list, tuple)) and names:
            classes = tuple(n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names)
    out = {}
    for split, names in (("train", _TRAIN_BATCHES), ("test", _TEST_BATCHES)):
        x, y = _batches_to_arrays([blobs[n] for n in names], [f"{path}: {n}" for n in names])
        out[split] = ArrayDataset(x, y, classes, "cifar10", split, source=str(path))
    return out


def _is_python_format_dir(p: Path) -> bool:
    return p.is_dir() and (p / "data_batch_1").is_file() and (p / "test_batch").is_file()


def _is_image_folder_dir(p: Path) -> bool:
    return p.is_dir() and any((p / s).is_dir() for s in ("train", "test"))


def find_cifar10(dirs: list[Path]) -> tuple[str, Path] | None:
    """The first CIFAR-10 source in ``dirs``: ``("python" | "imagefolder", path)``."""
    for d in dirs:
        if d.is_file():
            name = d.name.lower()
            if "python" in name or name.endswith(".tar.gz") and _tar_has(d, "data_batch_1"):
                return "python", d
            return "imagefolder", d
        if not d.is_dir():
            continue
        if _is_python_format_dir(d):
            return "python", d
        for cand in (d / CIFAR10_FILE, d / "cifar-10-batches-py"):
            if cand.is_file() or _is_python_format_dir(cand):
                return "python", cand
        for name in _IMAGE_FOLDER_NAMES:
            cand = d / name
            if cand.is_file() or _is_image_folder_dir(cand):
                return "imagefolder", cand
        if _is_image_folder_dir(d):
            return "imagefolder", d
    return None


def _tar_has(path: Path, basename: str) -> bool:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.name.rsplit("/", 1)[-1] == basename:
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def not_found_message(dirs: list[Path], why: str = "") -> str:
    where = ", ".join(str(d) for d in dirs)
    return (
        f"CIFAR-10 not found (looked in: {where}){'; ' + why if why else ''}. Download {CIFAR10_FILE} "
        f"(md5 {CIFAR10_MD5}) from {CIFAR10_URL} and put it in one of those directories, or pass "
        f"--data-dir / set FILTERLENS_DATA to a directory holding it or an image folder "
        f"(<root>/{{train,test}}/<class>/<image>, a directory or .tar.gz)."
    )


def download_cifar10(cache: Path, timeout: float = 20.0) -> Path:
    """Download the official archive into ``cache`` and check its md5; raises ``DataNotFoundError``."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / CIFAR10_FILE
    tmp = target.with_suffix(".part")
    try:
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        with urllib.request.urlopen(CIFAR10_URL, timeout=timeout) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            from rich.console import Console

            with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True,
                          console=Console(stderr=True)) as pr:
                task = pr.add_task(f"downloading {CIFAR10_FILE}", total=total)
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    pr.advance(task, len(chunk))
        if md5sum(tmp) != CIFAR10_MD5:
            raise DataError(f"the download of {CIFAR10_URL} has the wrong md5")
        os.replace(tmp, target)
        return target
    except (OSError, DataError) as e:
        raise DataNotFoundError(str(e)) from e
    finally:
        if tmp.exists():
            tmp.unlink()
