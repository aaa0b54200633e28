"""Issue 12, items 1-6: no file a user hands us runs code, and no command destroys their data.

Each test builds its hostile file, runs the command as a user would, and checks the exit status,
one clear ``error:`` line without a traceback, and that nothing happened: no marker file, the
database byte-identical, the user's files intact.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from filterlens import safe_pickle
from filterlens.db import DatabaseError, FilterDB
from security_helpers import Evil, assert_one_error_line, make_db, run_cli, tree, write_cifar_python, write_fixed_h5

pytest.importorskip("h5py")
pytest.importorskip("tables")


# --------------------------------------------------------------------------------------------
# the allow-list unpickler itself


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_safe_pickle_reads_plain_data_of_every_protocol(protocol):
    obj = {"s": "text", b"b": b"bytes", "n": [1, 2.5, True, None, 1 + 2j], "t": (1, "x"), "set": {1, 2},
           "arr": np.arange(12, dtype=np.float32).reshape(3, 4), "f64": np.float64(0.25), "i8": np.int8(-3),
           "obj": np.array(["a", None], dtype=object)}
    back = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
    assert back.keys() == obj.keys()
    assert np.array_equal(back["arr"], obj["arr"]) and back["arr"].dtype == np.float32
    assert back["f64"] == 0.25 and type(back["f64"]) is np.float64 and back["i8"] == -3
    assert back["n"] == obj["n"] and back["t"] == obj["t"] and back["set"] == {1, 2}
    assert list(back["obj"]) == ["a", None]


@pytest.mark.parametrize("payload", [
    lambda m: Evil(m),
    lambda m: [1, Evil(m)],  # nested
    lambda m: np.array([Evil(m)], dtype=object),  # inside an object array
])
def test_safe_pickle_refuses_code_and_runs_none(tmp_path, payload):
    marker = tmp_path / "marker"
    blob = pickle.dumps(payload(marker))
    with pytest.raises(safe_pickle.UnsafePickleError, match="system"):
        safe_pickle.loads(blob)
    assert not marker.exists()


def test_safe_pickle_refuses_other_globals():
    for blob in (pickle.dumps(pd.Timestamp("2020-01-01")), pickle.dumps(eval), b"cbuiltins\ngetattr\n."):
        with pytest.raises(safe_pickle.UnsafePickleError):
            safe_pickle.loads(blob)


# --------------------------------------------------------------------------------------------
# 1. db import-h5: the meta table's pickled object columns


def test_import_h5_reads_the_published_fixed_format(tmp_path, capsys):
    src = tmp_path / "dataset.h5"
    filters = write_fixed_h5(src)
    code, out, err = run_cli(capsys, "db", "import-h5", src, "--db", tmp_path / "db")
    assert code == 0, err
    db = FilterDB.open(tmp_path / "db")
    assert list(db.models()["model"]) == ["robust_wrn", "normal_wrn"]
    assert db.attrs()["h5_layout"]["format"] == "fixed"
    w = db.filters("robust_wrn", "layer_0")
    assert np.array_equal(w, filters[:12])


def test_import_h5_with_code_in_the_meta_table_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    src = tmp_path / "dataset.h5"
    write_fixed_h5(src, object_extra=Evil(marker))
    db = make_db(tmp_path / "db")
    before = tree(db.path)
    code, _, err = run_cli(capsys, "db", "import-h5", src, "--db", db.path)
    assert code == 1
    assert_one_error_line(err, "refused to read the meta table", "could run code")
    assert not marker.exists()
    assert tree(db.path) == before


def test_import_h5_hostile_node_attribute_runs_nothing(tmp_path, capsys):
    """PyTables unpickles node attributes too: a pickled attribute is refused the same way."""
    import tables

    marker = tmp_path / "marker"
    src = tmp_path / "dataset.h5"
    write_fixed_h5(src)
    with tables.open_file(src, "a") as f:
        f.root.meta._v_attrs.pandas_type = Evil(marker)  # stored as a pickle; pandas reads it first
    assert not marker.exists()
    code, _, err = run_cli(capsys, "db", "import-h5", src, "--db", tmp_path / "db")
    assert code == 1 and not marker.exists()
    assert_one_error_line(err, "could run code")
    assert not (tmp_path / "db").exists()  # the database this command would have made is not left behind


def test_import_h5_reads_no_data_from_other_files(tmp_path, capsys):
    import h5py

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(36, dtype=np.float32).tobytes())
    src = tmp_path / "dataset.h5"
    write_fixed_h5(src)
    with h5py.File(src, "a") as f:
        del f["filters"]
        f.create_dataset("filters", shape=(1, 3, 3), dtype=np.float32, external=[(str(secret), 0, 36)])
    code, _, err = run_cli(capsys, "db", "import-h5", src, "--db", tmp_path / "db")
    assert code == 1
    assert_one_error_line(err, "refers to data outside the file")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("filters", data=np.zeros((100, 3, 3), np.float32))
    with h5py.File(src, "a") as f:
        del f["filters"]
        f["filters"] = h5py.ExternalLink(str(other), "/filters")
    code, _, err = run_cli(capsys, "db", "import-h5", src, "--db", tmp_path / "db")
    assert code == 1
    assert_one_error_line(err, "refers to data outside the file")


# --------------------------------------------------------------------------------------------
# 2. the CIFAR-10 python archive


def test_cifar10_python_archive_reads_with_the_allow_list(tmp_path):
    from filterlens.data.cifar import read_cifar10_python

    write_cifar_python(tmp_path / "cifar-10-python.tar.gz")
    splits = read_cifar10_python(tmp_path / "cifar-10-python.tar.gz")
    assert splits["train"].images.shape == (50, 32, 32, 3) and splits["test"].images.shape == (10, 32, 32, 3)
    assert splits["train"].classes[0] == "airplane"


def test_cifar10_crafted_batch_runs_nothing(tmp_path, capsys):
    from filterlens.data import DataError, load_dataset

    marker = tmp_path / "marker"
    write_cifar_python(tmp_path / "cifar-10-python.tar.gz", batch_payload=Evil(marker))
    with pytest.raises(DataError, match="could run code"):
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert not marker.exists()
    # and through a command that trains on it
    code, _, err = run_cli(capsys, "train", "--arch", "cifar_resnet20", "--dataset", "cifar10", "--data-dir",
                           tmp_path, "--epochs", "1", "--out", tmp_path / "model.safetensors")
    assert code != 0 and not marker.exists()
    if code == 1:
        assert_one_error_line(err, "could run code")
    assert not (tmp_path / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------
# 3. the SQL surface


@pytest.mark.parametrize("sql, says", [
    ("COPY (SELECT 1) TO '{t}/pwn.csv'", "only SELECT"),
    ("COPY models TO '{db}/tables/models.000002.parquet' (FORMAT parquet)", "only SELECT"),
    ("EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{db}/tables/models.000002.parquet' "
     "(FORMAT parquet, USE_TMP_FILE false)", "only SELECT"),
    ("EXPLAIN SELECT * FROM models", "only SELECT"),
    ("PRAGMA table_info('models')", "only SELECT"),
    ("CALL pragma_version()", "only SELECT"),
    ("EXPORT DATABASE '{t}/exported'", "only SELECT"),
    ("SELECT * FROM read_parquet('{db}/tables/models.000002.parquet')", "disabled"),
    ("SELECT 1; COPY (SELECT 1) TO '{t}/pwn.csv'", "one SQL statement"),
    ("ATTACH '{t}/pwn.duckdb' AS x", "only SELECT"),
    ("INSTALL httpfs", "only SELECT"),
    ("LOAD httpfs", "only SELECT"),
    ("SET enable_external_access = true", "only SELECT"),
    ("CREATE TABLE x AS SELECT 1", "only SELECT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
    ("SELECT * FROM read_text('{t}/secret.txt')", "disabled"),
    ("SELECT * FROM glob('/etc/*')", "disabled"),
    ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "disabled"),
    ("", "empty SQL"),
    ("  ;  -- nothing", "empty SQL"),
])
def test_db_query_is_read_only_and_confined(tmp_path, capsys, sql, says):
    db = make_db(tmp_path / "db")
    (tmp_path / "secret.txt").write_text("secret")
    before = tree(db.path)
    outside = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(capsys, "db", "query", "--db", db.path, sql.format(t=tmp_path, db=db.path))
    assert code == 1
    assert_one_error_line(err, says)
    assert "secret" not in out
    assert tree(db.path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == outside


def test_db_query_still_answers_select(tmp_path, capsys):
    db = make_db(tmp_path / "db")
    code, out, err = run_cli(capsys, "db", "query", "--db", db.path, "--format", "csv",
                             "WITH t AS (SELECT model FROM layers_full WHERE training = 'normal') "
                             "SELECT DISTINCT model FROM t")
    assert code == 0, err
    assert out.split() == ["model", "m1"]
    code, out, _ = run_cli(capsys, "db", "query", "--db", db.path, "--format", "csv",
                           "SELECT count(*) AS n FROM filters")
    assert code == 0 and out.split() == ["n", str(2 * (8 * 3 + 8 * 8))]


@pytest.mark.parametrize("command", [["db", "models"], ["db", "layers"]])
@pytest.mark.parametrize("where", [
    "1=1; COPY (SELECT 1) TO '{t}/pwn.csv'",
    "1=1) UNION SELECT * FROM models WHERE (1=1",
    "1=1 ORDER BY 1; ATTACH '{t}/x.duckdb'",
    "",
])
def test_where_is_one_expression(tmp_path, capsys, command, where):
    db = make_db(tmp_path / "db")
    before = tree(db.path)
    code, _, err = run_cli(capsys, *command, "--db", db.path, "--where", where.format(t=tmp_path))
    assert code == 1
    assert_one_error_line(err, "--where")
    assert tree(db.path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_where_still_filters(tmp_path, capsys):
    db = make_db(tmp_path / "db", n=3)
    code, out, err = run_cli(capsys, "db", "models", "--db", db.path, "--format", "csv", "--where",
                             "training = 'adversarial' AND model IN (SELECT model FROM layers WHERE n_filters > 0)")
    assert code == 0, err
    assert list(pd.read_csv(pd.io.common.StringIO(out))["model"]) == ["m0", "m2"]
    assert len(db.where("layers_full", "conv_depth = 1")) == 3


def test_groups_is_one_expression(tmp_path, capsys):
    db = make_db(tmp_path / "db", n=4)
    before = tree(db.path)
    code, _, err = run_cli(capsys, "compare", "--db", db.path, "--n-boot", "20", "--no-shift",
                           "--groups", f"1=1; COPY (SELECT 1) TO '{tmp_path}/pwn.csv'",
                           "--groups", "training = 'normal'")
    assert code == 1
    assert_one_error_line(err, "--groups")
    assert tree(db.path) == before and not (tmp_path / "pwn.csv").exists()


def test_api_where_of_iter_filters_is_one_expression(tmp_path):
    db = make_db(tmp_path / "db")
    with pytest.raises(DatabaseError, match="not one SQL condition"):
        list(db.iter_filters(where=f"true; COPY (SELECT 1) TO '{tmp_path}/pwn.csv'"))
    assert not (tmp_path / "pwn.csv").exists()
    assert sum(len(c) for c in db.iter_filters(where="training = 'normal'")) == 8 * 3 + 8 * 8


# --------------------------------------------------------------------------------------------
# 4. paths inside a database


def _rewrite_manifest(db: FilterDB, change) -> None:
    path = db.path / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _point_layer_at(db: FilterDB, rel: str) -> None:
    """Make the layers table say a model's filters live at ``rel`` (as a hostile database would)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = json.loads((db.path / "manifest.json").read_text())
    table = pq.read_table(db.path / manifest["layers_table"])
    files = table.column("file").to_pylist()
    files[0] = rel
    table = table.set_column(table.schema.get_field_index("file"), "file", pa.array(files, pa.string()))
    pq.write_table(table, db.path / manifest["layers_table"])


