"""Conv modules the forward pass never calls (science.md, "Depth"): recorded as unused, with no
depth, listed and flagged, never measured, and left out of every analysis.

The check throughout: a model with an unused conv gives exactly the numbers of the same model
without it (same weights for every other layer), from the per-layer table to the comparison.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import filterlens.sources.robustbench as rb
from filterlens.analysis.bins import model_bin_table, select_layers
from filterlens.analysis.compare import chunks_from, compare
from filterlens.archs import create_arch
from filterlens.db import FilterDB
from filterlens.measure import measure, measure_layers, measure_model, summarize
from filterlens.metrics import UNUSED_NOTE, aggregate
from filterlens.sources.robustbench import find_entry, load_robustbench
from filterlens.sources.torch_module import from_module

from test_robustbench_source import plain_metrics, random_state, run_cli, save

torch.set_num_threads(1)


class Net(nn.Module):
    """Two used 3x3 convs and a 1x1 shortcut; with ``spare``, a 3x3 conv registered between
    them that forward never calls."""

    def __init__(self, spare: bool = True, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        if spare:
            self.spare = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.short = nn.Conv2d(width, width, 1, bias=False)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        return self.conv2(h) + self.short(h)


def pair(seed: int = 0, width: int = 8) -> tuple[Net, Net]:
    """The model with the unused conv, and the same model (same weights) without it."""
    torch.manual_seed(seed)
    with_spare = Net(True, width)
    plain = Net(False, width)
    state = {k: v for k, v in with_spare.state_dict().items() if not k.startswith("spare.")}
    plain.load_state_dict(state)
    return with_spare, plain


def used_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["unused"]].drop(columns="unused").reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# Source: detection for any nn.Module


def test_from_module_flags_the_unused_conv():
    net, plain = pair()
    mf, ref = from_module(net, name="m"), from_module(plain, name="m")
    spare = next(l for l in mf.layers if l.name == "spare")
    assert spare.unused and spare.depth is None and spare.conv_depth is None and spare.conv_depth_norm is None
    assert [l.name for l in mf.layers if l.unused] == ["spare"]
    # every other layer exactly as in the model without it
    used = [(l.name, l.depth, l.conv_depth, l.conv_depth_norm, l.unused) for l in mf.layers if l.name != "spare"]
    assert used == [(l.name, l.depth, l.conv_depth, l.conv_depth_norm, l.unused) for l in ref.layers]
    assert any("spare" in w and "never used" in w for w in mf.warnings)
    assert not any(l.unused for l in ref.layers) and not any("never used" in w for w in ref.warnings)


def test_weight_used_through_the_functional_call_is_not_unused():
    """``F.conv2d(x, self.conv.weight)`` uses the module's weight: it has a depth, it is measured."""

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return F.conv2d(torch.relu(self.conv1(x)), self.conv2.weight, padding=1)

    mf = from_module(Functional())
    assert mf.depth_source == "fx"
    assert [(l.name, l.unused, l.conv_depth) for l in mf.layers] == [("conv1", False, 0), ("conv2", False, 1)]


def test_hooks_fallback_flags_the_conv_never_executed():
    """A module fx cannot trace (data-dependent branch): the executed convs are seen by hooks."""

    class Branchy(Net):
        def forward(self, x):
            h = torch.relu(self.conv1(x))
            if h.sum() > -1e9:  # data-dependent: fx fails
                return self.conv2(h) + self.short(h)
            return self.spare(h)

    mf = from_module(Branchy(), input_shape=(3, 8, 8))
    assert mf.depth_source in ("export", "hooks")
    assert [l.name for l in mf.layers if l.unused] == ["spare"]


# ---------------------------------------------------------------------------------------
# Measuring: the API and the CLI list the unused layer, flagged and unmeasured


