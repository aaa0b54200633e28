"""A small class-balanced sample of CIFAR-10 test images that ships inside the package.

It lets the demo's first-layer study run on a machine without the data set (as foolbox ships
sample images). The file is made by ``scripts/make_cifar_sample.py`` from the test split and
read with ``allow_pickle=False``: it holds arrays only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ArrayDataset, DataNotFoundError
from .cifar import CIFAR10_CLASSES

SAMPLE_FILE = Path(__file__).resolve().parent / "samples" / "cifar10_test_sample.npz"


def load_cifar10_sample(path: str | Path = SAMPLE_FILE) -> ArrayDataset:
    """The bundled CIFAR-10 test sample: uint8 NHWC images, labels, and their test-split indices.

    ``source`` names the file and the data it was drawn from; ``indices`` (positions in the test
    split) are kept as the dataset's ``sample_indices`` attribute.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"the bundled CIFAR-10 sample {path} is missing; reinstall filterlens")
    with np.load(path, allow_pickle=False) as z:
        images, labels, indices = z["images"], z["labels"].astype(np.int64), z["indices"]
        origin = str(z["origin"])
    ds = ArrayDataset(images, labels, tuple(CIFAR10_CLASSES), "cifar10", "test",
                      source=f"bundled sample of {len(labels)} CIFAR-10 test images ({origin})")
    ds.sample_indices = indices
    return ds
