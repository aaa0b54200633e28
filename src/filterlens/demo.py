"""``filterlens demo``: the bundled zoo into a fresh filter database, compared and reported.

Runs offline: everything it reads ships inside the package.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from .atomic import atomic_path, write_text_atomic
from .errors import FilterlensError
from .training import ADVERSARIAL, training_label

DB_NAME = "filters.db"


def card_metadata(card: dict) -> dict:
    """The models-table fields of a filterlens model card."""
    method = (card.get("training") or {}).get("method", "unknown")
    results = card.get("results") or {}
    threat = card.get("threat_model") or {}
    label = training_label(method)
    robust = label == ADVERSARIAL
    return {
        "arch": card.get("arch"),
        "dataset": card.get("dataset"),
        "training": label or "unknown",
        "threat_model": threat.get("norm", "Linf") if robust else None,
        "eps": threat.get("eps") if robust else None,
        "clean_acc": (results.get("clean") or {}).get("accuracy"),
        "robust_acc": (results.get("pgd") or {}).get("accuracy"),
        "tags": f"zoo,{method},seed={card.get('seed')}",
    }


#: What a demo writes into its folder, and the record of what it wrote (so a rerun may replace it).
OUTPUTS = (DB_NAME, "report.html", "comparison.json", "layers.csv", "first_layer.csv")
RECORD = ".filterlens-demo.json"


def _fingerprint(path: Path) -> str | None:
    """sha256 of a file, or of a database's marker and manifest (its identity and state)."""
    if path.is_dir():
        parts = [path / "filterlens-db.json", path / "manifest.json"]
        if not all(p.is_file() for p in parts):
            return None
    elif path.is_file():
        parts = [path]
    else:
        return None
    h = hashlib.sha256()
    for p in parts:
        h.update(p.read_bytes())
    return h.hexdigest()


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a folder holding any demo output name that a previous demo did not write as is:
    a user's own ``filters.db`` or ``layers.csv`` there is never deleted or overwritten."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FilterlensError(f"--out {out_dir}: exists and is not a folder")
    try:
        record = json.loads((out_dir / RECORD).read_text())
        record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        record = {}
    for name in OUTPUTS:
        path = out_dir / name
        if not (path.exists() or path.is_symlink()):
            continue
        if name == DB_NAME and not (path / "filterlens-db.json").exists():
            raise FilterlensError(f"{path} exists and is not a filterlens database; choose another --out")
        if path.is_symlink() or record.get(name) is None or record.get(name) != _fingerprint(path):
            raise FilterlensError(f"{path} exists and was not written by a previous 'filterlens demo' (or was "
                                  "changed since); not touching it: choose another --out")


def _write_record(out_dir: Path) -> None:
    """Fingerprint the demo outputs now in ``out_dir`` (all written, or checked, by this run)."""
    names = [n for n in OUTPUTS if (out_dir / n).exists()]
    write_text_atomic(out_dir / RECORD, json.dumps({n: _fingerprint(out_dir / n) for n in names}, indent=1) + "\n")


def _fresh_dir(path: Path) -> None:
    """Remove a previous demo database; refuse to touch anything that is not one."""
    if not path.exists():
        return
    if not (path / "filterlens-db.json").exists():
        raise FilterlensError(f"{path} exists and is not a filterlens database; choose another --out")
    shutil.rmtree(path)


def build_zoo_db(db_path: Path, on_model: Callable[[str], None] | None = None):
    """Extract every bundled zoo model (with its card's metadata) into a new database."""
    from . import zoo
    from .db import FilterDB
    from .measure import measure_layers
    from .robust.card import load_module_and_card
    from .sources import from_module

    rows = zoo.list_models()
    if not rows:
        raise FilterlensError("the bundled zoo is empty; train it with 'filterlens zoo train'")
    _fresh_dir(db_path)
    db = FilterDB.create(db_path)
    for row in rows:
        path = zoo.model_path(row["name"])
        module, card = load_module_and_card(path)
        mf = from_module(module, name=row["name"], source=f"zoo:{row['name']}", arch=card.get("arch"),
                         input_shape=tuple(card.get("input_shape") or ()) or None)
        db.add(mf, card_metadata(card), measure_layers(mf.layers))
        if on_model:
            on_model(row["name"])
    return db


