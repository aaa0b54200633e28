"""Model sources: turn a module, a checkpoint, a safetensors or an ONNX file into conv layers."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from ..errors import SourceError
from ..types import ModelFilters
from .checkpoint import CHECKPOINT_SUFFIXES, _looks_like_safetensors
from .weights import from_weights, read_safetensors_numpy

if TYPE_CHECKING:
    import torch.nn as nn

    from .torch_module import from_module

# torch is imported only for what needs it (a module, a torch checkpoint, an --arch): ONNX and
# safetensors files are read without it, which saves a second of start-up per process.
ModelSource = Union[str, Path, "nn.Module", Mapping]

_GZIP_MAGIC = b"\x1f\x8b"


def _is_onnx_path(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".onnx") or name.endswith(".onnx.gz")


def load_model(
    source: ModelSource,
    arch: str | None = None,
    name: str | None = None,
    input_shape: Sequence[int] | None = None,
    **arch_kwargs,
) -> ModelFilters:
    """Read any supported model source into :class:`~filterlens.types.ModelFilters`.

    - an ``nn.Module``: depth from its graph (torch.fx, torch.export, or forward hooks);
    - a state dict (mapping of tensors) or a checkpoint file (``.pt .pth .th .ckpt .bin``,
      read with ``weights_only=True``) or ``.safetensors``: with ``arch`` it is loaded into the
      registered architecture and depth comes from the graph; without, every 4-D weight is a
      layer and depth follows the file order (``depth_source="order"``, approximate);
    - an ONNX file (``.onnx``, gzipped too): depth from the node graph.
    """
    if _is_module(source):
        from .torch_module import from_module

        return from_module(source, name=name or type(source).__name__, input_shape=input_shape)
    if isinstance(source, Mapping):
        from .checkpoint import find_state_dict

        return _from_state(find_state_dict(source, "state dict"), arch, name or "model", "<state dict>",
                           input_shape, arch_kwargs)
    if not isinstance(source, (str, Path)):
        raise SourceError(f"cannot read a model from a {type(source).__name__}")
    text = str(source)
    if text.startswith("robustbench:"):
        from .robustbench_source import load_robustbench

        return load_robustbench(text, name=name, **arch_kwargs)
    path = Path(text).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory, not a model file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty")
    model_name = name or _stem(path)
    if _is_onnx_path(path) or (path.suffix.lower() not in CHECKPOINT_SUFFIXES + (".safetensors",)
                               and _sniff_onnx(path)):
        if arch:
            raise SourceError(f"{path}: --arch does not apply to ONNX files (the graph is in the file)")
        from .onnx_model import load_onnx

        return load_onnx(path, name=model_name)
    if not arch and (path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path)):
        numpy_state = read_safetensors_numpy(path)  # None: dtypes numpy lacks, read through torch
        if numpy_state is not None:
            return from_weights(numpy_state, name=model_name, source=str(path))
    from .checkpoint import read_state_dict

    state = read_state_dict(path)
    return _from_state(state, arch, model_name, str(path), input_shape, arch_kwargs)


def _is_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # without torch imported, nothing can be an nn.Module
    return torch is not None and isinstance(obj, torch.nn.Module)


def __getattr__(name: str) -> Any:
    if name == "from_module":  # re-exported lazily: importing it imports torch
        from .torch_module import from_module

        return from_module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stem(path: Path) -> str:
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return Path(name).stem


def _sniff_onnx(path: Path) -> bool:
    """Unknown suffix: gzip, or a protobuf that is not a zip (torch) or safetensors file."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == _GZIP_MAGIC:
        return True
    # ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    return head[:1] == b"\x08"


def _from_state(state, arch, name, source, input_shape, arch_kwargs) -> ModelFilters:
    from .checkpoint import infer_num_classes, load_into, to_numpy_state

    notes = list(getattr(state, "notes", []))  # what read_state_dict skipped beside the weights
    if not arch:
        mf = from_weights(to_numpy_state(state), name=name, source=source)
        mf.warnings.extend(notes)
        return mf
    from .torch_module import from_module

    module, info = arch_module(state, arch, **arch_kwargs)
    mf = from_module(module, name=name, source=source, input_shape=input_shape or info.input_shape,
                     arch=info.name)
    mf.warnings.extend(notes)
    return mf


def arch_module(state, arch: str, **arch_kwargs):
    """``(module, ArchInfo)``: the registered architecture ``arch`` with ``state`` loaded.

    The one way from a checkpoint and an architecture to a module. ``arch_kwargs`` override the
    keyword arguments the architecture's name implies; without ``num_classes`` there, it is
    read from the classifier in ``state`` (:func:`~filterlens.sources.checkpoint.infer_num_classes`).
    Weights that do not fit raise :class:`~filterlens.errors.ArchitectureError`.
    """
    from ..archs import arch_info
    from .checkpoint import infer_num_classes, load_into

    info, implied = arch_info(arch)
    kwargs = {**implied, **arch_kwargs}
    if "num_classes" not in arch_kwargs:
        n = infer_num_classes(state)
        if n:
            kwargs["num_classes"] = n
    module = info.builder(**kwargs)
    load_into(module, state, info.name)
    return module, info


__all__ = ["ModelSource", "arch_module", "load_model", "from_module", "from_weights"]
