"""State dicts from checkpoint files (torch, safetensors), loaded without running code.

Checkpoints are untrusted input: torch files are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import ArchitectureError, SourceError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".ckpt", ".bin", ".tar")
#: Where common training scripts keep the weights inside a checkpoint dict, in the order tried.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "last", "ema", "model_ema")
#: Prefixes added by DataParallel / pytorch-lightning wrappers; stripped when every key has one.
WRAPPER_PREFIXES = ("module.", "model.")


def read_torch_checkpoint(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` with one clear error line for each failure."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "weights_only" in msg:
            raise SourceError(
                f"{path}: refused to load: the checkpoint contains Python objects that could run "
                "code when unpickled, and filterlens loads weights only (weights_only=True). "
                "Re-save it as a plain state dict (torch.save(model.state_dict(), ...)) or as "
                ".safetensors."
            ) from None
        raise SourceError(f"{path}: not a PyTorch checkpoint ({_first_line(msg)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        msg = _first_line(str(exc))
        if "zip archive" in msg or "central directory" in msg or isinstance(exc, EOFError):
            raise SourceError(f"{path}: the checkpoint is truncated or corrupt ({msg})") from None
        raise SourceError(f"{path}: cannot read the checkpoint ({msg})") from None
    except Exception as exc:  # the weights-only unpickler raises assorted errors on garbage
        raise SourceError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: "
                          f"{_first_line(str(exc))})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise SourceError(f"{path}: not a readable safetensors file ({_first_line(str(exc))})") from None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def _tensor_items(obj: Mapping) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def find_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap the common checkpoint containers down to a ``{name: tensor}`` state dict.

    Tries the dict itself when its values are tensors, else the keys in
    :data:`CONTAINER_KEYS` (one level of nesting each), then strips
    :data:`WRAPPER_PREFIXES` where every key starts with one.
    """
    if not isinstance(obj, Mapping):
        raise SourceError(f"{source}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    state = _tensor_items(obj)
    if len(state) < max(1, len(obj) // 2):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _tensor_items(inner):
                state = _tensor_items(inner)
                break
    if not state:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise SourceError(f"{source}: no weights found in the checkpoint (top-level keys: {keys})")
    return strip_wrapper_prefixes(state)


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` / ``model.`` while *every* key starts with it (repeatedly)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint or safetensors file."""
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
        return strip_wrapper_prefixes(read_safetensors(path))
    return find_state_dict(read_torch_checkpoint(path), str(path))


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def infer_num_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    """Rows of the last 2-D weight (the classifier, in the usual module order)."""
    last = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(last[-1].shape[0]) if last else None


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], arch: str) -> nn.Module:
    """Load ``state`` into ``module`` strictly; one message lists every key that does not fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, {arch} {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"wrong shape: {', '.join(mismatched)}")
    if problems:
        raise ArchitectureError(f"the weights do not fit architecture {arch!r}: " + "; ".join(problems))
    module.load_state_dict({k: v for k, v in state.items()}, strict=False)
    return module


def to_numpy_state(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Tensors as numpy arrays (bfloat16 and other non-numpy types go through float32)."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            v = v.float()
        out[k] = v.numpy()
    return out