def zoo_first_layer(dataset: str = "cifar10", n: int = 64, steps: int = 5, n_boot: int = 2000):
    """First-layer perturbation study of the zoo's ``dataset`` models on ``n`` test images.

    Returns ``(FirstLayerResult | None, note)``: None when the test images cannot be found
    offline (the note says why) or the zoo has no models of that data set.
    """
    from . import zoo
    from .firstlayer import first_layer_study
    from .data import DataError, load_dataset
    from .robust.attacks import parse_eps
    from .robust.card import load_module_and_card

    entries, eps = [], None
    for row in zoo.list_models():
        if row.get("dataset") != dataset:
            continue
        module, card = load_module_and_card(zoo.model_path(row["name"]))
        method = (card.get("training") or {}).get("method", "unknown")
        entries.append((row["name"], module.eval(), method))
        if training_label(method) == ADVERSARIAL:
            eps = (card.get("threat_model") or {}).get("eps", eps)
    if not entries:
        return None, f"no {dataset} models in the zoo"
    try:
        test = load_dataset(dataset, "test", download=False)
        origin = f"the test images in {test.source}"
    except DataError as exc:
        if dataset != "cifar10":
            return None, f"first-layer study skipped: {exc}"
        from .data.sample import load_cifar10_sample

        test = load_cifar10_sample()  # offline without the data set: the package's own sample
        origin = f"the {test.source}, since no CIFAR-10 data set was found"
    test = test.subset(n, seed=0)
    x, y = test.tensors()
    eps = float(eps if eps is not None else parse_eps("8/255"))
    from .robust.train import torch_settings

    # The zoo's models are small: one thread attacks them fastest, and several threads spinning at
    # barriers on a core that another process holds made this step 8x slower (13 s vs 110 s).
    with torch_settings(1, False):
        result = first_layer_study(entries, x, y, eps, steps=steps, n_boot=n_boot, dataset=dataset)
    return result, (f"first layer: {len(entries)} {dataset} models, {len(test)} of {origin}, "
                    f"PGD-{steps} at eps {eps:.4g}")


def run_demo(out_dir: Path, n_boot: int = 2000, on_model: Callable[[str], None] | None = None,
             first_layer: bool = True) -> dict:
    """Zoo -> database -> comparison (+ first-layer study) -> report in ``out_dir``."""
    from .analysis.compare import chunks_from, compare_db
    from .report.html import write_html

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)  # before anything is deleted or written
    out_dir.mkdir(parents=True, exist_ok=True)
    db = build_zoo_db(out_dir / DB_NAME, on_model)
    _write_record(out_dir)  # a rerun after a failure below may replace what this run wrote
    result = compare_db(db, n_boot=n_boot)
    layers, chunks = db.layers(), chunks_from(db)
    fl_result, fl_note = zoo_first_layer(n_boot=n_boot) if first_layer else (None, "first-layer study not run")
    result.notes.append(fl_note)
    if fl_result is not None:
        from .analysis.claims import with_first_layer
        from .firstlayer import first_layer_claims

        result.claims = with_first_layer(result.claims, first_layer_claims(fl_result.stats), "cifar10")
    report = out_dir / "report.html"
    # Each output is replaced atomically (a failed rerun keeps the previous file) and recorded
    # at once, so a rerun after a failure half-way may still replace what this run wrote.
    write_html(result, report, layers=layers, filter_chunks_fn=chunks, first_layer=fl_result,
               title="filterlens demo: the bundled zoo, robust vs normal")
    _write_record(out_dir)
    comparison = out_dir / "comparison.json"
    write_text_atomic(comparison, result.to_json() + "\n")
    _write_record(out_dir)
    with atomic_path(out_dir / "layers.csv") as tmp:
        layers.to_csv(tmp, index=False)
    _write_record(out_dir)
    if fl_result is not None:
        with atomic_path(out_dir / "first_layer.csv") as tmp:
            fl_result.per_model.to_csv(tmp, index=False)
        _write_record(out_dir)
    return {"db": out_dir / DB_NAME, "report": report, "comparison": comparison, "result": result,
            "first_layer": fl_result}
