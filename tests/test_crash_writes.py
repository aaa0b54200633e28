"""Writes that fail half-way leave the old files byte for byte.

Two faults, injected into every writer of the database and of the CLI, report and analysis
outputs:

* the disk fills up after some bytes (``RLIMIT_FSIZE``: any write past the limit raises
  ``EFBIG`` at the OS level, whatever library writes - Python, pyarrow, matplotlib, HDF5);
* the rename that would publish the new file never happens (``os.replace``/``os.rename``
  raise, as if the process died just before).

An atomic writer survives both with the old content intact; a writer that truncates and writes
in place fails the first (a truncated file) and the second (the new content is already there).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import resource
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pytest

from filterlens.db import FilterDB
from test_db import add_measured, toy_model

OLD = b"the old content, which must survive byte for byte\n" * 40  # 2 KB


# --- the faults ---------------------------------------------------------------------------------

@contextmanager
def disk_full_after(nbytes: int) -> Iterator[None]:
    """Every write that would grow a file past ``nbytes`` raises ``OSError(EFBIG)``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


@contextmanager
def renames_fail(monkeypatch, match: Callable[[str], bool] = lambda dest: True) -> Iterator[None]:
    """``os.replace``/``os.rename`` onto a destination that ``match``es raise before renaming."""
    real_replace, real_rename = os.replace, os.rename

    def guard(real):
        def fake(src, dst, *a, **kw):
            if match(os.fspath(dst)):
                raise OSError(errno.EIO, "injected: the process died before the rename", os.fspath(dst))
            return real(src, dst, *a, **kw)
        return fake

    with monkeypatch.context() as m:
        m.setattr(os, "replace", guard(real_replace))
        m.setattr(os, "rename", guard(real_rename))
        yield


@contextmanager
def python_writes_fail(monkeypatch, name_part: str, after: int) -> Iterator[None]:
    """Files opened for writing from Python whose name contains ``name_part`` accept ``after``
    bytes and then raise ``OSError(ENOSPC)``: a writer interrupted in the middle of a file."""
    real_open = builtins.open

    class Failing:
        def __init__(self, f):
            self._f, self._n = f, 0

        def write(self, data):
            room = after - self._n
            if len(data) > room:
                self._f.write(data[:max(room, 0)])
                self._f.flush()
                raise OSError(errno.ENOSPC, "injected: no space left on device")
            self._n += len(data)
            return self._f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def __getattr__(self, attr):
            return getattr(self._f, attr)

    def fake_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if any(c in mode for c in "wax+") and name_part in os.path.basename(os.fspath(file)):
            return Failing(f)
        return f

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", fake_open)
        m.setattr(io, "open", fake_open)
        yield


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the filter database ------------------------------------------------------------------------

@pytest.fixture
def db_with_one(tmp_path) -> FilterDB:
    db = FilterDB.create(tmp_path / "db")
    db.add(toy_model("old", 1), {"training": "normal"})
    return db


def _assert_db_unchanged(db: FilterDB, before: dict[str, bytes]) -> None:
    after = files_of(db.path)
    for rel, data in before.items():  # every committed file, the manifest first of all
        if not rel.startswith("tmp/") and rel != "lock":
            assert after.get(rel) == data, f"{rel} changed"
    again = FilterDB.open(db.path)
    assert list(again.models()["model"]) == ["old"]
    assert np.array_equal(again.weight("old", "b1.conv1"), toy_model("old", 1).layers[1].weight)
    again.add(toy_model("next", 3), {"training": "normal"})  # the next writer recovers
    assert list(FilterDB.open(db.path).models()["model"]) == ["old", "next"]
    assert FilterDB.open(db.path).check() == []


@pytest.mark.parametrize("limit", [0, 100, 1_000, 4_000, 10_000, 40_000])
def test_db_add_on_a_full_disk_changes_nothing(db_with_one, limit):
    """The limit falls inside the filters file, a table file or past them (the sizes vary)."""
    before = files_of(db_with_one.path)
    try:
        with disk_full_after(limit):
            db_with_one.add(toy_model("new", 2), {"training": "normal"})
    except Exception as exc:  # EFBIG, or the database's error wrapping it
        assert "File too large" in str(exc) or isinstance(exc, OSError), exc
    else:  # large enough limits let the add through; then it must be complete
        assert set(FilterDB.open(db_with_one.path).models()["model"]) == {"old", "new"}
        return
    _assert_db_unchanged(db_with_one, before)


@pytest.mark.parametrize("target", ["filters/", "tables/", "manifest.json"])
def test_db_add_whose_rename_never_happens_changes_nothing(db_with_one, monkeypatch, target):
    before = files_of(db_with_one.path)
    with renames_fail(monkeypatch, lambda dest: target in dest), pytest.raises(Exception, match="injected"):
        db_with_one.add(toy_model("new", 2), {"training": "normal"})
    _assert_db_unchanged(db_with_one, before)


