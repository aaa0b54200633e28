"""Pure functions over conv weights: sparsity, variance entropy, orthogonality, aggregates."""

from .aggregate import UNUSED_NOTE, aggregate, aggregate_layers, used_layers
from .entropy import entropy10, max_variance_entropy, principal_variances, variance_entropy
from .filters import DEFAULT_THRESHOLD, as_filters, filter_linf, scaled_nonsparse, sparse_mask
from .layer import LAYER_METRIC_COLUMNS, measure_weight, measure_weights
from .orthogonality import channel_gram, orthogonality
from .sparsity import sparsity

__all__ = [
    "DEFAULT_THRESHOLD",
    "LAYER_METRIC_COLUMNS",
    "UNUSED_NOTE",
    "aggregate",
    "aggregate_layers",
    "as_filters",
    "channel_gram",
    "entropy10",
    "filter_linf",
    "max_variance_entropy",
    "measure_weight",
    "measure_weights",
    "orthogonality",
    "principal_variances",
    "scaled_nonsparse",
    "sparse_mask",
    "sparsity",
    "used_layers",
    "variance_entropy",
]
