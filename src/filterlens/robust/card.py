"""Weights as safetensors, with a JSON model card beside them (``model.safetensors`` + ``model.json``).

The card names the architecture and its keyword arguments (including the normalisation
``mean``/``std``), so :func:`load_module_and_card` can rebuild the module from the registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..atomic import write_bytes_atomic
from ..errors import FilterlensError
from ..jsonable import to_jsonable

CARD_FORMAT = "filterlens-model-card/1"


class ModelFileError(FilterlensError):
    """A model file or its card is missing or does not fit."""


def card_path(weights: str | os.PathLike) -> Path:
    """The card beside a weights file: ``x.safetensors`` -> ``x.json``."""
    return Path(weights).with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def write_card(path: str | os.PathLike, card: dict) -> Path:
    """Write ``card`` as indented JSON (atomically)."""
    path = Path(path)
    card = {"format": CARD_FORMAT, **to_jsonable(card)}
    _atomic_write(path, (json.dumps(card, indent=2, sort_keys=False) + "\n").encode())
    return path


def read_card(path: str | os.PathLike) -> dict:
    """Read a card; ``path`` may be the card or its weights file."""
    path = Path(path)
    if path.suffix != ".json":
        path = card_path(path)
    if not path.is_file():
        raise ModelFileError(f"no model card at {path} (a filterlens model is x.safetensors with x.json beside it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f"the model card {path} is not valid JSON: {e}") from None


def save_model(model: nn.Module, path: str | os.PathLike, card: dict) -> tuple[Path, Path]:
    """Write ``model.state_dict()`` to ``path`` (safetensors) and ``card`` beside it."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"model files end in .safetensors, got {path.name}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "arch": str(card.get("arch", "")), "card": card_path(path).name}
    _atomic_write(path, save(state, metadata=meta))
    return path, write_card(card_path(path), card)


def build_from_card(card: dict) -> nn.Module:
    from ..archs import create_arch

    if "arch" not in card:
        raise ModelFileError("the model card names no architecture ('arch')")
    return create_arch(card["arch"], **card.get("arch_kwargs", {}))


def load_module_and_card(path: str | os.PathLike, *, strict: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild a model from ``x.safetensors`` and ``x.json``; returns ``(model in eval mode, card)``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no such model file: {path}")
    card = read_card(path)
    model = build_from_card(card)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise ModelFileError(f"cannot read {path} as safetensors: {e}") from None
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ModelFileError(f"the weights in {path} do not fit {card['arch']}: {' '.join(first[:3])}") from None
    return model.eval(), card


def update_card(path: str | os.PathLike, **updates: Any) -> dict:
    """Merge ``updates`` into a card on disk (dict values are merged one level deep)."""
    cp = Path(path) if Path(path).suffix == ".json" else card_path(path)
    card = read_card(cp)
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(card.get(k), dict):
            card[k] = {**card[k], **v}
        else:
            card[k] = v
    card.pop("format", None)
    write_card(cp, card)
    return read_card(cp)