def test_measure_lists_it_unmeasured_and_summaries_ignore_it():
    net, plain = pair()
    with pytest.warns(UserWarning, match="never used"):
        df = measure(net, name="m")
    ref = measure(plain, name="m")
    row = df[df["layer"] == "spare"].iloc[0]
    assert bool(row["unused"]) and row["notes"] == UNUSED_NOTE
    for c in ("sparsity", "variance_entropy", "orthogonality", "weight_max_abs"):
        assert np.isnan(row[c])
    assert pd.isna(row["depth"]) and pd.isna(row["conv_depth"]) and pd.isna(row["conv_depth_norm"])
    assert not ref["unused"].any()
    pd.testing.assert_frame_equal(used_rows(df), ref.drop(columns="unused"))
    # the used layers against a plain computation on the module's tensors
    for r in used_rows(df).itertuples():
        want = plain_metrics(getattr(net, r.layer).weight.detach().numpy())
        assert r.sparsity == want["sparsity"]
        assert r.variance_entropy == pytest.approx(want["variance_entropy"], rel=1e-9)
    pd.testing.assert_frame_equal(summarize(df), summarize(ref))
    assert summarize(df)["n_layers"].item() == 2  # the 1x1 is another kernel size; the spare is out
    pd.testing.assert_frame_equal(aggregate(df, by="model"), aggregate(ref, by="model"))


def test_measure_layers_notes_the_unused_layer():
    net, _ = pair()
    mf = from_module(net)
    got = dict(zip([l.name for l in mf.layers], measure_layers(mf.layers)))
    assert got["spare"] == {"notes": UNUSED_NOTE}
    assert got["short"] == {"notes": "not measured (kernel 1x1)"}
    assert got["conv1"]["sparsity"] == got["conv1"]["sparsity"]  # measured (not NaN)


def test_a_model_whose_only_layers_of_the_size_are_unused_has_nothing_to_measure():
    class OnlySpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 1)
            self.spare = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.stem(x)

    from filterlens.measure import NoLayersError

    with pytest.raises(NoLayersError, match=r"no 3x3 conv layers to measure \(kernel sizes present: 1x1\)"):
        measure(OnlySpare())


# ---------------------------------------------------------------------------------------
# Database and comparison: stored and flagged, never measured, no analysis number changes


def _db(tmp_path, name: str, robust_first: Net) -> FilterDB:
    """Two adversarial and two normal models; the first adversarial one is ``robust_first``."""
    db = FilterDB.create(tmp_path / name)
    others = [pair(seed)[1] for seed in (1, 2, 3)]
    for mname, module, training in (("r1", robust_first, "adversarial"), ("r2", others[0], "adversarial"),
                                    ("n1", others[1], "normal"), ("n2", others[2], "normal")):
        mf = from_module(module, name=mname, source=f"test:{mname}")
        db.add(mf, {"training": training, "dataset": "cifar10"}, measure_model(mf))
    return db


def _drop_ids(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in ("layer_id", "layer_index", "added_at", "sha256", "file", "row_offset",
                                        "model_id", "n_layers", "n_filters", "warnings") if c in df.columns])


