"""Helpers of the security regression tests: hostile files, CLI runs, database fingerprints."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from filterlens.cli.main import main
from filterlens.db import FilterDB
from filterlens.measure import measure_layers
from filterlens.types import ConvLayer, ModelFilters


class Evil:
    """Unpickling this runs ``touch MARKER``: what a hostile pickle does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``filterlens`` command in-process: ``(exit status, stdout, stderr)``.

    An exception other than ``SystemExit`` escapes (the test fails): that would be a traceback.
    """
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str, *fragments: str) -> str:
    """``err`` is exactly one ``error: ...`` line, no traceback, containing every fragment."""
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err
    errors = [l for l in lines if l.startswith("error:")]
    assert len(errors) == 1, err
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to assert nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def toy_model(name: str, seed: int, n_layers: int = 2, out: int = 8) -> ModelFilters:
    rng = np.random.default_rng(seed)
    layers, cin = [], 3
    for i in range(n_layers):
        layers.append(ConvLayer(name=f"conv{i}", weight=rng.standard_normal((out, cin, 3, 3)).astype(np.float32),
                                depth=i, conv_depth=i, conv_depth_norm=i / max(1, n_layers - 1)))
        cin = out
    return ModelFilters(name=name, source=f"test:{name}", layers=layers, depth_source="order")


def add_measured(db, mf, metadata=None, **kwargs):
    """``db.add`` with the layers measured first (3x3 layers; the others noted as not measured)."""
    return db.add(mf, metadata, measure_layers(mf.layers), **kwargs)


def make_db(path: Path, n: int = 2) -> FilterDB:
    """A database with ``n`` models, alternately adversarial and normal."""
    db = FilterDB.create(path)
    for i in range(n):
        add_measured(db, toy_model(f"m{i}", i), {"training": "adversarial" if i % 2 == 0 else "normal",
                                                 "dataset": "cifar10", "arch": "toy"})
    return db


def write_fixed_h5(path: Path, models=((0, "robust_wrn", True), (3, "normal_wrn", False)),
                   object_extra=None, filter_ids=None) -> np.ndarray:
    """A ``dataset.h5`` as published: ``filters`` N x 3 x 3 and a pandas "fixed"-format ``meta``
    whose text columns are object (pickled) columns. ``object_extra`` is put into an object
    column of the first row (e.g. a hostile object); ``filter_ids`` overrides the ranges."""
    import h5py

    rng = np.random.default_rng(3)
    rows, blocks, start = [], [], 0
    shapes = [(3, 4), (4, 4)]
    for mid, name, robust in models:
        for lid, (cin, cout) in enumerate(shapes):
            n = cin * cout
            blocks.append(rng.standard_normal((n, 3, 3)).astype(np.float32))
            rows.append({"model_id": mid, "conv_depth": lid, "conv_depth_norm": float(lid), "layer_id": lid,
                         "filter_ids": f"{start}:{start + n - 1}", "in_channels": cin, "out_channels": cout,
                         "model": name, "Name": name, "Robust": robust, "Training-Dataset": "cifar10",
                         "Clean Accuracy": 90.5, "producer": "pytorch"})
            start += n
    if filter_ids is not None:
        for row, ids in zip(rows, filter_ids):
            row["filter_ids"] = ids
    filters = np.concatenate(blocks)
    with h5py.File(path, "w") as f:
        f.create_dataset("filters", data=filters)
    meta = pd.DataFrame(rows).set_index(["model_id", "conv_depth", "conv_depth_norm", "layer_id"])
    for c in ("filter_ids", "model", "Name", "Training-Dataset", "producer"):
        meta[c] = meta[c].astype(object)  # as older pandas wrote them: pickled object columns
    if object_extra is not None:
        meta["producer"] = pd.Series([object_extra] + ["pytorch"] * (len(meta) - 1), index=meta.index, dtype=object)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PerformanceWarning: pickled object columns, on purpose
        meta.to_hdf(path, key="meta", mode="a", format="fixed")
    return filters


def write_cifar_python(path: Path, batch_payload=None) -> None:
    """A tiny ``cifar-10-python.tar.gz`` (10 images per batch), as the official pickles; with
    ``batch_payload`` the first training batch is that object pickled instead."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        for name in names:
            if name == "batches.meta":
                obj = {b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer",
                                                             "dog", "frog", "horse", "ship", "truck")]}
            elif name == "data_batch_1" and batch_payload is not None:
                obj = batch_payload
            else:
                obj = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                       b"labels": list(range(10)), b"batch_label": name.encode()}
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
