"""``compare`` and ``reproduce`` with their passes on a Dask cluster (``--workers/--scheduler``).

One LocalCluster of 2 worker processes serves the module (a start costs seconds); the CLI
reaches it through ``--scheduler`` / ``FILTERLENS_SCHEDULER``. Every result is compared with the
serial run on the same database: the JSON must be equal (the per-model partial results merge in
model order, so the floats are bit-identical, not merely close).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

distributed = pytest.importorskip("distributed")

from typer.testing import CliRunner  # noqa: E402

from filterlens.analysis import distributed as fad  # noqa: E402
from filterlens.analysis.compare import chunks_from, compare  # noqa: E402
from filterlens.cli.main import app, main  # noqa: E402
from filterlens.db import FilterDB  # noqa: E402
from filterlens.db import distributed as fld  # noqa: E402
from filterlens.reproduce import reproduce  # noqa: E402

DATA = Path(__file__).parent / "data" / "paper"
H5, PAIRS = DATA / "dataset.h5", DATA / "robust_vs_normal_pairings.csv"


@pytest.fixture(scope="module")
def client():
    with fld.connect(2) as c:
        yield c


@pytest.fixture(scope="module")
def paper_db(tmp_path_factory):
    """The paper-pipeline file imported serially, with its serial reproduce result."""
    db = tmp_path_factory.mktemp("paper") / "db"
    return db, reproduce(H5, PAIRS, db)


def _json(result) -> dict:
    data = json.loads(result.to_json())
    data["settings"].pop("database_status", None)  # "imported" on the first run, "reused" after
    return data


@pytest.fixture()
def dask_sources(monkeypatch):
    """Every DaskSegments made during the test (to see that the work ran on the workers)."""
    made = []
    init = fad.DaskSegments.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(fad.DaskSegments, "__init__", record)
    return made


def test_reproduce_on_the_cluster_equals_serial(paper_db, client, dask_sources):
    db, serial = paper_db
    on_cluster = reproduce(H5, PAIRS, db, client=client)
    assert _json(on_cluster) == _json(serial)
    (src,) = dask_sources
    n_models = len(FilterDB.open(db).models())
    # one task per model for passes 1 and 2, per model in a pair list for pass 3; none run here
    assert 2 * n_models < src.tasks <= 3 * n_models and not src.fallbacks


@pytest.mark.parametrize("procedure", ["paper", "per_bin"])
def test_compare_on_the_cluster_equals_serial(paper_db, client, procedure):
    fdb = FilterDB.open(paper_db[0])
    models, layers = fdb.models(), fdb.layers()
    serial = compare(models, layers, chunks_from(fdb), pairs=str(PAIRS), n_boot=200, shift_procedure=procedure)
    source = fad.DaskSegments(fdb, client)
    on_cluster = compare(models, layers, source, pairs=str(PAIRS), n_boot=200, shift_procedure=procedure)
    assert on_cluster.to_json() == serial.to_json()
    assert np.isfinite(serial.shift["divergence"]).any()  # a shift was computed, not two empty tables
    # the paper's shift runs its passes on the workers; the per-bin variant streams here
    assert (source.tasks > 0) == (procedure == "paper") and not source.fallbacks


def test_workers_that_cannot_read_the_database_fall_back_to_the_client(paper_db, client, tmp_path):
    fdb = FilterDB.open(paper_db[0])
    models, layers = fdb.models(), fdb.layers()
    serial = compare(models, layers, chunks_from(fdb), pairs=str(PAIRS), n_boot=200)
    source = fad.DaskSegments(fdb, client)
    source.spec = fad.SourceSpec(str(tmp_path / "elsewhere"), source.spec.kind, source.spec.chunk_size, 9)
    assert compare(models, layers, source, pairs=str(PAIRS), n_boot=200).to_json() == serial.to_json()
    assert source.tasks == 0 and len(source.fallbacks) > 0
    # another database at the same path: a model of that name with other weights is not used
    source = fad.DaskSegments(fdb, client)
    source.sha = {m: "0" * 64 for m in source.sha}
    assert compare(models, layers, source, pairs=str(PAIRS), n_boot=200).to_json() == serial.to_json()
    assert source.tasks == 0 and len(source.fallbacks) > 0


def test_cli_compare_and_reproduce_with_scheduler(paper_db, client, monkeypatch, tmp_path):
    runner = CliRunner()
    addr = client.scheduler.address
    base = ["compare", "--db", str(paper_db[0]), "--pairs", str(PAIRS), "--format", "json", "--n-boot", "200"]
    serial = runner.invoke(app, base)
    assert serial.exit_code == 0, serial.output
    res = runner.invoke(app, base + ["--scheduler", addr])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == json.loads(serial.output)
    monkeypatch.setenv(fld.SCHEDULER_ENV, addr)
    rbase = ["reproduce", str(H5), "--pairs", str(PAIRS), "--db", str(paper_db[0]), "--format", "json", "-q"]
    res = runner.invoke(app, rbase)  # FILTERLENS_SCHEDULER, as extract reads it
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    data["settings"].pop("database_status", None)
    assert data == _json(paper_db[1])
    monkeypatch.delenv(fld.SCHEDULER_ENV)


def test_cli_reproduce_with_local_workers(paper_db):
    res = CliRunner().invoke(app, ["reproduce", str(H5), "--pairs", str(PAIRS), "--db", str(paper_db[0]),
                                   "--format", "json", "-q", "--workers", "2"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    data["settings"].pop("database_status", None)
    assert data == _json(paper_db[1])


@pytest.mark.parametrize("extra, needle", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    (["--scheduler", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler"),
])
def test_cli_bad_cluster_options(paper_db, extra, needle, capsys):
    for argv in (["compare", "--db", str(paper_db[0]), "--n-boot", "50"],
                 ["reproduce", str(H5), "--pairs", str(PAIRS), "--db", str(paper_db[0]), "--no-report", "-q"]):
        with pytest.raises(SystemExit) as info:
            main(argv + extra)
        out, err = capsys.readouterr()
        assert info.value.code == 1
        assert err.startswith("error: ") and needle in err and "Traceback" not in err and not out


class _Deadly(distributed.WorkerPlugin):
    """On every worker, present and future: the pass of ``victim`` kills the worker."""

    name = "filterlens-deadly"

    def __init__(self, victim: str):
        self.victim = victim

    def setup(self, worker):
        from filterlens.analysis import distributed as mod

        run, victim = mod.run_model_pass, self.victim

        def deadly(spec, model, *args):
            if model == victim:
                os._exit(1)
            return run(spec, model, *args)

        mod.run_model_pass = deadly


def test_a_model_whose_task_kills_its_workers_is_redone_by_the_client(paper_db, client):
    """The pass of one model kills every worker that runs it: Dask gives up on it
    (KilledWorker), the client runs it itself, and the result is the serial one. Last in the
    module: it kills the cluster's workers (they are started again)."""
    fdb = FilterDB.open(paper_db[0])
    models, layers = fdb.models(), fdb.layers()
    victim = sorted(layers["model"])[0]
    serial = compare(models, layers, chunks_from(fdb), pairs=str(PAIRS), n_boot=200)
    client.register_plugin(_Deadly(victim))
    try:
        source = fad.DaskSegments(fdb, client)
        on_cluster = compare(models, layers, source, pairs=str(PAIRS), n_boot=200)
    finally:
        client.unregister_worker_plugin(_Deadly.name)
    assert on_cluster.to_json() == serial.to_json()
    assert victim in source.fallbacks and source.tasks > 0  # the others ran on the workers


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=12), st.integers(1, 4))
def test_merging_partial_counts_and_ranges_equals_one_pass(sizes, n_parts):
    """Counts and ranges of parts merge to those of the whole, whatever the split."""
    rng = np.random.default_rng(sum(sizes) + n_parts)
    values = [rng.standard_normal(n) for n in sizes]
    whole = np.concatenate(values)
    cuts = np.array_split(np.arange(len(values)), n_parts)
    parts = [np.concatenate([values[i] for i in c]) if len(c) else np.zeros(0) for c in cuts]
    edges = (-4.0, 4.0)
    counts = fad.merge_counts([{"t": np.histogram(p, 10, edges)[0] * 2.0} for p in parts])
    assert np.array_equal(counts["t"], np.histogram(whole, 10, edges)[0] * 2.0)
    rng_parts = [(p.min(), p.max()) if len(p) else (np.inf, -np.inf) for p in parts]
    low, high = fad.merge_range(rng_parts)
    assert (low, high) == ((whole.min(), whole.max()) if len(whole) else (np.inf, -np.inf))
