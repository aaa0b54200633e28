"""Benchmark: the filter database. Prints figures; asserts nothing.

(a) extract: a zoo of generated model files (random-init CIFAR ResNet-20 / small ResNet-14 /
    ResNet-18 state dicts as .pt, and ResNet-20 / ResNet-14 as ONNX) extracted with metrics into
    a new database through the same code as ``filterlens extract`` (architectures from a
    ``--meta`` CSV). Files/s, filters/s, peak RSS; RSS after each model shows whether memory
    grows with the number of models (it should stay at the largest model).
(b) stream: a synthetic database of >= 50 M 3x3 float32 filters (written with ``FilterDB.add``,
    no metrics), then a fresh process streams all of them with ``iter_filters`` and, in the
    same process, reads the same bytes from a local ``.npy`` with numpy in chunks of the same
    size. Filters/s of both, their ratio (target >= 0.5), and peak RSS (target < 1 GB).

Each phase runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own.

    python benchmarks/bench_db.py [--zoo 24] [--filters 50000000] [--workdir DIR] [--phase a|b|all]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# (a) extraction of a zoo


ZOO_KINDS = [  # (arch, format); cycled over the zoo
    ("cifar_resnet20", "pt"), ("cifar_resnet20", "onnx"), ("small_resnet14", "pt"),
    ("small_resnet14", "onnx"), ("cifar_resnet20", "pt"), ("resnet18", "pt"),
]


def make_zoo(zoo: Path, n: int) -> Path:
    """Write ``n`` model files and a metadata CSV naming their architectures; return the CSV."""
    import torch

    from filterlens.archs import create_arch

    zoo.mkdir(parents=True, exist_ok=True)
    rows = ["source,model,arch,training,dataset"]
    for i in range(n):
        arch, fmt = ZOO_KINDS[i % len(ZOO_KINDS)]
        torch.manual_seed(i)
        model = create_arch(arch).eval()
        name = f"m{i:03d}_{arch}"  # sorted by index: every prefix of the zoo has the same mix
        path = zoo / f"{name}.{fmt}"
        if fmt == "pt":
            torch.save(model.state_dict(), path)
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, torch.randn(1, 3, 32, 32), str(path), dynamo=False)
        rows.append(f"{path.name},{name},{arch if fmt == 'pt' else ''},{'adversarial' if i % 2 else 'normal'},cifar10")
    csv = zoo / "meta.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def run_extract(zoo: Path, db_path: Path, limit: int) -> dict:
    """In a fresh process: extract the first ``limit`` files of the zoo."""
    from filterlens.db import FilterDB, MetaTable, extract_sources

    files = sorted(p for p in zoo.iterdir() if p.suffix in (".pt", ".onnx"))[:limit]
    table = MetaTable.read_csv(zoo / "meta.csv")
    db = FilterDB.create(db_path)
    base = rss_now_mb()
    rss, n_filters, failed = [], 0, []
    t0 = time.perf_counter()
    for r in extract_sources(db, map(str, files), meta_table=table):
        if r.status != "added":
            failed.append(r.message)
        n_filters += r.n_filters
        rss.append(round(rss_now_mb()))
    dt = time.perf_counter() - t0
    return {"files": len(files), "seconds": dt, "filters": n_filters, "failed": failed,
            "rss_after_each_mb": rss, "rss_at_start_mb": round(base), "peak_rss_mb": round(peak_rss_mb())}


# --------------------------------------------------------------------------------------------
# (b) streaming a large database


def run_build(db_path: Path, npy: Path, n_filters: int) -> dict:
    """Write a synthetic database of ``n_filters`` 3x3 filters and the same bytes as a .npy."""
    from filterlens.db import FilterDB
    from filterlens.types import ConvLayer, ModelFilters

    per_layer, layers_per_model = 256 * 256, 8
    per_model = per_layer * layers_per_model
    n_models = -(-n_filters // per_model)
    total = n_models * per_model
    db = FilterDB.create(db_path)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (total, 3, 3)})
        for m in range(n_models):
            layers = []
            for j in range(layers_per_model):
                w = rng.standard_normal((256, 256, 3, 3), dtype=np.float32)
                f.write(w.tobytes())
                layers.append(ConvLayer(f"conv{j}", w, conv_depth=j, conv_depth_norm=j / (layers_per_model - 1)))
            db.add(ModelFilters(f"synthetic{m:04d}", "synthetic", layers, "order"),
                   {"training": "adversarial" if m % 2 else "normal"})
    dt = time.perf_counter() - t0
    return {"models": n_models, "filters": total, "seconds": dt, "bytes": total * 36,
            "db_bytes": sum(p.stat().st_size for p in db_path.rglob("*") if p.is_file())}


def run_stream(db_path: Path, npy: Path, repeat: int) -> dict:
    """In a fresh process: stream every filter from the database, then the .npy, same chunks."""
    from filterlens.db import FilterDB

    db = FilterDB.open(db_path)

    def db_pass(chunk_size=None):
        n, s, chunks = 0, 0.0, 0
        for chunk in db.iter_filters(chunk_size=chunk_size):
            f = chunk.filters
            s += float(f[:, 1, 1].sum())  # touch the data
            n += f.shape[0]
            chunks += 1
        return n, s, chunks

    db_pass()  # warm the page cache
    times, rows, chunk_rows = [], 0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows, s_db, chunks = db_pass()
        times.append(time.perf_counter() - t0)
    chunk_rows = rows // chunks
    peak_db = peak_rss_mb()
    t_fixed = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        db_pass(chunk_size=1 << 20)
        t_fixed.append(time.perf_counter() - t0)
    peak_db_fixed = peak_rss_mb()

    def npy_pass(chunk):
        n, s = 0, 0.0
        with open(npy, "rb") as fh:
            np.lib.format.read_magic(fh)
            np.lib.format.read_array_header_1_0(fh)
            while True:
                a = np.fromfile(fh, dtype=np.float32, count=chunk * 9)
                if a.size == 0:
                    break
                f = a.reshape(-1, 3, 3)
                s += float(f[:, 1, 1].sum())
                n += f.shape[0]
        return n, s

    npy_pass(chunk_rows)
    t_npy, t_npy_big = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n_npy, s_npy = npy_pass(chunk_rows)
        t_npy.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        npy_pass(1 << 20)
        t_npy_big.append(time.perf_counter() - t0)
    return {"filters": rows, "chunks": chunks, "chunk_rows": chunk_rows, "same_sum": s_db == s_npy and rows == n_npy,
            "db_s": min(times), "db_fixed_1M_s": min(t_fixed), "npy_s": min(t_npy), "npy_1M_s": min(t_npy_big),
            "peak_rss_db_mb": round(peak_db), "peak_rss_db_fixed_chunks_mb": round(peak_db_fixed),
            "peak_rss_total_mb": round(peak_rss_mb())}


# --------------------------------------------------------------------------------------------


def in_subprocess(phase: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--run", phase, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=int, default=24, help="number of model files in (a)")
    ap.add_argument("--filters", type=int, default=50_000_000, help="filters in the synthetic database of (b)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--phase", default="all", choices=["a", "b", "all"])
    ap.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)")
    ap.add_argument("--run", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.run:
        phase, *rest = args.run
        if phase == "zoo":
            make_zoo(Path(rest[0]), int(rest[1]))
            result = {}
        elif phase == "extract":
            result = run_extract(Path(rest[0]), Path(rest[1]), int(rest[2]))
        elif phase == "build":
            result = run_build(Path(rest[0]), Path(rest[1]), int(rest[2]))
        else:
            result = run_stream(Path(rest[0]), Path(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_db_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.phase in ("a", "all"):
            zoo = work / "zoo"
            if not (zoo / "meta.csv").exists():
                in_subprocess("zoo", str(zoo), str(args.zoo))
            print(f"(a) extract + metrics of a zoo of {args.zoo} files (.pt state dicts with --arch from a meta CSV, "
                  "and ONNX)")
            for limit in (args.zoo // 2, args.zoo):
                db = work / f"zoo_db_{limit}"
                shutil.rmtree(db, ignore_errors=True)
                r = in_subprocess("extract", str(zoo), str(db), str(limit))
                print(f"    {r['files']:3d} files: {r['seconds']:.1f} s, {r['files'] / r['seconds']:.2f} files/s, "
                      f"{r['filters'] / r['seconds']:,.0f} filters/s, {r['filters']:,} filters, "
                      f"peak RSS {r['peak_rss_mb']} MB (at start {r['rss_at_start_mb']} MB)")
                print(f"        RSS after each model (MB): {r['rss_after_each_mb']}")
                for msg in r["failed"]:
                    print(f"        failed: {msg}")
        if args.phase in ("b", "all"):
            db, npy = work / "big_db", work / "big.npy"
            if not (db / "manifest.json").exists():
                shutil.rmtree(db, ignore_errors=True)
                r = in_subprocess("build", str(db), str(npy), str(args.filters))
                print(f"(b) built a database of {r['filters']:,} 3x3 filters in {r['models']} models: "
                      f"{r['seconds']:.1f} s ({r['filters'] / r['seconds'] / 1e6:.2f} M filters/s written, with "
                      f"sha256 and fsync); {r['db_bytes'] / 2**30:.2f} GiB on disk for {r['bytes'] / 2**30:.2f} GiB "
                      "of filters")
            r = in_subprocess("stream", str(db), str(npy), str(args.repeat))
            rate = r["filters"] / r["db_s"]
            rate_fixed = r["filters"] / r["db_fixed_1M_s"]
            rate_npy = r["filters"] / r["npy_s"]
            rate_npy_1m = r["filters"] / r["npy_1M_s"]
            print(f"(b) streaming all {r['filters']:,} filters (best of {args.repeat}, page cache warm):")
            print(f"    FilterDB.iter_filters()               {rate / 1e6:7.1f} M filters/s  "
                  f"({r['chunks']} chunks of ~{r['chunk_rows']:,})  peak RSS {r['peak_rss_db_mb']} MB")
            print(f"    FilterDB.iter_filters(chunk_size=2^20) {rate_fixed / 1e6:7.1f} M filters/s  "
                  f"peak RSS {r['peak_rss_db_fixed_chunks_mb']} MB")
            print(f"    numpy .npy, same chunk size           {rate_npy / 1e6:7.1f} M filters/s")
            print(f"    numpy .npy, chunks of 2^20            {rate_npy_1m / 1e6:7.1f} M filters/s")
            print(f"    ratio db / numpy (same chunks): {rate / rate_npy:.2f}   (2^20 chunks: {rate_fixed / rate_npy_1m:.2f})"
                  f"   identical data: {r['same_sum']}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
