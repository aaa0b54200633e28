"""Shared fixtures: where ../shared is, and small helper modules."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

# Local Dask workers start from a fresh forkserver in the suite: forking the test process itself,
# which holds the threads of many earlier tests (BLAS, numba, torch), once left a worker waiting
# on a lock copied in the fork. Production keeps fork (FILTERLENS_DASK_START, db/distributed.py).
os.environ.setdefault("FILTERLENS_DASK_START", "forkserver")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real models and data live in ../shared beside the checkout)")
    return path


def export_onnx(module, example, path) -> None:
    """Export with the TorchScript exporter (no onnxscript needed), weights kept as they are."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"])
