"""Benchmark: extracting a zoo, the paper's pipeline vs ``filterlens extract`` (serial and on Dask).

Prints figures; asserts nothing. All runs happen in this script, one after another, each as a
fresh process (whole-process wall time, imports and cluster start included) whose peak RSS is
the peak of the *sum* over its process tree (pool workers and Dask workers count), sampled
every 10 ms.

Zoo: ``--models`` (default 20) ONNX files generated with ``onnx.helper`` (no torch), random
weights, alternating CIFAR ResNet-20-like graphs (3x3 convs 16/32/64 wide, 1x1 projection
shortcuts) and WRN-16-4-like graphs (64/128/256 wide), about 3.3 M 3x3 filters for 20 models.
The same weights are also written as ``.safetensors`` checkpoints for a mixed-zoo run.

Runs:

1. ``paper``: github:paulgavrikov/onnxzoo2filterdb, fetched into /tmp (``--paper-repo``, a
   checkout or a bare git dir): ``create_filter_storage.py`` (ONNX -> pickled frames, its own
   Pool(32)), then ``extract_filters.py`` (-> filter-info CSV + ``dataset.h5``), then the
   per-layer metric formulas of github:paulgavrikov/cvpr22w_RobustnessThroughTheLens's
   notebooks (sparsity.ipynb, pca.ipynb ``entropy_cond``, orthogonality.ipynb ``ortho_cond``)
   over that ``dataset.h5``, run in one process without joblib. tqdm is replaced by a no-op
   where it is not installed (that only helps the baseline).
2. ``serial``: ``filterlens extract ZOO/*.onnx --db NEW``.
3. ``workers2``: the same with ``--workers 2`` (local Dask cluster start included).
4. ``mixed``: ``filterlens extract`` serial over the ONNX and safetensors halves of the zoo.
5. ``--help``: ``filterlens --help``, best and median of 5.

Each pipeline runs ``--repeat`` times (default 3), interleaved; the best and the median times
are reported, with the 1-minute load average after each run (the machine may be shared). The
paper's extraction steps alone (without the notebooks' metrics) are also set against
filterlens, which computes the metrics too.

    python benchmarks/bench_extract_dask.py [--models 20] [--workdir /tmp/fl_bench13] [--paper-repo DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _proc  # noqa: E402

PAPER_GIT = "/work/.mirror/paulgavrikov+onnxzoo2filterdb/repo"


# --------------------------------------------------------------------------------------------
# the zoo


def _graph(kind: str, seed: int):
    """Conv weights and nodes of a ResNet-20-like (``rn20``) or WRN-16-4-like (``wrn``) net."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, weights = [], [], {}
    counter = [0]

    def conv(x, cin, cout, k=3, stride=1):
        i = counter[0]
        counter[0] += 1
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        name = f"conv{i}"
        weights[f"{name}.weight"] = w
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight"], [f"{name}_out"], name=name,
                                      kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride]))
        return f"{name}_out"

    def relu(x):
        nodes.append(helper.make_node("Relu", [x], [f"{x}_relu"]))
        return f"{x}_relu"

    def add(a, b):
        out = f"{a}_plus"
        nodes.append(helper.make_node("Add", [a, b], [out]))
        return out

    widths, blocks = ((16, 32, 64), 3) if kind == "rn20" else ((64, 128, 256), 2)
    x = relu(conv("input", 3, 16))
    cin = 16
    for s, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            h = relu(conv(x, cin, width, 3, stride))
            h = conv(h, width, width)
            short = conv(x, cin, width, 1, stride) if (cin != width or stride != 1) else x
            x = relu(add(h, short))
            cin = width
    return nodes, inits, weights, x


