"""Run a command as a fresh process and measure it: wall time and peak RSS over its process tree."""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass


@dataclass
class Measured:
    seconds: float
    peak_rss: int  # bytes, the largest sum over the process and its children, sampled every 10 ms
    stdout: str
    stderr: str
    returncode: int


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> Measured:
    """Run ``cmd`` to its end; its output goes to temporary files (a pipe could fill and stall it)."""
    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                total = 0
                for p in [root] + root.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:  # a child that ended between listing and reading
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return Measured(seconds, peak, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                        proc.returncode)
