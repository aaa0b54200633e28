"""filterlens' bundled model zoo: small CIFAR-10 and MNIST models, normal and adversarially trained.

``list_models()`` reads ``index.json``; ``load(name)`` rebuilds a model from its weights and card.
The recipe (what was trained, how) is in :mod:`filterlens.zoo.recipe`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FilterlensError

ZOO_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = ZOO_DIR / "weights"
INDEX_FILE = ZOO_DIR / "index.json"


def list_models() -> list[dict]:
    """The index rows of the trained zoo models (empty when none are bundled yet)."""
    if not INDEX_FILE.is_file():
        return []
    return json.loads(INDEX_FILE.read_text()).get("models", [])


def model_path(name: str) -> Path:
    """The weights file of zoo model ``name``."""
    p = WEIGHTS_DIR / f"{name}.safetensors"
    if not p.is_file():
        known = ", ".join(r["name"] for r in list_models()) or "none trained yet"
        raise FilterlensError(f"no zoo model {name!r} (known: {known})")
    return p


def load(name: str):
    """``(model in eval mode, card)`` of zoo model ``name``."""
    from ..robust.card import load_module_and_card

    return load_module_and_card(model_path(name))


__all__ = ["INDEX_FILE", "WEIGHTS_DIR", "ZOO_DIR", "list_models", "load", "model_path"]
