"""Content hashes of conv weights: per layer, and per model whatever the order of its layers."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

from ..types import ModelFilters
from .filestore import storage_dtype


def layer_sha256(weight: np.ndarray) -> str:
    """sha256 of one layer weight: its little-endian dtype, shape and bytes."""
    w = np.ascontiguousarray(weight, dtype=storage_dtype(weight.dtype))
    h = hashlib.sha256(f"{w.dtype.str}{tuple(w.shape)}".encode())
    h.update(memoryview(w).cast("B") if w.size else b"")  # a view of a 0-channel layer cannot be cast
    return h.hexdigest()


def model_sha256(mf: ModelFilters | Iterable[str]) -> str:
    """sha256 identifying a model's conv weights, whatever the order or names of its layers.

    The hash of the sorted per-layer hashes (:func:`layer_sha256`), so the same weights read
    from a checkpoint and from an ONNX export of it hash the same. Also accepts the per-layer
    hashes themselves.
    """
    digests = [layer_sha256(l.weight) for l in mf.layers] if isinstance(mf, ModelFilters) else list(mf)
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()
