"""Group statistics on data that tell the candidate formulas apart.

Every expected value is derived outside filterlens, as stated beside it: worked by hand (the
arithmetic is in the comment) or by scipy/numpy on the same data. The data are chosen so that
the usual slips give a different number: monotone but non-linear data (Spearman vs Pearson),
groups of unequal size and variance (pooled vs one group's standard deviation), the exact
percentiles of the seeded bootstrap replicates (a 95 % vs a 98 % interval), and a Holm case
where the step-down maximum matters (Holm vs Bonferroni vs no monotonicity).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from filterlens.analysis.stats import (
    bootstrap_diff_ci,
    bootstrap_mean_ci,
    cohens_d,
    cohens_dz,
    compare_values,
    group_stats,
    holm,
    mann_whitney,
    spearman,
    wilcoxon_signed_rank,
)

# --- Spearman -----------------------------------------------------------------------------------


def test_spearman_is_one_on_monotone_non_linear_data() -> None:
    x = np.arange(1.0, 9.0)
    y = np.exp(x)  # strictly increasing, far from a line: Pearson's r is about 0.75 here
    assert sps.pearsonr(x, y).statistic < 0.8  # the data do separate the two coefficients
    rho, p, n, note = spearman(x, y)
    assert rho == pytest.approx(1.0, abs=1e-12) and n == 8 and note == ""
    rho, _, _, _ = spearman(x, -(y**3))
    assert rho == pytest.approx(-1.0, abs=1e-12)


def test_spearman_hand_worked_with_ranks() -> None:
    # y's ranks are 2,1,4,3,5 against x's 1..5: d = -1,1,-1,1,0, sum d^2 = 4,
    # rho = 1 - 6 * 4 / (5 * (25 - 1)) = 1 - 24/120 = 0.8. The values are wildly non-linear.
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [10.0, 1.0, 1000.0, 100.0, 10000.0]
    rho, p, n, _ = spearman(x, y)
    assert rho == pytest.approx(0.8, abs=1e-12)
    assert p == pytest.approx(sps.spearmanr(x, y).pvalue, rel=1e-12)  # scipy on the same data
    assert abs(sps.pearsonr(x, y).statistic - 0.8) > 0.05


def test_spearman_drops_pairs_with_a_missing_side() -> None:
    # The NaN pair and the inf pair go; what is left is the hand-worked case above.
    x = [1.0, np.nan, 2.0, 3.0, 4.0, 9.0, 5.0]
    y = [10.0, 5.0, 1.0, 1000.0, 100.0, np.inf, 10000.0]
    rho, _, n, _ = spearman(x, y)
    assert n == 5 and rho == pytest.approx(0.8, abs=1e-12)


# --- effect sizes --------------------------------------------------------------------------------


def test_cohens_d_pools_unequal_groups() -> None:
    # a: n=6, mean 3.5, sample variance 17.5/5 = 3.5; b: n=3, mean 5, deviations -3,-1,4 -> 26/2 = 13.
    # pooled variance = (5 * 3.5 + 2 * 13) / (6 + 3 - 2) = 43.5 / 7; d = -1.5 / sqrt(43.5/7) = -0.60172...
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    b = [2.0, 4.0, 9.0]
    expected = -1.5 / np.sqrt(43.5 / 7)
    assert cohens_d(a, b) == pytest.approx(expected, rel=1e-12)
    assert cohens_d(b, a) == pytest.approx(-expected, rel=1e-12)
    # The slips this data separates: one group's sd, the unweighted mean of variances, ddof 0.
    for wrong in (-1.5 / np.sqrt(3.5), -1.5 / np.sqrt(13.0), -1.5 / np.sqrt((3.5 + 13) / 2),
                  -1.5 / np.sqrt((6 * np.var(a) + 3 * np.var(b)) / 9)):
        assert abs(wrong - expected) > 0.05


def test_cohens_dz_uses_the_sample_sd() -> None:
    # d = 1,2,3,6: mean 3, deviations -2,-1,0,3 -> sum of squares 14, sd = sqrt(14/3); dz = 3 / sqrt(14/3)
    assert cohens_dz([1.0, 2.0, 3.0, 6.0]) == pytest.approx(3 / np.sqrt(14 / 3), rel=1e-12)
    assert np.isnan(cohens_dz([2.0, 2.0, 2.0]))


# --- rank tests ----------------------------------------------------------------------------------


def test_mann_whitney_u_and_rank_biserial_by_hand() -> None:
    # a = 1,4,6 vs b = 2,3,5,7: pairs with a > b: 1 -> 0, 4 -> 2 (2,3), 6 -> 3 (2,3,5): U_a = 5 of 12.
    # r = 2 * 5 / 12 - 1 = -1/6 (a tends to be smaller).
    u, p, r, note = mann_whitney([1.0, 4.0, 6.0], [2.0, 3.0, 5.0, 7.0])
    assert u == 5.0 and r == pytest.approx(-1 / 6, abs=1e-12) and note == ""
    # scipy on the same data (exact distribution: no ties, small n)
    assert p == pytest.approx(sps.mannwhitneyu([1, 4, 6], [2, 3, 5, 7], alternative="two-sided").pvalue, rel=1e-12)
    # Ties count one half: a = 1,2 vs b = 2,3 -> U_a = 0 + 0.5 = 0.5, r = 2 * 0.5 / 4 - 1 = -0.75
    u, _, r, _ = mann_whitney([1.0, 2.0], [2.0, 3.0])
    assert u == 0.5 and r == pytest.approx(-0.75)


def test_wilcoxon_rank_biserial_by_hand() -> None:
    # d = 1,-2,3,4,-5: ranks of |d| 1..5; R+ = 1+3+4 = 8, R- = 2+5 = 7; r = (8-7)/15.
    w, p, r, note = wilcoxon_signed_rank([1.0, -2.0, 3.0, 4.0, -5.0])
    assert r == pytest.approx(1 / 15, abs=1e-12) and note == ""
    ref = sps.wilcoxon([1.0, -2.0, 3.0, 4.0, -5.0], zero_method="wilcox", alternative="two-sided")
    assert w == ref.statistic and p == pytest.approx(ref.pvalue, rel=1e-12)
    # A zero difference is dropped (Wilcoxon's method): 1,-2,3 -> R+ = 1+3 = 4, R- = 2, r = 2/6.
    assert wilcoxon_signed_rank([0.0, 1.0, -2.0, 3.0])[2] == pytest.approx(1 / 3, abs=1e-12)
    # Tied |d| share their average rank: |1|,|-1|,|2| -> 1.5,1.5,3; R+ = 1.5+3, R- = 1.5; r = 3/6.
    assert wilcoxon_signed_rank([1.0, -1.0, 2.0])[2] == pytest.approx(0.5, abs=1e-12)


# --- Holm ----------------------------------------------------------------------------------------


def test_holm_hand_worked_step_down() -> None:
    # p = .01 .04 .03 .005, m = 4. Sorted: .005 (x4 = .02), .01 (x3 = .03), .03 (x2 = .06), .04 (x1 = .04);
    # running maximum: .02 .03 .06 .06. Back in input order: .03 .06 .06 .02.
    # (Bonferroni would give .04 .16 .12 .02; Holm without the running maximum .03 .04 .06 .02.)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # NaN is not a test: m = 2 -> .01 x2 = .02, .04 x1 = .04.
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04], rtol=1e-12)
    # Capped at 1, and the cap keeps the order: .5 x2 = 1.0 (capped), .6 x1 = .6 -> max 1.0.
    np.testing.assert_allclose(holm([0.6, 0.5]), [1.0, 1.0])
    # A tie: both .02 -> x2 = .04 and x1 = .02 -> running max .04, .04.
    np.testing.assert_allclose(holm([0.02, 0.02]), [0.04, 0.04])


def test_group_stats_adjusts_within_each_metric_over_its_bins() -> None:
    # Two bins, separated groups: in the first a > b completely, in the last decile they interleave.
    first, last = "first", "(0.9, 1.0]"
    rows = []
    for i, (va1, vb1, va2, vb2) in enumerate([(10, 1, 1, 2), (11, 2, 4, 3), (12, 3, 6, 5), (13, 4, 7, 8)]):
        rows += [{"model": f"a{i}", "group": "a", "dataset": "d", "depth_bin": first, "sparsity": va1},
                 {"model": f"b{i}", "group": "b", "dataset": "d", "depth_bin": first, "sparsity": vb1},
                 {"model": f"a{i}", "group": "a", "dataset": "d", "depth_bin": last, "sparsity": va2},
                 {"model": f"b{i}", "group": "b", "dataset": "d", "depth_bin": last, "sparsity": vb2}]
    table = group_stats(pd.DataFrame(rows), metrics=["sparsity"], n_boot=200, alpha=0.05)
    assert list(table["depth_bin"]) == [first, last]
    p1 = sps.mannwhitneyu([10, 11, 12, 13], [1, 2, 3, 4], alternative="two-sided").pvalue  # scipy, exact
    p2 = sps.mannwhitneyu([1, 4, 6, 7], [2, 3, 5, 8], alternative="two-sided").pvalue
    assert table["p_value"].tolist() == pytest.approx([p1, p2], rel=1e-12)
    lo, hi = sorted([p1, p2])  # Holm over the family of two bins
    adj = {lo: min(1, 2 * lo), hi: min(1, max(2 * lo, hi))}
    assert table["p_adj"].tolist() == pytest.approx([adj[p1], adj[p2]], rel=1e-12)
    assert table["significant"].tolist() == [adj[p1] < 0.05, adj[p2] < 0.05]
    # Cohen's d of bin 1 by hand: means 11.5 and 2.5, both variances 5/3 -> d = 9 / sqrt(5/3).
    assert table["cohens_d"].iloc[0] == pytest.approx(9 / np.sqrt(5 / 3), rel=1e-12)


def test_paired_compare_drops_incomplete_pairs() -> None:
    a = pd.Series([3.0, 5.0, np.nan, 10.0], index=list("wxyz"))
    b = pd.Series([1.0, 2.0, 4.0, 4.0], index=list("wxyz"))
    res = compare_values(a, b, paired=True, n_boot=100)
    # kept pairs w, x, z: d = 2, 3, 6 -> mean 11/3; sd: deviations -5/3, -2/3, 7/3 -> (25+4+49)/9/2 = 13/3
    assert res["n_a"] == res["n_b"] == 3
    assert res["diff"] == pytest.approx(11 / 3, rel=1e-12)
    assert res["cohens_d"] == pytest.approx((11 / 3) / np.sqrt(13 / 3), rel=1e-12)
    assert res["test"] == "wilcoxon"


# --- the bootstrap: the exact percentiles of the seeded replicates ------------------------------


def _replicates_diff(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The documented draw: ``default_rng(seed)``, ``a`` resampled, then ``b`` (one block)."""
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(n_boot, len(a)))
    ib = rng.integers(0, len(b), size=(n_boot, len(b)))
    return a[ia].mean(axis=1) - b[ib].mean(axis=1)


