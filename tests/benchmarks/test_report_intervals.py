"""Intervals and comparisons of suite reports: known answers (t table, hand-computed intervals), overlap cases."""

import math

import pytest

from benchmarks.suite.report import Interval, _ranking, compare, fmt_cell, t_interval


@pytest.mark.parametrize(
    ("n", "t"),  # two-sided 95% Student-t quantiles t_{0.975, n-1} from the standard table
    [(2, 12.706), (3, 4.303), (5, 2.776), (10, 2.262), (30, 2.045)],
)
def test_half_width_uses_the_t_quantile_of_n_minus_1_dof(n, t):
    values = [0.0] * (n - 1) + [float(n)]  # mean 1, sample std sqrt(n)
    iv = t_interval(values)
    s = math.sqrt(sum((v - 1.0) ** 2 for v in values) / (n - 1))
    assert iv.mean == pytest.approx(1.0)
    assert iv.half == pytest.approx(t * s / math.sqrt(n), rel=2e-4)


def test_hand_computed_interval():
    # 0.80, 0.84, 0.88: mean 0.84, s = 0.04, half = 4.3027 * 0.04 / sqrt(3) = 0.09937
    iv = t_interval([0.80, 0.84, 0.88])
    assert iv.mean == pytest.approx(0.84)
    assert iv.half == pytest.approx(0.099367, abs=1e-5)
    assert (iv.low, iv.high) == pytest.approx((0.84 - 0.099367, 0.84 + 0.099367), abs=1e-5)
    assert fmt_cell([0.80, 0.84, 0.88]) == "0.840 ± 0.099"


def test_other_levels_and_identical_values():
    assert t_interval([1.0, 2.0, 3.0], level=0.90).half == pytest.approx(2.919986 / math.sqrt(3), rel=1e-5)
    iv = t_interval([0.5, 0.5, 0.5])
    assert iv.half == 0.0 and iv.has_interval


def test_one_seed_has_no_interval_and_says_so():
    iv = t_interval([0.7])
    assert iv.n == 1 and not iv.has_interval and math.isnan(iv.half)
    assert iv.fmt() == "0.700 ± n/a"
    assert (iv.low, iv.high) == (0.7, 0.7)
    assert fmt_cell([0.7]) == "0.700" and fmt_cell([]) == "n/a"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one value"):
        t_interval([])
    with pytest.raises(ValueError, match="level must be in"):
        t_interval([1.0, 2.0], level=1.0)


def test_separated_and_overlapping_cases():
    hi, lo = [0.90, 0.91, 0.92], [0.50, 0.52, 0.51]
    c = compare(hi, lo)
    assert c.separated and c.higher == "a"
    assert compare(lo, hi).higher == "b"
    # means differ (0.85 vs 0.80) but the intervals overlap: [0.60, 1.10] and [0.55, 1.05]
    c = compare([0.75, 0.85, 0.95], [0.70, 0.80, 0.90])
    assert c.verdict == "not separated" and c.higher is None
    # one seed on a side: no interval, never separated
    assert compare([0.9], [0.1, 0.11, 0.12]).verdict == "not separated"


def test_compare_at_the_boundary_is_by_disjointness():
    a = Interval(mean=1.0, half=0.1, n=3)
    assert compare(a, Interval(mean=0.8, half=0.1, n=3)).verdict == "not separated"  # touching at 0.9
    assert compare(a, Interval(mean=0.79, half=0.1, n=3)).verdict == "separated"


def test_ranking_calls_a_defense_better_only_where_separated():
    vals = {("alie", "median"): [0.90, 0.91, 0.92], ("alie", "mean"): [0.50, 0.52, 0.51],
            ("alie", "krum"): [0.80, 0.95, 0.88]}
    text = _ranking("ranking", ["alie"], ["median", "mean", "krum"], vals)
    assert "median > krum > mean (by mean)" in text
    assert "median beats mean (separated); not separated from krum." in text