def make_zoo(zoo: Path, n: int) -> dict:
    """``n`` ONNX files (and the same weights as safetensors); returns counts."""
    import onnx
    from onnx import TensorProto, helper
    from safetensors.numpy import save_file

    (zoo / "onnx").mkdir(parents=True, exist_ok=True)
    (zoo / "st").mkdir(parents=True, exist_ok=True)
    n3 = 0
    rows = []
    for i in range(n):
        kind = "rn20" if i % 2 == 0 else "wrn"
        name = f"m{i:03d}_{kind}"
        nodes, inits, weights, out = _graph(kind, i)
        g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 64 if kind == "rn20" else 256, 8, 8])],
                              inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="bench")
        onnx.save(model, zoo / "onnx" / f"{name}.onnx")
        save_file(weights, str(zoo / "st" / f"{name}.safetensors"))
        n3 += sum(w.shape[0] * w.shape[1] for w in weights.values() if w.shape[2:] == (3, 3))
        rows.append(name)
    # the paper's meta index (create_filter_storage.py checks these columns)
    cols = ["Name", "Paper", "Framework", "Visual Category", "Precision", "Conv Weight Initializer", "Optimizer",
            "Task", "Training", "Datatype", "Selection"]
    lines = [",".join(cols)] + [",".join([r, "bench", "onnx", "natural", "fp32", "random", "sgd", "cifar10",
                                          "normal", "cifar10", "1"]) for r in rows]
    (zoo / "index.csv").write_text("\n".join(lines) + "\n")
    return {"models": n, "filters_3x3": int(n3)}


def ensure_zoo(work: Path, n: int) -> tuple[Path, dict]:
    """``work/zoo`` with ``n`` models, generated unless already there; returns (zoo, counts)."""
    zoo = work / "zoo"
    if not (zoo / "index.csv").exists() or len(list((zoo / "onnx").glob("*.onnx"))) != n:
        shutil.rmtree(zoo, ignore_errors=True)
        return zoo, make_zoo(zoo, n)
    return zoo, {"models": n, "filters_3x3": None}


