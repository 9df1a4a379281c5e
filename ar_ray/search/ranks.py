"""Does the ranking found at small scale carry to large scale? Rank correlations for the transfer report.

A search screens many candidates cheaply (short runs, small models) and promotes a few to a larger scale.
That is only worth doing if the cheap measurement orders candidates roughly the way the expensive one does.
Rank correlation asks exactly that question and nothing more: it ignores the (expected) shift of the
metric between scales and any monotone distortion of it.

    from ar_ray.search import ranks
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


def transfer_from_ledger(df, permutations: int = 2000, seed: int = 0) -> Transfer | None:
    """The transfer report of a run with a promotion ladder: does the cheap rung rank candidates as the
    full scale does?

    A promoted candidate has its screening row (`role == "screen"`, at the cheapest rung) and `promote`
    rows (`group_id` = the screen's `experiment_id`) at the higher rungs. Each decision row carries the
    `gain` over the best *at that rung*, so candidates built on different bests compare fairly. The small
    value is the screen's gain; the large value is the gain of the group's last concluding promote row
    (the one with a `group_mean`: the highest rung it reached).

    Returns None when fewer than 2 candidates have both values, or when a needed column is missing."""
    need = {"group_id", "experiment_id", "status", "role", "gain", "group_mean"}
    if df is None or not need.issubset(getattr(df, "columns", ())):
        return None
    screens = df[(df["role"] == "screen") & (df["status"] == "ok") & df["gain"].notna()]
    small = dict(zip(screens["experiment_id"], screens["gain"].astype(float)))
    concluded = df[(df["role"] == "promote") & df["group_mean"].notna() & df["gain"].notna()]
    large = dict(zip(concluded["group_id"], concluded["gain"].astype(float)))  # later rows win: the highest rung
    ids = sorted(set(small) & set(large))
    if len(ids) < 2:
        return None
    return transfer(np.array([small[i] for i in ids]), np.array([large[i] for i in ids]),
                    permutations=permutations, seed=seed)