@pytest.mark.parametrize("how", ["layers", "manifest", "symlink"])
def test_db_remove_never_deletes_outside_the_database(tmp_path, capsys, how):
    db = make_db(tmp_path / "db")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    if how == "layers":
        _point_layer_at(db, "filters/../../victim.txt")
    elif how == "manifest":
        _rewrite_manifest(db, lambda m: m["files"].append("../victim.txt"))
    else:  # a filters file that is a symlink to the user's file
        manifest = json.loads((db.path / "manifest.json").read_text())
        target = db.path / manifest["files"][0]
        target.unlink()
        target.symlink_to(victim)
    before = tree(db.path)
    code, _, err = run_cli(capsys, "db", "remove", "m0", "--yes", "--db", db.path)
    assert code == 1
    assert_one_error_line(err, "corrupt filter database")
    assert victim.read_text() == "mine"
    assert tree(db.path) == before


def test_manifest_table_paths_stay_inside(tmp_path, capsys):
    db = make_db(tmp_path / "db")
    (tmp_path / "models.parquet").write_bytes((db.path / db.snapshot().manifest["models_table"]).read_bytes())
    _rewrite_manifest(db, lambda m: m.update(models_table="tables/../../models.parquet"))
    code, _, err = run_cli(capsys, "db", "models", "--db", db.path)
    assert code == 1
    assert_one_error_line(err, "not a path under tables/")


