"""``filterlens reproduce`` against the paper's own code.

``tests/data/paper/dataset.h5`` was made by the paper's pipeline (onnxzoo2filterdb's
``create_filter_storage.py`` and ``extract_filters.py``, then the cell of
``generate_filter_db.ipynb``) from ONNX exports of three small architectures:
``scripts/make_paper_testdata.py``. ``reference.json`` holds what the code cells of the paper's
``sparsity.ipynb``, ``orthogonality.ipynb``, ``pca.ipynb`` and ``correlation.ipynb`` computed on
that file (``scripts/paper_reference.py``, pandas 1.5 / numpy 1.26 / scikit-learn 1.5.2). With
``FILTERLENS_PEER_PYTHON`` (a Python with those packages) and the paper's repository in
``FILTERLENS_PEERS`` (default /tmp/filterlens_peers), the notebook cells are run live as well.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from filterlens.analysis.groups import pair_list
from filterlens.errors import FilterlensError
from filterlens.reproduce import reproduce

DATA = Path(__file__).parent / "data" / "paper"
H5, PAIRS, REFERENCE = DATA / "dataset.h5", DATA / "robust_vs_normal_pairings.csv", DATA / "reference.json"
ROOT = Path(__file__).resolve().parents[1]
KEYS = {"sparse_share", "pca_entropy", "pca_entropy_per_model", "pairs_robust_flatter", "kl_by_dataset",
        "kl_by_depth", "decile_means", "spearman"}
BINS = ["first", *[f"({i / 10:.1f}, {(i + 1) / 10:.1f}]" for i in range(10)]]

pytest.importorskip("tables")


def leaves(ref, ours, path=()):
    """Pairs (path, reference value, our value) of every leaf of ``ref``."""
    if isinstance(ref, dict):
        for k, v in ref.items():
            yield from leaves(v, ours.get(k) if isinstance(ours, dict) else None, (*path, k))
    else:
        yield path, ref, ours


def assert_matches(reference: dict, ours: dict, tol: float = 1e-9) -> int:
    """Every number of ``reference`` equals ours to ``tol`` (nulls alike); returns how many."""
    n = 0
    for path, ref, got in leaves(reference, ours):
        if isinstance(ref, list):
            assert got == ref, path
        elif ref is None:
            assert got is None, path
        else:
            assert got is not None and abs(got - ref) <= tol, (path, got, ref)
        n += 1
    return n


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    db = tmp_path_factory.mktemp("repro") / "db"
    return reproduce(H5, PAIRS, db), db


def test_equals_the_notebooks_on_a_file_of_the_paper_pipeline(replay):
    result, _ = replay
    reference = json.loads(REFERENCE.read_text())
    reference.pop("kl_by_depth_notebook_lists")
    ours = result.to_dict()
    assert KEYS <= set(ours)
    n = assert_matches(reference, ours)
    assert n > 150  # every number, not a sample: 2 datasets x 3 metrics x 2 groups x 11 bins alone are 132
    # the reference is not trivial: the groups differ, and one bin of the file has no first layer
    assert ours["sparse_share"]["normal"] > 2 * ours["sparse_share"]["robust"]
    assert ours["kl_by_depth"]["cifar100"]["first"] is None and ours["kl_by_depth"]["cifar10"]["first"] > 0
    # the pair lists repeat the normal model of two pairs: each-model-once differs
    assert abs(ours["kl_by_dataset"]["cifar10"] - ours["kl_by_dataset_each_model_once"]["cifar10"]) > 1e-3


def test_notebook_lists_by_position_agree():
    """cell 44 plots dataset_depth_kl_dict by position: first layer (0 when absent), then deciles."""
    reference = json.loads(REFERENCE.read_text())
    for ds, values in reference["kl_by_depth_notebook_lists"].items():
        named = reference["kl_by_depth"][ds]
        assert values[1:] == [named[b] for b in BINS[1:]]
        assert values[0] == (named["first"] if named["first"] is not None else 0.0)


@pytest.mark.skipif(not os.environ.get("FILTERLENS_PEER_PYTHON"), reason="FILTERLENS_PEER_PYTHON not set "
                    "(a Python with pandas 1.5, numpy 1.26, scikit-learn to run the paper's notebook cells)")
def test_live_notebook_cells(replay, tmp_path):
    lens = Path(os.environ.get("FILTERLENS_PEERS", "/tmp/filterlens_peers")) / "cvpr22w_RobustnessThroughTheLens"
    if not lens.is_dir():
        pytest.skip(f"the paper's repository is not at {lens}")
    out = tmp_path / "ref.json"
    subprocess.run([os.environ["FILTERLENS_PEER_PYTHON"], str(ROOT / "scripts" / "paper_reference.py"), str(H5),
                    str(PAIRS), "--lens", str(lens), "--out", str(out)], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    reference = json.loads(out.read_text())
    reference.pop("kl_by_depth_notebook_lists")
    assert_matches(reference, replay[0].to_dict())


def test_json_layout_and_quirks(replay):
    data = replay[0].to_dict()
    assert set(data["sparse_share"]) == {"robust", "normal"}
    assert set(data["pca_entropy"]) == {"full", "robust", "normal"}
    pairs = pd.read_csv(PAIRS, index_col=0)
    assert set(data["pca_entropy_per_model"]) == set(pairs["Robust"]) | set(pairs["Normal"])
    assert data["pairs_robust_flatter"]["of"] == len(pairs)
    assert list(data["kl_by_dataset"]) == list(pairs["Dataset"].unique())
    for ds in data["kl_by_depth"]:
        assert list(data["kl_by_depth"][ds]) == BINS
        for metric in ("sparsity", "variance_entropy", "orthogonality"):
            assert list(data["decile_means"][ds][metric]["robust"]) == BINS
    assert set(data["spearman"]["cifar10"]) == {"entropy", "sparsity"}
    quirks = {q["name"]: q for q in data["quirks"]}
    assert quirks["robust_read_with_bool"]["models"] == ["robustbench_Extra2022_cifar10_linf_13"]
    assert "robustbench_Zeta2021_cifar10_linf_13" in quirks["sparse_share_over_every_model"]["models"]
    assert quirks["pair_lists_with_repeats"]["models"]["hso_normal_training_robustbench_Alpha2020_cifar10_13"] == 2
    assert quirks["no_first_layer_is_null"]["models"] == ["cifar100"]
    json.dumps(data, allow_nan=False)  # strict JSON
    cmp = {r["key"]: r for r in data["published"]}
    assert cmp["sparse_share.robust"]["published"] == 0.094475
    assert cmp["kl_by_depth.cifar10.(0.9, 1.0]"]["published"] == 1.5359
    assert cmp["kl_by_dataset.imagenet"]["computed"] is None  # no ImageNet model in this file


def test_sparse_share_counts_every_model_and_bool_robust(replay):
    """Plain recount from the file: robust = bool(Robust) (NaN counts as robust), all models."""
    import h5py

    meta = pd.read_hdf(H5, "meta")
    with h5py.File(H5, "r") as f:
        x = f["filters"][:].reshape(-1, 9)
    sparse = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for _, row in meta.iterrows():
        a, b = map(int, row["filter_ids"].split(":"))
        w = x[a:b + 1]
        m = np.abs(w).max()
        rob = bool(row["Robust"])
        sparse[rob] += int((np.abs(w).max(axis=1) <= m / 100).sum())
        total[rob] += len(w)
    share = replay[0].numbers["sparse_share"]
    assert share["robust"] == sparse[True] / total[True] and share["normal"] == sparse[False] / total[False]


def test_second_run_reuses_the_database(replay):
    result, db = replay
    again = reproduce(H5, PAIRS, db)
    assert again.settings["database_status"] == "reused"
    assert again.to_dict()["kl_by_depth"] == result.to_dict()["kl_by_depth"]


def test_interrupted_import_resumes(tmp_path, monkeypatch, replay):
    import filterlens.db as fdb

    real = fdb.import_h5

    def stop_after_three(file, db, measure=True, on_model=None):
        seen = []

        def cb(name, state):
            seen.append(name)
            if len(seen) == 3:
                raise KeyboardInterrupt
        return real(file, db, measure=measure, on_model=cb)

    monkeypatch.setattr(fdb, "import_h5", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        reproduce(H5, PAIRS, tmp_path / "db")
    monkeypatch.setattr(fdb, "import_h5", real)
    resumed = reproduce(H5, PAIRS, tmp_path / "db")
    assert resumed.settings["database_status"] == "resumed"
    assert resumed.to_dict()["decile_means"] == replay[0].to_dict()["decile_means"]


def test_database_of_another_file_is_refused(tmp_path, replay):
    other = tmp_path / "other.h5"
    shutil.copy(H5, other)
    os.utime(other, ns=(1, 1))
    with pytest.raises(FilterlensError, match="another file"):
        reproduce(other, PAIRS, replay[1])
    plain = tmp_path / "plain"
    from filterlens.db import FilterDB

    FilterDB.create(plain)
    FilterDB.open(plain).set_attr("x", 1)
    (tmp_path / "notadb").mkdir()
    (tmp_path / "notadb" / "f.txt").write_text("mine")
    with pytest.raises(FilterlensError):
        reproduce(H5, PAIRS, tmp_path / "notadb")
    assert (tmp_path / "notadb" / "f.txt").read_text() == "mine"


def test_pairs_formats(tmp_path):
    paper = pair_list(PAIRS)
    assert list(paper.columns) == ["robust", "normal", "dataset", "arch"] and len(paper) == 6
    assert paper["normal"].value_counts().max() == 3  # duplicates kept: the pair lists
    own = tmp_path / "own.csv"
    paper[["robust", "normal"]].rename(columns={"robust": "model_a", "normal": "model_b"}).to_csv(own, index=False)
    assert pair_list(own)[["robust", "normal"]].equals(paper[["robust", "normal"]])
    assert pair_list(paper.rename(columns=str.upper)).equals(paper)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nx,y\n")
    with pytest.raises(FilterlensError, match="Robust,Normal"):
        pair_list(bad)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("robust,normal\nnope,hso_normal_training_robustbench_Alpha2020_cifar10_13\n")
    with pytest.raises(FilterlensError, match="nope"):
        reproduce(H5, unknown, tmp_path / "db")
    assert not (tmp_path / "db").exists()  # refused before any import
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(FilterlensError, match="HDF5"):
        reproduce(junk, PAIRS, tmp_path / "db2")
    assert not (tmp_path / "db2").exists()  # nothing half-written


def test_pairs_dataframe_without_dataset_uses_training_dataset(replay, tmp_path):
    frame = pair_list(PAIRS)[["robust", "normal"]]
    result = reproduce(H5, frame, replay[1])
    assert result.numbers["kl_by_dataset"] == replay[0].numbers["kl_by_dataset"]


def test_cli_json_and_report(replay, tmp_path):
    from typer.testing import CliRunner

    from filterlens.cli.main import app

    runner = CliRunner()
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["reproduce", str(H5), "--pairs", str(PAIRS), "--db", str(replay[1]), "--format",
                              "json", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert KEYS <= set(data) and data["settings"]["database_status"] == "reused"
    report = tmp_path / "rep"
    res = runner.invoke(app, ["reproduce", str(H5), "--pairs", str(PAIRS), "--db", str(replay[1]), "--out",
                              str(report), "-q"])
    assert res.exit_code == 0, res.output
    assert "computed vs published" in res.output and "0.094475" in res.output
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6  # 2 boxplot figures, KL by depth, 3 bases
    assert "robust_read_with_bool" in page and "0.394804" in page
    res = runner.invoke(app, ["reproduce", str(tmp_path / "missing.h5"), "--pairs", str(PAIRS)])
    assert res.exit_code != 0


def test_convtranspose_takes_no_part_in_depth_as_in_the_paper_extractor():
    """The ONNX model of the file's Delta model holds a ConvTranspose: filterlens's depths of its
    3x3 layers equal those the paper's extractor wrote into dataset.h5."""
    from filterlens.sources.onnx_model import load_onnx

    mf = load_onnx(DATA / "stem7_with_convtranspose.onnx")
    assert any(l.transposed for l in mf.layers)
    ours = [(l.conv_depth, l.conv_depth_norm) for l in mf.layers if l.kernel_size == (3, 3) and not l.transposed]
    meta = pd.read_hdf(H5, "meta").reset_index()
    theirs = meta[meta["model"] == "robustbench_Delta2020_cifar100_linf_13"]
    assert ours == [(int(d), float(n)) for d, n in zip(theirs["conv_depth"], theirs["conv_depth_norm"])]
    assert all(l.conv_depth is None for l in mf.layers if l.transposed)