# --------------------------------------------------------------------------------------------
# measuring a command


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Wall time and peak RSS (summed over the process tree) of ``cmd``; exits if it fails."""
    m = _proc.run_measured(cmd, env=env, cwd=cwd)
    if m.returncode != 0:
        Path("/tmp/bench_extract_dask.err").write_text(m.stderr)
        sys.stderr.write(m.stderr[-3000:])
        raise SystemExit(f"failed ({m.returncode}): {' '.join(cmd)}")
    return {"seconds": round(m.seconds, 3), "peak_rss_mb": round(m.peak_rss / 2**20),
            "load_average": round(os.getloadavg()[0], 1)}


# --------------------------------------------------------------------------------------------
# the paper's pipeline


NOTEBOOK_METRICS = textwrap.dedent('''
    # The per-layer formulas of cvpr22w_RobustnessThroughTheLens (sparsity.ipynb, pca.ipynb,
    # orthogonality.ipynb), over the outputs of onnxzoo2filterdb's extract_filters.py.
    import sys
    import h5py, numpy as np, pandas as pd, scipy.stats

    out = sys.argv[1]
    with h5py.File(out + "/dataset.h5", "r") as f:
        dX = f["filters"][:].reshape(-1, 9)
    df_meta = pd.read_csv(out + "/filter_info.csv")
    df_meta["filter_ids"] = [np.arange(a, b) for a, b in zip(df_meta.filter_id_start, df_meta.filter_id_end)]

    # sparsity.ipynb
    df_meta["layer_norm"] = [np.abs(dX[row.filter_ids]).max() for _, row in df_meta.iterrows()]
    df_meta["layer_sparse_filters"] = [(np.linalg.norm(dX[row.filter_ids], np.inf, axis=1) <= row.layer_norm / 100).sum() for _, row in df_meta.iterrows()]
    df_meta["layer_num_filters"] = [len(row.filter_ids) for _, row in df_meta.iterrows()]
    df_meta["layer_sparse_share"] = df_meta["layer_sparse_filters"] / df_meta["layer_num_filters"]
    sparse_filter_ids = np.hstack([row.filter_ids[(np.linalg.norm(dX[row.filter_ids], np.inf, axis=1) <= row.layer_norm / 100)] for _, row in df_meta.iterrows()])

    # orthogonality.ipynb (raw filters)
    def ortho_cond(W):
        n = W.shape[0]
        t = np.expand_dims(np.linalg.norm(W, axis=1), axis=1)
        t[t == 0] = 1
        W = W / t
        c = np.abs(W.dot(W.T) - np.eye(n)).sum() / (n*(n-1))
        return 1 - c
    df_meta["ortho"] = [ortho_cond(dX[ids].reshape(n, -1)) for ids, n in zip(df_meta.filter_ids, df_meta.out_channels)]

    # pca.ipynb (scaled filters, sparse ones left out)
    def scale(X):
        den = np.linalg.norm(X, np.inf, axis=1)
        den = np.where(den == 0, 1, den)[:, None]
        return X / den
    dX = scale(dX)
    sparse_ids = set(sparse_filter_ids)
    df_meta["filter_ids"] = df_meta["filter_ids"].apply(lambda s: list(set(s) - sparse_ids))
    def entropy_cond(w):
        u, s, v_h = np.linalg.svd(w - w.mean(axis=0), full_matrices=False, compute_uv=True)
        v = s**2 / (w.shape[0]-1)
        return scipy.stats.entropy(v, base=10)
    df_meta["entropy"] = [entropy_cond(dX[ids]) for ids in df_meta.filter_ids]
    df_meta.drop(columns=["filter_ids"]).to_csv(out + "/layer_metrics.csv", index=False)
''')


def paper_checkout(src: str, dest: Path) -> Path:
    if (Path(src) / "create_filter_storage.py").exists():
        return Path(src)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(f"git --git-dir={src} archive HEAD | tar -x -C {dest}", shell=True, check=True)
    return dest


def run_paper(repo: Path, zoo: Path, work: Path, meta: Path | None = None, metrics: bool = True,
              out_name: str = "paper_out") -> dict:
    """The paper's pipeline into ``work/out_name`` (``meta``: its meta index, default the zoo's;
    ``metrics=False``: the two extraction scripts only)."""
    out = work / out_name
    meta = meta or zoo / "index.csv"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shim = work / "shim"
    shim.mkdir(exist_ok=True)
    try:
        import tqdm  # noqa: F401
    except ImportError:
        (shim / "tqdm.py").write_text("class tqdm:\n    def __init__(self, it=None, **kw): self.it = it\n"
                                      "    def __iter__(self): return iter(self.it)\n"
                                      "    def update(self, n=1): pass\n    def close(self): pass\n")
    script = work / "paper_pipeline.sh"
    metrics_py = work / "notebook_metrics.py"
    metrics_py.write_text(NOTEBOOK_METRICS)
    stamps = work / "paper_steps.txt"
    script.write_text(
        f"set -e\nexport PYTHONPATH={shim}:{repo}\ncd {repo}\ndate +%s.%N > {stamps}\n"
        f"{sys.executable} create_filter_storage.py {zoo / 'onnx'} {meta} {out} --split_after 1000\n"
        f"date +%s.%N >> {stamps}\n"
        f"{sys.executable} extract_filters.py {out} {out / 'datastorage.meta.csv'} {out / 'filter_info.csv'} {out}\n"
        f"date +%s.%N >> {stamps}\n"
        + (f"{sys.executable} {metrics_py} {out}\ndate +%s.%N >> {stamps}\n" if metrics else ""))
    result = run_measured(["bash", str(script)])
    if not metrics:
        return result
    t = [float(x) for x in stamps.read_text().split()]
    result["steps_seconds"] = {"create_filter_storage": round(t[1] - t[0], 2), "extract_filters": round(t[2] - t[1], 2),
                               "notebook_metrics": round(t[3] - t[2], 2)}
    info = __import__("pandas").read_csv(out / "layer_metrics.csv")
    result["layers"] = len(info)
    result["filters_3x3"] = int((info.filter_id_end - info.filter_id_start).sum())
    result["models"] = int(info.model.nunique())
    return result


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fl_bench13"))
    ap.add_argument("--paper-repo", default=PAPER_GIT, help="onnxzoo2filterdb: a checkout or a bare git dir")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each pipeline, interleaved; the best and "
                    "the median are reported (the machine is shared: single runs are noisy)")
    args = ap.parse_args()

    work = args.workdir
    zoo, counts = ensure_zoo(work, args.models)
    onnx_files = sorted(map(str, (zoo / "onnx").glob("*.onnx")))
    st_files = sorted(map(str, (zoo / "st").glob("*.safetensors")))
    mixed = [f for i, f in enumerate(onnx_files) if i % 2 == 0] + [f for i, f in enumerate(st_files) if i % 2 == 1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    fl = [sys.executable, "-m", "filterlens.cli.main"]
    results: dict = {"zoo": counts, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}

    # warm the numba cache once (a warm install), untimed
    subprocess.run(fl + ["metrics", onnx_files[0], "--summary"], env=env, check=True, capture_output=True)

    runs: dict[str, list[dict]] = {}
    repo = None if args.skip_paper else paper_checkout(args.paper_repo, Path("/tmp/onnxzoo2filterdb"))
    for _ in range(args.repeat):  # interleaved, so that a busy spell of the machine hits all alike
        if repo is not None:
            runs.setdefault("paper", []).append(run_paper(repo, zoo, work))
        for label, extra, files in (("serial", [], onnx_files), ("workers2", ["--workers", "2"], onnx_files),
                                    ("mixed_onnx_safetensors", [], mixed)):
            db = work / f"db_{label}"
            shutil.rmtree(db, ignore_errors=True)
            runs.setdefault(label, []).append(run_measured(fl + ["extract", *files, "--db", str(db), *extra], env=env))
    for label, rs in runs.items():
        secs = sorted(r["seconds"] for r in rs)
        results[label] = {**rs[-1], "seconds": secs[0], "seconds_median": secs[len(secs) // 2], "seconds_all": secs,
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}
        if label == "paper":
            results[label]["steps_seconds_all"] = [r["steps_seconds"] for r in rs]
    helps = [run_measured(fl + ["--help"], env=env)["seconds"] for _ in range(5)]
    results["help_seconds_best_of_5"] = min(helps)
    results["help_seconds_median_of_5"] = sorted(helps)[2]

    # the databases must agree (models, layers and every metric)
    import pandas as pd

    from filterlens.db import FilterDB

    a, b = FilterDB.open(work / "db_serial"), FilterDB.open(work / "db_workers2")
    cols = [c for c in a.layers().columns if c not in ("added_at",)]
    same = a.layers()[cols].equals(b.layers()[cols]) and a.models().drop(columns="added_at").equals(
        b.models().drop(columns="added_at"))
    results["workers2_db_equals_serial"] = bool(same)
    results["filters_in_db"] = int(a.info()["n_filters"])
    results["load_average_at_end"] = os.getloadavg()
    if "paper" in results:
        for stat in ("seconds", "seconds_median"):
            p = results["paper"][stat]
            for label in ("serial", "workers2"):
                results[f"speedup_{label}_vs_paper_{stat}"] = round(p / results[label][stat], 2)
        # the paper's extraction alone (without the notebooks' metrics), against filterlens with them
        steps = min(r["create_filter_storage"] + r["extract_filters"] for r in results["paper"]["steps_seconds_all"])
        results["speedup_serial_vs_paper_extraction_only_best"] = round(steps / results["serial"]["seconds"], 2)
        results["rss_ratio_serial_vs_paper"] = round(results["serial"]["peak_rss_mb"] / results["paper"]["peak_rss_mb"], 2)
    print(json.dumps(results, indent=1))
    del pd


if __name__ == "__main__":
    main()
