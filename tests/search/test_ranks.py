"""Rank correlations of the transfer report: against hand-computed values and brute-force definitions."""

import math

import numpy as np
import pandas as pd
import pytest

from ar_ray.search import ranks


def brute_ranks(a):
    """Average rank by definition: 1 + (values below) + (other values equal) / 2."""
    a = list(a)
    return [1 + sum(v < x for v in a) + (sum(v == x for v in a) - 1) / 2 for x in a]


def brute_spearman(x, y):
    rx, ry = np.array(brute_ranks(x)), np.array(brute_ranks(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def brute_kendall(x, y):
    n = len(x)
    conc = disc = tie_x = tie_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                tie_x += 1
                tie_y += 1
            elif dx == 0:
                tie_x += 1
            elif dy == 0:
                tie_y += 1
            elif dx * dy > 0:
                conc += 1
            else:
                disc += 1
    n0 = n * (n - 1) / 2
    return (conc - disc) / math.sqrt((n0 - tie_x) * (n0 - tie_y))


def test_rankdata_averages_ties():
    assert ranks.rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert ranks.rankdata([3, 1, 2]).tolist() == [3, 1, 2]
    assert ranks.rankdata([5, 5, 5]).tolist() == [2, 2, 2]


def test_perfect_monotone_and_reversed():
    x = np.arange(10.0)
    y = np.exp(x)  # monotone but far from linear: rank correlations ignore that
    assert ranks.spearman(x, y) == pytest.approx(1.0)
    assert ranks.kendall(x, y) == pytest.approx(1.0)
    assert ranks.spearman(x, -y) == pytest.approx(-1.0)
    assert ranks.kendall(x, -y) == pytest.approx(-1.0)


def test_hand_checked_example_with_ties():
    x = [1, 2, 2, 3]
    y = [1, 3, 2, 4]
    # Spearman: ranks x = 1, 2.5, 2.5, 4 and y = 1, 3, 2, 4, both with mean 2.5.
    #   deviations x: -1.5, 0, 0, 1.5; y: -1.5, 0.5, -0.5, 1.5
    #   sum dx*dy = 2.25 + 2.25 = 4.5; sum dx^2 = 4.5; sum dy^2 = 2.25 + .25 + .25 + 2.25 = 5
    #   rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9) = 0.948683
    assert ranks.spearman(x, y) == pytest.approx(math.sqrt(0.9))
    # Kendall tau-b: of the 6 pairs, (2nd, 3rd) is tied in x; the other 5 are concordant, none discordant.
    #   tau_b = (5 - 0) / sqrt((6 - 1) * (6 - 0)) = 5 / sqrt(30) = 0.912871
    assert ranks.kendall(x, y) == pytest.approx(5 / math.sqrt(30))


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = 25
    x = rng.integers(0, 6, n).astype(float)  # plenty of ties
    y = x + rng.integers(-3, 4, n)
    assert ranks.spearman(x, y) == pytest.approx(brute_spearman(x, y))
    assert ranks.kendall(x, y) == pytest.approx(brute_kendall(x, y))
    xc, yc = rng.normal(size=n), rng.normal(size=n)  # continuous, no ties
    assert ranks.spearman(xc, yc) == pytest.approx(brute_spearman(xc, yc))
    assert ranks.kendall(xc, yc) == pytest.approx(brute_kendall(xc, yc))


def test_degenerate_inputs():
    assert math.isnan(ranks.spearman([1.0], [2.0]))
    assert math.isnan(ranks.kendall([1, 1, 1], [1, 2, 3]))  # one side constant: no ordering
    with pytest.raises(ValueError, match="pair up"):
        ranks.spearman([1, 2, 3], [1, 2])


def test_nan_pairs_dropped():
    x = [1, 2, np.nan, 3, 4, 5]
    y = [2, 4, 6, 6, np.nan, 10]
    assert ranks.spearman(x, y) == pytest.approx(1.0)
    assert ranks.kendall(x, y) == pytest.approx(1.0)
    t = ranks.transfer(x, y, permutations=100)
    assert t.n == 4


def test_permutation_p_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    strong = ranks.transfer(x, x + 0.3 * rng.normal(size=20), permutations=2000, seed=1)
    assert strong.spearman > 0.8
    assert strong.spearman_p < 0.002 and strong.kendall_p < 0.002
    assert strong.verdict == "carries the signal"
    indep = ranks.transfer(x, rng.normal(size=20), permutations=2000, seed=1)
    assert indep.spearman_p > 0.1 and indep.kendall_p > 0.1
    again = ranks.transfer(x, x + 0.3 * np.random.default_rng(0).normal(size=20), permutations=500, seed=7)
    assert again == ranks.transfer(x, x + 0.3 * np.random.default_rng(0).normal(size=20), permutations=500, seed=7)


def test_verdicts_and_description():
    assert ranks.transfer([1, 2, 3], [1, 2, 3]).verdict == "too few"
    assert ranks.transfer(range(8), range(8), permutations=500).verdict == "carries the signal"
    assert ranks.transfer(range(8), range(8)[::-1], permutations=500).verdict == "no signal"
    weak = ranks.transfer([1, 2, 3, 4, 5, 6], [3, 1, 6, 2, 5, 4], permutations=500)  # rho = 13/35
    assert weak.spearman == pytest.approx(13 / 35) and weak.verdict == "weak"
    t = ranks.transfer(range(12), range(12), permutations=200)
    line = t.describe()
    assert line.startswith("small->large rank transfer over 12 candidates: Spearman 1.00 (p=0.005)")
    assert line.endswith(": carries the signal")
    assert t.to_dict()["n"] == 12
    with pytest.raises(ValueError, match="direction"):
        ranks.transfer([1, 2], [1, 2], direction="up")


def _ledger():
    """Screens at the cheap rung and concluding promote rows at the top: gains rank alike except one swap."""
    rows = []
    small = {"e1": 0.05, "e2": 0.04, "e3": 0.03, "e4": 0.02, "e5": 0.01}
    large = {"e1": 0.020, "e2": 0.015, "e3": 0.016, "e4": 0.005, "e5": 0.001}
    for eid, g in small.items():
        rows.append(dict(experiment_id=eid, group_id=eid, role="screen", status="ok", gain=g, group_mean=None))
        # the first promote run of the group carries no group_mean; the concluding one does
        rows.append(dict(experiment_id=eid + "a", group_id=eid, role="promote", status="ok", gain=9.0, group_mean=None))
        rows.append(dict(experiment_id=eid + "b", group_id=eid, role="promote", status="ok", gain=large[eid],
                         group_mean=1.0 - large[eid]))
    rows.append(dict(experiment_id="e6", group_id="e6", role="screen", status="ok", gain=0.001, group_mean=None))
    rows.append(dict(experiment_id="e7", group_id="e7", role="screen", status="crash", gain=None, group_mean=None))
    return pd.DataFrame(rows)


def test_transfer_from_ledger_pairs_screen_gains_with_the_concluding_promote_gains():
    t = ranks.transfer_from_ledger(_ledger(), permutations=200)
    assert t.n == 5  # e6 was never promoted, e7 crashed
    assert t.spearman == pytest.approx(0.9) and t.kendall == pytest.approx(0.8)


def test_transfer_from_ledger_gives_none_when_it_cannot_tell():
    df = _ledger()
    assert ranks.transfer_from_ledger(df.drop(columns=["role"])) is None
    assert ranks.transfer_from_ledger(df[df["role"] != "promote"]) is None
    assert ranks.transfer_from_ledger(df[df["group_id"].isin(["e1", "e6"])]) is None
    assert ranks.transfer_from_ledger(df.iloc[:0]) is None
