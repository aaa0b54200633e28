"""Benchmark: peak memory of importing one large model from a ``dataset.h5``. Prints figures; asserts nothing.

A synthetic file in the published layout (``filters`` N x 3 x 3 float64, a fixed-format ``meta``
table; see bench_reproduce.py) holding ONE model of ``--filters`` filters in 20 layers (the
paper's largest model, WRN-70-16, has about 30 M 3x3 filters). Each route runs in a fresh process;
its peak RSS is that child's ``ru_maxrss``.

(a) filterlens: ``filterlens db import-h5 FILE --db DIR`` (layers read, measured and written a
    batch at a time: :meth:`FilterDB.add_layers`).
(b) baseline, the whole model at once: every layer read into one ``ModelFilters``, measured with
    ``measure_layers`` and stored with :meth:`FilterDB.add` (how the import worked before).

    python benchmarks/bench_import_memory.py [--filters 30000000] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_LAYERS = 20
CLI = "import sys; from filterlens.cli.main import main; sys.exit(main())"

BASELINE = r"""
import sys
import h5py, numpy as np
from filterlens.db import FilterDB
from filterlens.db.h5 import _read_meta
from filterlens.measure import measure_layers
from filterlens.types import ConvLayer, ModelFilters
path, db_path = sys.argv[1], sys.argv[2]
meta, _ = _read_meta(path)
flat = meta.reset_index()
with h5py.File(path, "r") as f:
    ds = f["filters"]
    layers = []
    for _, row in flat.iterrows():
        a, b = map(int, row["filter_ids"].split(":"))
        b += 1  # the published end is inclusive
        c = int(row["out_channels"])
        layers.append(ConvLayer(str(row["layer"]), np.asarray(ds[a:b]).reshape(c, (b - a) // c, 3, 3),
                                conv_depth=int(row["conv_depth"]), conv_depth_norm=float(row["conv_depth_norm"])))
mf = ModelFilters("big", "bench", layers, "h5")
FilterDB.create(db_path).add(mf, {"training": "adversarial"}, measure_layers(mf.layers, None))
"""


def write_dataset(path: Path, n_filters: int, seed: int = 0) -> int:
    """One model of about ``n_filters`` filters in 20 square layers; returns the filter count."""
    import h5py
    import pandas as pd

    rng = np.random.default_rng(seed)
    c = max(1, int(np.sqrt(n_filters // N_LAYERS)))
    layer_n = c * c
    rows = []
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("filters", shape=(N_LAYERS * layer_n, 3, 3), dtype=np.float64,
                              chunks=(min(65536, layer_n), 3, 3))
        for j in range(N_LAYERS):
            for s in range(0, layer_n, 1 << 20):
                e = min(layer_n, s + (1 << 20))
                ds[j * layer_n + s:j * layer_n + e] = rng.standard_normal((e - s, 3, 3)) * 0.1
            rows.append({"model_id": 0, "conv_depth": j, "conv_depth_norm": j / (N_LAYERS - 1), "layer_id": j,
                         "filter_ids": f"{j * layer_n}:{(j + 1) * layer_n - 1}", "model": "big", "layer": f"conv{j}",
                         "in_channels": c, "out_channels": c, "Robust": True, "Training-Dataset": "cifar10"})
    meta = pd.DataFrame(rows).set_index(["model_id", "conv_depth", "conv_depth_norm", "layer_id"])
    meta.to_hdf(path, key="meta", format="fixed")
    return N_LAYERS * layer_n


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``cmd`` in a fresh child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("  (peak RSS of this child not above an earlier child's: run the routes separately)")
    return dt, peak / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=int, default=30_000_000, help="filters of the one model (default 30 M)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_import_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        h5 = work / "dataset.h5"
        n = write_dataset(h5, args.filters)
        print(f"one model, {n:,} filters (float64, {n * 72 / 2**30:.2f} GiB)")
        # the streamed route first: ru_maxrss of children is a running maximum
        t, rss = run([sys.executable, "-c", CLI, "db", "import-h5", str(h5), "--db", str(work / "a.db")])
        print(f"filterlens db import-h5 (streamed)  {t:7.1f} s  peak RSS {rss:7.0f} MiB")
        t0, rss0 = run([sys.executable, "-c", BASELINE, str(h5), str(work / "b.db")])
        print(f"whole model at once (baseline)       {t0:7.1f} s  peak RSS {rss0:7.0f} MiB")
        print(f"baseline / streamed: {rss0 / rss:.1f}x the memory, {t0 / t:.2f}x the time")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