# --------------------------------------------------------------------------------------------
# 5. demo --out onto a user's folder


def test_demo_keeps_a_users_database_and_files(tmp_path, capsys):
    out = tmp_path / "work"
    db = make_db(out / "filters.db")
    (out / "layers.csv").write_text("my,own\n1,2\n")
    before = tree(out)
    code, _, err = run_cli(capsys, "demo", "--out", out, "--no-first-layer", "--n-boot", "20")
    assert code == 1
    assert_one_error_line(err, "filters.db", "not written by a previous 'filterlens demo'")
    assert tree(out) == before and len(FilterDB.open(db.path)) == 2
    # a user's layers.csv alone is refused too
    other = tmp_path / "other"
    other.mkdir()
    (other / "layers.csv").write_text("mine\n")
    code, _, err = run_cli(capsys, "demo", "--out", other, "--no-first-layer", "--n-boot", "20")
    assert code == 1 and (other / "layers.csv").read_text() == "mine\n"
    assert_one_error_line(err, "layers.csv")
    assert sorted(p.name for p in other.iterdir()) == ["layers.csv"]


def test_demo_record_lets_a_rerun_replace_only_its_own_outputs(tmp_path):
    from filterlens import demo

    out = tmp_path / "d"
    out.mkdir()
    (out / "report.html").write_text("old demo report")
    demo._write_record(out)
    demo._check_out_dir(out)  # recorded and unchanged: a rerun may replace it
    (out / "report.html").write_text("edited by the user")
    with pytest.raises(Exception, match="not written by a previous"):
        demo._check_out_dir(out)


