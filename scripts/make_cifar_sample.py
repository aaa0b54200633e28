"""Make the package's CIFAR-10 test sample (src/filterlens/data/samples/cifar10_test_sample.npz).

    python scripts/make_cifar_sample.py [--n 500] [--data-dir ../shared/data]

A class-balanced random subset of the test split (seed 0, filterlens's ``ArrayDataset.subset``),
stored as uint8 arrays with each image's index in the test split. Compressed it is about 1.4 MB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from filterlens.data import load_dataset
from filterlens.data.sample import SAMPLE_FILE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    test = load_dataset("cifar10", "test", data_dir=args.data_dir, download=False)
    idx = np.arange(len(test))
    rng = np.random.default_rng(0)
    per_class = args.n // test.num_classes
    sel = np.sort(np.concatenate([rng.choice(idx[test.labels == c], per_class, replace=False)
                                  for c in range(test.num_classes)]))
    SAMPLE_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SAMPLE_FILE, images=test.images[sel], labels=test.labels[sel].astype(np.uint8),
                        indices=sel.astype(np.int32), origin=np.array(Path(test.source).name))
    print(f"{SAMPLE_FILE}: {len(sel)} images, {SAMPLE_FILE.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
