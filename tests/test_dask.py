"""Extraction on a Dask cluster (``filterlens extract --workers/--scheduler``).

One LocalCluster of 2 worker processes serves the module (a start costs seconds). Every run is
compared with a serial extraction of the same sources: same results, same database (models,
layers, ids, metrics, filters), and ``db check`` finds nothing wrong.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from filterlens.db import FilterDB, extract_sources  # noqa: E402
from filterlens.db import distributed as fld  # noqa: E402
from filterlens.db.extract import default_loader  # noqa: E402


def write_onnx(path: Path, seed: int, widths=(4, 8)) -> Path:
    """A small chain of 3x3 convs with random weights."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, cin = [], [], "input", 3
    for i, c in enumerate(widths):
        inits.append(numpy_helper.from_array(rng.standard_normal((c, cin, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x, cin = f"r{i}", c
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, cin, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> list[str]:
    """ONNX files, a safetensors file, a duplicate of the first model and a broken file."""
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("zoo")
    files = [write_onnx(d / f"net{i}.onnx", i, widths=(4, 8 + 4 * i)) for i in range(4)]
    rng = np.random.default_rng(7)
    save_file({"a.weight": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
               "b.weight": rng.standard_normal((5, 6, 3, 3)).astype(np.float64)}, str(d / "ckpt.safetensors"))
    (d / "copy.onnx").write_bytes(files[0].read_bytes())  # the same weights again: a duplicate
    (d / "broken.onnx").write_bytes(b"\x08\x07 not a model")
    names = ["net0.onnx", "ckpt.safetensors", "broken.onnx", "net1.onnx", "copy.onnx", "net2.onnx", "net3.onnx"]
    return [str(d / n) for n in names]


@pytest.fixture(scope="module")
def client():
    """The local cluster ``filterlens extract --workers 2`` starts."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the loaders below, for the workers
    with fld.connect(workers=2) as c:
        yield c


def tables(db: FilterDB):
    models = db.models().drop(columns=["added_at"])
    return models, db.layers()


def assert_same_db(a: FilterDB, b: FilterDB) -> None:
    ma, la = tables(a)
    mb, lb = tables(b)
    assert ma.equals(mb)
    assert la.equals(lb)  # ids, files, offsets, metrics: all of it
    for (ka, fa), (kb, fb) in zip(a.iter_filters(), b.iter_filters()):
        assert np.array_equal(ka["layer_id"], kb["layer_id"])
        assert fa.dtype == fb.dtype and np.array_equal(fa, fb)
    raw_a = a.query("SELECT layer_id, filter, w FROM filters_raw ORDER BY layer_id, filter")
    raw_b = b.query("SELECT layer_id, filter, w FROM filters_raw ORDER BY layer_id, filter")
    assert raw_a.equals(raw_b)
    assert a.check(deep=True) == [] and b.check(deep=True) == []


def summary(results):
    return [(r.source, r.status, r.model, r.message, r.n_layers, r.n_filters) for r in results]


def test_equals_serial_with_failures_and_duplicates(tmp_path, zoo, client):
    serial = FilterDB.create(tmp_path / "serial")
    dask_db = FilterDB.create(tmp_path / "dask")
    expected = summary(extract_sources(serial, zoo))
    got = summary(fld.extract_sources_dask(dask_db, zoo, client, window=3))
    assert got == expected
    statuses = [s for _, s, *_ in got]
    assert statuses == ["added", "added", "failed", "added", "failed", "added", "added"]
    broken = got[2]
    assert broken[3].startswith(zoo[2] + ": ") and "\n" not in broken[3]  # named, one line
    assert "the same weights are already in the database as net0" in got[4][3]
    assert_same_db(serial, dask_db)
    assert not list((dask_db.path / "tmp").iterdir())  # the staging folder is gone


def test_existing_database_and_skip_existing(tmp_path, zoo, client):
    """Runs onto a database that already holds models: ids continue where it stands."""
    serial = FilterDB.create(tmp_path / "serial")
    dask_db = FilterDB.create(tmp_path / "dask")
    for db in (serial, dask_db):
        list(extract_sources(db, zoo[3:4]))
    expected = summary(extract_sources(serial, zoo, skip_existing=True))
    got = summary(fld.extract_sources_dask(dask_db, zoo, client, skip_existing=True))
    assert got == expected
    assert [s for _, s, *_ in got].count("skipped") == 2  # net1 (stored) and copy (= net0)
    assert_same_db(serial, dask_db)


def _worker_sees_nothing(blind: str) -> None:
    """Pretend (on a worker) that files under ``blind`` and the database's folder are on
    another machine: the client must send the files and stage the results itself."""
    fld.readable = lambda path: not path.startswith(blind)
    fld.sees_run = lambda staging, token: False


def _worker_sees_all() -> None:
    import importlib

    importlib.reload(fld)


def test_workers_without_the_files_or_the_database(tmp_path, zoo, client):
    serial = FilterDB.create(tmp_path / "serial")
    dask_db = FilterDB.create(tmp_path / "dask")
    blind = str(Path(zoo[0]).parent)
    client.run(_worker_sees_nothing, blind)
    try:
        got = summary(fld.extract_sources_dask(dask_db, zoo, client))
    finally:
        client.run(_worker_sees_all)
    assert got == summary(extract_sources(serial, zoo))
    assert_same_db(serial, dask_db)


def killing_loader(marks: str, source, arch, name):
    """Kills its worker process the first time it sees ``net1``; always for ``net3``."""
    stem = Path(source).stem
    marker = Path(marks) / stem
    if stem == "net3" or (stem == "net1" and not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return default_loader(source, arch, name)


def test_worker_killed_mid_extraction(tmp_path, zoo, client):
    """A worker dying mid-model (SIGKILL) costs nothing but a retry; a model that keeps killing
    its workers is reported by name and the others go on. One model in flight at a time
    (window=1), so that a death is only ever the running model's."""
    loader = functools.partial(killing_loader, str(tmp_path))
    db = FilterDB.create(tmp_path / "dask")
    got = list(fld.extract_sources_dask(db, [zoo[0], zoo[3], zoo[5]], client, loader=loader, window=1))
    assert [r.status for r in got] == ["added", "added", "added"], [r.message for r in got]
    assert (tmp_path / "net1").exists()  # it did kill its worker once, and was tried again
    assert db.check(deep=True) == []
    got = list(fld.extract_sources_dask(db, [zoo[6], zoo[4]], client, loader=loader, window=1))
    assert [r.status for r in got] == ["failed", "failed"]
    assert got[0].message.startswith(zoo[6] + ": failed on the cluster") and "KilledWorker" in got[0].message
    assert "the same weights are already in the database as net0" in got[1].message  # it went on
    serial = FilterDB.create(tmp_path / "serial")
    list(extract_sources(serial, [zoo[0], zoo[3], zoo[5]]))
    assert_same_db(serial, db)
    assert not list((db.path / "tmp").iterdir())
    client.wait_for_workers(2, timeout=120)


def _disk_full_for(model: str) -> None:
    """On a worker: writing the files of ``model`` fails (as on a full disk)."""
    real = fld.stage_model

    def stage_model(prep, meta, name, *args, **kwargs):
        if name == model:
            raise OSError(28, "No space left on device")
        return real(prep, meta, name, *args, **kwargs)

    fld.stage_model = stage_model


def test_a_model_that_cannot_be_written_fails_alone(tmp_path, zoo, client):
    """Later models were given ids after it: they get new ones, so no id is skipped."""
    sources = [zoo[0], zoo[3], zoo[5], zoo[6]]  # net0, net1 (cannot be written), net2, net3
    client.run(_disk_full_for, "net1")
    try:
        got = list(fld.extract_sources_dask(FilterDB.create(tmp_path / "dask"), sources, client, window=4))
    finally:
        client.run(_worker_sees_all)
    assert [r.status for r in got] == ["added", "failed", "added", "added"]
    assert got[1].message.startswith(sources[1] + ": failed on the cluster while writing it (OSError")
    serial = FilterDB.create(tmp_path / "serial")
    list(extract_sources(serial, [sources[0], sources[2], sources[3]]))
    assert_same_db(serial, FilterDB.open(tmp_path / "dask"))


def test_cli_directory_with_workers_equals_serial(tmp_path, zoo, capsys):
    """As a user runs it: a directory of mixed models, serial and ``--workers 2``."""
    from filterlens.cli.main import main

    codes = []
    for db, extra in (("serial", []), ("workers", ["--workers", "2"])):
        with pytest.raises(SystemExit) as exc:
            main(["extract", str(Path(zoo[0]).parent), "--db", str(tmp_path / db), *extra])
        codes.append(exc.value.code)
    assert codes == [1, 1]  # broken.onnx and the duplicate fail, in both
    err = capsys.readouterr().err
    assert err.count("5 added, 0 skipped, 2 failed of 7 sources") == 2
    assert_same_db(FilterDB.open(tmp_path / "serial"), FilterDB.open(tmp_path / "workers"))


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_forked_workers_in_a_fresh_command_equal_serial(tmp_path, zoo):
    """The production start method (workers forked from the CLI process after it has loaded what
    they run), in a fresh process as a user runs it; the suite otherwise uses a forkserver."""
    import subprocess

    env = {**os.environ, "FILTERLENS_DASK_START": "fork"}
    cmd = [sys.executable, "-m", "filterlens.cli.main", "extract", str(Path(zoo[0]).parent)]
    for db, extra in (("serial", []), ("forked", ["--workers", "2"])):
        done = subprocess.run([*cmd, "--db", str(tmp_path / db), *extra], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 1 and "5 added, 0 skipped, 2 failed of 7 sources" in done.stderr
        assert "Traceback" not in done.stderr
    assert_same_db(FilterDB.open(tmp_path / "serial"), FilterDB.open(tmp_path / "forked"))
