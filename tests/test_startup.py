"""Start-up: what the command line imports, and whether the compiled kernels are reused.

Each check runs a fresh interpreter (``sys.modules`` of this one is long polluted), and looks at
what it imported: ``filterlens --help`` needs neither torch, pandas nor numba; measuring or
extracting ONNX and safetensors files needs no torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

HEAVY = ("torch", "pandas", "numba", "pyarrow", "onnx", "duckdb", "matplotlib", "distributed")


def run_python(code: str, cwd: Path) -> dict:
    """Run ``code`` (which sets ``result``) in a fresh interpreter; return ``result`` and the
    heavy modules it imported."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        result["imported"] = [m for m in {HEAVY!r} if m in sys.modules]
        print("RESULT" + json.dumps(result))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("startup")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1] * 4, name="c0"),
             helper.make_node("Conv", ["a", "w1"], ["y"], pads=[1] * 4, name="c1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), d / "net.onnx")
    save_file({"c0.weight": w0, "c1.weight": w1}, str(d / "net.safetensors"))
    return {"dir": d, "onnx": str(d / "net.onnx"), "st": str(d / "net.safetensors")}


def cli(args: list[str]) -> str:
    return f"""
        from filterlens.cli.main import main
        try:
            main({args!r})
        except SystemExit as e:
            assert not e.code, e.code
        result = {{}}
    """


def test_help_imports_nothing_heavy(files):
    got = run_python(cli(["--help"]), files["dir"])
    assert got["imported"] == []


def test_import_filterlens_is_light(files):
    got = run_python("import filterlens\nresult = {'version': filterlens.__version__}", files["dir"])
    assert got["imported"] == []
    # and the lazy names still resolve
    got = run_python("import filterlens as fl\nresult = {'n': len(fl.measure(%r))}" % files["onnx"], files["dir"])
    assert got["n"] == 2 and "torch" not in got["imported"]


@pytest.mark.parametrize("kind", ["onnx", "st"])
def test_metrics_and_extract_need_no_torch(files, kind, tmp_path):
    got = run_python(cli(["metrics", files[kind], "--summary", "--format", "json"]), files["dir"])
    assert "torch" not in got["imported"] and "numba" in got["imported"]
    got = run_python(cli(["extract", files[kind], "--db", str(tmp_path / "db")]), files["dir"])
    assert "torch" not in got["imported"]


def test_safetensors_read_without_torch_equals_torch_route(files):
    from filterlens.sources import load_model
    from filterlens.sources.checkpoint import read_safetensors, to_numpy_state
    from filterlens.sources.weights import from_weights

    a = load_model(files["st"])
    b = from_weights(to_numpy_state(read_safetensors(Path(files["st"]))), a.name, files["st"])
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    for x, y in zip(a.layers, b.layers):
        assert x.weight.dtype == y.weight.dtype and np.array_equal(x.weight, y.weight)
        assert (x.depth, x.conv_depth) == (y.depth, y.conv_depth)


KERNEL_STATS = """
    import numpy as np
    from filterlens.metrics import kernels, measure_weights
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        w = rng.standard_normal((16, 8, 3, 3)).astype(dt)
        measure_weights([w], 0.01, True)
        w.flags.writeable = False
        measure_weights([w], 0.01, True)
    kinds = [getattr(kernels, n) for n in ("linf_moments", "gram_deviation", "max_magnitude_bits")]
    result = {"cached": all(type(k._cache).__name__ != "NullCache" for k in kinds),
              "hits": sum(sum(k.stats.cache_hits.values()) for k in kinds),
              "misses": sum(sum(k.stats.cache_misses.values()) for k in kinds)}
"""


def test_numba_kernels_do_not_recompile_in_a_warm_install(files):
    first = run_python(KERNEL_STATS, files["dir"])  # warms the cache if this install's is cold
    if not first["cached"]:
        pytest.skip("numba finds no writable cache directory here: kernels compile in each process")
    second = run_python(KERNEL_STATS, files["dir"])
    assert second["misses"] == 0 and second["hits"] > 0