def test_import_h5_stores_accuracies_as_fractions(replay):
    from filterlens.db import FilterDB

    models = FilterDB.open(replay[1]).models().set_index("model")
    assert models.loc["robustbench_Alpha2020_cifar10_linf_13", "clean_acc"] == pytest.approx(0.841)
    assert models.loc["robustbench_Alpha2020_cifar10_linf_13", "robust_acc"] == pytest.approx(0.512)


def test_compare_takes_the_papers_pairs_csv_and_names_its_procedure(replay, tmp_path):
    from typer.testing import CliRunner

    from filterlens.cli.main import app

    runner = CliRunner()
    base = ["compare", "--db", str(replay[1]), "--pairs", str(PAIRS), "--format", "json", "--n-boot", "200"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["settings"]["shift"]["procedure"] == "paper"
    assert data["settings"]["shift"]["shared_models_counted"] == "per_pair"
    assert len(data["pairs"]) == 6
    res = runner.invoke(app, base + ["--shift-procedure", "per-bin", "--count-shared", "once"])
    assert res.exit_code == 0, res.output
    variant = json.loads(res.output)
    assert variant["settings"]["shift"]["procedure"] == "per_bin"
    assert any(r["divergence_null"] is not None for r in variant["shift"])
    res = runner.invoke(app, base + ["--shift-procedure", "bogus"])
    assert res.exit_code != 0


def test_transposed_conv_modules_take_no_part_in_depth_levels():
    """A torch module with a ConvTranspose2d between convs: the same levels as without it."""
    import torch.nn as nn

    from filterlens.sources.torch_module import from_module

    with_t = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Conv2d(4, 4, 3),
                           nn.Conv2d(4, 4, 3))
    layers = {l.name: l for l in from_module(with_t).layers}
    assert layers["2"].transposed and layers["2"].conv_depth is None and layers["2"].conv_depth_norm is None
    assert [(layers[n].conv_depth, layers[n].conv_depth_norm) for n in ("0", "3", "4")] == [(0, 0.0), (1, 0.5), (2, 1.0)]
