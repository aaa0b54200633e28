"""Issue 12, items 7-12: bounded decompression, one rule for unmeasurable models, no markup on
user text, one clear line (never a traceback) for a user's mistake, and the minor cases."""

from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from filterlens.db import DatabaseError, FilterDB
from security_helpers import add_measured, assert_one_error_line, make_db, run_cli, toy_model, tree, write_fixed_h5

torch = pytest.importorskip("torch")


def _save(path, state):
    torch.save(state, path)
    return path


# --------------------------------------------------------------------------------------------
# 7. decompression is bounded


def test_gzip_bomb_is_refused_at_the_cap(tmp_path, capsys, monkeypatch):
    bomb = tmp_path / "bomb.onnx.gz"
    bomb.write_bytes(gzip.compress(b"\0" * (16 << 20)))  # 16 KB on disk, 16 MB expanded
    assert bomb.stat().st_size < 100_000
    monkeypatch.setenv("FILTERLENS_MAX_DECOMPRESSED", "1M")
    code, _, err = run_cli(capsys, "metrics", bomb)
    assert code == 1
    assert_one_error_line(err, "expands to more than 1,048,576 bytes", "FILTERLENS_MAX_DECOMPRESSED")


def test_decompression_memory_stays_near_the_cap(tmp_path):
    from filterlens.errors import SourceError
    from filterlens.sources.onnx_model import gunzip_bounded

    data = gzip.compress(b"\0" * (256 << 20))  # 256 MB of zeros in ~250 KB
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match="expands to more than"):
            gunzip_bounded(data, "bomb.gz", limit=4 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # the output buffer stops at the cap, not at 256 MB


def test_decompression_cap_default_and_override(monkeypatch):
    from filterlens.errors import SourceError
    from filterlens.sources.onnx_model import MAX_DECOMPRESSED_BYTES, gunzip_bounded, max_decompressed_bytes

    monkeypatch.delenv("FILTERLENS_MAX_DECOMPRESSED", raising=False)
    assert max_decompressed_bytes() == MAX_DECOMPRESSED_BYTES == 2 << 30
    monkeypatch.setenv("FILTERLENS_MAX_DECOMPRESSED", "8G")
    assert max_decompressed_bytes() == 8 << 30
    monkeypatch.setenv("FILTERLENS_MAX_DECOMPRESSED", "lots")
    with pytest.raises(SourceError, match="expected a number of bytes"):
        max_decompressed_bytes()
    payload = os.urandom(5000)
    multi = gzip.compress(payload[:100]) + gzip.compress(payload[100:])  # two gzip members
    assert gunzip_bounded(multi, "x", limit=5000) == payload
    with pytest.raises(SourceError, match="corrupt or truncated"):
        gunzip_bounded(gzip.compress(payload)[:-6], "x", limit=10_000)


# --------------------------------------------------------------------------------------------
# 8. one rule for an all-NaN model in metrics and extract


def test_all_nan_model_is_refused_by_extract_as_by_metrics(tmp_path, capsys):
    src = _save(tmp_path / "nan.pt", {"conv.weight": torch.full((4, 3, 3, 3), float("nan")),
                                      "conv2.weight": torch.full((4, 4, 3, 3), float("inf"))})
    code, _, err_metrics = run_cli(capsys, "metrics", src)
    assert code == 1
    line = assert_one_error_line(err_metrics, "nothing could be measured", "NaN or Inf")
    code, _, err = run_cli(capsys, "extract", src, "--db", tmp_path / "db")
    assert code == 1
    assert_one_error_line(err, "nothing could be measured", "NaN or Inf")
    assert err.strip().split(": ", 2)[-1] == line.split(": ", 2)[-1]  # the same rule, the same words
    assert not (tmp_path / "db").exists()  # and no empty database left behind (item 12)


def test_partly_nan_model_is_stored_with_nan_metrics(tmp_path, capsys):
    src = _save(tmp_path / "half.pt", {"conv.weight": torch.full((4, 3, 3, 3), float("nan")),
                                       "conv2.weight": torch.randn(4, 4, 3, 3)})
    code, _, err = run_cli(capsys, "extract", src, "--db", tmp_path / "db")
    assert code == 0, err
    layers = FilterDB.open(tmp_path / "db").layers().set_index("layer")
    assert np.isnan(layers.loc["conv", "sparsity"]) and "non-finite" in layers.loc["conv", "notes"]
    assert layers.loc["conv2", "sparsity"] == layers.loc["conv2", "sparsity"]


# --------------------------------------------------------------------------------------------
# 9. complex weights, 0-output-channel convs


def test_complex_weights_are_not_measured_on_their_real_part(tmp_path, capsys):
    from filterlens.metrics import measure_weight

    w = (np.ones((4, 3, 3, 3)) + 1j * np.ones((4, 3, 3, 3))).astype(np.complex64)
    row = measure_weight(w)
    assert np.isnan(row["sparsity"]) and "complex" in row["notes"]
    src = _save(tmp_path / "complex.pt", {"conv.weight": torch.randn(4, 3, 3, 3, dtype=torch.complex64)})
    code, _, err = run_cli(capsys, "metrics", src)
    assert code == 1
    assert_one_error_line(err, "complex")
    code, _, err = run_cli(capsys, "extract", src, "--db", tmp_path / "db")
    assert code == 1
    assert_one_error_line(err, "complex")
    assert not (tmp_path / "db").exists()


def test_conv_weights_that_are_not_2d_are_named_not_dropped_silently(tmp_path, capsys):
    src = _save(tmp_path / "mixed.pt", {"c3.weight": torch.randn(4, 3, 3, 3, 3), "c2.weight": torch.randn(4, 3, 3, 3)})
    code, out, err = run_cli(capsys, "metrics", src, "--format", "csv")
    assert code == 0, err
    assert "c3.weight" in err and "3-D convolutions are not extracted" in err
    code, _, err = run_cli(capsys, "extract", src, "--db", tmp_path / "db")
    assert code == 0, err
    assert "3-D convolutions are not extracted" in FilterDB.open(tmp_path / "db").models()["warnings"][0]


def test_zero_output_channel_conv_is_stored_without_a_traceback(tmp_path, capsys):
    src = _save(tmp_path / "zero.pt", {"a.weight": torch.zeros(0, 3, 3, 3), "b.weight": torch.randn(4, 3, 3, 3)})
    code, _, err = run_cli(capsys, "extract", src, "--db", tmp_path / "db")
    assert code == 0, err
    db = FilterDB.open(tmp_path / "db")
    layers = db.layers().set_index("layer")
    assert layers.loc["a", "n_filters"] == 0 and layers.loc["a", "notes"] == "empty layer"
    assert db.weight(db.models()["model"][0], "a").shape == (0, 3, 3, 3)
    assert db.check(deep=True) == []


# --------------------------------------------------------------------------------------------
# 10. user and data text is never rich markup


def test_names_with_brackets_print_as_they_are(tmp_path, capsys):
    db = FilterDB.create(tmp_path / "db")
    for i, name in enumerate(["a[/]b", "net[v2]", "[bold]x[/bold]"]):
        add_measured(db, toy_model(name, i), {"training": "normal"})
    code, out, err = run_cli(capsys, "db", "models", "--db", db.path)
    assert code == 0, err
    for name in ("a[/]b", "net[v2]", "[bold]x[/bold]"):
        assert name in out
    code, out, _ = run_cli(capsys, "db", "layers", "--db", db.path, "--model", "net[v2]")
    assert code == 0 and "net[v2]" in out


def test_error_and_warning_text_is_literal(tmp_path, capsys):
    from filterlens.cli.console import error, warn

    code, _, err = run_cli(capsys, "metrics", tmp_path / "x[/].pt")
    assert code == 1
    assert_one_error_line(err, "x[/].pt")
    error("AutoAttack needs the package pyautoattack: pip install 'filterlens[attack]'")
    warn("model net[v2] [red]ok[/red]")
    err = capsys.readouterr().err
    assert "pip install 'filterlens[attack]'" in err and "net[v2] [red]ok[/red]" in err


# --------------------------------------------------------------------------------------------
# 11. one line, no traceback, for a user's mistake


def _damage_filters(db: FilterDB) -> None:
    f = db.path / db.snapshot().manifest["files"][0]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("command", [
    ["compare", "--n-boot", "20"],
    ["report", "--n-boot", "20", "--out", "{t}/r.html"],
    ["db", "export-h5", "{t}/x.h5"],
])
def test_damaged_filters_file_is_one_line(tmp_path, capsys, command):
    pytest.importorskip("h5py")
    db = make_db(tmp_path / "db", n=4)
    _damage_filters(db)
    before = tree(db.path)
    code, _, err = run_cli(capsys, *[c.format(t=tmp_path) for c in command], "--db", db.path)
    assert code == 1
    assert_one_error_line(err, "filters file")
    assert tree(db.path) == before
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("command", [["db", "remove", "m0", "--yes"], ["db", "import-h5", "{t}/dataset.h5"]])
def test_read_only_or_full_disk_is_one_line(tmp_path, capsys, monkeypatch, command):
    from filterlens.db import _fs

    write_fixed_h5(tmp_path / "dataset.h5")
    db = make_db(tmp_path / "db")
    before = tree(db.path)

    def refuse(self):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(_fs.WriterLock, "__enter__", refuse)
    code, _, err = run_cli(capsys, *[c.format(t=tmp_path) for c in command], "--db", db.path)
    assert code == 1
    assert_one_error_line(err, "Read-only file system")
    assert tree(db.path) == before


def test_full_disk_during_a_commit_keeps_the_last_state(tmp_path, monkeypatch):
    from filterlens.db import _fs

    db = make_db(tmp_path / "db")
    before = tree(db.path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_fs, "write_json_atomic", full)
    with pytest.raises(DatabaseError, match="No space left on device.*last committed state"):
        db.remove("m0")
    monkeypatch.undo()
    fresh = FilterDB.open(db.path)
    assert list(fresh.models()["model"]) == ["m0", "m1"] and fresh.check(deep=True) == []
    assert {k: v for k, v in tree(db.path).items() if k.startswith("filters/")} == \
        {k: v for k, v in before.items() if k.startswith("filters/")}


def test_import_h5_of_a_file_that_is_not_hdf5(tmp_path, capsys):
    bad = tmp_path / "dataset.h5"
    bad.write_bytes(b"PK\x03\x04 not hdf5 at all" * 10)
    code, _, err = run_cli(capsys, "db", "import-h5", bad, "--db", tmp_path / "db")
    assert code == 1
    assert_one_error_line(err, "not an HDF5 file")
    assert not (tmp_path / "db").exists()


def test_h5_without_h5py_says_which_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h5py" else real(name, *a))
    db = make_db(tmp_path / "db")
    for command in (["db", "import-h5", tmp_path / "x.h5"], ["db", "export-h5", tmp_path / "x.h5"]):
        (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
        code, _, err = run_cli(capsys, *command, "--db", db.path)
        assert code == 1
        assert_one_error_line(err, "pip install 'filterlens[hdf5]'")


@pytest.mark.parametrize("pairs, says", [("missing.csv", "no such file"), ("empty.csv", "empty"),
                                         ("folder", "not a file"), ("binary.csv", "not a readable CSV")])
def test_bad_pairs_file_is_one_line(tmp_path, capsys, pairs, says):
    db = make_db(tmp_path / "db", n=4)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81" * 50)
    code, _, err = run_cli(capsys, "compare", "--db", db.path, "--n-boot", "20", "--pairs", tmp_path / pairs)
    assert code == 1
    assert_one_error_line(err, "--pairs", says)


def test_out_onto_a_folder_or_into_a_missing_one(tmp_path, capsys):
    pytest.importorskip("h5py")
    db = make_db(tmp_path / "db")
    (tmp_path / "taken").mkdir()
    code, _, err = run_cli(capsys, "db", "models", "--db", db.path, "--format", "csv", "--out", tmp_path / "taken")
    assert code == 1
    assert_one_error_line(err, "is a directory")
    code, _, err = run_cli(capsys, "db", "export-h5", tmp_path / "nowhere" / "x.h5", "--db", db.path)
    assert code == 1
    assert_one_error_line(err, "does not exist")
    code, _, err = run_cli(capsys, "db", "export-h5", tmp_path / "taken", "--db", db.path)
    assert code == 1
    assert_one_error_line(err, "is a directory")
    file = tmp_path / "file.txt"
    file.write_text("mine")
    code, _, err = run_cli(capsys, "first-layer", "zoo:none", "--out", file)
    assert code == 1 and file.read_text() == "mine"
    assert_one_error_line(err, "is a file, not a folder")


# --------------------------------------------------------------------------------------------
# 12. minor cases


def test_random_bytes_checkpoint_is_not_called_code(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(20):
        f = tmp_path / f"r{i}.pt"
        f.write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
        code, _, err = run_cli(capsys, "metrics", f)
        assert code == 1
        line = assert_one_error_line(err)
        assert "could run code" not in line


def test_checkpoint_with_args_and_numpy_scalars_reads_its_tensors(tmp_path, capsys):
    import argparse

    state = {"conv.weight": torch.randn(4, 3, 3, 3), "conv2.weight": torch.randn(4, 4, 3, 3)}
    src = _save(tmp_path / "research.pt", {"state_dict": state, "args": argparse.Namespace(lr=0.1, arch="x"),
                                           "best_acc": np.float64(93.5), "epoch": np.int64(200)})
    code, out, err = run_cli(capsys, "metrics", src, "--format", "csv")
    assert code == 0, err
    assert "conv2" in out
    assert "skipped" in err and "args (argparse.Namespace)" in err and "best_acc (numpy.float64)" in err


def test_checkpoint_with_code_is_still_refused(tmp_path, capsys):
    from security_helpers import Evil

    marker = tmp_path / "marker"
    src = _save(tmp_path / "evil.pt", {"conv.weight": torch.randn(4, 3, 3, 3), "x": Evil(marker)})
    code, _, err = run_cli(capsys, "metrics", src)
    assert code == 1 and not marker.exists()
    assert_one_error_line(err, "refused to load", "system")


def test_every_source_failing_leaves_no_database(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for target in (tmp_path / "new.db", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        code, _, err = run_cli(capsys, "extract", bad, "--db", target)
        assert code == 1
        assert_one_error_line(err, "bad.pt")
        if target.name == "empty":
            assert target.is_dir() and not any(target.iterdir())  # the user's empty folder stays
        else:
            assert not target.exists()
    db = make_db(tmp_path / "kept")  # an existing database is never removed, even if empty now
    db.remove(["m0", "m1"])
    code, _, _ = run_cli(capsys, "extract", bad, "--db", db.path)
    assert code == 1 and FilterDB.open(db.path) is not None


def test_killed_create_leaves_nothing_behind_for_good(tmp_path):
    code = ("import os, sys; from pathlib import Path; import filterlens.db.store as s; "
            "real = s._fs.write_json_atomic\n"
            "def die(*a, **k): os._exit(9)\n"
            "s._fs.write_json_atomic = die\n"
            f"s.FilterDB.create(Path({str(tmp_path / 'x.db')!r}))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".x.db.creating-")
    FilterDB.create(tmp_path / "x.db")  # the next create removes what the dead one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_empty_sql_exits_non_zero(tmp_path, capsys):
    db = make_db(tmp_path / "db")
    for sql in ("", "   ", " -- only a comment", ";"):
        code, _, err = run_cli(capsys, "db", "query", "--db", db.path, sql)
        assert code == 1
        assert_one_error_line(err, "empty SQL")
    assert json.loads((db.path / "manifest.json").read_text())["generation"] == 2
