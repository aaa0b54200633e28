"""The settings of a comparison (:func:`~filterlens.analysis.compare.compare`), in one object."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from ..errors import FilterlensError
from ..metrics import DEFAULT_THRESHOLD
from .bins import METRICS
from .shift import N_BINS

COUNT_SHARED = ("once", "per_pair")
SHIFT_PROCEDURES = ("paper", "per_bin")


@dataclass(frozen=True)
class CompareSettings:
    """How :func:`~filterlens.analysis.compare.compare` selects, tests and measures the shift.

    Parameters
    ----------
    metrics : sequence of str
        Per-layer metrics compared (default: sparsity, variance_entropy, orthogonality).
    kernel_size : (int, int)
        Only layers of this kernel size take part (the paper's 3x3).
    include_transposed : bool
        Whether transposed convs take part.
    n_boot : int
        Bootstrap resamples of the confidence intervals.
    ci : float
        Confidence level of the intervals.
    seed : int
        Seed of the bootstrap.
    alpha : float
        Significance level, after the ``adjust`` correction.
    adjust : str
        p-value adjustment within each data set and metric over depth bins (``"holm"``, ...).
    majority : float
        Share of depth bins a claim needs to hold in to be "supported".
    shift : bool
        Compute the distribution shift (reads the filters).
    by_bin : bool
        The shift per depth bin as well as over all layers.
    n_bins : int
        Histogram bins per principal coefficient of the shift.
    range_mode : str
        Range of those histograms (``"global"``: one range per scope).
    count_shared : {"per_pair", "once"}
        With pairs: a model serving k pairs counts k times in the shift (the paper's pair
        lists), or once.
    shift_procedure : {"paper", "per_bin"}
        The paper's procedure (one shared basis and scalar range, density-scale epsilon) or the
        per-bin variant (basis and range per scope, with a label-shuffled null).
    threshold : float
        Sparsity threshold of the shift's filter selection (``max|w| <= threshold * max|W|``).
    inclusive : bool
        ``<=`` (True, the paper's) or ``<`` in that rule.
    """

    metrics: tuple[str, ...] = METRICS
    kernel_size: tuple[int, int] = (3, 3)
    include_transposed: bool = False
    n_boot: int = 10_000
    ci: float = 0.95
    seed: int = 0
    alpha: float = 0.05
    adjust: str = "holm"
    majority: float = 0.7
    shift: bool = True
    by_bin: bool = True
    n_bins: int = N_BINS
    range_mode: str = "global"
    count_shared: Literal["once", "per_pair"] = "per_pair"
    shift_procedure: Literal["paper", "per_bin"] = "paper"
    threshold: float = DEFAULT_THRESHOLD
    inclusive: bool = True

    def __post_init__(self) -> None:
        if self.count_shared not in COUNT_SHARED:
            raise FilterlensError("count_shared must be 'once' or 'per_pair'")
        if self.shift_procedure not in SHIFT_PROCEDURES:
            raise FilterlensError("shift_procedure must be 'paper' or 'per_bin'")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "kernel_size", tuple(self.kernel_size))

    def to_dict(self) -> dict:
        """The settings as a plain dict."""
        return asdict(self)


__all__ = ["COUNT_SHARED", "CompareSettings", "SHIFT_PROCEDURES"]
