"""filterlens: adversarial robustness through the lens of convolutional filters.

The Python API returns pandas DataFrames::

    import filterlens as fl
    layers = fl.measure("resnet20.th", arch="cifar_resnet20")   # one row per 3x3 conv layer
    fl.summarize(layers)                                          # one row per model
"""

from .archs import create_arch, list_archs
from .errors import ArchitectureError, FilterlensError, SourceError
from .measure import LAYER_COLUMNS, NoLayersError, measure, measure_model, summarize
from .sources import load_model
from .types import ConvLayer, ModelFilters

__version__ = "0.1.0"

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
