"""Does the ranking found at small scale carry to large scale? Rank correlations for the transfer report.

A search screens many candidates cheaply (short runs, small models) and promotes a few to a larger scale.
That is only worth doing if the cheap measurement orders candidates roughly the way the expensive one does.
Rank correlation asks exactly that question and nothing more: it ignores the (expected) shift of the
metric between scales and any monotone distortion of it.

    from ar_ray import ranks
    t = ranks.transfer(small_metrics, large_metrics)        # same candidates, same order
    print(t.describe())
    # small->large rank transfer over 12 candidates: Spearman 0.83 (p=0.001), Kendall 0.67 (p=0.002): carries the signal
    ranks.transfer_from_ledger(df)                          # pairs screen rows with their promote rows

Pure numpy. Spearman is Pearson's correlation of average ranks; Kendall is tau-b; both handle ties. The
p-values are one-sided permutation tests for positive association (is the agreement better than a random
pairing of the same numbers would give?), deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

VERDICTS = ("too few", "carries the signal", "weak", "no signal")
MIN_N = 4  # below this a permutation test cannot reach p < 0.05 (4! = 24 orderings: p >= 1/24)
STRONG = 0.5  # Spearman at or above this, with p < ALPHA, "carries the signal"
ALPHA = 0.05


def _pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    """x and y as float arrays of the same length, with every pair that has a NaN on either side dropped."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must pair up one to one: got {x.size} and {y.size} values; "
                         "pass the two scales' metrics for the same candidates in the same order")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def rankdata(a) -> np.ndarray:
    """Ranks 1..n of `a`, tied values sharing the average of the ranks they span (so 10, 20, 20, 30 ->
    1, 2.5, 2.5, 4)."""
    a = np.asarray(a, dtype=float).ravel()
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    # start of each run of equal values in sorted order, and the run each sorted position belongs to
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]  # exclusive
    run = np.repeat(np.arange(starts.size), ends - starts)
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(a.size)
    ranks[order] = avg[run]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks. NaN pairs are dropped; NaN when fewer
    than 2 pairs remain or one side is constant (no ordering to compare)."""
    x, y = _pairs(x, y)
    if x.size < 2:
        return float("nan")
    return _pearson(rankdata(x), rankdata(y))


def _signs(a: np.ndarray) -> np.ndarray:
    """sign(a[j] - a[i]) for every pair, as an n x n int8 matrix (0 on ties and the diagonal)."""
    return np.sign(a[None, :] - a[:, None]).astype(np.int8)


def _tau_b(sx: np.ndarray, sy: np.ndarray) -> float:
    # Over ordered pairs every unordered pair counts twice, in the numerator and in both sums of squares
    # alike, so the factor cancels. sum(sx**2) = 2 * (pairs not tied in x).
    den = np.sqrt(float(np.abs(sx).sum()) * float(np.abs(sy).sum()))
    if den == 0:
        return float("nan")
    return float((sx.astype(np.int64) * sy).sum() / den)


def kendall(x, y) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((pairs untied in x) * (pairs untied in y)).
    O(n^2) memory and time, fine up to a few thousand candidates. NaN pairs are dropped; NaN when fewer
    than 2 pairs remain or one side is constant."""
    x, y = _pairs(x, y)
    if x.size < 2:
        return float("nan")
    return _tau_b(_signs(x), _signs(y))


def _perm_pvalues(x: np.ndarray, y: np.ndarray, rho: float, tau: float, permutations: int,
                  seed: int) -> tuple[float, float]:
    """One-sided permutation p-values for rho and tau: the share of random re-pairings of x with y (the
    observed pairing counted as one of them) that agree at least as well. The same permutations serve
    both statistics. Cost: permutations * n^2 for Kendall, which is seconds at a few hundred candidates."""
    if not (permutations > 0 and np.isfinite(rho) and np.isfinite(tau)):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    sx, sy = _signs(x), _signs(y)
    eps = 1e-12  # equal statistics must count as "at least as good" despite rounding
    hits_rho = hits_tau = 0
    for _ in range(int(permutations)):
        p = rng.permutation(x.size)
        hits_rho += float((rx * ry[p]).sum() / norm) >= rho - eps
        hits_tau += _tau_b(sx, sy[np.ix_(p, p)]) >= tau - eps
    n = int(permutations) + 1
    return (hits_rho + 1) / n, (hits_tau + 1) / n


