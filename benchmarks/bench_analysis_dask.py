"""Benchmark: ``reproduce`` and ``compare`` serial against ``--workers N`` (Dask). Prints figures; asserts nothing.

The file: bench_reproduce.py's synthetic ``dataset.h5`` in the published layout (float64, models
of ``--model-filters`` filters in 20 layers, half robust, half normal, a pairs CSV), imported once
into a filter database (not timed). Then, interleaved ``--repeats`` times, each in a fresh process:

- ``filterlens reproduce FILE --pairs PAIRS --db DB --format json`` (database reused) serial and
  with ``--workers N``;
- ``filterlens compare --db DB --pairs PAIRS --format json --n-boot 200`` serial and with
  ``--workers N``.

Whole-process wall time (cluster start included) and peak RSS summed over the process tree
(client and workers); the JSON of each Dask run is checked equal to the serial one.

    python benchmarks/bench_analysis_dask.py [--filters 20000000] [--model-filters 1000000]
        [--workers 2] [--repeats 3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _proc  # noqa: E402
from bench_reproduce import write_dataset  # noqa: E402

CLI = [sys.executable, "-c", "from filterlens.cli.main import main; main()"]


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Wall time, peak RSS (MiB, summed over the process tree) and stdout of ``cmd``."""
    m = _proc.run_measured(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if m.returncode:
        raise SystemExit(f"failed ({m.returncode}): {' '.join(cmd[2:6])}\n{m.stderr[-3000:]}")
    return m.seconds, m.peak_rss // 2**20, m.stdout


def comparable(text: str) -> dict:
    data = json.loads(text)
    data.get("settings", {}).pop("database_status", None)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--filters", type=int, default=20_000_000, help="filters in the file (default 20 M)")
    ap.add_argument("--model-filters", type=int, default=1_000_000, help="filters per model (default 1 M)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_analysis_dask_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        h5 = work / "dataset.h5"
        t = time.perf_counter()
        n_models, pairs, n_filters = write_dataset(h5, args.filters, args.model_filters)
        db = work / "db"
        base_r = [*CLI, "reproduce", str(h5), "--pairs", str(pairs), "--db", str(db), "--format", "json",
                  "--no-report", "-q"]
        base_c = [*CLI, "compare", "--db", str(db), "--pairs", str(pairs), "--format", "json", "--n-boot", "200"]
        run_measured(base_r)  # the import, not timed
        print(f"file: {n_models} models, {n_filters:,} filters (float64), imported in {time.perf_counter() - t:.0f} s;"
              f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        jobs = {
            "reproduce serial": base_r,
            f"reproduce --workers {args.workers}": base_r + ["--workers", str(args.workers)],
            "compare serial": base_c,
            f"compare --workers {args.workers}": base_c + ["--workers", str(args.workers)],
        }
        times: dict[str, list[float]] = {k: [] for k in jobs}
        rss: dict[str, int] = {k: 0 for k in jobs}
        outputs: dict[str, str] = {}
        loads = []
        for _ in range(args.repeats):  # interleaved: a busy spell of the shared machine hits every route
            for name, cmd in jobs.items():
                secs, peak, out = run_measured(cmd)
                times[name].append(secs)
                rss[name] = max(rss[name], peak)
                outputs.setdefault(name, out)
                loads.append(os.getloadavg()[0])
        print("\n| route | best | median | all runs | peak RSS (all processes) |\n|---|---|---|---|---|")
        for name in jobs:
            ts = times[name]
            print(f"| {name} | {min(ts):.2f} s | {statistics.median(ts):.2f} s | "
                  f"{' / '.join(f'{x:.2f}' for x in ts)} s | {rss[name]} MiB |")
        print()
        for what in ("reproduce", "compare"):
            s, d = f"{what} serial", f"{what} --workers {args.workers}"
            same = comparable(outputs[s]) == comparable(outputs[d])
            print(f"{what}: serial / --workers {args.workers} = {min(times[s]) / min(times[d]):.2f}x (best), "
                  f"{statistics.median(times[s]) / statistics.median(times[d]):.2f}x (median); "
                  f"JSON equal to serial: {same}")
        print(f"load average during the runs: {min(loads):.1f}-{max(loads):.1f}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
