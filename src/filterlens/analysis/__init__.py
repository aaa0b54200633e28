"""Compare groups of models: depth bins, statistics, distribution shift, the paper's claims.

Works on plain DataFrames (a models table and a per-layer table) and a function that
yields a layer's filters in chunks, so any source of such data can be analysed.
"""

from .bins import ALL, BIN_LABELS, DECILES, FIRST, METRICS, assign_bins, depth_bin, model_bin_table, select_layers
from .claims import CLAIMS, evaluate_claims
from .compare import ComparisonResult, chunks_from, compare, compare_db
from .groups import GroupSpec, Groups, Pairs, load_pairs, match_pairs, pair_list, split_groups
from .paper import paper_distribution_shift
from .settings import CompareSettings
from .shift import PCABasis, ShiftResult, distribution_shift, symmetric_kl
from .stats import (
    accuracy_correlations,
    bootstrap_diff_ci,
    bootstrap_mean_ci,
    cohens_d,
    group_stats,
    mann_whitney,
    wilcoxon_signed_rank,
)

__all__ = [
    "ALL",
    "BIN_LABELS",
    "CLAIMS",
    "DECILES",
    "FIRST",
    "METRICS",
    "CompareSettings",
    "ComparisonResult",
    "GroupSpec",
    "Groups",
    "PCABasis",
    "Pairs",
    "ShiftResult",
    "accuracy_correlations",
    "assign_bins",
    "bootstrap_diff_ci",
    "bootstrap_mean_ci",
    "chunks_from",
    "cohens_d",
    "compare",
    "compare_db",
    "depth_bin",
    "distribution_shift",
    "evaluate_claims",
    "group_stats",
    "load_pairs",
    "mann_whitney",
    "match_pairs",
    "model_bin_table",
    "pair_list",
    "paper_distribution_shift",
    "select_layers",
    "split_groups",
    "symmetric_kl",
    "wilcoxon_signed_rank",
]
