"""Benchmark: ``filterlens reproduce`` against the paper's notebook route. Prints figures; asserts nothing.

A synthetic ``dataset.h5`` in the published layout (``filters`` N x 3 x 3 float64 as the paper's
extractor writes them; ``meta`` a fixed-format pandas table indexed by ``model_id, conv_depth,
conv_depth_norm, layer_id`` with ``filter_ids`` as ``start:end`` text and the meta.csv columns),
models of ``--model-filters`` filters each in 20 layers, sparse filters mixed in, half robust and
half normal, a pairs CSV in the paper's format where normal models serve several pairs.

(a) filterlens: ``filterlens reproduce FILE --pairs PAIRS --format json`` in a fresh process,
    twice: the first run imports (model by model) and computes, the second reuses the
    database. Wall time and the process's peak RSS (``ru_maxrss`` of that child) each.
(b) the notebook route: ``scripts/paper_reference.py`` (the code cells of sparsity.ipynb,
    orthogonality.ipynb, pca.ipynb and correlation.ipynb) on a file of ``--notebook-filters``
    filters (they load every filter into memory, several copies: run them only where they fit),
    and filterlens on that same file. Needs ``--peer-python`` (pandas 1.5, numpy 1.26,
    scikit-learn, see scripts/make_paper_testdata.py) and ``--lens`` (the paper's repository).

    python benchmarks/bench_reproduce.py [--filters 100000000] [--notebook-filters 5000000]
        [--model-filters 1000000] [--workdir DIR] [--peer-python PY] [--lens DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS = 20


def write_dataset(path: Path, n_filters: int, model_filters: int, seed: int = 0) -> tuple[int, Path, int]:
    """The synthetic file and its pairs CSV; returns (models, pairs path, filters). Streams the filters.

    At least two models of ``model_filters`` filters each: the file may hold more than ``n_filters``."""
    import h5py
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_models = max(2, n_filters // model_filters)
    per_layer = model_filters // N_LAYERS
    c = max(1, int(np.sqrt(per_layer)))
    layer_n = c * c  # out_channels = in_channels = c
    rows, start = [], 0
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("filters", shape=(n_models * N_LAYERS * layer_n, 3, 3), dtype=np.float64,
                              chunks=(min(65536, layer_n), 3, 3))
        for m in range(n_models):
            robust = m % 2 == 0
            dset = "cifar10" if m % 4 < 2 else "cifar100"
            name = (f"robustbench_M{m:04d}_{dset}_linf_13" if robust
                    else f"hso_normal_training_robustbench_M{m:04d}_{dset}_13")
            for layer in range(N_LAYERS):
                w = rng.standard_normal((layer_n, 3, 3))
                w[:, 1, 1] += 1.5 if robust else 0.0  # a little structure: centre-weighted robust filters
                sparse = rng.random(layer_n) < (0.1 if robust else 0.4)
                w[sparse] *= 1e-3
                ds[start:start + layer_n] = w
                rows.append({"model_id": m, "conv_depth": layer, "conv_depth_norm": layer / (N_LAYERS - 1),
                             "layer_id": layer, "layer_depth": 2 * layer + 1, "in_channels": c, "out_channels": c,
                             "filter_ids": f"{start}:{start + layer_n - 1}", "model": name, "Name": name,
                             "Robust": robust, "Training-Dataset": dset,
                             "Clean Accuracy": 80.0 + rng.random() * 10, "Robust Accuracy": 40.0 + rng.random() * 20,
                             "Network": "WRN", "Backbone": "WideResNet-28-10"})
                start += layer_n
    meta = pd.DataFrame(rows).set_index(["model_id", "conv_depth", "conv_depth_norm", "layer_id"])
    for col in ("filter_ids", "model", "Name", "Training-Dataset", "Network", "Backbone"):
        meta[col] = meta[col].astype(object)  # pickled object columns, as the paper's file has them
    meta.to_hdf(path, key="meta", mode="a", format="fixed")
    # pairs: each normal model serves the robust model before it and, every other time, one more
    pairs = []
    for m in range(1, n_models, 2):
        normal = rows[m * N_LAYERS]["model"]
        ds_name = rows[m * N_LAYERS]["Training-Dataset"]
        for r in (m - 1, m + 1):
            if r < n_models and rows[r * N_LAYERS]["Training-Dataset"] == ds_name and (r == m - 1 or m % 4 == 1):
                pairs.append({"Robust": rows[r * N_LAYERS]["model"], "Normal": normal, "Arch": "WRN", "Dataset": ds_name})
    pairs_path = path.with_name(path.stem + "_pairs.csv")
    pd.DataFrame(pairs).to_csv(pairs_path)
    return n_models, pairs_path, start


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; return (seconds, peak RSS in MiB of that process tree's largest member, stdout)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    out, err = proc.communicate()
    secs = time.perf_counter() - t
    # wait4 is gone after communicate; children's max RSS is the max over all children so far
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{err[-2000:]}")
    return secs, peak, out


def filterlens_cmd(h5: Path, pairs: Path, db: Path) -> list[str]:
    return [sys.executable, "-c", "from filterlens.cli.main import main; main()", "reproduce", str(h5), "--pairs",
            str(pairs), "--db", str(db), "--format", "json", "--no-report", "-q"]


def measure_one(cmd: list[str]) -> tuple[float, float, str]:
    """Each measurement in its own runner process, so RUSAGE_CHILDREN is that command's alone."""
    code = ("import json,sys,subprocess,time,resource,os;t=time.perf_counter();"
            "p=subprocess.run(sys.argv[1:],capture_output=True,text=True,env={**os.environ,'OMP_NUM_THREADS':'1'});"
            "s=time.perf_counter()-t;r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024;"
            "print(json.dumps({'s':s,'rss':r,'rc':p.returncode,'out':p.stdout[-200000:],'err':p.stderr[-3000:]}))")
    res = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    data = json.loads(res.stdout)
    if data["rc"]:
        raise SystemExit(f"failed: {' '.join(cmd[:4])}\n{data['err']}")
    return data["s"], data["rss"], data["out"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--filters", type=int, default=100_000_000, help="filters of the large file (default 100 M)")
    ap.add_argument("--notebook-filters", type=int, default=5_000_000,
                    help="filters of the file both routes run on (the notebooks hold all of them in memory)")
    ap.add_argument("--model-filters", type=int, default=1_000_000, help="filters per model")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--peer-python", default=os.environ.get("FILTERLENS_PEER_PYTHON"))
    ap.add_argument("--lens", type=Path, default=Path(tempfile.gettempdir()) / "filterlens_peers"
                    / "cvpr22w_RobustnessThroughTheLens")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_reproduce_"))
    work.mkdir(parents=True, exist_ok=True)
    report = {}
    try:
        # (b) both routes on the same smaller file
        small = work / "small.h5"
        t = time.perf_counter()
        n_small, small_pairs, n_small_filters = write_dataset(small, args.notebook_filters, args.model_filters, seed=1)
        print(f"small file: {n_small_filters / 1e6:.1f} M filters, {n_small} models, "
              f"{small.stat().st_size / 2**30:.2f} GiB, written in {time.perf_counter() - t:.0f} s", flush=True)
        s1, r1, out1 = measure_one(filterlens_cmd(small, small_pairs, work / "small.filterdb"))
        s2, r2, out2 = measure_one(filterlens_cmd(small, small_pairs, work / "small.filterdb"))
        report["small"] = {"filters": n_small_filters, "filterlens_import_and_compute_s": s1,
                           "filterlens_import_and_compute_rss_mib": r1, "filterlens_reuse_s": s2,
                           "filterlens_reuse_rss_mib": r2}
        print(f"filterlens (import + compute): {s1:.1f} s, peak RSS {r1:.0f} MiB; reusing the database: "
              f"{s2:.1f} s, {r2:.0f} MiB", flush=True)
        if args.peer_python and args.lens.is_dir():
            ref = work / "notebooks.json"
            s3, r3, _ = measure_one([args.peer_python, str(ROOT / "scripts" / "paper_reference.py"), str(small),
                                     str(small_pairs), "--lens", str(args.lens), "--out", str(ref)])
            ours, theirs = json.loads(out2), json.loads(ref.read_text())
            diff = max(abs(ours["kl_by_dataset"][d] - theirs["kl_by_dataset"][d]) for d in theirs["kl_by_dataset"])
            report["small"].update({"notebooks_s": s3, "notebooks_rss_mib": r3, "max_kl_diff": diff})
            print(f"notebook route: {s3:.1f} s, peak RSS {r3:.0f} MiB; time ratio notebook/filterlens(reuse) "
                  f"{s3 / s2:.2f}, (import+compute) {s3 / s1:.2f}; RSS ratio {r3 / max(r1, r2):.1f}; "
                  f"max |KL difference| {diff:.2e}", flush=True)
        else:
            print("notebook route skipped: give --peer-python and --lens", flush=True)
        if not args.keep:
            shutil.rmtree(work / "small.filterdb", ignore_errors=True)
            small.unlink()
        # (a) filterlens alone on the large file
        big = work / "big.h5"
        t = time.perf_counter()
        n_big, big_pairs, n_big_filters = write_dataset(big, args.filters, args.model_filters, seed=2)
        print(f"large file: {n_big_filters / 1e6:.0f} M filters, {n_big} models, {big.stat().st_size / 2**30:.1f} GiB, "
              f"written in {time.perf_counter() - t:.0f} s", flush=True)
        s1, r1, _ = measure_one(filterlens_cmd(big, big_pairs, work / "big.filterdb"))
        s2, r2, _ = measure_one(filterlens_cmd(big, big_pairs, work / "big.filterdb"))
        report["large"] = {"filters": n_big_filters, "model_filters": args.model_filters, "filterlens_import_and_compute_s": s1,
                           "filterlens_import_and_compute_rss_mib": r1, "filterlens_reuse_s": s2,
                           "filterlens_reuse_rss_mib": r2}
        print(f"filterlens on {n_big_filters / 1e6:.0f} M filters: import + compute {s1:.0f} s, peak RSS {r1:.0f} MiB; "
              f"reusing the database {s2:.0f} s ({n_big_filters / s2 / 1e6:.2f} M filters/s), peak RSS {r2:.0f} MiB "
              f"(target < 2048 MiB: {'met' if max(r1, r2) < 2048 else 'MISSED'})", flush=True)
        print(f"notebook route on {n_big_filters / 1e6:.0f} M filters: dX alone is "
              f"{n_big_filters * 72 / 2**30:.1f} GiB (float64), plus scaled_filters and dX_trans of the same size",
              flush=True)
    finally:
        print(json.dumps(report, indent=2))
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
