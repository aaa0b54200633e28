"""State dicts from checkpoint files (torch, safetensors), loaded without running code.

Checkpoints are untrusted input: torch files are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ArchitectureError, SourceError

if TYPE_CHECKING:  # torch is imported by the functions that need it: ONNX and safetensors files never do
    import torch
    import torch.nn as nn

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".ckpt", ".bin", ".tar")
#: Where common training scripts keep the weights inside a checkpoint dict, in the order tried.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "last", "ema", "model_ema")
#: Prefixes added by DataParallel / pytorch-lightning wrappers; stripped when every key has one.
WRAPPER_PREFIXES = ("module.", "model.")


#: Globals beside the tensors of research checkpoints that only rebuild plain data (numpy scalars
#: and arrays, ``args``): allowed on top of torch's weights-only set; anything else is refused.
EXTRA_SAFE_GLOBALS = {
    **{f"{m}.{n}": (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
       for n in ("scalar", "_reconstruct")},
    "numpy.ndarray": ("numpy", "ndarray"),
    "numpy.dtype": ("numpy", "dtype"),
    "argparse.Namespace": ("argparse", "Namespace"),
}
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|unsupported GLOBAL ([\w.]+)"
                          r"|allowlisted via `add_safe_globals`, but got <class '([\w.]+)'>")


def _safe_global(name: str) -> object | None:
    """The object of an allowed extra global (numpy dtype classes included), else None."""
    import importlib

    if name in EXTRA_SAFE_GLOBALS:
        module, attr = EXTRA_SAFE_GLOBALS[name]
    elif re.fullmatch(r"numpy\.dtypes\.\w+DType", name):
        module, attr = name.rsplit(".", 1)
    else:
        return None
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _importable(name: str) -> bool:
    """Whether the top-level module of a dotted global exists (without importing it)."""
    import importlib.util

    if "." not in name:  # torch names builtins without their module: 'print', 'eval'
        import builtins

        return hasattr(builtins, name)
    top = name.split(".")[0]
    try:
        return bool(top) and importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def read_torch_checkpoint(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` with one clear error line for each failure.

    Globals torch's weights-only unpickler refuses are allowed one by one when they are in
    :data:`EXTRA_SAFE_GLOBALS` (numpy scalars, ``argparse.Namespace``); any other global is
    refused, naming it.
    """
    return _load_allowing(path)[0]


def _load_allowing(path: Path) -> tuple[object, list[str]]:
    """The checkpoint and the extra globals it needed (see :func:`read_torch_checkpoint`)."""
    import torch

    allowed: list = []
    names: list[str] = []
    for _ in range(len(EXTRA_SAFE_GLOBALS) + 16):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True), names
        except pickle.UnpicklingError as exc:
            msg = str(exc)
            if "Weights only load failed" not in msg and "weights_only" not in msg:
                raise SourceError(f"{path}: not a PyTorch checkpoint ({_first_line(msg)})") from None
            m = _UNSUPPORTED.search(msg)
            if m is None:  # the weights-only unpickler choked on bytes, not on a global
                reason = next((l.strip() for l in msg.splitlines() if "WeightsUnpickler error" in l), "")
                raise SourceError(f"{path}: not a PyTorch checkpoint, or it is corrupt"
                                  f"{' (' + reason[:200] + ')' if reason else ''}") from None
            name = m.group(1) or m.group(2) or m.group(3)
            obj = _safe_global(name)
            if obj is None and not _importable(name):  # random bytes that parse as a pickle
                raise SourceError(f"{path}: not a PyTorch checkpoint, or it is corrupt (it names a Python "
                                  f"object {name[:80]} that does not exist)") from None
            if obj is None or obj in allowed:
                raise SourceError(
                    f"{path}: refused to load: the checkpoint asks for {name}, which could run code when "
                    "unpickled, and filterlens loads weights only. Re-save it as a plain state dict "
                    "(torch.save(model.state_dict(), ...)) or as .safetensors."
                ) from None
            allowed.append(obj)
            names.append(name)
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
            return _read_error(path, exc)
        except Exception as exc:  # the weights-only unpickler raises assorted errors on garbage
            raise SourceError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: "
                              f"{_first_line(str(exc))})") from None
    raise SourceError(f"{path}: refused to load: the checkpoint asks for too many Python globals")


def _read_error(path: Path, exc: BaseException):
    """A torch.load failure that is not the unpickler's: truncated, corrupt, unreadable."""
    msg = _first_line(str(exc))
    if "zip archive" in msg or "central directory" in msg or isinstance(exc, EOFError):
        raise SourceError(f"{path}: the checkpoint is truncated or corrupt ({msg})") from None
    raise SourceError(f"{path}: cannot read the checkpoint ({msg})") from None


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
    import torch

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


def not_2d_conv_notes(state: Mapping) -> list[str]:
    """A note naming the 3-D and 5-D ``*.weight`` tensors (1-D and 3-D convolutions): only 2-D
    convolutions (4-D weights) are extracted, and the others must not vanish without a word."""
    other = [(k, v.dim()) for k, v in state.items()
             if k.endswith("weight") and hasattr(v, "dim") and v.dim() in (3, 5)]
    if not other:
        return []
    names = ", ".join(k for k, _ in other[:6]) + (", ..." if len(other) > 6 else "")
    kinds = ", ".join(sorted({f"{d - 2}-D" for _, d in other}))
    return [f"{len(other)} weight(s) of {kinds} convolutions are not extracted (only 2-D convolutions are): {names}"]


class StateDict(dict):
    """A state dict read from a file, with ``notes`` on what was read around it."""

    notes: list[str]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint or safetensors file. When the checkpoint needed
    :data:`EXTRA_SAFE_GLOBALS` (``args``, numpy scalars), ``notes`` says what was skipped."""
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
        state = StateDict(strip_wrapper_prefixes(read_safetensors(path)))
        state.notes = not_2d_conv_notes(state)
        return state
    obj, needed = _load_allowing(path)
    state = StateDict(find_state_dict(obj, str(path)))
    state.notes = not_2d_conv_notes(state)
    if needed and isinstance(obj, Mapping):
        skipped = [f"{k} ({type(v).__module__}.{type(v).__qualname__})" for k, v in obj.items()
                   if type(v).__module__.split(".")[0] in ("numpy", "argparse")]
        state.notes.append("read the tensors only; skipped what is not a weight"
                           + (f": {', '.join(map(str, skipped[:8]))}" if skipped else
                              f" (objects of {', '.join(needed)})"))
    return state


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
    import torch

    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            v = v.float()
        out[k] = v.numpy()
    return out
