"""FilterDB.add_layers: a model stored one layer at a time is the model FilterDB.add stores."""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import pytest

from filterlens.db import DuplicateModelError, FilterDB, MeasuredLayer
from filterlens.db.errors import DatabaseError
from filterlens.measure import measure_layers
from filterlens.types import ConvLayer, ModelFilters


def mixed_model(name: str, seed: int) -> ModelFilters:
    """Layers of two kernel shapes and two dtypes (three filters files), one transposed."""
    rng = np.random.default_rng(seed)
    shapes = [((8, 3, 3, 3), np.float32), ((16, 8, 1, 1), np.float32), ((32, 16, 3, 3), np.float64),
              ((16, 16, 3, 3), np.float32), ((4, 4, 3, 3), np.float32)]
    layers = [ConvLayer(f"c{i}", rng.standard_normal(s).astype(dt), conv_depth=i, conv_depth_norm=i / 4,
                        transposed=i == 4)
              for i, (s, dt) in enumerate(shapes)]
    return ModelFilters(name, f"test:{name}", layers, "order")


def contents(db: FilterDB) -> tuple:
    """Everything stored but the time of the commit: tables and the bytes of every filters file."""
    models = db.models().drop(columns=["added_at"])
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((db.path / "filters").iterdir())}
    return models.to_csv(), db.layers().to_csv(), files


def test_add_layers_stores_what_add_stores(tmp_path):
    mf = mixed_model("m", 0)
    a, b = FilterDB.create(tmp_path / "a"), FilterDB.create(tmp_path / "b")
    a.add(mf, {"training": "normal"}, measure_layers(mf.layers))
    header = ModelFilters(mf.name, mf.source, [], mf.depth_source)
    row = b.add_layers(header, (MeasuredLayer(l, m) for l, m in zip(mf.layers, measure_layers(mf.layers))),
                       {"training": "normal"})
    assert contents(a) == contents(b)
    assert row["n_layers"] == 5 and row["n_filters"] == sum(l.n_filters for l in mf.layers)
    assert b.check(deep=True) == []
    back = b.model_filters("m")
    assert all(np.array_equal(x.weight, y.weight) and x.weight.dtype == y.weight.dtype
               for x, y in zip(back.layers, mf.layers))


def test_add_layers_holds_one_layer_at_a_time(tmp_path):
    """A layer the writer was given is no longer referenced once the next one is asked for
    (a layer's filters stay in memory only while they wait for their row group)."""
    db = FilterDB.create(tmp_path / "db")
    refs: list[weakref.ref] = []

    def layers():
        rng = np.random.default_rng(1)
        for i in range(6):
            w = rng.standard_normal((512, 256, 3, 3))  # 9.4 MB: more than two row groups
            if i >= 2:  # the layer before last was written and dropped (the last may still wait)
                assert refs[i - 2]() is None, f"layer {i - 2} is still held"
            layer = ConvLayer(f"c{i}", w, conv_depth=i)
            refs.append(weakref.ref(w))
            yield MeasuredLayer(layer, {"notes": "not measured"})
            del w, layer

    db.add_layers(ModelFilters("big", "test:big", [], "order"), layers())
    assert db.check(deep=True) == [] and len(db.layers("big")) == 6


def test_add_layers_refuses_stored_weights_and_leaves_nothing_when_the_source_fails(tmp_path):
    mf = mixed_model("m", 0)
    db = FilterDB.create(tmp_path / "db")
    db.add(mf)
    header = ModelFilters("other", "x", [], "order")
    with pytest.raises(DuplicateModelError, match="same weights are already in the database as m"):
        db.add_layers(header, (MeasuredLayer(l, {}) for l in mf.layers))
    with pytest.raises(DuplicateModelError, match="same weights are already in the database as m"):
        db.add_layers(ModelFilters("m", "x", [], "order"), (MeasuredLayer(l, {}) for l in mf.layers))
    before = contents(db)

    def failing():
        yield MeasuredLayer(mixed_model("n", 5).layers[0], {})
        raise OSError(5, "source went away")

    with pytest.raises(OSError, match="source went away"):
        db.add_layers(ModelFilters("n", "x", [], "order"), failing())
    with pytest.raises(DatabaseError, match="no conv layers to store"):
        db.add_layers(ModelFilters("e", "x", [], "order"), iter(()))
    assert contents(db) == before and list((db.path / "tmp").iterdir()) == []
    assert db.check() == []
