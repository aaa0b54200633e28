"""The first-layer study: do robust first-layer filters eliminate adversarial perturbations?

A torch pipeline of its own, beside the filter database: it runs models on images rather than
reading their weights alone. One module per step, in the order the data flows:

- :mod:`.tracing`: find the first conv in execution order and what follows it (BN, ReLU);
- :mod:`.response`: how the layer responds to a perturbation (relative activation change,
  pass ratio against random filters of the same norms);
- :mod:`.kernels`: shape and frequency measures of the kernels (numpy only);
- :mod:`.study`: :func:`first_layer_study` over models and images, with
  :class:`FirstLayerSettings` (:mod:`.settings`) and a :class:`FirstLayerResult` (:mod:`.result`);
- :mod:`.stats`: robust vs normal statistics and the verdicts on the paper's claim (no torch);
- :mod:`.run`: :func:`run_study`, the study from model files, as ``filterlens first-layer`` runs it.

Its figures and report section are in :mod:`filterlens.report.first_layer`. Names are imported
on first use, so the torch-free parts (kernels, stats, result) load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FirstLayerError
from ..lazy import lazy_exports

#: public name -> module that defines it
_LAZY = {
    **dict.fromkeys(("SINGLE_TAP_SHARE", "centre_peaked", "kernel_aggregates", "kernel_table", "low_freq_share",
                     "peak_energy_share", "single_tap", "sparse_kernels", "spectral_centroid"), ".kernels"),
    **dict.fromkeys(("CLAIM_PARTS", "FILTER_METRICS", "FIRST_LAYER_METRICS", "first_layer_claims",
                     "first_layer_stats", "training_group"), ".stats"),
    **dict.fromkeys(("FirstLayerExample", "FirstLayerResult"), ".result"),
    "FirstLayerSettings": ".settings",
    **dict.fromkeys(("FirstConv", "capture", "find_first_conv"), ".tracing"),
    **dict.fromkeys(("measure_first_layer", "pass_energies", "pass_ratio", "random_bank", "relative_change"),
                    ".response"),
    "first_layer_study": ".study",
    **dict.fromkeys(("resolve_model", "run_study"), ".run"),
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .kernels import (SINGLE_TAP_SHARE, centre_peaked, kernel_aggregates, kernel_table, low_freq_share,
                          peak_energy_share, single_tap, sparse_kernels, spectral_centroid)
    from .response import measure_first_layer, pass_energies, pass_ratio, random_bank, relative_change
    from .result import FirstLayerExample, FirstLayerResult
    from .run import resolve_model, run_study
    from .settings import FirstLayerSettings
    from .stats import (CLAIM_PARTS, FILTER_METRICS, FIRST_LAYER_METRICS, first_layer_claims, first_layer_stats,
                        training_group)
    from .study import first_layer_study
    from .tracing import FirstConv, capture, find_first_conv


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = ["FirstLayerError", *sorted(_LAZY)]
