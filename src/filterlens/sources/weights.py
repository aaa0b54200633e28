"""Bare weights without an architecture: every 4-D weight is a conv layer (no torch needed).

A ``.safetensors`` file is read straight into numpy; only files holding dtypes that numpy
lacks (bfloat16, float8) go through torch, which widens them to float32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..errors import SourceError
from ..types import ConvLayer, ModelFilters
from .depth import assign_conv_depths

#: safetensors dtypes numpy cannot hold: such files are read through torch (to float32).
TORCH_ONLY_DTYPES = frozenset({"BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"})


def from_weights(state: dict[str, np.ndarray], name: str, source: str) -> ModelFilters:
    """Every 4-D ``*weight`` tensor of a bare state dict as a conv layer; depth = key order.

    Groups and transposition cannot be known without the architecture: recorded as 1 / False.
    """
    layers = []
    for i, (key, w) in enumerate((k, v) for k, v in state.items() if np.ndim(v) == 4):
        lname = key[: -len(".weight")] if key.endswith(".weight") else key
        layers.append(ConvLayer(name=lname, weight=np.asarray(w), depth=i, op_type="Conv2d"))
    if not layers:
        raise SourceError(f"{source}: no conv-shaped (4-D) weights in the state dict")
    assign_conv_depths(layers)
    return ModelFilters(
        name=name,
        source=source,
        layers=layers,
        depth_source="order",
        warnings=["no architecture given (--arch): depth follows the order of the weights "
                  "in the file and is approximate; groups are unknown"],
    )


def _header_dtypes(path: Path) -> set[str] | None:
    """The dtypes named in a safetensors header, or None when the header cannot be read
    (the full reader then reports what is wrong)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return None
            header = json.loads(f.read(n))
        return {v["dtype"] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def read_safetensors_numpy(path: Path) -> dict[str, np.ndarray] | None:
    """All tensors of a ``.safetensors`` file as numpy arrays, in file order (the order the
    torch reader gives too); None when a dtype needs torch or the header is unreadable."""
    dtypes = _header_dtypes(path)
    if dtypes is None or dtypes & TORCH_ONLY_DTYPES:
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from .checkpoint import _first_line, strip_wrapper_prefixes

    try:
        return strip_wrapper_prefixes(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SourceError(f"{path}: not a readable safetensors file ({_first_line(str(exc))})") from None
