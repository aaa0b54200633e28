"""The paper's numbers on a ``dataset.h5``, computed by the paper's own notebook cells.

Runs the code cells of ``sparsity.ipynb``, ``orthogonality.ipynb``, ``pca.ipynb`` and
``correlation.ipynb`` from github.com/paulgavrikov/cvpr22w_RobustnessThroughTheLens, as
written, in the order the authors ran them, on a copy of the file (the notebooks write
``sparse_filter_ids``, ``scaled_filters`` and ``meta_*`` tables into it), and prints the values
as JSON with the keys of ``filterlens reproduce --format json``. Only plotting cells, the cache
load/save of ``pca_dict.cpkl`` and the first-layer correlations (cell 9 of correlation.ipynb,
which fails where a dataset has no 3x3 first layer) are skipped; plotting-only imports
(KDEpy, fast_histogram, colorcet, matplotlib) are stubbed. ``meta_pca`` (read by
correlation.ipynb) is written from ``df_meta["entropy"]`` as orthogonality.ipynb writes
``meta_ortho``.

The few lines that are ours only collect what the notebooks print or plot: the per-dataset KL
(cells 41 and 43 print it), the loop over datasets of cells 46-48 (which index the groups by
position for three datasets), the bin labels of ``dataset_depth_kl_dict`` (cell 44 plots the list
by position), the means of the boxplots' arrays, and the entropy of each ``pca_dict`` entry's
``explained_variance_ratio_`` (science.md, PCA spectrum entropy).

Usage: python scripts/paper_reference.py DATASET.h5 PAIRS.csv --lens /path/to/paper/repo
(needs numpy, pandas 1.x, scipy, h5py, tables, scikit-learn, tqdm, joblib, cloudpickle: see
scripts/make_paper_testdata.py).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

STUBS = ["KDEpy", "fast_histogram", "colorcet", "matplotlib", "matplotlib.pyplot",
         "matplotlib.gridspec", "matplotlib.colors", "boxplots"]


class _Anything(types.ModuleType):
    def __getattr__(self, name):  # any attribute of a stubbed plotting module
        return _Anything(name)

    def __call__(self, *a, **k):
        return _Anything("call")


def _stub_modules() -> None:
    for name in STUBS:
        sys.modules.setdefault(name, _Anything(name))


def cells(nb: Path) -> dict[int, str]:
    data = json.loads(nb.read_text())
    return {i: "".join(c["source"]) for i, c in enumerate(data["cells"]) if c["cell_type"] == "code"}


def run(src: str, ns: dict):
    """exec a cell; return the value of its last expression (as Jupyter shows it)."""
    src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
    tree = ast.parse(src)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), ns)
    if last is not None:
        return eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns)
    return None


def _f(x):
    x = float(x)
    return None if math.isnan(x) else x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("pairs", type=Path)
    ap.add_argument("--lens", type=Path, default=Path(tempfile.gettempdir()) / "filterlens_peers"
                    / "cvpr22w_RobustnessThroughTheLens")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.dataset, args.pairs, args.lens = args.dataset.resolve(), args.pairs.resolve(), args.lens.resolve()
    args.out = args.out.resolve() if args.out else None
    _stub_modules()
    import numpy as np
    import pandas as pd
    import scipy.stats

    work = Path(tempfile.mkdtemp())
    h5 = work / "dataset.h5"
    shutil.copy(args.dataset, h5)
    shutil.copy(args.pairs, work / "robust_vs_normal_pairings.csv")
    os.chdir(work)
    path_line = f"dataset_path = {str(h5)!r}"
    printed: list[tuple] = []

    def fresh() -> dict:
        return {"print": lambda *a, **k: printed.append(a), "__name__": "__notebook__"}

    def notebook(name: str, order: list[int]) -> tuple[dict, dict]:
        src = cells(args.lens / name)
        ns, values = fresh(), {}
        for i in order:
            code = src[i]
            if code.startswith("dataset_path ="):
                code = path_line
            values[i] = run(code, ns)
        return ns, values

    out: dict = {}
    # sparsity.ipynb (cell 5 reads meta_sparsity, which cell 9 writes: skipped on a first run)
    ns, val = notebook("sparsity.ipynb", [1, 2, 3, 4, 6, 8, 9, 10, 11, 13, 14, 18])
    out["sparse_share"] = {"robust": _f(val[13]), "normal": _f(val[14])}
    sparsity_ns = ns
    # orthogonality.ipynb
    ortho_ns, _ = notebook("orthogonality.ipynb", [1, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    # pca.ipynb (14/19: pca_dict cache; 1, 20-23, 29, 32, 37, 39, 44: plots)
    ns, _ = notebook("pca.ipynb", [0, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 25, 26, 28])
    run('df_meta[["entropy"]].to_hdf(dataset_path, "meta_pca")', ns)
    src = cells(args.lens / "pca.ipynb")
    for i in (31, 34, 35, 36, 40):
        run(src[i], ns)
    printed.clear()
    run(src[41], ns)
    out["kl_by_dataset"] = {str(d): _f(k) for d, k in printed}
    # cells 45-48: each model once, grouped by Training-Dataset and Robust (normal first, then robust)
    run(src[45], ns)
    dist = ns["distributions_dataset_robustness"]
    evr = ns["pca_dict"]["full"].explained_variance_ratio_
    once = {}
    for i in range(0, len(dist), 2):
        assert dist.index[i][0] == dist.index[i + 1][0] and not dist.index[i][1] and dist.index[i + 1][1]
        once[str(dist.index[i][0])] = _f(np.sum([evr[c] * ns["kl_sym"](dist[i][c], dist[i + 1][c]) for c in range(9)]))
    out["kl_by_dataset_each_model_once"] = once
    printed.clear()
    run(src[42], ns)
    run(src[43], ns)
    pca_ns = ns
    pd_ = ns["pca_dict"]
    ent = lambda p: _f(scipy.stats.entropy(p.explained_variance_ratio_, base=10))  # noqa: E731
    out["pca_entropy"] = {k: ent(pd_[k]) for k in ("full", "robust", "normal")}
    out["pca_entropy_per_model"] = {str(m): ent(pd_[m]) for m in ns["all_used_model_names"]}
    pairs = ns["df_pairings"]
    flatter = [(r, n) for r, n in zip(pairs.Robust, pairs.Normal)]
    exc = [r for r, n in flatter if not out["pca_entropy_per_model"][r] > out["pca_entropy_per_model"][n]]
    out["pairs_robust_flatter"] = {"count": len(flatter) - len(exc), "of": len(flatter), "exceptions": exc}
    # labels of dataset_depth_kl_dict: cell 42's grouping (observed bins, as pandas gives them)
    kl_depth = {}
    df_meta = ns["df_meta"]
    for dataset in pairs.Dataset.unique():
        df_pairs = pairs[pairs.Dataset == dataset]
        df = df_meta.reset_index().set_index("model").loc[list(df_pairs.Normal.values)]
        df = df[df.conv_depth > 0]
        groups = df.groupby(pd.cut(df["conv_depth_norm"], np.arange(0, 1.0 + 0.10, 0.10))).filter_ids
        labels = [f"({iv.left:.1f}, {iv.right:.1f}]" for iv in groups.apply(np.hstack).index]
        values = ns["dataset_depth_kl_dict"][dataset]
        assert len(values) == len(labels) + 1, (dataset, len(values), labels)
        has_first = (df_meta.reset_index().set_index("model").loc[list(df_pairs.Robust.values)].conv_depth == 0).any()
        kl_depth[str(dataset)] = {"first": _f(values[0]) if has_first else None,
                                  **{lab: _f(v) for lab, v in zip(labels, values[1:])}}
    out["kl_by_depth"] = kl_depth
    out["kl_by_depth_notebook_lists"] = {str(k): [_f(v) for v in vals] for k, vals in ns["dataset_depth_kl_dict"].items()}
    # decile means of the boxplots (cell 19 of sparsity, 32 of pca, 12 of orthogonality): selection by name
    dec: dict = {}
    for ds in pairs.Dataset.unique():
        sel = f"_{ds}_"
        dec[str(ds)] = {}
        for metric, mns in (("sparsity", sparsity_ns), ("variance_entropy", pca_ns), ("orthogonality", ortho_ns)):
            p = mns["df_pairings"]
            groups = {}
            for g, col in (("robust", "Robust"), ("normal", "Normal")):
                agg = mns["agg_by_depth_decile"](p[p[col].str.contains(sel)][col])
                groups[g] = {("first" if not isinstance(k, pd.Interval) else f"({k.left:.1f}, {k.right:.1f}]"):
                             _f(np.mean(v)) for k, v in agg.items() if len(np.atleast_1d(v))}
            dec[str(ds)][metric] = groups
    out["decile_means"] = dec
    # correlation.ipynb (cell 9: first-layer values, fails without a 3x3 first layer)
    printed.clear()
    ns, val = notebook("correlation.ipynb", [1, 3, 4, 5, 7, 8, 10, 11, 13, 14])
    out["spearman"] = {str(d): {"entropy": _f(val[13][d]), "sparsity": _f(val[14][d])} for d in val[13].index}
    text = json.dumps(out, indent=2, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
