"""Benchmark: per-layer metrics of WRN-sized weights.

Compares, in the same process and on the same random weights:
  filterlens      measure_weights on the 3x3 layers, as measure(model) runs it (sparsity, variance
                  entropy, orthogonality, norms)
  torchconvquality measure_quality(model) (the authors' later library; computes the same three
                  metrics, plus an unscaled and a normalised entropy variant)
  bare bound      one pass over the weights (max |w|) plus the Gram products orthogonality needs,
                  nothing else: no implementation can avoid this work
and the peak memory of filterlens (peak RSS growth over the weights, in a fresh subprocess).

Targets: >= 4x faster than torchconvquality, <= 1.5x the bare bound, peak <= 2x the weights.
The three are timed interleaved (one run of each per round, best of the rounds), so that load
from other processes hits all of them alike; on a busy 2-core machine multi-threaded BLAS
slows down badly, and ``--threads 1`` gives steadier figures.

    python benchmarks/bench_metrics.py [--models wrn-28-10,wrn-70-16] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

if "--threads" in sys.argv:  # must be set before numpy / torch load their thread pools
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = _n

import numpy as np  # noqa: E402


def wrn_conv_shapes(depth: int, width: int) -> list[tuple[int, int, int, int]]:
    """Conv weight shapes of RobustBench's WideResNet(depth, width) (3x3 and 1x1 shortcuts)."""
    n = (depth - 4) // 6
    ch = [16, 16 * width, 32 * width, 64 * width]
    shapes = [(ch[0], 3, 3, 3)]
    for stage in range(3):
        cin, cout = ch[stage], ch[stage + 1]
        for i in range(n):
            c_in = cin if i == 0 else cout
            shapes += [(cout, c_in, 3, 3), (cout, cout, 3, 3)]
            if i == 0 and c_in != cout:
                shapes.append((cout, c_in, 1, 1))
    return shapes


def make_weights(name: str, seed: int = 0) -> list[np.ndarray]:
    depth, width = (int(x) for x in name.split("-")[1:])
    rng = np.random.default_rng(seed)
    out = []
    for s in wrn_conv_shapes(depth, width):
        w = rng.standard_normal(s, dtype=np.float32)
        w *= np.sqrt(2.0 / (s[1] * s[2] * s[3]), dtype=np.float32)
        # like trained networks: a share of filters collapsed to ~0
        dead = rng.random(s[:2]) < 0.2
        w[dead] *= 1e-4
        out.append(w)
    return out


def run_filterlens(weights):
    from filterlens.metrics import measure_weights  # what measure(model) runs on its 3x3 layers

    return measure_weights([w for w in weights if w.shape[2:] == (3, 3)])


def run_bare(weights):
    acc = 0.0
    for w in weights:
        if w.shape[2:] != (3, 3):
            continue
        acc += float(w.max())  # one pass over the weights
        v = w.reshape(w.shape[0], -1)
        g = v @ v.T  # the Gram products
        acc += float(g[0, 0])
    return acc


def run_tcq(model):
    from torchconvquality import measure_quality

    return measure_quality(model)


def to_module(weights):
    import torch
    import torch.nn as nn

    mods = []
    for w in weights:
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], bias=False)
        conv.weight = nn.Parameter(torch.from_numpy(w), requires_grad=False)
        mods.append(conv)
    return nn.Sequential(*mods)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def peak_rss() -> int:
    """Peak RSS of this process in bytes (VmHWM: unlike ru_maxrss, not inherited over fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_child(name: str) -> None:
    """Run in a fresh process: report weight bytes and peak RSS growth while measuring.

    Importing numba and loading the compiled kernels (a fixed cost, whatever the model) happen
    before the baseline and are reported on their own."""
    from filterlens.metrics import measure_weight

    before = peak_rss()
    measure_weight(np.ones((2, 2, 3, 3), dtype=np.float32))  # import numba, load the cached kernels
    base = peak_rss()
    weights = make_weights(name)
    nbytes = sum(w.nbytes for w in weights)
    loaded = peak_rss()
    run_filterlens(weights)
    peak = peak_rss()
    print(json.dumps({"weights": nbytes, "before": before, "base": base, "loaded": loaded, "peak": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="wrn-28-10,wrn-70-16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-tcq", action="store_true", help="skip torchconvquality (slow on WRN-70-16)")
    ap.add_argument("--threads", type=int, help="BLAS / torch threads (default: library default)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        peak_memory_child(args.child)
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads: torch {torch.get_num_threads()}, BLAS {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    for name in args.models.split(","):
        weights = make_weights(name)
        nbytes = sum(w.nbytes for w in weights)
        n3 = sum(w.shape[0] * w.shape[1] for w in weights if w.shape[2:] == (3, 3))
        print(f"\n== {name}: {len(weights)} conv layers, {n3:,} 3x3 filters, {nbytes / 2**20:.0f} MiB of weights")
        model = None if args.skip_tcq else to_module(weights)
        t_fl, t_bare, t_tcq = [], [], []
        for _ in range(args.repeat):
            t_fl.append(timed(lambda: run_filterlens(weights)))
            t_bare.append(timed(lambda: run_bare(weights)))
            if model is not None:
                t_tcq.append(timed(lambda: run_tcq(model)))
        fl, bare = min(t_fl), min(t_bare)
        print(f"filterlens        {fl:8.3f} s")
        print(f"bare bound        {bare:8.3f} s   filterlens / bare = {fl / bare:.2f}x   (target <= 1.5x)")
        if t_tcq:
            tcq = min(t_tcq)
            print(f"torchconvquality  {tcq:8.3f} s   speed-up = {tcq / fl:.1f}x   (target >= 4x)")
        model = None  # free it before the memory probe
        child = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                               check=True)
        mem = json.loads(child.stdout.strip().splitlines()[-1])
        growth = mem["peak"] - mem["base"]
        print(f"peak memory       {growth / 2**20:8.0f} MiB over the process baseline = "
              f"{growth / mem['weights']:.2f}x the weights   (target <= 2x); fixed cost of the compiled "
              f"kernels (numba) {(mem['base'] - mem['before']) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