def _percentile_by_hand(values: np.ndarray, q: float) -> float:
    """Linear interpolation between order statistics at position (n - 1) q (numpy's default)."""
    s = np.sort(values)
    pos = (len(s) - 1) * q
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (pos - lo) * (s[hi] - s[lo]))


@pytest.mark.parametrize("ci", [0.95, 0.9])
def test_bootstrap_diff_ci_is_the_exact_percentiles_of_the_replicates(ci: float) -> None:
    a = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.7, 0.3])
    b = np.array([0.0, 0.2, 0.1, 0.6])
    reps = _replicates_diff(a, b, 1000, seed=5)
    expected = (_percentile_by_hand(reps, (1 - ci) / 2), _percentile_by_hand(reps, (1 + ci) / 2))
    got = bootstrap_diff_ci(a, b, n_boot=1000, ci=ci, seed=5)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # The interval of another level is different on these replicates (98 % is wider than 95 %).
    other = (_percentile_by_hand(reps, 0.01), _percentile_by_hand(reps, 0.99))
    assert other[0] < expected[0] and other[1] > expected[1]


def test_bootstrap_mean_ci_is_the_exact_percentiles_of_the_replicates() -> None:
    d = np.array([0.3, -0.1, 0.8, 0.2, 0.5, 0.05])
    rng = np.random.default_rng(11)
    reps = d[rng.integers(0, len(d), size=(2000, len(d)))].mean(axis=1)
    expected = (_percentile_by_hand(reps, 0.025), _percentile_by_hand(reps, 0.975))
    assert bootstrap_mean_ci(d, n_boot=2000, ci=0.95, seed=11) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # NaNs are dropped before resampling: the same replicates.
    with_nan = np.concatenate([d[:2], [np.nan], d[2:]])
    assert bootstrap_mean_ci(with_nan, n_boot=2000, seed=11) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_bootstrap_blocks_draw_the_same_replicates(monkeypatch) -> None:
    """Drawing in blocks (bounded memory) must not change the replicates' distribution or ends."""
    import filterlens.analysis.stats as st

    a = np.array([0.1, 0.5, 0.2, 0.9])
    b = np.array([0.0, 0.2, 0.1])
    whole = bootstrap_diff_ci(a, b, n_boot=600, seed=2)
    monkeypatch.setattr(st, "_BOOT_BLOCK", 7 * 600)  # still one block: identical
    assert bootstrap_diff_ci(a, b, n_boot=600, seed=2) == whole
    monkeypatch.setattr(st, "_BOOT_BLOCK", 7 * 50)  # 12 blocks: the same number of replicates
    lo, hi = bootstrap_diff_ci(a, b, n_boot=600, seed=2)
    assert a.min() - b.max() <= lo < hi <= a.max() - b.min()
