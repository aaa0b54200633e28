#!/usr/bin/env python
"""Mutation testing of filterlens's core: plant one bug at a time, run the relevant fast tests.

Each mutant below is a small, realistic bug (a flipped sign, ``<`` for ``<=``, a wrong
denominator, a file written in place instead of atomically) in metrics, depth, statistics,
shift, attacks and training, database writes or output files. The script copies the working
tree (``src/``, ``tests/``, ``pyproject.toml``; ``../shared`` is linked, not copied) to a
temporary folder, so the checkout - and anyone working in it - never sees a mutant. For each
mutant it patches the copy, runs ``pytest -x -m "not slow"`` on the mutant's test files with
``PYTHONPATH`` pointing at the copy, and records *killed* (the tests fail) or *survived*.

    python scripts/mutate.py                 # all mutants (about 15 minutes on one core)
    python scripts/mutate.py --list          # the mutants and their test files
    python scripts/mutate.py -k stats -k holm  # only mutants whose name contains a word
    python scripts/mutate.py --json out.json # also write the results as JSON

Exit status: 0 when every mutant was killed, 1 when one survived, 2 when a mutant no longer
applies (its code changed: update its snippet here) or the unmutated tests fail.

Not part of CI: it is CPU-heavy by design. Run with one thread per process (it sets
``OMP_NUM_THREADS=1``). Equivalent or untestable mutants are listed in ``EQUIVALENT`` with the
reason, and are not run.
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = "src/filterlens"

ATTACK_TESTS = ["tests/test_attack_behaviour.py", "tests/test_robust.py"]
STATS_TESTS = ["tests/test_stats_exact.py", "tests/test_analysis.py"]
METRIC_TESTS = ["tests/test_references.py", "tests/test_metrics.py"]
DEPTH_TESTS = ["tests/test_references.py", "tests/test_sources.py", "tests/test_onnx_source.py"]
SHIFT_TESTS = ["tests/test_references.py", "tests/test_analysis.py"]
WRITE_TESTS = ["tests/test_crash_writes.py"]


@dataclass
class Mutant:
    name: str
    path: str  # relative to the repository
    edits: list[tuple[str, str]]  # (old, new); each ``old`` must occur exactly once
    tests: list[str]
    why: str = ""
    result: dict = field(default_factory=dict)


def M(name: str, path: str, old: str, new: str, tests: list[str], why: str = "") -> Mutant:
    return Mutant(name, f"{PKG}/{path}", [(old, new)], tests, why)


MUTANTS: list[Mutant] = [
    # --- attacks ---------------------------------------------------------------------------
    M("fgsm-sign", "robust/attacks.py", "(x + eps * grad.sign())", "(x - eps * grad.sign())", ATTACK_TESTS,
      "FGSM descends the loss"),
    M("pgd-sign", "robust/attacks.py", "torch.min(x_adv + alpha * grad.sign(), hi)",
      "torch.min(x_adv - alpha * grad.sign(), hi)", ATTACK_TESTS, "PGD descends the loss"),
    M("pgd-projection", "robust/attacks.py", "hi = (x + eps).clamp_(max=1.0)", "hi = (x + 2 * eps).clamp_(max=1.0)",
      ATTACK_TESTS, "PGD leaves the eps-ball"),
    M("pgd-keeps-best-loss", "robust/attacks.py", "((wrong == best_wrong) & (loss > best_loss))",
      "((wrong == best_wrong) & (loss < best_loss))", ATTACK_TESTS, "PGD keeps the weakest iterate"),
    M("pgd-alpha", "robust/attacks.py", "alpha = 2.5 * eps / max(steps, 1)", "alpha = 0.25 * eps / max(steps, 1)",
      ATTACK_TESTS, "PGD's default step is ten times too small"),
    M("autoattack-eps", "robust/attacks.py", "eps=float(eps),", "eps=float(eps) / 4,", ATTACK_TESTS,
      "AutoAttack runs at a quarter of the budget"),
    # --- training inner attacks and losses ---------------------------------------------------
    M("fgsm-rs-sign", "robust/train.py", "(delta.detach() + alpha * grad.sign())",
      "(delta.detach() - alpha * grad.sign())", ATTACK_TESTS, "FGSM-RS training descends"),
    M("fgsm-rs-ball", "robust/train.py", ".clamp_(-eps, eps)", ".clamp_(-2 * eps, 2 * eps)", ATTACK_TESTS,
      "FGSM-RS leaves the eps-ball"),
    M("fgsm-rs-clean-input", "robust/train.py", "logits = model(_fgsm_rs(model, x, y, eps, alpha, attack_gen))",
      "logits = model(x)", ATTACK_TESTS, "FGSM-RS trains on clean inputs"),
    M("fgsm-rs-no-random-start", "robust/train.py", "delta = (_rand(x, g) * 2 - 1).mul_(eps)",
      "delta = torch.zeros_like(x)", ATTACK_TESTS, "plain FGSM training (no random start)"),
    M("pgd-train-no-random-start", "robust/train.py",
      "x_adv = torch.max(torch.min(x + (_rand(x, g) * 2 - 1) * eps, hi), lo)",
      "x_adv = x.clone()", ATTACK_TESTS),
    M("pgd-train-sign", "robust/train.py",
      "x_adv = torch.max(torch.min(x_adv.detach() + alpha * grad.sign(), hi), lo)\n    return x_adv\n",
      "x_adv = torch.max(torch.min(x_adv.detach() - alpha * grad.sign(), hi), lo)\n    return x_adv\n",
      ATTACK_TESTS, "PGD training descends"),
    M("trades-sign", "robust/train.py",
      "x_adv = torch.max(torch.min(x_adv.detach() + alpha * grad.sign(), hi), lo)\n    model.train(was)",
      "x_adv = torch.max(torch.min(x_adv.detach() - alpha * grad.sign(), hi), lo)\n    model.train(was)",
      ATTACK_TESTS, "TRADES' inner attack descends"),
    M("trades-loss-sign", "robust/train.py", "F.cross_entropy(logits, y) + cfg.trades_beta * F.kl_div(",
      "F.cross_entropy(logits, y) - cfg.trades_beta * F.kl_div(", ATTACK_TESTS, "TRADES rewards the KL"),
    M("fgsm-rs-alpha", "robust/train.py", '"fgsm-rs": 1.25 * self.eps,', '"fgsm-rs": 0.25 * self.eps,',
      ATTACK_TESTS, "FGSM-RS default step"),
    M("eps-warmup-stuck", "robust/train.py", "ramp = min(1.0, (it + 1) / (cfg.eps_warmup * total))",
      "ramp = min(0.1, (it + 1) / (cfg.eps_warmup * total))", ATTACK_TESTS, "eps never ramps up fully"),
    # --- statistics ----------------------------------------------------------------------------
    M("spearman-is-pearson", "analysis/stats.py", "res = sps.spearmanr(x, y)", "res = sps.pearsonr(x, y)",
      STATS_TESTS),
    M("cohens-d-one-sd", "analysis/stats.py", "return float((x.mean() - y.mean()) / np.sqrt(pooled))",
      "return float((x.mean() - y.mean()) / x.std(ddof=1))", STATS_TESTS, "divided by one group's sd"),
    M("cohens-d-unweighted", "analysis/stats.py",
      "pooled = ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2)",
      "pooled = (x.var(ddof=1) + y.var(ddof=1)) / 2", STATS_TESTS, "mean of the variances"),
    M("cohens-dz-ddof0", "analysis/stats.py", "sd = x.std(ddof=1)", "sd = x.std(ddof=0)", STATS_TESTS),
    M("bootstrap-98", "analysis/stats.py", "[50 * (1 - ci), 50 * (1 + ci)]", "[50 * (1 - 0.98), 50 * (1 + 0.98)]",
      STATS_TESTS, "a 98 % interval for a 95 % one"),
    M("bootstrap-one-sided", "analysis/stats.py", "[50 * (1 - ci), 50 * (1 + ci)]", "[100 * (1 - ci), 100 * ci]",
      STATS_TESTS, "one-sided percentiles"),
    M("bootstrap-same-draw", "analysis/stats.py",
      "mb = y[rng.integers(0, len(y), size=(k, len(y)))].mean(axis=1)",
      "mb = y[rng.integers(0, len(y), size=(k, len(x)))].mean(axis=1)", STATS_TESTS, "b resampled at a's size"),
    M("holm-no-monotone", "analysis/stats.py", "adj = np.maximum.accumulate((m - np.arange(m)) * p[order])",
      "adj = (m - np.arange(m)) * p[order]", STATS_TESTS, "Holm without the step-down maximum"),
    M("holm-is-bonferroni", "analysis/stats.py", "adj = np.maximum.accumulate((m - np.arange(m)) * p[order])",
      "adj = np.maximum.accumulate(m * p[order])", STATS_TESTS),
    M("group-stats-unadjusted", "analysis/stats.py", 'adj = holm(p) if adjust == "holm" else',
      'adj = np.asarray(p, dtype=float) if adjust == "holm" else', STATS_TESTS),
    M("rank-biserial-u", "analysis/stats.py", "return u, float(res.pvalue), 2 * u / (len(x) * len(y)) - 1, \"\"",
      "return u, float(res.pvalue), u / (len(x) * len(y)), \"\"", STATS_TESTS),
    M("wilcoxon-r-sign", "analysis/stats.py", "float((r_plus - r_minus) / (r_plus + r_minus))",
      "float((r_minus - r_plus) / (r_plus + r_minus))", STATS_TESTS),
    # --- metrics -------------------------------------------------------------------------------
    M("sparse-mask-strict", "metrics/filters.py", "return linf <= t if inclusive else linf < t",
      "return linf < t if inclusive else linf < t", METRIC_TESTS, "'<' for the paper's '<='"),
    M("sparse-mask-float32", "metrics/filters.py", "t = np.float64(threshold) * m",
      "t = np.float64(np.float32(threshold) * np.float32(m))", METRIC_TESTS, "threshold rounded to float32"),
    M("kernel-keep-equal", "metrics/kernels.py", "keep = (md >= t) if keep_equal else (md > t)",
      "keep = (md > t) if keep_equal else (md > t)", METRIC_TESTS, "compiled pass ignores inclusive=False"),
    M("kernel-keep-strict", "metrics/kernels.py", "keep = (md >= t) if keep_equal else (md > t)",
      "keep = (md >= t) if keep_equal else (md >= t)", METRIC_TESTS, "compiled pass keeps on-threshold filters"),
    M("entropy-natural-log", "metrics/entropy.py", "return float(-(p * np.log10(p)).sum())",
      "return float(-(p * np.log(p)).sum())", METRIC_TESTS),
    M("orthogonality-n-squared", "metrics/orthogonality.py",
      "return float(1.0 - gram_deviation(np.ascontiguousarray(raw)) / (n * (n - 1)))",
      "return float(1.0 - gram_deviation(np.ascontiguousarray(raw)) / (n * n))", METRIC_TESTS),
    M("aggregate-mean-of-ratios", "metrics/aggregate.py",
      '"sparsity": n_sparse / n_filters if n_filters else float("nan"),',
      '"sparsity": float(measured.loc[finite, "sparsity"].mean()) if n_filters else float("nan"),',
      METRIC_TESTS, "mean of layer ratios"),
    M("aggregate-entropy-unweighted", "metrics/aggregate.py",
      '"variance_entropy": _weighted(layers["variance_entropy"], layers["n_nonsparse"]),',
      '"variance_entropy": _weighted(layers["variance_entropy"], layers["n_filters"]),', METRIC_TESTS),
    # --- depth ---------------------------------------------------------------------------------
    M("depth-shortest-path", "sources/depth.py", "depth[node] = 1 + max(preds)", "depth[node] = 1 + min(preds)",
      DEPTH_TESTS),
    M("depth-norm-levels", "sources/depth.py", "layer.conv_depth / top if top > 0 else 0.0",
      "layer.conv_depth / len(levels) if top > 0 else 0.0", DEPTH_TESTS),
    # --- shift (its stable pure pieces; the pipeline itself is being reworked) -------------------
    M("shift-eps-float64", "analysis/shift.py", "HIST_EPS = float(np.finfo(np.float32).eps)",
      "HIST_EPS = float(np.finfo(np.float64).eps)", SHIFT_TESTS),
    M("shift-threshold-strict", "analysis/shift.py", "keep = linf > t if inclusive else linf >= t",
      "keep = linf >= t if inclusive else linf >= t", SHIFT_TESTS),
    M("shift-kl-one-sided", "analysis/shift.py", "return kl_divergence(p, q) + kl_divergence(q, p)",
      "return 2 * kl_divergence(p, q)", SHIFT_TESTS),
    M("paper-eps-probability-scale", "analysis/paper.py",
      "v = counts / widths / counts.sum(axis=-1, keepdims=True)", "v = counts / counts.sum(axis=-1, keepdims=True)",
      SHIFT_TESTS, "epsilon on the probability scale, not the notebook's density scale"),
    # --- database writes ----------------------------------------------------------------------
    M("manifest-in-place", "db/_fs.py", "    with atomic_path(path, tmp_dir=tmp_dir) as tmp:\n",
      "    for tmp in [path]:\n", WRITE_TESTS, "the manifest is truncated and rewritten where it is"),
    M("parquet-no-rename-order", "db/store.py",
      "                _fs.replace_durably(staged)\n                self._commit(",
      "                self._commit(", WRITE_TESTS, "manifest names filters files that were never renamed"),
    # --- the demo ----------------------------------------------------------------------------
    M("demo-skips-first-layer", "demo.py",
      'fl_result, fl_note = zoo_first_layer(n_boot=n_boot) if first_layer else (None, "first-layer study not run")',
      'fl_result, fl_note = None, "first-layer study not run"', ["tests/test_demo.py"],
      "the demo silently drops the first-layer section (killed only where CIFAR-10 is found)"),
    M("demo-comparison-in-place", "demo.py", 'write_text_atomic(comparison, result.to_json() + "\\n")',
      'comparison.write_text(result.to_json() + "\\n")', WRITE_TESTS),
    M("demo-record-in-place", "demo.py", "    write_text_atomic(out_dir / RECORD, json.dumps(",
      "    (out_dir / RECORD).write_text(json.dumps(", WRITE_TESTS,
      "a truncated record makes the next rerun refuse its own folder"),
    # --- output files -------------------------------------------------------------------------
    M("cli-output-in-place", "cli/console.py", "        with _atomic_path(path) as tmp:\n            yield tmp\n",
      "        for tmp in [path]:\n            yield tmp\n", WRITE_TESTS),
    Mutant("atomic-in-place", f"{PKG}/atomic.py", [("        yield Path(tmp)\n", "        yield path\n"),
           ("        os.replace(tmp, path)\n", "        os.unlink(tmp)\n")], WRITE_TESTS,
           "report/figure/JSON outputs written in place"),
    M("report-html-in-place", "report/html.py", "    write_text_atomic(path, render_html(result, figs, title, dpi, first_layer))",
      '    path.write_text(render_html(result, figs, title, dpi, first_layer), encoding="utf-8")', WRITE_TESTS),
    M("figure-in-place", "report/figures.py",
      "        with atomic_path(path) as tmp:  # a failed save leaves the previous figure as it was\n"
      "            fig.savefig(tmp, format=fmt, dpi=dpi)",
      "        fig.savefig(path, format=fmt, dpi=dpi)", WRITE_TESTS),
    M("comparison-json-in-place", "analysis/compare.py", '            write_text_atomic(path, text + "\\n")',
      '            with open(path, "w", encoding="utf-8") as f:\n                f.write(text + "\\n")', WRITE_TESTS),
    M("card-in-place", "robust/card.py", "    write_bytes_atomic(path, data)\n", "    path.write_bytes(data)\n",
      WRITE_TESTS),
    Mutant("cache-in-place", f"{PKG}/data/base.py", [('with open(tmp, "wb") as f:', 'with open(path, "wb") as f:'),
           ("os.replace(tmp, path)", "os.unlink(tmp)")], WRITE_TESTS),
    Mutant("h5-in-place", f"{PKG}/db/h5.py", [('with h5py.File(tmp, "w") as h5:', 'with h5py.File(path, "w") as h5:'),
           ("meta.to_hdf(tmp,", "meta.to_hdf(path,"), ("os.replace(tmp, path)", "pass")], WRITE_TESTS),
]

# Mutants that no test can or should kill, and why (not run).
EQUIVALENT = {
    "fsync removed from _fs.replace_durably / write_json_atomic":
        "only a power loss tells; in-process faults cannot observe the page cache. Kept by review.",
    "filters file written straight into filters/ instead of tmp/":
        "equivalent for readers: the new name is in no manifest until the commit and the next writer "
        "removes it as an orphan.",
    "'<' for '<=' in group_stats's significant = p_adj < alpha":
        "differs only when a p-value equals alpha exactly, which no continuous test produces.",
}


def _copy_tree(dest: Path) -> Path:
    repo = dest / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "*.egg-info")
    shutil.copytree(REPO / "src", repo / "src", ignore=ignore)
    shutil.copytree(REPO / "tests", repo / "tests", ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", repo / "pyproject.toml")
    shared = REPO.parent / "shared"
    if shared.exists():
        (dest / "shared").symlink_to(shared)
    return repo


def _run_tests(repo: Path, tests: list[str], timeout: float, deselect: list[str] = (),
               first_failure: bool = True) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests]
    cmd += ["-x"] if first_failure else []
    for test_id in deselect:
        cmd += ["--deselect", test_id]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, "timeout"
    return rc, time.perf_counter() - t0, out


def _failed_ids(out: str) -> list[str]:
    return [line.split(" ")[1] for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))]


def _write(path: Path, text: str, stamp: list[int]) -> None:
    path.write_text(text)
    stamp[0] += 2  # a fresh mtime each time: no stale .pyc or numba cache survives an edit
    os.utime(path, (stamp[0], stamp[0]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", action="append", default=[], help="run only mutants whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--json", type=Path, help="write the results to this file")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run (a timeout counts as killed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--strict", action="store_true",
                    help="stop when a test fails unmutated (default: deselect it and say so)")
    args = ap.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.k or any(k in m.name for k in args.k)]
    if args.list:
        for m in mutants:
            print(f"{m.name:30s} {m.path:36s} {' '.join(Path(t).name for t in m.tests)}")
        for what, why in EQUIVALENT.items():
            print(f"(equivalent) {what}: {why}")
        return 0

    work = Path(tempfile.mkdtemp(prefix="filterlens-mutants-"))
    status = 0
    try:
        repo = _copy_tree(work)
        stamp = [int(time.time()) + 10]
        stale = []
        for m in mutants:
            text = (repo / m.path).read_text() if (repo / m.path).is_file() else ""
            if not text or any(text.count(old) != 1 for old, _ in m.edits):
                stale.append(m)
        for m in stale:
            m.result = {"status": "stale"}
            print(f"STALE     {m.name}: its code in {m.path} changed; update the snippet in scripts/mutate.py")
        runnable = [m for m in mutants if m not in stale]
        files = sorted({t for m in runnable for t in m.tests})
        rc, secs, out = _run_tests(repo, files, args.timeout, first_failure=False)
        broken = _failed_ids(out)
        print(f"baseline: {'pass' if rc == 0 else 'FAIL'} ({secs:.0f} s) {' '.join(files)}")
        if rc != 0 and (args.strict or not broken):
            print(out[-4000:])
            return 2
        for test_id in broken:  # failing without any mutant (work in progress elsewhere): not counted
            print(f"  deselected, fails unmutated: {test_id}")
        for m in runnable:
            path = repo / m.path
            original = path.read_text()
            mutated = original
            for old, new in m.edits:
                mutated = mutated.replace(old, new)
            _write(path, mutated, stamp)
            try:
                rc, secs, out = _run_tests(repo, m.tests, args.timeout, broken)
            finally:
                _write(path, original, stamp)
            killed = rc != 0
            failed = _failed_ids(out)
            m.result = {"status": "killed" if killed else "survived", "seconds": round(secs, 1),
                        "by": failed[:3] or ([out.strip().splitlines()[-1]] if out.strip() else [])}
            print(f"{'KILLED  ' if killed else 'SURVIVED'}  {m.name:30s} {secs:6.1f} s  "
                  f"{(failed[:1] or ['(timeout)' if rc == -1 else ''])[0]}", flush=True)
        killed = sum(m.result["status"] == "killed" for m in runnable)
        print(f"\nscore: {killed}/{len(runnable)} mutants killed"
              f"{f', {len(stale)} stale' if stale else ''}; {len(EQUIVALENT)} listed as equivalent")
        for m in runnable:
            if m.result["status"] == "survived":
                print(f"  survived: {m.name} ({m.path}) {m.why}")
        if args.json:
            args.json.write_text(json.dumps({m.name: {"path": m.path, "why": m.why, **m.result} for m in mutants},
                                            indent=1) + "\n")
        status = 1 if killed < len(runnable) else (2 if stale else 0)
    finally:
        if args.keep:
            print(f"copy kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