def test_database_stores_the_flag_and_comparisons_are_unchanged(tmp_path):
    net, plain = pair(seed=0)
    db_u, db_p = _db(tmp_path, "with", net), _db(tmp_path, "without", plain)
    layers_u, layers_p = db_u.layers(), db_p.layers()

    row = layers_u[(layers_u["model"] == "r1") & (layers_u["layer"] == "spare")].iloc[0]
    assert bool(row["unused"]) and row["notes"] == UNUSED_NOTE and row["n_filters"] == 64
    assert all(pd.isna(row[c]) for c in ("n_sparse", "sparsity", "variance_entropy", "orthogonality", "depth"))
    assert layers_u["unused"].sum() == 1 and not layers_p["unused"].any()
    # the SQL views carry it too, and its filters are stored bit-exact
    assert db_u.query("SELECT layer FROM layers WHERE unused").layer.tolist() == ["spare"]
    np.testing.assert_array_equal(db_u.weight("r1", "spare"), net.spare.weight.detach().numpy())
    back = db_u.model_filters("r1")
    assert [l.name for l in back.layers if l.unused] == ["spare"]

    # every analysis number equal to the database without the unused conv
    used = layers_u[~layers_u["unused"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(_drop_ids(used), _drop_ids(layers_p))
    pd.testing.assert_frame_equal(_drop_ids(select_layers(layers_u)).reset_index(drop=True),
                                  _drop_ids(select_layers(layers_p)).reset_index(drop=True))
    pd.testing.assert_frame_equal(model_bin_table(layers_u), model_bin_table(layers_p))
    res_u = compare(db_u.models(), layers_u, chunks_from(db_u), n_boot=200)
    res_p = compare(db_p.models(), layers_p, chunks_from(db_p), n_boot=200)
    pd.testing.assert_frame_equal(res_u.per_model, res_p.per_model)
    pd.testing.assert_frame_equal(res_u.stats, res_p.stats)
    assert not res_u.shift.empty
    pd.testing.assert_frame_equal(res_u.shift, res_p.shift)
    pd.testing.assert_frame_equal(res_u.claims, res_p.claims)
    assert res_u.notes == res_p.notes

    # the paper's HDF5 format never held it either
    import h5py

    from filterlens.db import export_h5

    got, want = export_h5(db_u, tmp_path / "u.h5"), export_h5(db_p, tmp_path / "p.h5")
    assert (got["n_layers"], got["n_filters"]) == (want["n_layers"], want["n_filters"])
    with h5py.File(tmp_path / "u.h5") as a, h5py.File(tmp_path / "p.h5") as b:
        np.testing.assert_array_equal(a["filters"][:], b["filters"][:])


def test_a_database_written_before_the_column_reads_unused_false(tmp_path):
    _, plain = pair()
    db = FilterDB.create(tmp_path / "old")
    mf = from_module(plain, name="a")
    db.add(mf, {"training": "normal"}, measure_model(mf))
    # rewrite the committed layers table as an older filterlens wrote it: no 'unused' column
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    path = tmp_path / "old" / manifest["layers_table"]
    t = pq.read_table(path)
    pq.write_table(t.drop(["unused"]), path)
    old = FilterDB.open(tmp_path / "old")
    layers = old.layers()
    assert "unused" in layers.columns and layers["unused"].dtype == bool and not layers["unused"].any()
    assert old.query("SELECT count(*) AS n FROM layers WHERE NOT unused").n.item() == len(layers)
    # and it takes new models: the new table has the column, false for the old rows
    net, _ = pair(seed=5)
    mf2 = from_module(net, name="b")
    old.add(mf2, {"training": "normal"}, measure_model(mf2))
    both = FilterDB.open(tmp_path / "old").layers()
    assert both.loc[both["model"] == "a", "unused"].tolist() == [False] * 3
    assert both.loc[both["unused"], "layer"].tolist() == ["spare"]
    assert pq.read_table(tmp_path / "old" / json.loads((tmp_path / "old" / "manifest.json").read_text())
                         ["layers_table"]).schema.field("unused").type == "bool"


def test_rows_of_an_unused_layer_never_hold_metrics(tmp_path):
    """Whatever metrics a caller passes for an unused layer, none is stored."""
    net, _ = pair()
    mf = from_module(net, name="m")
    fake = [{"sparsity": 0.5, "n_sparse": 1, "variance_entropy": 0.1, "notes": ""} for _ in mf.layers]
    db = FilterDB.create(tmp_path / "db")
    db.add(mf, None, fake)
    row = db.layers().set_index("layer").loc["spare"]
    assert pd.isna(row["sparsity"]) and pd.isna(row["n_sparse"]) and row["notes"] == UNUSED_NOTE


# ---------------------------------------------------------------------------------------
# RobustBench's TRADES WideResNet (sub_block1), random weights, through the CLI


@pytest.fixture
def trades_wrn(tmp_path, monkeypatch):
    """Carmon2019Unlabeled's entry on a WRN-16-2 (same code, sub_block1 kept), random weights in
    RobustBench's layout; returns (module, state)."""
    root = tmp_path / "models"
    monkeypatch.setenv("FILTERLENS_ROBUSTBENCH_DIR", str(root))
    entry = dataclasses.replace(find_entry("Carmon2019Unlabeled"), arch="wrn-16-2")
    assert entry.arch_kwargs == {"sub_block1": True}
    monkeypatch.setattr(rb, "find_entry", lambda *a, **k: entry)
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state = random_state(module)
    save(root, entry, {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    return module, state


def test_trades_wrn_sub_block1_is_unused_and_changes_nothing(trades_wrn, tmp_path, capsys):
    _, state = trades_wrn
    mf = load_robustbench("robustbench:Carmon2019Unlabeled")
    flagged = [l.name for l in mf.layers if l.unused]
    assert flagged and all(n.startswith("sub_block1.") for n in flagged)
    assert flagged == [l.name for l in mf.layers if l.name.startswith("sub_block1.")]
    assert mf.metadata["extra"]["unused_layers"] == flagged
    stored = flagged
    flagged = [l.name for l in mf.layers if l.unused and l.kernel_size == (3, 3)]  # the 1x1 shortcut: not listed
    assert flagged

    # the same network without sub_block1, same weights
    plain = create_arch("wrn-16-2")
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("sub_block1.")})
    ref = from_module(plain, name=mf.name)
    df = measure_model(mf)
    assert set(df.loc[df["unused"], "layer"]) == set(flagged)
    assert df.loc[df["unused"], "notes"].eq(UNUSED_NOTE).all() and df.loc[df["unused"], "sparsity"].isna().all()
    pd.testing.assert_frame_equal(used_rows(df).drop(columns="depth_source"),
                                  measure_model(ref).drop(columns=["unused", "depth_source"]))
    pd.testing.assert_frame_equal(summarize(df), summarize(measure_model(ref)))

    # CLI: the per-layer table lists them flagged; --summary leaves them out
    code, out, _ = run_cli(capsys, "metrics", "robustbench:Carmon2019Unlabeled", "-f", "csv")
    assert code == 0
    table = pd.read_csv(pd.io.common.StringIO(out))
    assert set(table.loc[table["unused"], "layer"]) == set(flagged)
    assert table.loc[table["unused"], "sparsity"].isna().all()
    code, out, err = run_cli(capsys, "metrics", "robustbench:Carmon2019Unlabeled")  # the table says which
    assert code == 0 and "unused" in out and "sub_block1.layer.0.conv1" in out
    assert "never used in the forward pass" in err
    code, out, _ = run_cli(capsys, "metrics", "robustbench:Carmon2019Unlabeled", "-f", "csv", "--summary")
    assert code == 0
    got = pd.read_csv(pd.io.common.StringIO(out)).iloc[0]
    want = summarize(measure_model(ref)).iloc[0]
    assert got["n_layers"] == want["n_layers"] and got["n_filters"] == want["n_filters"]
    assert got["sparsity"] == pytest.approx(want["sparsity"], rel=1e-9)
    assert got["variance_entropy"] == pytest.approx(want["variance_entropy"], rel=1e-9)

    # CLI extract: stored flagged and unmeasured
    code, _, err = run_cli(capsys, "extract", "robustbench:Carmon2019Unlabeled", "--db", tmp_path / "rb")
    assert code == 0, err
    layers = FilterDB.open(tmp_path / "rb").layers()
    assert layers.loc[layers["unused"], "layer"].tolist() == stored  # every kernel size is stored
    assert layers.loc[layers["unused"], "sparsity"].isna().all()
    assert layers.loc[layers["unused"], "depth"].isna().all()
    assert layers.loc[~layers["unused"], "conv_depth"].notna().all()
