"""filterlens: adversarial robustness through the lens of convolutional filters.

The Python API returns pandas DataFrames::

    import filterlens as fl
    layers = fl.measure("resnet20.th", arch="cifar_resnet20")   # one row per 3x3 conv layer
    fl.summarize(layers)                                          # one row per model

Names are imported on first use (PEP 562), so ``import filterlens`` and the command line
start without torch, pandas or numba: an ONNX or safetensors file never needs torch at all.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import ArchitectureError, FilterlensError, SourceError

from ._version import __version__

#: public name -> module that defines it
_LAZY = {
    "create_arch": ".archs",
    "list_archs": ".archs",
    "LAYER_COLUMNS": ".measure",
    "NoLayersError": ".measure",
    "measure": ".measure",
    "measure_model": ".measure",
    "summarize": ".measure",
    "load_model": ".sources",
    "ConvLayer": ".types",
    "ModelFilters": ".types",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .archs import create_arch, list_archs
    from .measure import LAYER_COLUMNS, NoLayersError, measure, measure_model, summarize
    from .sources import load_model
    from .types import ConvLayer, ModelFilters


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if not name.startswith("_"):  # a subpackage (``fl.archs``, ``fl.db``), imported on first use
            try:
                return import_module(f".{name}", __name__)
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module 'filterlens' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``fl.measure`` is the function, as with eager imports: importing the submodule
    ``filterlens.measure`` later must not put the module in its place."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "ArchitectureError",
    "ConvLayer",
    "FilterlensError",
    "LAYER_COLUMNS",
    "ModelFilters",
    "NoLayersError",
    "SourceError",
    "__version__",
    "create_arch",
    "list_archs",
    "load_model",
    "measure",
    "measure_model",
    "summarize",
]