@dataclass(frozen=True)
class Transfer:
    """How well the small-scale ranking of candidates predicts their large-scale ranking."""
    n: int  # candidates measured at both scales (after dropping NaNs)
    spearman: float
    kendall: float
    spearman_p: float  # one-sided permutation p-value for positive association
    kendall_p: float
    verdict: str  # one of VERDICTS
    direction: str = "min"  # the metric's direction; same at both scales, so it does not change the ranks

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for a report."""
        return (f"small->large rank transfer over {self.n} candidates: Spearman {_num(self.spearman)} "
                f"({_p(self.spearman_p)}), Kendall {_num(self.kendall)} ({_p(self.kendall_p)}): {self.verdict}")


def _num(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.2f}"


def _p(v: float) -> str:
    if not np.isfinite(v):
        return "p n/a"
    return "p<0.001" if v < 0.001 else f"p={v:.3f}"


def _verdict(n: int, rho: float, p: float) -> str:
    if n < MIN_N:
        return "too few"
    if np.isfinite(rho) and rho >= STRONG and p < ALPHA:
        return "carries the signal"
    if np.isfinite(rho) and rho > 0:
        return "weak"
    return "no signal"


def transfer(small, large, direction: str = "min", permutations: int = 2000, seed: int = 0) -> Transfer:
    """Rank agreement between the same candidates' metric at a small and a large scale.

    `small[i]` and `large[i]` are candidate i's metric at each scale; pairs with a NaN are dropped.
    `direction` ("min" or "max") is recorded but changes nothing: both scales use the same metric, so
    agreement of orderings is the same whichever end is "better".

    The permutation tests cost permutations * n^2 (Kendall): about 1.5 s at 300 candidates with the default
    2000, about a minute at 2000 candidates, where fewer permutations will do.

    Verdict: "too few" when n < 4; else "carries the signal" when Spearman >= 0.5 and its p < 0.05;
    else "weak" when Spearman > 0; else "no signal" (including an undefined Spearman, e.g. one scale
    gave every candidate the same value)."""
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0 (0 skips the p-values), got {permutations}")
    x, y = _pairs(small, large)
    n = int(x.size)
    rho = spearman(x, y) if n >= 2 else float("nan")
    tau = kendall(x, y) if n >= 2 else float("nan")
    rho_p, tau_p = _perm_pvalues(x, y, rho, tau, permutations, seed) if n >= 2 else (float("nan"),) * 2
    return Transfer(n=n, spearman=rho, kendall=tau, spearman_p=rho_p, kendall_p=tau_p,
                    verdict=_verdict(n, rho, rho_p), direction=direction)


def transfer_from_ledger(df, metric: str = "metric", direction: str = "min", permutations: int = 2000,
                         seed: int = 0) -> Transfer | None:
    """The transfer report of a ledger whose candidates were re-run at a larger scale.

    A promoted candidate has `role == "promote"` rows (the larger scale) whose `group_id` is the
    `experiment_id` of its screening row (`role == "screen"`). Its small-scale value is the mean `metric`
    over its ok rows at the screening scale: the screen row and any `confirm` rows of the same group (repeats
    of the same program; `rebase` rows are left out, they run the change on a different base). Where the
    ledger has `budget_seconds`, confirm rows count only when their budget equals the screen row's. Its
    large-scale value is the mean over its ok promote rows.

    Returns None when fewer than 2 candidates have both values, or when a needed column is missing."""
    import pandas as pd  # only this function needs it; the rest of the module is plain numpy

    need = {"group_id", "experiment_id", "status", "role", metric}
    if df is None or not need.issubset(getattr(df, "columns", ())):
        return None
    cols = [c for c in ("group_id", "experiment_id", "status", "role", metric, "budget_seconds") if c in df.columns]
    d = df[cols].copy()
    d[metric] = d[metric].astype(float)
    d = d[(d["status"] == "ok") & np.isfinite(d[metric].to_numpy(dtype=float))]

    promote = d[d["role"] == "promote"]
    large = promote.groupby("group_id")[metric].mean()
    screens = d[(d["role"] == "screen") & d["experiment_id"].isin(large.index)]
    if large.empty or screens.empty:
        return None
    small_rows = [screens.assign(cand=screens["experiment_id"])]
    confirms = d[(d["role"] == "confirm") & d["group_id"].isin(screens["experiment_id"])]
    if len(confirms):
        confirms = confirms.assign(cand=confirms["group_id"])
        if "budget_seconds" in d.columns:
            budget = screens.drop_duplicates("experiment_id").set_index("experiment_id")["budget_seconds"]
            mine = pd.to_numeric(confirms["budget_seconds"], errors="coerce").to_numpy(dtype=float)
            theirs = pd.to_numeric(confirms["cand"].map(budget), errors="coerce").to_numpy(dtype=float)
            confirms = confirms[(mine == theirs) | (np.isnan(mine) & np.isnan(theirs))]
        small_rows.append(confirms)
    small = pd.concat(small_rows).groupby("cand")[metric].mean()
    ids = sorted(set(small.index) & set(large.index))
    if len(ids) < 2:
        return None
    return transfer(small.loc[ids].to_numpy(), large.loc[ids].to_numpy(), direction=direction,
                    permutations=permutations, seed=seed)
