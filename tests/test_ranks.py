"""Rank correlations of the transfer report: against hand-computed values and brute-force definitions."""

import math

import numpy as np
import pandas as pd
import pytest

from ar_ray import ranks


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
    rows = [
        # id, group, role, status, metric, budget
        ("b0", "b0", "baseline", "ok", 1.03, 60.0),
        ("e1", "e1", "screen", "ok", 1.00, 60.0),
        ("e2", "e2", "screen", "ok", 1.02, 60.0),
        ("e3", "e3", "screen", "ok", 0.98, 60.0),
        ("e4", "e4", "screen", "ok", 1.05, 60.0),
        ("e5", "e5", "screen", "ok", 0.97, 60.0),  # never promoted: not in the report
        ("c1", "e1", "confirm", "ok", 1.08, 60.0),  # a repeat at the screen scale: e1's small value is 1.04
        ("c2", "e2", "confirm", "ok", 0.50, 120.0),  # another budget: not the screen scale, left out
        ("r3", "e3", "rebase", "ok", 2.00, 60.0),  # on another base: left out
        ("p1", "e1", "promote", "ok", 0.92, 600.0),
        ("p2", "e1", "promote", "ok", 0.94, 600.0),  # e1 large = 0.93
        ("p3", "e2", "promote", "ok", 0.91, 600.0),
        ("p4", "e3", "promote", "ok", 0.88, 600.0),
        ("p5", "e3", "promote", "crash", None, 600.0),
        ("p6", "e4", "promote", "ok", 0.95, 600.0),
        ("p7", "e4", "promote", "timeout", 0.10, 600.0),  # not ok: its metric does not count
    ]
    df = pd.DataFrame(rows, columns=["experiment_id", "group_id", "role", "status", "metric", "budget_seconds"])
    df["knobs"] = [None, {"lr": "0.1"}, [("lr", "0.2")], None] * 4
    return df


def test_transfer_from_ledger():
    df = _ledger()
    t = ranks.transfer_from_ledger(df, permutations=200)
    # small: e1 (1.00 + 1.08) / 2 = 1.04, e2 1.02, e3 0.98, e4 1.05 -> order e3 < e2 < e1 < e4
    # large: e1 (0.92 + 0.94) / 2 = 0.93, e2 0.91, e3 0.88, e4 0.95 -> the same order. Perfect agreement
    # needs every rule: without c1 e1 would be second at small scale, with c2 e2 first, with r3 e3 last.
    assert t.n == 4
    assert t.spearman == pytest.approx(1.0) and t.kendall == pytest.approx(1.0)
    # as ledger.load gives it (categorical status), with Arrow-backed columns and an all-null row
    loaded = pd.concat([df, pd.DataFrame([{"experiment_id": "x9"}])], ignore_index=True)
    loaded = loaded.assign(status=loaded["status"].astype("category")).convert_dtypes(dtype_backend="pyarrow")
    assert ranks.transfer_from_ledger(loaded, permutations=200) == t
    df2 = df.copy()
    df2.loc[df2["experiment_id"] == "p4", "metric"] = 0.96  # e3 now worst at large scale
    t2 = ranks.transfer_from_ledger(df2, permutations=200)
    # ranks of e1..e4: small 3, 2, 1, 4; large (0.93, 0.91, 0.96, 0.95) 2, 1, 4, 3
    # rank differences 1, 1, -3, 1: rho = 1 - 6 * 12 / (4 * 15) = -0.2
    assert t2.spearman == pytest.approx(-0.2)
    assert t2.kendall == pytest.approx(brute_kendall([3, 2, 1, 4], [2, 1, 4, 3]))


def test_transfer_from_ledger_gives_none_when_it_cannot_tell():
    df = _ledger()
    assert ranks.transfer_from_ledger(df.drop(columns=["role"])) is None
    assert ranks.transfer_from_ledger(df, metric="val_bpb") is None
    only_one = df[~df["group_id"].isin(["e2", "e3", "e4"]) | (df["role"] != "promote")]
    assert ranks.transfer_from_ledger(only_one) is None
    assert ranks.transfer_from_ledger(df[df["role"] != "promote"]) is None
    assert ranks.transfer_from_ledger(df.iloc[:0]) is None
