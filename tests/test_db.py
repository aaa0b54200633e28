"""The filter database: storage round trip, streaming, metrics, crash safety, SQL, metadata, HDF5."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from filterlens.db import (
    DatabaseError,
    DuplicateModelError,
    FilterDB,
    MetaTable,
    export_h5,
    extract_sources,
    import_h5,
    model_sha256,
    parse_eps,
)
from filterlens.db import filestore, schema
from filterlens.measure import measure_layers
from filterlens.metrics import measure_weight
from filterlens.types import ConvLayer, ModelFilters

# --------------------------------------------------------------------------------------------
# helpers


def add_measured(db, mf, metadata=None, **kwargs):
    """``db.add`` with the layers measured first (3x3 layers; the others noted as not measured)."""
    return db.add(mf, metadata, measure_layers(mf.layers), **kwargs)


def toy_model(name: str, seed: int, width: int = 16, dtype=np.float32) -> ModelFilters:
    """A small ResNet-like model: 7x7 stem, 3x3 convs, a 1x1 shortcut, a depthwise conv."""
    r = np.random.default_rng(seed)

    def w(*shape, dt=dtype):
        return r.standard_normal(shape).astype(dt)

    c = width
    layers = [
        ConvLayer("stem", w(c, 3, 7, 7), depth=1, conv_depth=0, conv_depth_norm=0.0),
        ConvLayer("b1.conv1", w(c, c, 3, 3), depth=3, conv_depth=1, conv_depth_norm=0.25),
        ConvLayer("b1.conv2", w(c, c, 3, 3), depth=5, conv_depth=2, conv_depth_norm=0.5),
        ConvLayer("b2.conv1", w(2 * c, c, 3, 3), depth=7, conv_depth=3, conv_depth_norm=0.75),
        ConvLayer("b2.short", w(2 * c, c, 1, 1), depth=7, conv_depth=3, conv_depth_norm=0.75),
        ConvLayer("b2.dw", w(2 * c, 1, 3, 3), groups=2 * c, depth=9, conv_depth=4, conv_depth_norm=1.0),
    ]
    return ModelFilters(name=name, source=f"/zoo/{name}.pt", layers=layers, depth_source="fx", arch="toy")


def big_model(i: int) -> ModelFilters:
    """About 3 MB of float32 filters: adding one takes long enough to be killed midway."""
    r = np.random.default_rng(1000 + i)
    layers = [ConvLayer(f"conv{j}", r.standard_normal((160, 160, 3, 3), dtype=np.float32), conv_depth=j,
                        conv_depth_norm=j / 2) for j in range(3)]
    return ModelFilters(name=f"m{i}", source=f"/zoo/m{i}.pt", layers=layers, depth_source="order")


@pytest.fixture
def db(tmp_path) -> FilterDB:
    return FilterDB.create(tmp_path / "db")


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


# --------------------------------------------------------------------------------------------
# storage


def test_round_trip_is_bit_exact_and_keeps_dtype(db):
    mf = toy_model("a", 1)
    special = mf.layers[1].weight
    special[0, 0] = [[-0.0, np.float32(1e-45), np.inf], [-np.inf, np.nan, 3.4e38], [1, 2, 3]]
    mf.layers.append(ConvLayer("half", np.random.default_rng(2).standard_normal((4, 4, 3, 3)).astype(np.float16),
                               conv_depth=5, conv_depth_norm=1.0))
    mf.layers.append(ConvLayer("double", np.random.default_rng(3).standard_normal((4, 2, 3, 3)), conv_depth=5,
                               conv_depth_norm=1.0))
    mf.layers.append(ConvLayer("up", np.random.default_rng(4).standard_normal((8, 4, 3, 3)).astype(np.float32),
                               transposed=True, op_type="ConvTranspose2d"))
    add_measured(db, mf, {"training": "normal"})
    for layer in mf.layers:
        got = db.weight("a", layer.name)
        assert got.dtype == layer.weight.dtype and got.shape == layer.weight.shape
        assert bits(got) == bits(layer.weight), layer.name
        assert db.filters("a", layer.name).shape == (layer.n_filters, *layer.kernel_size)
    back = db.model_filters("a")
    assert model_sha256(back) == model_sha256(mf) == db.model("a")["sha256"]
    layers = db.layers("a").set_index("layer")
    assert layers.loc["up", "transposed"] and layers.loc["up", "out_channels"] == 4
    assert layers.loc["b2.dw", "groups"] == 32 and layers.loc["half", "dtype"] == "float16"
    assert db.check(deep=True) == []


def test_streaming_in_chunks_equals_whole_read(db, monkeypatch):
    monkeypatch.setattr(filestore, "ROW_GROUP_BYTES", 2000)  # many row groups per file, layers split
    for i in range(3):
        db.add(toy_model(f"m{i}", i), {"training": "adversarial" if i else "normal"})
    layers = db.layers().set_index("layer_id")
    whole = {lid: db.filters(r["model"], r["layer"]) for lid, r in layers.iterrows()}
    for chunk_size in (None, 1, 7, 100, 10**6):
        got: dict[int, list] = {}
        for chunk in db.iter_filters(chunk_size=chunk_size):
            if chunk_size is not None:
                assert len(chunk) <= chunk_size
            if chunk_size is None:
                assert not chunk.filters.flags.writeable
            ids, idx = chunk.layer_ids(), chunk.filter_index()
            assert len(ids) == len(idx) == len(chunk)
            for k in chunk.keys:
                got.setdefault(int(k["layer_id"]), []).append(
                    (k["start"], chunk.filters[k["offset"]:k["offset"] + k["stop"] - k["start"]]))
        assert set(got) == set(whole)
        for lid, parts in got.items():
            starts = [s for s, _ in parts]
            assert starts == sorted(starts) and starts[0] == 0
            assert bits(np.concatenate([p for _, p in parts])) == bits(whole[lid])
    # selections: by model, layer, kernel size, SQL on the layers + model metadata
    sel = list(db.iter_filters(model="m1", layer="b1.conv1"))
    assert bits(np.concatenate([c.filters for c in sel])) == bits(whole[int(layers.index[layers["model"].eq("m1")
                                                                           & layers["layer"].eq("b1.conv1")][0])])
    n3 = sum(len(c) for c in db.iter_filters(where="training = 'adversarial'", kernel_size=3))
    assert n3 == layers[(layers["kernel_size"] == 3) & layers["model"].isin(["m1", "m2"])]["n_filters"].sum()
    first = next(iter(db.iter_filters(where="conv_depth = 0")))
    frame, arr = first
    assert set(frame["layer"]) == {"stem"} and arr.shape[1:] == (7, 7)


def test_direct_reads_equal_pyarrow_reads(db, monkeypatch):
    """Row groups are read with one pread when the file has the layout we write; same bytes as pyarrow."""
    monkeypatch.setattr(filestore, "ROW_GROUP_BYTES", 5000)
    mf = toy_model("a", 3)
    mf.layers.append(ConvLayer("half", np.random.default_rng(2).standard_normal((40, 8, 3, 3)).astype(np.float16)))
    db.add(mf)
    for f in db.snapshot().manifest["files"]:
        rows = db.layers().query("file == @f")
        kernel, dtype = (int(rows["kernel_h"].iloc[0]), int(rows["kernel_w"].iloc[0])), rows["dtype"].iloc[0]
        with filestore.FiltersReader(db.path / f, kernel, dtype) as fast:
            assert all(off is not None for off in fast._raw)
            monkeypatch.setattr(filestore, "FAST_PATH", False)
            with filestore.FiltersReader(db.path / f, kernel, dtype) as slow:
                assert all(off is None for off in slow._raw)
                assert bits(fast.read(0, fast.num_rows)) == bits(slow.read(0, slow.num_rows))
            monkeypatch.setattr(filestore, "FAST_PATH", True)


def test_stored_metrics_equal_measure_weight(db):
    mf = toy_model("a", 5)
    mf.layers[2].weight[:8] *= 1e-4  # some sparse filters
    add_measured(db, mf)
    stored = db.layers("a").set_index("layer")
    for layer in mf.layers:
        row = stored.loc[layer.name]
        if layer.kernel_size == (3, 3):
            expect = measure_weight(layer.weight)
            for col in schema.METRIC_COLUMNS:
                if col == "notes":
                    assert (row[col] if isinstance(row[col], str) else "") == expect[col]
                elif pd.isna(expect[col]):
                    assert pd.isna(row[col])
                else:
                    assert row[col] == expect[col], (layer.name, col)
            assert row["n_filters"] == expect["n_filters"]
        else:
            assert pd.isna(row["sparsity"]) and "not measured" in row["notes"]
    assert stored.loc["b1.conv2", "n_sparse"] >= 8
    # metrics given by the caller (e.g. measure_model) are stored as given
    from filterlens.measure import measure_model

    mf2 = toy_model("b", 6)
    given = measure_model(mf2, kernel_size=None)
    db.add(mf2, layer_metrics=given)
    b = db.layers("b").set_index("layer")
    for _, g in given.iterrows():
        assert b.loc[g["layer"], "variance_entropy"] == g["variance_entropy"] or pd.isna(g["variance_entropy"])
        assert b.loc[g["layer"], "sparsity"] == g["sparsity"]


def test_duplicates_are_refused(db):
    add_measured(db, toy_model("a", 1))
    gen = db.snapshot().generation
    with pytest.raises(DuplicateModelError, match="already in the database as a"):
        add_measured(db, toy_model("renamed", 1))
    with pytest.raises(DuplicateModelError, match="name is already"):
        add_measured(db, toy_model("a", 2))
    assert db.snapshot().generation == gen and len(db) == 1
    assert db.find_sha256(model_sha256(toy_model("x", 1))) == "a"
    # the hash does not depend on layer order or names
    mf = toy_model("x", 1)
    mf.layers.reverse()
    for i, l in enumerate(mf.layers):
        l.name = f"l{i}"
    with pytest.raises(DuplicateModelError):
        add_measured(db, mf)


def test_remove(db):
    for i in range(3):
        add_measured(db, toy_model(f"m{i}", i))
    files = set(db.layers("m1")["file"])
    assert db.remove("m1") == ["m1"]
    assert list(db.models()["model"]) == ["m0", "m2"]
    assert "m1" not in set(db.layers()["model"])
    assert not any((db.path / f).exists() for f in files)
    assert db.query("SELECT count(DISTINCT layer_id) n FROM filters")["n"][0] == len(db.layers())
    with pytest.raises(DatabaseError, match="no model 'nope'"):
        db.remove(["m0", "nope"])
    assert len(db) == 2 and db.check(deep=True) == []
    add_measured(db, toy_model("m1", 1))  # the same weights may come back once removed
    assert len(db) == 3


# --------------------------------------------------------------------------------------------
# crash safety and concurrency


def _writer(path: str, start: int, count: int, started) -> None:
    db = FilterDB.open(path)
    started.set()
    for i in range(start, start + count):
        db.add(big_model(i), {"training": "normal"})
    os._exit(0)


def test_killed_writer_leaves_the_database_as_it_was(tmp_path):
    path = tmp_path / "db"
    FilterDB.create(path)
    ctx = mp.get_context("fork")
    for delay in (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2):
        before = FilterDB.open(path)
        n = len(before)
        started = ctx.Event()
        p = ctx.Process(target=_writer, args=(str(path), n, 50, started))
        p.start()
        assert started.wait(10)
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        assert p.exitcode == -signal.SIGKILL
        db = FilterDB.open(path)
        names = list(db.models()["model"])
        assert names == [f"m{i}" for i in range(len(names))] and len(names) >= n
        assert db.check() == []
    assert db.check(deep=True) == []
    for name in names:
        assert bits(db.weight(name, "conv1")) == bits(big_model(int(name[1:])).layers[1].weight)
    db.add(big_model(len(names)))  # the next writer cleans up after the killed ones
    assert db.info()["stray_files"] == 0 and not any((path / "tmp").iterdir())


def test_killed_cli_extract_subprocess(tmp_path):
    """A real `filterlens extract` process killed with SIGKILL while it works through a zoo."""
    torch = pytest.importorskip("torch")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(12):
        g = torch.Generator().manual_seed(i)
        torch.save({f"conv{j}.weight": torch.randn(128, 128, 3, 3, generator=g) for j in range(4)}, zoo / f"z{i:02d}.pt")
    script = textwrap.dedent("""
        import sys, typer
        from filterlens.cli import db_cmd
        app = typer.Typer()
        @app.callback()
        def root(): pass
        db_cmd.register(app)
        app(args=sys.argv[1:])
    """)
    path = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-c", script, "extract", *sorted(map(str, zoo.iterdir())), "--db", str(path),
                             "--kernel-size", "all"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(2):  # let two models land, then kill in the middle of the next ones
            assert proc.stdout.readline().startswith("added")
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    db = FilterDB.open(path)
    names = list(db.models()["model"])
    assert names == [f"z{i:02d}" for i in range(len(names))] and len(names) >= 2
    assert db.check(deep=True) == []


def test_readers_see_a_consistent_state_while_a_writer_adds(tmp_path):
    path = tmp_path / "db"
    FilterDB.create(path)
    ctx = mp.get_context("fork")
    started = ctx.Event()
    p = ctx.Process(target=_writer, args=(str(path), 0, 6, started))
    p.start()
    started.wait(10)
    reader = FilterDB.open(path)
    seen = set()
    while True:
        alive = p.is_alive()
        snap = reader.snapshot()
        models, layers = snap.models, snap.layers
        assert list(models["model"]) == [f"m{i}" for i in range(len(models))]
        assert set(layers["model"]) == set(models["model"])
        assert (layers.groupby("model")["n_filters"].sum().reindex(models["model"]).to_numpy()
                == models["n_filters"].to_numpy()).all()
        q = reader.query("SELECT count(*) AS n FROM models")["n"][0]
        assert q >= len(models)  # a later state, never a partial one
        if len(models):
            last = models["model"].iloc[-1]
            assert sum(len(c) for c in reader.iter_filters(model=last)) == models["n_filters"].iloc[-1]
        seen.add(len(models))
        if not alive:
            break
    p.join()
    assert p.exitcode == 0 and len(seen) > 1 and FilterDB.open(path).check() == []


def test_interrupted_commit_at_every_step_changes_nothing(db, monkeypatch):
    """An I/O error at each fsync of an add leaves the committed state (and the next add) intact."""
    from filterlens.db import _fs

    add_measured(db, toy_model("a", 1))
    models, files = db.models(), db.snapshot().manifest["files"]
    real = {"fsync_file": _fs.fsync_file, "fsync_dir": _fs.fsync_dir}
    failed_before_commit = 0
    for step in range(1, 30):
        calls = {"n": 0}

        def failing(fn):
            def wrapped(*a, **k):
                calls["n"] += 1
                if calls["n"] == step:
                    raise OSError("disk gone")
                return fn(*a, **k)
            return wrapped

        for name, fn in real.items():
            monkeypatch.setattr(_fs, name, failing(fn))
        try:
            add_measured(db, toy_model("b", 2))
        except OSError:
            pass
        else:
            break
        finally:
            monkeypatch.undo()
        fresh = FilterDB.open(db.path)
        assert fresh.check() == []
        if "b" in fresh:  # the manifest was replaced; only the directory fsync after it failed
            assert fresh.snapshot().manifest["files"][:len(files)] == files
            fresh.remove("b")
        else:
            failed_before_commit += 1
            pd.testing.assert_frame_equal(fresh.models(), models)
            assert fresh.snapshot().manifest["files"] == files
    assert failed_before_commit >= 4
    assert "b" in db  # added by the first attempt that saw no error
    assert len(db) == 2 and db.info()["stray_files"] == 0 and db.check(deep=True) == []


def test_writers_lock(db):
    from filterlens.db import _fs

    with _fs.WriterLock(db.path / schema.LOCK):
        busy = FilterDB.open(db.path, lock_timeout=0.2)
        with pytest.raises(DatabaseError, match="another process is writing"):
            add_measured(busy, toy_model("a", 1))
    add_measured(busy, toy_model("a", 1))


# --------------------------------------------------------------------------------------------
# opening: foreign, corrupt, versions


def test_foreign_and_corrupt_directories(tmp_path):
    with pytest.raises(DatabaseError, match="no such filter database"):
        FilterDB.open(tmp_path / "missing")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(DatabaseError, match="not a filterlens database"):
        FilterDB.open(foreign)
    with pytest.raises(DatabaseError, match="not empty"):
        FilterDB.create(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]  # untouched
    with pytest.raises(DatabaseError, match="not empty"):
        FilterDB.open_or_create(foreign)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatabaseError, match="not a directory|not a filter database"):
        FilterDB.open(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatabaseError, match="empty directory"):
        FilterDB.open(empty)
    assert len(FilterDB.create(empty)) == 0  # an empty directory may become one
    with pytest.raises(DatabaseError, match="already a filter database"):
        FilterDB.create(empty)

    path = tmp_path / "db"
    add_measured(FilterDB.create(path), toy_model("a", 1))
    manifest = (path / schema.MANIFEST).read_text()
    (path / schema.MANIFEST).write_text("{not json")
    with pytest.raises(DatabaseError, match="corrupt"):
        FilterDB.open(path)
    (path / schema.MANIFEST).write_text(manifest)
    table = path / json.loads(manifest)["layers_table"]
    table.rename(table.with_suffix(".bak"))
    with pytest.raises(DatabaseError, match="corrupt"):
        FilterDB.open(path)
    table.with_suffix(".bak").rename(table)
    (path / schema.MARKER).write_text("garbage")
    with pytest.raises(DatabaseError, match="corrupt"):
        FilterDB.open(path)


def test_schema_version_is_checked(db):
    marker = db.path / schema.MARKER
    m = json.loads(marker.read_text())
    assert m["schema_version"] == schema.SCHEMA_VERSION
    for version, message in ((schema.SCHEMA_VERSION + 1, "newer"), (0, "older")):
        marker.write_text(json.dumps({**m, "schema_version": version}))
        with pytest.raises(DatabaseError, match=message):
            FilterDB.open(db.path)
    marker.write_text(json.dumps(m))
    FilterDB.open(db.path)


# --------------------------------------------------------------------------------------------
# SQL


def test_duckdb_query_in_place(db):
    for i in range(4):
        add_measured(db, toy_model(f"m{i}", i), {"training": "adversarial" if i % 2 else "normal", "dataset": "cifar10"})
    sql = """
        SELECT CASE WHEN conv_depth = 0 THEN 'first' ELSE CAST(CAST(ceil(conv_depth_norm * 10) AS INTEGER) AS VARCHAR) END AS bin,
               sum(variance_entropy * n_nonsparse) / sum(n_nonsparse) AS ve
        FROM layers_full
        WHERE training = 'adversarial' AND kernel_size = 3 AND NOT transposed
        GROUP BY bin ORDER BY bin"""
    got = db.query(sql).set_index("bin")["ve"]
    layers = db.layers().merge(db.models()[["model", "training"]], on="model")
    adv = layers[(layers["training"] == "adversarial") & (layers["kernel_size"] == 3)].copy()
    adv["bin"] = np.where(adv["conv_depth"] == 0, "first",
                          np.ceil(adv["conv_depth_norm"].astype(float) * 10).astype(int).astype(str))
    expect = adv.groupby("bin").apply(lambda g: np.average(g["variance_entropy"], weights=g["n_nonsparse"]),
                                      include_groups=False)
    assert list(got.index) == sorted(expect.index)
    np.testing.assert_allclose(got.to_numpy(), expect.loc[got.index].to_numpy(), rtol=1e-12)
    # the filters view decodes the stored bytes exactly
    rows = db.query("SELECT filter, w FROM filters WHERE model = 'm1' AND layer = 'b1.conv1' ORDER BY filter")
    direct = db.filters("m1", "b1.conv1").reshape(len(rows), -1).astype(np.float64)
    assert np.array_equal(np.stack(rows["w"].to_numpy()), direct)
    assert db.query("SELECT count(*) AS n FROM filters_raw")["n"][0] == db.layers()["n_filters"].sum()
    with pytest.raises(DatabaseError, match="query failed"):
        db.query("SELECT nope FROM models")


def test_query_on_an_empty_database(db):
    assert db.query("SELECT count(*) AS n FROM filters")["n"][0] == 0
    assert db.models().empty and list(db.iter_filters()) == []


# --------------------------------------------------------------------------------------------
# metadata


def test_metadata_values_are_validated():
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps("0.5") == 0.5 and parse_eps("") is None
    with pytest.raises(DatabaseError, match="eps"):
        parse_eps("eight")
    from filterlens.db import normalize_metadata

    md = normalize_metadata({"Name": "x", "training": "Adversarial", "eps": "4/255", "clean_acc": "91.5%",
                             "tags": "a, b,a", "Paper": "arxiv"})
    assert md["model"] == "x" and md["training"] == "adversarial" and md["clean_acc"] == 91.5
    assert md["tags"] == "a,b" and md["extra"] == {"Paper": "arxiv"}
    # one vocabulary (filterlens.training.training_label): synonyms are stored as the label
    assert normalize_metadata({"training": "robust"})["training"] == "adversarial"
    assert normalize_metadata({"training": "clean"})["training"] == "normal"
    assert normalize_metadata({"training": "n/a"})["training"] == "unknown"
    with pytest.raises(DatabaseError, match="normal, adversarial, unknown"):
        normalize_metadata({"training": "nromal"})


def _npz_loader(source, arch, name):
    data = np.load(source)
    layers = [ConvLayer(k, data[k], conv_depth=i, conv_depth_norm=i / max(1, len(data.files) - 1))
              for i, k in enumerate(data.files)]
    return ModelFilters(name=name or Path(source).stem, source=source, layers=layers, depth_source="order")


def test_meta_csv_matches_rows_by_source_or_name(tmp_path, db):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(4):
        np.savez(zoo / f"net{i}.npz", conv=np.random.default_rng(i).standard_normal((8, 4, 3, 3)).astype(np.float32))
    csv = tmp_path / "meta.csv"
    csv.write_text("source,model,training,eps,threat_model,clean_acc,robust_acc,tags,paper\n"
                   "zoo/net0.npz,robust0,adversarial,8/255,Linf,85.2,56.1,wrn;cifar,arxiv:1\n"
                   "net1.npz,,normal,,,94.1,,,\n"
                   ",net2,unknown,,,,,,\n"
                   "zoo/unused.npz,ghost,normal,,,,,,\n")
    table = MetaTable.read_csv(csv)
    results = list(extract_sources(db, sorted(map(str, zoo.glob("*.npz"))), meta_table=table,
                                   metadata={"dataset": "cifar10"}, loader=_npz_loader))
    assert [r.status for r in results] == ["added"] * 4
    models = db.models().set_index("model")
    assert list(models.index) == ["robust0", "net1", "net2", "net3"]
    assert models.loc["robust0", "eps"] == pytest.approx(8 / 255) and models.loc["robust0", "training"] == "adversarial"
    assert models.loc["robust0", "tags"] == "wrn,cifar" and json.loads(models.loc["robust0", "extra"]) == {"paper": "arxiv:1"}
    assert models.loc["net1", "training"] == "normal" and models.loc["net1", "clean_acc"] == 94.1
    assert models.loc["net3", "training"] == "unknown" and (models["dataset"] == "cifar10").all()
    assert table.unused_lines() == [5]
    bad = tmp_path / "bad.csv"
    bad.write_text("model,training\nx,sometimes\n")
    with pytest.raises(DatabaseError, match="bad.csv, line 2: training must be"):
        MetaTable.read_csv(bad)
    again = list(extract_sources(db, [str(zoo / "net3.npz")], loader=_npz_loader, name="copy"))
    assert again[0].status == "failed" and "already in the database as net3" in again[0].message


# --------------------------------------------------------------------------------------------
# HDF5 (CNN-Filter-DB layout)


def write_published_h5(path: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """A small file in the published layout: filters N x 3 x 3 and a PyTables meta table."""
    import h5py

    rng = np.random.default_rng(7)
    rows, blocks, start = [], [], 0
    models = [(0, "robust_wrn", True, 85.25, 56.5, "WRN-28-10", "WideResNet"),
              (3, "normal_wrn", False, 94.75, 0.0, "WRN-28-10", "WideResNet")]
    shapes = [(3, 16), (16, 16), (16, 32), (32, 32)]
    for mid, name, robust, clean, rob, net, backbone in models:
        for lid, (cin, cout) in enumerate(shapes):
            n = cin * cout
            blocks.append(rng.standard_normal((n, 3, 3)).astype(np.float32) * (0.001 if lid == 2 else 1))
            rows.append({"model_id": mid, "conv_depth": lid, "conv_depth_norm": lid / 3, "layer_id": lid,
                         "filter_ids": f"{start}:{start + n - 1}", "in_channels": cin, "out_channels": cout,
                         "depth": 12, "model": name, "Name": name.split("_")[1], "Robust": robust,
                         "Training-Dataset": "cifar10", "Clean Accuracy": clean, "Robust Accuracy": rob,
                         "Network": net, "Backbone": backbone, "producer": None if mid else "pytorch"})
            start += n
    filters = np.concatenate(blocks)
    with h5py.File(path, "w") as f:
        f.create_dataset("filters", data=filters)
    meta = pd.DataFrame(rows).set_index(["model_id", "conv_depth", "conv_depth_norm", "layer_id"])
    meta.to_hdf(path, key="meta", mode="a", format="table")
    return filters, pd.read_hdf(path, "meta")


def test_h5_round_trip_is_identical(tmp_path, db):
    import h5py

    src = tmp_path / "dataset.h5"
    filters, meta = write_published_h5(src)
    result = import_h5(src, db)
    assert result.added == ["robust_wrn", "normal_wrn"] and result.n_filters == len(filters)
    models = db.models().set_index("model")
    assert models.loc["robust_wrn", "training"] == "adversarial" and models.loc["normal_wrn", "training"] == "normal"
    assert models.loc["robust_wrn", "clean_acc"] == pytest.approx(0.8525) and models.loc["robust_wrn", "arch"] == "WRN-28-10"
    layer = db.layers("robust_wrn").set_index("layer").loc["layer_1"]
    w = db.weight("robust_wrn", "layer_1")
    assert w.shape == (16, 16, 3, 3) and layer["conv_depth"] == 1
    assert layer["variance_entropy"] == measure_weight(w)["variance_entropy"]
    assert bits(w.reshape(-1, 3, 3)) == bits(filters[48:48 + 256])

    out = tmp_path / "export.h5"
    export_h5(db, out)
    with h5py.File(out, "r") as f:
        assert f["filters"].dtype == np.float32 and f["filters"].shape == filters.shape
        assert bits(f["filters"][:]) == bits(filters)
    pd.testing.assert_frame_equal(pd.read_hdf(out, "meta"), meta, check_exact=True)
    # importing again skips the models already there
    assert import_h5(out, db).skipped and len(db) == 2


def test_h5_export_of_extracted_models(tmp_path, db):
    import h5py

    add_measured(db, toy_model("a", 1), {"training": "adversarial", "dataset": "cifar10", "clean_acc": 80})
    add_measured(db, toy_model("b", 2), {"training": "normal"})
    out = tmp_path / "x.h5"
    summary = export_h5(db, out)
    layers = db.layers()
    l3 = layers[(layers["kernel_size"] == 3)]
    assert summary["n_filters"] == l3["n_filters"].sum() and summary["n_layers"] == len(l3)
    meta = pd.read_hdf(out, "meta")
    assert list(meta.index.names) == ["model_id", "conv_depth", "conv_depth_norm", "layer_id"]
    assert list(meta["Robust"]) == [True] * 4 + [False] * 4
    with h5py.File(out, "r") as f:
        for (_, r), fid in zip(l3.iterrows(), meta["filter_ids"]):
            a, b = map(int, fid.split(":"))
            assert bits(f["filters"][a:b + 1]) == bits(db.filters(r["model"], r["layer"]))
    db2 = FilterDB.create(tmp_path / "db2")
    assert import_h5(out, db2).added == ["a", "b"]
    cols = ["model", "training", "dataset", "clean_acc"]
    pd.testing.assert_frame_equal(db2.models()[cols], db.models()[cols])
    assert bits(db2.filters("a", "b1.conv1")) == bits(db.filters("a", "b1.conv1"))


# --------------------------------------------------------------------------------------------
# command line


def test_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from filterlens.cli import db_cmd

    torch = pytest.importorskip("torch")
    app = typer.Typer()

    @app.callback()
    def root():
        pass

    db_cmd.register(app)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(3):
        torch.save({"conv1.weight": torch.randn(8, 3, 3, 3), "conv2.weight": torch.randn(16, 8, 3, 3)},
                   zoo / f"n{i}.pt")
    (zoo / "broken.pt").write_bytes(b"not a checkpoint")
    path = str(tmp_path / "db")
    run = CliRunner().invoke
    r = run(app, ["extract", *sorted(map(str, zoo.iterdir())), "--db", path, "--training", "adversarial",
                  "--eps", "8/255"])
    assert r.exit_code == 1 and r.output.count("added n") == 3 and "broken.pt" in r.output
    r = run(app, ["db", "models", "--db", path, "--format", "json"])
    models = json.loads(r.output)
    assert [m["model"] for m in models] == ["n0", "n1", "n2"] and models[0]["eps"] == pytest.approx(8 / 255)
    r = run(app, ["db", "query", "SELECT count(*) AS n FROM layers_full WHERE training = 'adversarial'",
                  "--db", path, "-f", "csv"])
    assert r.exit_code == 0 and r.output.split() == ["n", "6"]
    r = run(app, ["db", "layers", "--db", path, "--where", "layer = 'conv2'", "-f", "csv"])
    assert r.exit_code == 0 and len(pd.read_csv(pd.io.common.StringIO(r.output))) == 3
    r = run(app, ["extract", str(zoo / "n0.pt"), "--db", path, "--name", "dup"])
    assert r.exit_code == 1 and "already in the database as n0" in r.output
    r = run(app, ["extract", str(zoo / "n0.pt"), "--db", path, "--skip-existing"])
    assert r.exit_code == 0
    r = run(app, ["extract", str(zoo / "n0.pt"), "--db", path, "--training", "nromal"])  # robust, AT ... are words
    assert isinstance(r.exception, DatabaseError)
    assert run(app, ["db", "remove", "n1", "--db", path, "--yes"]).exit_code == 0
    assert run(app, ["db", "check", "--db", path, "--deep"]).exit_code == 0
    r = run(app, ["db", "export-h5", str(tmp_path / "out.h5"), "--db", path])
    assert r.exit_code == 0 and (tmp_path / "out.h5").exists()
    r = run(app, ["db", "info", "--db", path, "-f", "json"])
    assert json.loads(r.output)["n_models"] == 2
    r = run(app, ["db", "info", "--db", str(zoo)])
    assert isinstance(r.exception, DatabaseError) and "not a filterlens database" in str(r.exception)