@pytest.mark.parametrize("after", [0, 10, 200])
def test_manifest_written_half_way_changes_nothing(db_with_one, monkeypatch, after):
    before = files_of(db_with_one.path)
    with python_writes_fail(monkeypatch, "manifest", after), pytest.raises(Exception, match="injected"):
        db_with_one.add(toy_model("new", 2), {"training": "normal"})
    _assert_db_unchanged(db_with_one, before)
    before = files_of(db_with_one.path)
    with python_writes_fail(monkeypatch, "manifest", after), pytest.raises(Exception, match="injected"):
        db_with_one.set_attr("layout", {"x": 1})
    assert files_of(db_with_one.path)["manifest.json"] == before["manifest.json"]


def test_db_remove_and_set_attr_whose_manifest_rename_never_happens(db_with_one, monkeypatch):
    before = files_of(db_with_one.path)
    for op in (lambda: db_with_one.remove("old"), lambda: db_with_one.set_attr("layout", {"x": 1})):
        with renames_fail(monkeypatch, lambda dest: dest.endswith("manifest.json")), \
                pytest.raises(Exception, match="injected"):
            op()
    _assert_db_unchanged(db_with_one, before)


def test_h5_export_that_fails_keeps_the_old_file(db_with_one, tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    from filterlens.db import export_h5

    target = tmp_path / "dataset.h5"
    target.write_bytes(OLD)
    with renames_fail(monkeypatch), pytest.raises(Exception, match="injected"):
        export_h5(db_with_one, target)
    assert target.read_bytes() == OLD
    # (no full-disk fault here: HDF5 itself crashes the process on EFBIG, before any of our code runs)


# --- CLI output files ---------------------------------------------------------------------------

def _both_faults(write: Callable[[], object], targets: list[Path], monkeypatch, limit: int = 256) -> None:
    """``write`` under each fault must raise and leave every target as it was."""
    for t in targets:
        t.write_bytes(OLD)
    with renames_fail(monkeypatch), pytest.raises(Exception):
        write()
    assert [t.read_bytes() for t in targets] == [OLD] * len(targets)
    with disk_full_after(limit), pytest.raises(Exception):
        write()
    assert [t.read_bytes() for t in targets] == [OLD] * len(targets)
    write()  # and without a fault, the new content arrives
    assert all(t.read_bytes() != OLD for t in targets)
    leftovers = [p.name for t in targets for p in t.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_cli_table_output(tmp_path, monkeypatch, fmt):
    from filterlens.cli.console import emit

    df = pd.DataFrame({"model": [f"m{i}" for i in range(200)], "sparsity": np.linspace(0, 1, 200)})
    target = tmp_path / f"out.{fmt}"
    _both_faults(lambda: emit(df, fmt, target), [target], monkeypatch)


@pytest.fixture(scope="module")
def lenet_like_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cmp") / "db"
    db = FilterDB.create(path)
    for i, training in enumerate(["adversarial", "adversarial", "normal", "normal"]):
        add_measured(db, toy_model(f"m{i}", 10 + i, width=4), {"training": training, "dataset": "cifar10"})
    return path


def _cli(argv: list[str]) -> None:
    from filterlens.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    if info.value.code not in (0, None):
        raise RuntimeError(f"exit code {info.value.code}")


def test_cli_compare_json_output(lenet_like_db, tmp_path, monkeypatch, capsys):
    target = tmp_path / "comparison.json"
    argv = ["compare", "--db", str(lenet_like_db), "--format", "json", "--out", str(target), "--n-boot", "50",
            "--no-shift"]
    _both_faults(lambda: _cli(argv), [target], monkeypatch)
    assert json.loads(target.read_text())["stats"]


def test_cli_report_output(lenet_like_db, tmp_path, monkeypatch, capsys):
    from filterlens.report import html

    monkeypatch.setattr(html, "build_figures", lambda *a, **kw: {})  # the file write is under test
    target = tmp_path / "report.html"
    argv = ["report", "--db", str(lenet_like_db), "--out", str(target), "--n-boot", "50"]
    _both_faults(lambda: _cli(argv), [target], monkeypatch)
    assert target.read_text().startswith("<!DOCTYPE html>")


# --- report and analysis writers (the API behind the CLI) -----------------------------------------

@pytest.fixture(scope="module")
def comparison():
    from test_analysis import MIDDLE, build, chunker

    from filterlens.analysis import compare

    models, layers, weights = build(n_models=4, differ=(0, MIDDLE), seed=3)
    return compare(models, layers, chunker(weights), n_boot=100)


@pytest.fixture(scope="module")
def first_layer_result():
    import torch
    from test_first_layer import DELTA, Tiny, _binary_images

    from filterlens.firstlayer import first_layer_study

    x, y = _binary_images(12, seed=8)
    g = torch.Generator().manual_seed(9)
    delta = torch.tensor(DELTA, dtype=torch.float32).expand(4, 1, 3, 3).clone()
    models = [("robust", Tiny(delta, torch.full((4,), -0.5)).eval(), "pgd"),
              ("plain", Tiny(torch.randn(4, 1, 3, 3, generator=g)).eval(), "normal")]
    return first_layer_study(models, x, y, 0.2, steps=2, n_boot=100)


def test_first_layer_outputs(first_layer_result, tmp_path, monkeypatch):
    from filterlens.report.first_layer import write_first_layer_html

    page = tmp_path / "first_layer.html"
    _both_faults(lambda: write_first_layer_html(first_layer_result, page, figures={}), [page], monkeypatch)
    js = tmp_path / "fl.json"
    _both_faults(lambda: first_layer_result.to_json(js), [js], monkeypatch)
    names = ["per_model.csv", "per_filter.csv", "per_kernel.csv", "stats.csv", "first_layer.json"]
    out = tmp_path / "saved"
    out.mkdir()
    _both_faults(lambda: first_layer_result.save(out), [out / n for n in names], monkeypatch, limit=64)


def test_write_html(comparison, tmp_path, monkeypatch):
    from filterlens.report import html

    monkeypatch.setattr(html, "build_figures", lambda *a, **kw: {})
    target = tmp_path / "report.html"
    _both_faults(lambda: html.write_html(comparison, target), [target], monkeypatch)


def test_comparison_to_json(comparison, tmp_path, monkeypatch):
    target = tmp_path / "comparison.json"
    _both_faults(lambda: comparison.to_json(target), [target], monkeypatch)
    assert json.loads(target.read_text()) == json.loads(comparison.to_json())


def test_save_figure(tmp_path, monkeypatch):
    from filterlens.report.figures import new_figure, save_figure

    fig = new_figure(2, 2)
    fig.add_subplot().plot([0, 1], [1, 0])
    targets = [tmp_path / "fig.png", tmp_path / "fig.pdf"]
    _both_faults(lambda: save_figure(fig, tmp_path / "fig"), targets, monkeypatch)


def test_demo_rerun_that_fails_keeps_the_previous_outputs(tmp_path, monkeypatch, comparison):
    """A demo rerun that fails half-way keeps the previous run's files and its record (so the
    next rerun is still allowed to replace them). The zoo, comparison and figures are stubbed."""
    import importlib

    from filterlens import demo
    from filterlens.report import html

    class _DB:
        def models(self):
            return comparison.models

        def layers(self):
            return pd.DataFrame({"model": ["m"] * 100, "layer": [f"l{i}" for i in range(100)]})

    compare_module = importlib.import_module("filterlens.analysis.compare")
    monkeypatch.setattr(demo, "build_zoo_db", lambda *a, **kw: _DB())
    monkeypatch.setattr(compare_module, "compare", lambda *a, **kw: comparison)
    monkeypatch.setattr(compare_module, "chunks_from", lambda db: None)
    monkeypatch.setattr(html, "build_figures", lambda *a, **kw: {})
    out = tmp_path / "demo"
    demo.run_demo(out, n_boot=10, first_layer=False)
    names = ["report.html", "comparison.json", "layers.csv", demo.RECORD]
    before = {n: (out / n).read_bytes() for n in names}
    outputs = lambda dest: not dest.endswith(demo.RECORD)  # noqa: E731 - the record's own rename works
    faults = [lambda: renames_fail(monkeypatch, outputs), lambda: disk_full_after(64)]
    # and each output interrupted in the middle of its own write (the ones before it are replaced)
    faults += [lambda n=n: python_writes_fail(monkeypatch, n, 10) for n in ("report.html", "comparison.json",
                                                                            "layers.csv")]
    for i, fault in enumerate(faults):
        with fault(), pytest.raises(Exception):
            demo.run_demo(out, n_boot=10, first_layer=False)
        kept = ["report.html", "comparison.json", "layers.csv"][max(i - 2, 0):]
        for n in kept:
            assert (out / n).read_bytes() == before[n], n
        demo.run_demo(out, n_boot=10, first_layer=False)  # the record still lets a rerun through
        before = {n: (out / n).read_bytes() for n in names}


# --- model files, caches ------------------------------------------------------------------------

def test_model_file_and_card(tmp_path, monkeypatch):
    from filterlens.archs import create_arch
    from filterlens.robust.card import save_model, update_card

    model = create_arch("small_vgg8", width=2)
    path = tmp_path / "m.safetensors"
    card = {"arch": "small_vgg8", "arch_kwargs": {"width": 2}}
    _both_faults(lambda: save_model(model, path, card), [path, tmp_path / "m.json"], monkeypatch)
    before = (tmp_path / "m.json").read_bytes()
    with renames_fail(monkeypatch), pytest.raises(OSError):
        update_card(path, results={"pgd": {"accuracy": 0.5}})
    assert (tmp_path / "m.json").read_bytes() == before


def test_dataset_cache(tmp_path, monkeypatch):
    from filterlens.data import ArrayDataset
    from filterlens.data.base import save_cache

    ds = ArrayDataset(np.zeros((20, 8, 8, 1), np.uint8), np.zeros(20, np.int64), ("a",), "t", "train")
    target = tmp_path / "cache.npz"
    _both_faults(lambda: save_cache(target, ds), [target], monkeypatch)
