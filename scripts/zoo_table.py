"""The README's zoo table: each model's card results plus its filters measured by filterlens.

    python scripts/zoo_table.py                       # the bundled zoo (src/filterlens/zoo/weights)
    python scripts/zoo_table.py DIR                   # any folder of NAME.safetensors + NAME.json cards

Per model: clean and PGD-20 accuracy (and AutoAttack where the card has it) from its card; the
paper's pooled PCA spectrum entropy and the share of sparse 3x3 filters from a fresh filter
database of the folder's models, as `filterlens compare` computes them; training time and device.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from filterlens.analysis import compare_db
from filterlens.db import FilterDB
from filterlens.demo import card_metadata
from filterlens.measure import measure_layers
from filterlens.robust.card import load_module_and_card
from filterlens.sources import from_module


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f} %"


def main(folder: str) -> None:
    paths = sorted(Path(folder).glob("*.safetensors"))
    cards = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = FilterDB.create(Path(tmp) / "zoo.db")
        for path in paths:
            module, card = load_module_and_card(path)
            mf = from_module(module, name=path.stem, source=str(path), arch=card.get("arch"))
            db.add(mf, card_metadata(card), measure_layers(mf.layers))
            cards[path.stem] = card
        layers = db.layers()
        res = compare_db(db, n_boot=200) if len({c["robust"] for c in cards.values()}) == 2 else None
    l3 = layers[(layers.kernel_size == 3) & ~layers.unused.astype(bool)]
    sparse = l3.groupby("model").n_sparse.sum() / l3.groupby("model").n_filters.sum()
    entropy = {}
    if res is not None:
        per_model = res.pca_entropy[res.pca_entropy.scope == "model"]
        entropy = dict(zip(per_model.name, per_model.pca_entropy))
    print("| model | training | clean | PGD-20 | AutoAttack | pooled PCA spectrum entropy | sparse 3x3 filters "
          "| training time (device) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, card in cards.items():
        r = card.get("results", {})
        aa = r.get("autoattack", {})
        method = card["training"]["method"]
        steps = card["training"].get("attack_steps")
        kind = {"pgd": f"PGD-{steps}", "fgsm-rs": "FGSM-RS", "trades": "TRADES"}.get(method, method.upper())
        label = "normal" if method == "normal" else f"{kind} {card['threat_model']['eps_str']}"
        ent = entropy.get(name)
        print(f"| {name} | {label} | {_pct(r.get('clean', {}).get('accuracy'))} | "
              f"{_pct(r.get('pgd', {}).get('accuracy'))} | "
              f"{_pct(aa.get('accuracy')) + (' (n=' + str(aa.get('n')) + ')' if aa else '')} | "
              f"{'' if ent is None else f'{ent:.3f}'} | {_pct(sparse.get(name))} | "
              f"{card.get('training_time_s', 0):.0f} s ({card.get('device', 'cpu')}) |")


if __name__ == "__main__":
    from filterlens.zoo import WEIGHTS_DIR

    main(sys.argv[1] if len(sys.argv) > 1 else str(WEIGHTS_DIR))
