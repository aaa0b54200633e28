"""Benchmark: ``filterlens compare`` against the notebooks' route for the distribution shift.

Prints figures; asserts nothing. Same zoo as ``bench_extract_dask.py`` (its generator: 20 ONNX
files, ~3.3 M 3x3 filters), with metadata added: models ``i % 4 < 2`` adversarially trained,
the others normal, CIFAR-10 and CIFAR-100 in alternate blocks of four, and ten pairs (robust
``i`` with normal ``i + 2``: same graph, same dataset), written in the paper's pairs format.

Set-up (untimed, once): the paper's storage, made by its own pipeline
(onnxzoo2filterdb ``create_filter_storage.py`` + ``extract_filters.py``, through
``bench_extract_dask.run_paper``) and the ``generate_filter_db.ipynb`` cell that adds the
``meta`` table to its ``dataset.h5``; the filterlens database of the same models
(``filterlens extract ... --meta``).

Timed, each a fresh process, ``--repeat`` times interleaved (whole-process wall time; peak RSS
summed over the process tree, psutil every 10 ms, ``bench_extract_dask.run_measured``):

1. ``notebooks``: the notebooks' code cells for the shift, as written, run with a Python of the
   paper's era (``--peer-python``: pandas 1.5, numpy 1.26, scikit-learn 1.5) by
   ``scripts/paper_reference.py``'s cell runner: sparsity.ipynb cells 1-4, 8, 10, 11 (the
   sparse filters, written into the file), then pca.ipynb cells 0, 2, 4-6, 8-13, 16 (scaled
   filters, the shared PCA basis) and 34-36, 40-43 (projection, range, histograms, KL per
   dataset and per depth bin), on a fresh copy of the file (the cells write into it; the copy
   is made before the clock starts).
2. ``compare``: ``filterlens compare --db DB --pairs PAIRS --format json --out FILE`` (defaults
   otherwise: the paper's procedure, 10,000 bootstrap resamples, all statistics).

Then the shift numbers of both (per dataset, and per depth bin with the first layer) are set
side by side: the largest absolute difference is printed (expected <= 1e-9).

    python benchmarks/bench_compare.py [--models 20] [--workdir /tmp/fl_bench13] [--repeat 3]
        [--peer-python /tmp/refenv2/bin/python] [--lens DIR] [--paper-repo DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LENS = Path(tempfile.gettempdir()) / "filterlens_peers" / "cvpr22w_RobustnessThroughTheLens"
SPARSITY_CELLS = [1, 2, 3, 4, 8, 10, 11]
PCA_CELLS = [0, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 16, 34, 35, 36, 40, 41, 42, 43]


# --------------------------------------------------------------------------------------------
# the notebooks' route (runs in the peer Python: ``--notebook-shift DIR``)


def notebook_shift(folder: Path, lens: Path, out: Path) -> None:
    """The notebooks' shift cells on ``folder/dataset.h5`` (modified in place); writes their values."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from paper_reference import _stub_modules, cells, run

    _stub_modules()
    os.chdir(folder)  # the notebooks read robust_vs_normal_pairings.csv from the working directory
    printed: list[tuple] = []
    for nb, order in (("sparsity.ipynb", SPARSITY_CELLS), ("pca.ipynb", PCA_CELLS)):
        src = cells(lens / nb)
        ns = {"print": lambda *a, **k: printed.append(a), "__name__": "__notebook__"}
        for i in order:
            if nb == "pca.ipynb" and i == 41:
                printed.clear()
            if nb == "pca.ipynb" and i == 42:
                kl_by_dataset = {str(d): float(k) for d, k in printed}  # what cell 41 printed
            code = src[i]
            run(f"dataset_path = {str(folder / 'dataset.h5')!r}" if code.startswith("dataset_path =") else code, ns)
    by_depth = {str(k): [float(v) for v in vals] for k, vals in ns["dataset_depth_kl_dict"].items()}
    out.write_text(json.dumps({"kl_by_dataset": kl_by_dataset, "kl_by_depth_lists": by_depth}))


# --------------------------------------------------------------------------------------------
# set-up