# --------------------------------------------------------------------------------------------
# 6. import-h5: every filter range is checked before anything is committed


@pytest.mark.parametrize("ids, says", [
    (["0:11", "12:27", "28:39", "40:99999"], "beyond the"),
    (["0:11", "12:27", "28:39", "30:45"], "overlap"),
    (["0:11", "12:27", "28:39", "x:y"], "start:end"),
    (["0:11", "12:27", "28:39", "45:40"], "empty or negative"),
])
def test_import_h5_checks_all_ranges_first(tmp_path, capsys, ids, says):
    src = tmp_path / "dataset.h5"
    write_fixed_h5(src, filter_ids=ids)
    db = make_db(tmp_path / "db")
    before = tree(db.path)
    code, _, err = run_cli(capsys, "db", "import-h5", src, "--db", db.path)
    assert code == 1
    assert_one_error_line(err, says, "nothing was imported")
    assert tree(db.path) == before


def test_import_h5_says_what_was_committed_when_the_disk_fails(tmp_path, monkeypatch):
    from filterlens.db import import_h5

    src = tmp_path / "dataset.h5"
    write_fixed_h5(src)
    db = FilterDB.create(tmp_path / "db")
    real_add = FilterDB.add_layers  # import_h5 stores each model layer by layer
    calls = {"n": 0}

    def add_then_fail(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_add(self, *a, **k)

    monkeypatch.setattr(FilterDB, "add_layers", add_then_fail)
    with pytest.raises(DatabaseError, match=r"No space left on device.*1 model\(s\) were imported before it "
                                            r"and are kept: robust_wrn"):
        import_h5(src, db)
    assert list(FilterDB.open(db.path).models()["model"]) == ["robust_wrn"]


def test_the_query_connection_itself_cannot_touch_files(tmp_path):
    """Defence in depth: even a statement that got past the checks finds no file access."""
    import duckdb

    db = make_db(tmp_path / "db")
    before = tree(db.path)
    con = db._connection(db.snapshot())
    table = db.path / db.snapshot().manifest["models_table"]
    for sql in (f"COPY (SELECT 1 AS x) TO '{table}' (FORMAT parquet, USE_TMP_FILE false)",
                f"SELECT * FROM read_parquet('{table}')", "SET enable_external_access = true",
                f"ATTACH '{tmp_path}/x.duckdb'", "INSTALL httpfs"):
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    assert tree(db.path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["db"]
    assert con.execute("SELECT count(*) FROM filters").fetchone()[0] == 2 * (8 * 3 + 8 * 8)
