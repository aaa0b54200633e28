"""Image-folder data sets: ``<root>/{train,test}/<class>/<file>`` as a directory or a ``.tar.gz``.

Class folders sorted alphabetically give the label order (for CIFAR-10 that is the standard
order); within a class, files are taken in sorted name order.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from .base import ArrayDataset, DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
SPLIT_ALIASES = {"train": ("train", "training"), "test": ("test", "val", "valid", "validation")}


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """``(split, class)`` of an image path ``.../<split>/<class>/<file>``, or ``None``."""
    if len(parts) < 3 or Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    split_dir, cls = parts[-3], parts[-2]
    for split, aliases in SPLIT_ALIASES.items():
        if split_dir.lower() in aliases:
            return split, cls
    return None


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise DataError("decoding image files needs Pillow: pip install pillow") from e
    return Image


def _decode_all(items: list[tuple[str, str, bytes | Path]], mode: str, label: str) -> np.ndarray:
    """Decode ``(class, name, data)`` items into a uint8 NHWC array, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    Image = _pil()
    out: np.ndarray | None = None
    from rich.console import Console

    with Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True, console=Console(stderr=True),
    ) as progress:
        task = progress.add_task(label, total=len(items))
        for i, (_, name, data) in enumerate(items):
            src = io.BytesIO(data) if isinstance(data, bytes) else data
            with Image.open(src) as im:
                arr = np.asarray(im.convert(mode))
            if arr.ndim == 2:
                arr = arr[:, :, None]
            if out is None:
                out = np.empty((len(items), *arr.shape), dtype=np.uint8)
            elif arr.shape != out.shape[1:]:
                raise DataError(f"image {name} has shape {arr.shape}, the others {out.shape[1:]}; resize them first")
            out[i] = arr
            if i % 512 == 0:
                progress.update(task, completed=i)
        progress.update(task, completed=len(items))
    assert out is not None
    return out


def read_image_folder(path: Path, name: str, mode: str = "RGB") -> dict[str, ArrayDataset]:
    """Read every split of an image folder (a directory or a ``.tar``/``.tar.gz``) in one pass."""
    path = Path(path)
    found: dict[str, dict[str, list[tuple[str, bytes | Path]]]] = {}
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            sc = _split_class(f.relative_to(path).parts)
            if sc and f.is_file():
                found.setdefault(sc[0], {}).setdefault(sc[1], []).append((f.name, f))
    elif path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    sc = _split_class(PurePosixPath(member.name).parts)
                    if sc is None:
                        continue
                    fh = tar.extractfile(member)
                    assert fh is not None
                    found.setdefault(sc[0], {}).setdefault(sc[1], []).append((PurePosixPath(member.name).name, fh.read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read the archive {path}: {e}") from e
    else:
        raise DataError(f"no such file or directory: {path}")
    if not found:
        raise DataError(f"{path} holds no images in the layout <split>/<class>/<image> with split train or test")
    classes = sorted({c for per in found.values() for c in per})
    out: dict[str, ArrayDataset] = {}
    for split, per_class in found.items():
        items: list[tuple[str, str, bytes | Path]] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            for fname, data in sorted(per_class.get(cls, []), key=lambda t: t[0]):
                items.append((cls, fname, data))
                labels.append(label)
        images = _decode_all(items, mode, f"decoding {name} {split} ({len(items)} images)")
        out[split] = ArrayDataset(images, np.asarray(labels, dtype=np.int64), tuple(classes), name, split, source=str(path))
    return out
