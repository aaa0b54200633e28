"""filterlens.data: CIFAR-10 (python format and image folders), MNIST (IDX), the cache, the loader."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from filterlens.data import (
    CIFAR10_CLASSES, BatchLoader, DataNotFoundError, load_dataset, load_image_folder, read_idx,
)
from filterlens.data import datasets as ds_mod
from filterlens.data.cifar import find_cifar10
from filterlens.errors import FilterlensError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --- fixtures: tiny raw data sets written in tmp_path -------------------------------------------

def _cifar_python_tarball(root: Path, n_per_batch: int = 4, seed: int = 0) -> tuple[Path, dict]:
    """A tiny cifar-10-python.tar.gz: 5 train batches and a test batch of ``n_per_batch`` images."""
    rng = np.random.default_rng(seed)
    arrays = {}
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, obj: dict) -> None:
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
            arrays[name] = (data, labels)
            add(name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                       b"filenames": [b"x.png"] * n_per_batch})
        add("batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": n_per_batch})
    return path, arrays


def _image_folder_tarball(root: Path, classes=CIFAR10_CLASSES, size=32, per_class=(2, 1)) -> tuple[Path, dict]:
    """A tiny image-folder .tar.gz of PNGs (lossless) named like the shared CIFAR-10 JPEG archive."""
    from PIL import Image

    rng = np.random.default_rng(1)
    expected: dict[str, list[tuple[int, np.ndarray]]] = {"train": [], "test": []}
    path = root / "cifar10-jpeg.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        # Write the classes in reverse order to check that labels follow sorted folder names.
        for split, n in zip(("train", "test"), per_class):
            for label in reversed(range(len(classes))):
                for i in reversed(range(n)):
                    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{classes[label]}/{i:04d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
                    expected[split].append((label, img))
    for split in expected:  # expected order: by label, then by file name
        expected[split] = [expected[split][k] for k in sorted(range(len(expected[split])),
                           key=lambda k: (expected[split][k][0], -k))]
    return path, expected


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _mnist_dir(root: Path) -> dict:
    rng = np.random.default_rng(2)
    d = root / "mnist"
    d.mkdir()
    out = {}
    for split, (img_name, lab_name), n in (("train", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), 12),
                                          ("test", ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), 5)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(d / (img_name + ".gz"), x)
        _write_idx(d / (lab_name + ".gz"), y)
        out[split] = (x, y)
    return out


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# --- CIFAR-10 python format ---------------------------------------------------------------------

def test_cifar_python_format(tmp_path: Path, cache: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    _, arrays = _cifar_python_tarball(raw)
    train = load_dataset("cifar10", "train", data_dir=raw, cache=cache, download=False)
    test = load_dataset("cifar10", "test", data_dir=raw, cache=cache, download=False)
    assert train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (4, 32, 32, 3)
    assert train.classes == CIFAR10_CLASSES
    data, labels = arrays["test_batch"]
    np.testing.assert_array_equal(test.labels, labels)
    # The python format stores each image as 1024 R, then G, then B values, row by row.
    np.testing.assert_array_equal(test.images[2, :, :, 1], data[2, 1024:2048].reshape(32, 32))
    np.testing.assert_array_equal(test.nchw()[3], data[3].reshape(3, 32, 32))
    all_train = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train.nchw().reshape(20, -1), all_train)
    x, y = test.tensors()
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(x[0] * 255, torch.from_numpy(data[0].reshape(3, 32, 32)).float())


def test_cache_is_used_on_second_load(tmp_path: Path, cache: Path, monkeypatch) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    _cifar_python_tarball(raw)
    first = load_dataset("cifar10", "test", data_dir=raw, cache=cache, download=False)
    assert not first.from_cache
    assert list(cache.glob("cifar10-python-*.npz"))

    def boom(*a, **k):
        raise AssertionError("the raw files were decoded again")

    monkeypatch.setattr(ds_mod.cifar, "read_cifar10_python", boom)
    second = load_dataset("cifar10", "test", data_dir=raw, cache=cache, download=False)
    assert second.from_cache
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    # Both splits were decoded in one pass, so the train split is cached too.
    assert load_dataset("cifar10", "train", data_dir=raw, cache=cache, download=False).from_cache


def test_cache_env_variable(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    _cifar_python_tarball(raw)
    monkeypatch.setenv("FILTERLENS_CACHE", str(tmp_path / "envcache"))
    monkeypatch.setenv("FILTERLENS_DATA", str(raw))
    load_dataset("cifar10", "test", download=False)
    assert list((tmp_path / "envcache").glob("*.npz"))
    assert load_dataset("cifar10", "test", download=False).from_cache


# --- image folders ------------------------------------------------------------------------------

def test_cifar_image_folder_tarball(tmp_path: Path, cache: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    path, expected = _image_folder_tarball(raw)
    assert find_cifar10([raw]) == ("imagefolder", path)
    train = load_dataset("cifar10", "train", data_dir=raw, cache=cache, download=False)
    test = load_dataset("cifar10", "test", data_dir=raw, cache=cache, download=False)
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (10, 32, 32, 3)
    assert train.classes == CIFAR10_CLASSES  # sorted folder names = the CIFAR-10 order
    np.testing.assert_array_equal(train.labels, [lab for lab, _ in expected["train"]])
    for got, (_, want) in zip(test.images, expected["test"]):
        np.testing.assert_array_equal(got, want)
    # The path of the archive itself works as --data-dir too.
    again = load_dataset("cifar10", "test", data_dir=path, cache=cache, download=False)
    np.testing.assert_array_equal(again.images, test.images)


def test_generic_image_folder_directory(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for cls, value in (("zebra", 200), ("ant", 10), ("moth", 100)):
            d = root / split / cls
            d.mkdir(parents=True)
            Image.fromarray(np.full((5, 6, 3), value, np.uint8)).save(d / "a.png")
    ds = load_image_folder(root, "train")
    assert ds.classes == ("ant", "moth", "zebra")
    assert ds.images.shape == (3, 5, 6, 3)
    np.testing.assert_array_equal(ds.labels, [0, 1, 2])
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], [10, 100, 200])
    gray = load_image_folder(root, "test", mode="L")
    assert gray.images.shape == (3, 5, 6, 1)


# --- MNIST --------------------------------------------------------------------------------------

def test_mnist_idx(tmp_path: Path, cache: Path) -> None:
    arrays = _mnist_dir(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split, data_dir=tmp_path, cache=cache)
        x, y = arrays[split]
        assert ds.images.shape == (len(x), 28, 28, 1) and ds.images.dtype == np.uint8
        np.testing.assert_array_equal(ds.images[..., 0], x)
        np.testing.assert_array_equal(ds.labels, y)
        assert ds.labels.dtype == np.int64
    assert load_dataset("mnist", "test", data_dir=tmp_path, cache=cache).from_cache


def test_read_idx_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(FilterlensError, match="not an IDX file"):
        read_idx(bad)


# --- missing data -------------------------------------------------------------------------------

def test_missing_cifar_gives_clear_error(tmp_path: Path, cache: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar10", "train", data_dir=empty, cache=cache, download=False)
    msg = str(info.value)
    assert "cifar-10-python.tar.gz" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert str(empty) in msg and "\n" not in msg
    assert isinstance(info.value, FilterlensError)


def test_missing_mnist_and_bad_names(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", "train", data_dir=tmp_path, cache=cache)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("mnist", "train", data_dir=tmp_path / "nope", cache=cache)
    with pytest.raises(FilterlensError, match="unknown data set"):
        load_dataset("imagenet", "train", data_dir=tmp_path, cache=cache)
    with pytest.raises(FilterlensError, match="unknown split"):
        load_dataset("mnist", "validation", data_dir=tmp_path, cache=cache)


# --- subsets and the batch loader ---------------------------------------------------------------

def _synthetic(n=40, classes=4, hw=6, c=3):
    from filterlens.data import ArrayDataset

    rng = np.random.default_rng(0)
    return ArrayDataset(rng.integers(0, 256, (n, hw, hw, c), dtype=np.uint8), np.arange(n) % classes,
                        tuple(map(str, range(classes))), "synthetic", "train")


def test_subset_is_balanced_and_deterministic() -> None:
    ds = _synthetic()
    a, b = ds.subset(20, seed=3), ds.subset(20, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.images, b.images)
    assert np.bincount(a.labels).tolist() == [5, 5, 5, 5]
    assert not np.array_equal(ds.subset(20, seed=4).images, a.images)
    assert ds.subset(None) is ds and ds.subset(1000) is ds


def test_loader_plain_batches_are_exact() -> None:
    ds = _synthetic()
    batches = list(BatchLoader(ds, 16))
    assert [len(y) for _, y in batches] == [16, 16, 8]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (40, 3, 6, 6)
    assert torch.allclose(x * 255, torch.from_numpy(ds.nchw()).float())
    assert len(list(BatchLoader(ds, 16, drop_last=True))) == 2


def test_loader_crop_and_flip_are_windows_of_the_padded_image() -> None:
    ds = _synthetic(n=24)
    loader = BatchLoader(ds, 8, shuffle=True, crop_padding=2, flip=True, seed=5)
    seen_labels = []
    padded = torch.nn.functional.pad(torch.from_numpy(ds.nchw()).float() / 255, (2, 2, 2, 2))
    for x, y in loader:
        assert x.shape == (8, 3, 6, 6) and 0 <= x.min() and x.max() <= 1
        seen_labels += y.tolist()
        for img in x:
            hits = [
                (i, dy, dx)
                for i in range(len(ds)) for dy in range(5) for dx in range(5)
                for cand in (padded[i, :, dy:dy + 6, dx:dx + 6],)
                if torch.equal(cand, img) or torch.equal(cand.flip(2), img)
            ]
            assert hits, "an augmented image is not a (flipped) crop of a padded original"
    assert sorted(seen_labels) == sorted(ds.labels.tolist())
    # The same seed gives the same batches.
    a = [x for x, _ in BatchLoader(ds, 8, shuffle=True, crop_padding=2, flip=True, seed=5)]
    b = [x for x, _ in BatchLoader(ds, 8, shuffle=True, crop_padding=2, flip=True, seed=5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


# --- the real shared data (skipped without ../shared) --------------------------------------------

@pytest.mark.shared
def test_shared_mnist(tmp_path: Path) -> None:
    if not (SHARED / "mnist").is_dir():
        pytest.skip(f"needs the shared data at {SHARED}")
    ds = load_dataset("mnist", "test", data_dir=SHARED, cache=tmp_path)
    assert ds.images.shape == (10000, 28, 28, 1)
    assert ds.labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert np.bincount(ds.labels).sum() == 10000


@pytest.mark.shared
def test_shared_cifar_is_found() -> None:
    if not (SHARED / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip(f"needs the shared data at {SHARED}")
    assert find_cifar10([SHARED]) == ("imagefolder", SHARED / "cifar10-jpeg.tar.gz")


@pytest.mark.shared
def test_shared_cifar_decodes() -> None:
    """Runs in CI: the first decode takes about 15 s on two cores and fills the default cache,
    which the demo's first-layer study then reads (so CI pays for the decode once)."""
    if not (SHARED / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip(f"needs the shared data at {SHARED}")
    test = load_dataset("cifar10", "test", data_dir=SHARED, download=False)
    assert test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(test.labels).tolist() == [1000] * 10