def model_meta(names: list[str]) -> tuple[list[dict], list[dict]]:
    """Per model (robust, dataset, accuracies) and the pairs, from the model's position."""
    rows, pairs = [], []
    for i, name in enumerate(names):
        robust = i % 4 < 2
        dataset = "cifar10" if (i // 4) % 2 == 0 else "cifar100"
        rows.append({"name": name, "robust": robust, "dataset": dataset, "clean": 0.9 - 0.01 * i,
                     "robust_acc": 0.5 - 0.01 * i if robust else 0.0})
        if robust and i + 2 < len(names):
            pairs.append({"Robust": name, "Normal": names[i + 2], "Arch": name.split("_")[1], "Dataset": dataset})
    return rows, pairs


def setup(args, zoo: Path, work: Path) -> tuple[Path, Path, Path]:
    """The paper's dataset.h5 (with its meta table), the filterlens database, the pairs CSV."""
    import pandas as pd

    import bench_extract_dask as bx
    from make_paper_testdata import notebook_cell

    names = sorted(p.stem for p in (zoo / "onnx").glob("*.onnx"))
    rows, pairs = model_meta(names)
    pairs_csv = work / "robust_vs_normal_pairings.csv"
    pd.DataFrame(pairs).to_csv(pairs_csv)  # unnamed index, as the paper's file
    out = work / "paper_compare"
    h5 = out / "dataset.h5"
    stamp = "\n".join(names)  # the set-up is redone when the zoo changed
    if not (out / "meta_done").exists() or (out / "meta_done").read_text() != stamp:
        # the paper's meta index: the zoo's, plus the columns the notebooks read
        meta = pd.read_csv(zoo / "index.csv").set_index("Name").loc[names].reset_index()
        meta["Robust"] = [r["robust"] for r in rows]
        meta["Training-Dataset"] = [r["dataset"] for r in rows]
        meta["Clean Accuracy"] = [100 * r["clean"] for r in rows]
        meta["Robust Accuracy"] = [100 * r["robust_acc"] for r in rows]
        meta_csv = work / "paper_compare_meta.csv"
        meta.to_csv(meta_csv, index=False)
        repo = bx.paper_checkout(args.paper_repo, Path("/tmp/onnxzoo2filterdb"))
        bx.run_paper(repo, zoo, work, meta=meta_csv, metrics=False, out_name=out.name)
        # generate_filter_db.ipynb's last cell, as written, on this output folder (FilterDataset
        # reads filterinfo.csv and meta.csv there)
        shutil.copy(out / "filter_info.csv", out / "filterinfo.csv")
        shutil.copy(meta_csv, out / "meta.csv")
        pkg = work / "pkg"
        pkg.mkdir(exist_ok=True)
        if not (pkg / "onnxzoo2filterdb").exists():
            (pkg / "onnxzoo2filterdb").symlink_to(repo.resolve(), target_is_directory=True)
        cell = notebook_cell(args.lens / "generate_filter_db.ipynb", "fid_by_mid_with_meta")
        cell = cell.replace('root_path = "/data/output"', f"root_path = {str(work)!r}")
        code = f"import sys; sys.path.insert(0, {str(pkg)!r})\nID = {out.name!r}\n" + cell
        subprocess.run([args.peer_python, "-c", code], check=True, capture_output=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
        (out / "meta_done").write_text(stamp)
    db = work / "db_compare"
    if not (db / "done").exists() or (db / "done").read_text() != stamp:
        shutil.rmtree(db, ignore_errors=True)
        fl_meta = work / "filterlens_meta.csv"
        pd.DataFrame({"model": [r["name"] for r in rows], "dataset": [r["dataset"] for r in rows],
                      "training": ["adversarial" if r["robust"] else "normal" for r in rows],
                      "clean_acc": [r["clean"] for r in rows],
                      "robust_acc": [r["robust_acc"] for r in rows]}).to_csv(fl_meta, index=False)
        subprocess.run([sys.executable, "-m", "filterlens.cli.main", "extract", *sorted(map(str, (zoo / "onnx").glob("*.onnx"))),
                        "--db", str(db), "--meta", str(fl_meta)], check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        (db / "done").write_text(stamp)
    return h5, db, pairs_csv


def shift_difference(ours: dict, theirs: dict) -> tuple[float, int]:
    """Largest |difference| between compare's shift and the notebooks' (per dataset; per depth bin,
    the first layer first, then the observed deciles in order); and how many numbers were compared."""
    diffs = []
    for dataset, kl in theirs["kl_by_dataset"].items():
        rows = [r for r in ours["shift"] if r["dataset"] == dataset]
        diffs.append(abs(next(r["divergence"] for r in rows if r["depth_bin"] == "all") - kl))
        first = [r["divergence"] for r in rows if r["depth_bin"] == "first"]
        bins = [r["divergence"] for r in rows if r["depth_bin"] not in ("all", "first") and r["n_a"] and r["n_b"]]
        mine, nb = first + bins, theirs["kl_by_depth_lists"][dataset]
        if len(mine) != len(nb):
            return float("inf"), 0
        diffs += [abs(a - b) for a, b in zip(mine, nb)]
    return max(diffs), len(diffs)


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fl_bench13"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer-python", default=os.environ.get("FILTERLENS_PEER_PYTHON", "/tmp/refenv2/bin/python"))
    ap.add_argument("--lens", type=Path, default=LENS, help="cvpr22w_RobustnessThroughTheLens checkout")
    ap.add_argument("--paper-repo", default=None, help="onnxzoo2filterdb: a checkout or a bare git dir")
    ap.add_argument("--notebook-shift", type=Path, help=argparse.SUPPRESS)  # internal: the peer process
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.notebook_shift:
        notebook_shift(args.notebook_shift.resolve(), args.lens.resolve(), args.out.resolve())
        return

    sys.path[:0] = [str(HERE), str(ROOT / "scripts")]
    import bench_extract_dask as bx

    args.paper_repo = args.paper_repo or bx.PAPER_GIT
    work = args.workdir
    zoo, counts = bx.ensure_zoo(work, args.models)
    h5, db, pairs_csv = setup(args, zoo, work)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results: dict = {"zoo": counts, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    runs: dict[str, list[dict]] = {"notebooks": [], "compare": []}
    nb_dir, nb_json, fl_json = work / "nb_run", work / "nb_shift.json", work / "compare.json"
    for _ in range(args.repeat):
        shutil.rmtree(nb_dir, ignore_errors=True)
        nb_dir.mkdir()
        shutil.copy(h5, nb_dir / "dataset.h5")  # the cells write into the file: a fresh copy, untimed
        shutil.copy(pairs_csv, nb_dir / "robust_vs_normal_pairings.csv")
        runs["notebooks"].append(bx.run_measured([args.peer_python, str(Path(__file__).resolve()), "--notebook-shift",
                                                  str(nb_dir), "--lens", str(args.lens), "--out", str(nb_json)], env=env))
        runs["compare"].append(bx.run_measured([sys.executable, "-m", "filterlens.cli.main", "compare", "--db", str(db),
                                                "--pairs", str(pairs_csv), "--format", "json", "--out", str(fl_json)],
                                               env=env))
    shutil.rmtree(nb_dir, ignore_errors=True)
    for label, rs in runs.items():
        secs = sorted(r["seconds"] for r in rs)
        results[label] = {"seconds": secs[0], "seconds_median": secs[len(secs) // 2], "seconds_all": secs,
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                          "peak_rss_mb_all": [r["peak_rss_mb"] for r in rs],
                          "load_average_after": [r["load_average"] for r in rs]}
    ours, theirs = json.loads(fl_json.read_text()), json.loads(nb_json.read_text())
    diff, n = shift_difference(ours, theirs)
    results["shift_numbers_compared"] = n
    results["shift_max_abs_difference"] = diff
    results["shift_equal_to_1e-9"] = bool(n > 0 and diff <= 1e-9)
    nb, fl = results["notebooks"], results["compare"]
    results["speedup_compare_vs_notebooks_best"] = round(nb["seconds"] / fl["seconds"], 2)
    results["speedup_compare_vs_notebooks_median"] = round(nb["seconds_median"] / fl["seconds_median"], 2)
    results["rss_ratio_compare_vs_notebooks"] = round(fl["peak_rss_mb"] / nb["peak_rss_mb"], 2)
    results["target_met"] = bool(results["speedup_compare_vs_notebooks_best"] >= 1
                                 and results["rss_ratio_compare_vs_notebooks"] <= 0.5)
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
