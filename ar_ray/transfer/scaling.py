"""Scaling-law fits, and the question a search cares about: does a win found at small scale hold as scale grows?

`ar-ray sweep` runs a target at several scales (depth x token budget) with repeats. Each run gives a loss L
(val_bpb, lower is better) and a training compute C = 6 * params * tokens FLOPs (`flops()`).

    from ar_ray.transfer import scaling as S
    fit = S.fit_power_law(C, L, groups=scale_labels)   # L = E + A * C**-alpha, bootstrap 95% intervals
    print(fit.describe()); fit.predict(1e18)
    S.optimal_tokens_per_param(df)                      # rough compute-optimal tokens per parameter
    S.plot({"A": fit_a, "B": fit_b}, {"A": runs_a, "B": runs_b}, "loss.png")

Whether a win holds as scale grows is `ar_ray.transfer.gains`.

numpy only (no scipy): the power law is fitted by profiling E on a grid (for fixed E, log(L - E) is linear
in log C) and polishing with Levenberg-Marquardt steps in L space; intervals come from a bootstrap over
the repeats at each scale point, so they say how much the fit would move if the runs were re-drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
# above this fraction of failed bootstrap refits, the fit reports no interval (ci_method "unavailable")
MAX_FAILED_BOOTSTRAP = 0.1


def flops(num_params_M, total_tokens_M):
    """Training compute in FLOPs from a run summary's `num_params_M` and `total_tokens_M` (millions):
    the usual 6 * N * D estimate (forward + backward, attention ignored)."""
    return 6.0 * (np.asarray(num_params_M, dtype=float) * 1e6) * (np.asarray(total_tokens_M, dtype=float) * 1e6)


# ---------------------------------------------------------------------------
# power-law fit
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """L = E + A * C**(-alpha), with 95 % bootstrap intervals (lo, hi) for each parameter."""
    E: float  # irreducible loss, >= 0
    A: float
    alpha: float
    E_ci: tuple[float, float]
    A_ci: tuple[float, float]
    alpha_ci: tuple[float, float]
    n_points: int  # distinct scale points (groups)
    n_runs: int
    rmse: float  # root mean squared residual in loss units
    bootstrap: int  # bootstrap replicates that produced a fit
    ci_method: str  # "within-scale" (repeats resampled per point), "residual" (no repeats anywhere), "none"
    #                 (bootstrap=0 or no replicate fitted), "unavailable" (too many replicates failed: NaN intervals)
    bootstrap_failed: int = 0  # replicates that gave no usable fit (skipped; see `fit_power_law`)

    def predict(self, compute):
        """Loss the fit expects at `compute` FLOPs (scalar or array)."""
        c = np.asarray(compute, dtype=float)
        out = self.E + np.exp(math.log(self.A) - self.alpha * np.log(c))
        return float(out) if out.ndim == 0 else out

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.ci_method == "unavailable":
            ci = (f"95% CI unavailable: {self.bootstrap_failed} of {self.bootstrap + self.bootstrap_failed} "
                  "bootstrap refits failed")
        else:
            ci = f"95% CI: alpha {_ci(self.alpha_ci)}, E {_ci(self.E_ci)}"
        return (f"L = {self.E:.4g} + {self.A:.3g} * C^-{self.alpha:.4g}  ({ci}) over {self.n_points} scale points, "
                f"{self.n_runs} runs, rmse {self.rmse:.3g}")


def _ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _check_runs(compute, loss) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(compute, dtype=float).ravel()
    l = np.asarray(loss, dtype=float).ravel()
    if c.shape != l.shape:
        raise ValueError(f"compute and loss must have one value per run: got {c.size} and {l.size}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(l))):
        raise ValueError("compute and loss must be finite: drop failed runs (NaN/inf loss) before fitting")
    if np.any(c <= 0) or np.any(l <= 0):
        raise ValueError("compute and loss must be positive (a power law in log space): "
                         f"min compute {c.min():.3g}, min loss {l.min():.3g}")
    if np.unique(c).size < 3:
        raise ValueError(f"a power law with an irreducible term needs at least 3 distinct compute values; got "
                         f"{np.unique(c).size}: run the sweep at more scales")
    return c, l


def _model(x: np.ndarray, E: float, a: float, alpha: float) -> np.ndarray:
    # x = log(C) - x0 (centred for conditioning); exp(a) is the reducible loss at C = exp(x0)
    return E + np.exp(a - alpha * x)


def _profile(x: np.ndarray, l: np.ndarray) -> tuple[float, float, float]:
    """Start values: for each E on a grid in [0, min L), OLS of log(L - E) on x; keep the E whose curve has
    the smallest squared error in L space. The grid crowds towards min L, where alpha changes fastest."""
    lmin = l.min()
    frac = np.unique(np.r_[np.linspace(0.0, 0.99, 100), 1.0 - np.geomspace(1e-2, 1e-7, 60)])
    E = lmin * frac
    Y = np.log(l[None, :] - E[:, None])
    xc = x - x.mean()
    slope = (Y - Y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    a = Y.mean(axis=1) - slope * x.mean()
    pred = E[:, None] + np.exp(a[:, None] + slope[:, None] * x[None, :])
    sse = ((l[None, :] - pred) ** 2).sum(axis=1)
    sse[~(slope < 0) | ~np.isfinite(sse)] = np.inf  # alpha = -slope must be positive
    i = int(np.argmin(sse))
    if not np.isfinite(sse[i]):
        raise ValueError("the loss does not fall with compute: no power law with alpha > 0 fits these runs")
    return float(E[i]), float(a[i]), float(-slope[i])


def _levenberg_marquardt(x: np.ndarray, l: np.ndarray, p: tuple[float, float, float],
                         steps: int = 100) -> tuple[float, float, float]:
    """Least squares in L space from start p = (E, a, alpha), keeping E >= 0 and alpha > 0 (a step that
    would cross a bound stops at E = 0, or halves alpha); stops when a step no longer lowers the error."""
    E, a, alpha = p
    r = l - _model(x, E, a, alpha)
    sse = float(r @ r)
    lam, done = 1e-3, False
    for _ in range(steps):
        g = np.exp(a - alpha * x)
        J = np.column_stack([np.ones_like(x), g, -x * g])  # d model / d (E, a, alpha)
        jtj, jtr = J.T @ J, J.T @ r
        improved = False
        while lam < 1e12:
            try:
                d = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-300), jtr)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            En, an, aln = max(E + d[0], 0.0), a + d[1], alpha + d[2]
            if aln <= 0:
                aln = alpha / 2
            rn = l - _model(x, En, an, aln)
            ssen = float(rn @ rn)
            if np.isfinite(ssen) and ssen < sse:
                done = sse - ssen <= 1e-15 * max(sse, 1e-300)
                E, a, alpha, r, sse = En, an, aln, rn, ssen
                lam = max(lam / 10, 1e-12)
                improved = True
                break
            lam *= 10
        if not improved or done:
            break
    return E, a, alpha


def _fit(c: np.ndarray, l: np.ndarray, x0: float) -> tuple[float, float, float, float]:
    """(E, log A, alpha, sse) of one fit."""
    x = np.log(c) - x0
    E, a, alpha = _levenberg_marquardt(x, l, _profile(x, l))
    r = l - _model(x, E, a, alpha)
    return E, a + alpha * x0, alpha, float(r @ r)


def _group_index(groups, c: np.ndarray) -> list[np.ndarray]:
    """Run indices of each scale point: by label, or by identical compute when there are no labels."""
    keys = list(c) if groups is None else [str(g) for g in groups]
    if len(keys) != c.size:
        raise ValueError(f"groups must label every run: got {len(keys)} labels for {c.size} runs")
    index: dict = {}
    for i, k in enumerate(keys):
        index.setdefault(k, []).append(i)
    return [np.asarray(ix) for ix in index.values()]


def fit_power_law(compute, loss, groups=None, bootstrap: int = 1000, seed: int = 0) -> PowerLawFit:
    """Fit L = E + A * C**(-alpha) (E >= 0, A > 0, alpha > 0) to runs, least squares in loss units.

    `groups` labels the scale point of each run (its repeats share a label); None groups runs by identical
    compute. The 95 % intervals are bootstrap percentiles: each replicate resamples, with replacement, the
    runs within each scale point (so every point stays in the fit; their deviations from the point's mean
    widened by sqrt(n/(n-1)), which a handful of repeats needs) and refits. A point with a single run
    adds no spread; when no point has repeats the bootstrap resamples residuals instead (`ci_method`
    "residual"), which assumes the curve's shape is right. `bootstrap=0` gives point estimates only.
    Expect the intervals to be somewhat optimistic with few repeats: on simulated sweeps of 7 points x 4
    repeats they held the true alpha and E about 90 % of the time, not 95 %.

    A replicate whose refit fails (no falling curve, or a result out of float range) is skipped and counted in
    `bootstrap_failed`; when more than MAX_FAILED_BOOTSTRAP of them fail, the intervals are NaN (`ci_method`
    "unavailable"), since the failures sit at an extreme and the rest would give too narrow an interval. A
    replicate with a steep alpha whose A is beyond float range still counts (A's interval then ends at inf).

    Raises ValueError for mismatched lengths, non-finite or non-positive values, fewer than 3 distinct
    compute values (E, A and alpha cannot be told apart), loss that does not fall with compute, or a fit
    that diverges (its A or alpha out of float range)."""
    c, l = _check_runs(compute, loss)
    index = _group_index(groups, c)
    x0 = float(np.log(c).mean())
    try:
        E, logA, alpha, sse = _fit(c, l, x0)
        E, A, alpha = float(E), math.exp(logA), float(alpha)
    except ArithmeticError as e:  # e.g. exp(log A) overflows: alpha so steep that A = L * C**alpha is out of range
        raise ValueError(f"the fit diverged ({e}): these runs do not pin down a power law (the best curve has an "
                         "extreme alpha); sweep over a wider range of compute or with more repeats") from e
    if not all(math.isfinite(v) for v in (E, A, alpha, sse)):
        raise ValueError(f"the fit diverged (E {E:.4g}, A {A:.4g}, alpha {alpha:.4g}): these runs do not pin down a "
                         "power law; sweep over a wider range of compute or with more repeats")
    rng = np.random.default_rng(seed)
    repeats = any(ix.size > 1 for ix in index)
    fitted = E + np.exp(logA - alpha * np.log(c))
    resid = (l - fitted) * math.sqrt(c.size / max(c.size - 3, 1))  # undo the fit's shrinkage of residuals
    # Within a scale point, resample the repeats' deviations from their mean, widened by sqrt(n/(n-1)):
    # the plain bootstrap of n repeats has (n-1)/n of their variance, which at n = 4 narrows intervals.
    centre, spread = l.copy(), np.zeros_like(l)
    for ix in index:
        if ix.size > 1:
            centre[ix] = l[ix].mean()
            spread[ix] = (l[ix] - centre[ix]) * math.sqrt(ix.size / (ix.size - 1))
    draws, failed = [], 0
    for _ in range(int(bootstrap)):
        if repeats:
            take = np.concatenate([rng.choice(ix, size=ix.size, replace=True) for ix in index])
            cb, lb = c[take], centre[take] + spread[take]
        else:
            cb, lb = c, fitted + rng.choice(resid, size=c.size, replace=True)
        if np.any(lb <= 0):
            failed += 1
            continue
        try:
            Eb, logAb, alphab, _ = _fit(cb, lb, x0)
        except (ValueError, ArithmeticError):  # no falling curve in this replicate, or a refit that overflowed
            failed += 1
            continue
        if not (math.isfinite(Eb) and math.isfinite(logAb) and math.isfinite(alphab)):
            failed += 1
            continue
        # log A, not A: a replicate with a steep alpha has an A beyond float range, yet its E and alpha count
        draws.append((Eb, logAb, alphab))
    if draws and failed > MAX_FAILED_BOOTSTRAP * int(bootstrap):
        # the failed refits are not a random subset (they are the replicates at an extreme), so the percentiles of
        # the rest would give an interval that is too narrow: better none than a wrong one
        nan = (math.nan, math.nan)
        cis = [nan, nan, nan]
        method = "unavailable"
    elif draws:
        lo, hi = np.percentile(np.asarray(draws), [2.5, 97.5], axis=0)
        cis = [(float(lo[0]), float(hi[0])), (_exp(lo[1]), _exp(hi[1])), (float(lo[2]), float(hi[2]))]
        method = "within-scale" if repeats else "residual"
    else:
        cis = [(E, E), (A, A), (alpha, alpha)]
        method = "none"
    return PowerLawFit(E=E, A=A, alpha=alpha, E_ci=cis[0], A_ci=cis[1], alpha_ci=cis[2], n_points=len(index),
                       n_runs=int(c.size), rmse=math.sqrt(sse / c.size), bootstrap=len(draws), ci_method=method,
                       bootstrap_failed=failed)


def _exp(v: float) -> float:
    """exp, with inf for a log beyond float range (an A interval's end, from a replicate with a steep alpha)."""
    try:
        return math.exp(float(v))
    except OverflowError:
        return math.inf


# ---------------------------------------------------------------------------
# compute-optimal allocation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRatio:
    """Rough compute-optimal tokens per parameter read off a depth x budget grid."""
    tokens_per_param: float  # median tokens/params of the frontier points (interior ones when there are any)
    exponent: float  # b in log(tokens) = a + b log(params) over the frontier; 1 = a constant ratio; NaN if unknown
    n_frontier: int  # compute levels where several model sizes competed
    n_at_edge: int  # frontier points at the smallest or largest ratio of their level: the optimum may lie beyond
    frontier: tuple[tuple[float, float, float, float], ...]  # (compute, params_M, tokens_M, mean loss) per level

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        edge = f", {self.n_at_edge} at the grid's edge (the optimum may lie outside)" if self.n_at_edge else ""
        return (f"compute-optimal ~{self.tokens_per_param:.3g} tokens per parameter (rough: the best grid point "
                f"at each of {self.n_frontier} compute levels{edge})")


def _key(v: float) -> float:
    return float(f"{v:.3g}")  # runs of one configuration can differ in the last digits of tokens/params


def _numbers(col) -> np.ndarray:
    import pandas as pd
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def optimal_tokens_per_param(df, loss: str = "val_bpb", bin_decades: float = 0.2) -> TokenRatio | None:
    """Compute-optimal tokens per parameter, as far as a depth x token-budget grid can tell. Rough.

    `df` has one row per run with `num_params_M`, `total_tokens_M` and the `loss` column (and optionally
    `depth`, which names the model size, and `status`, of which only "ok" rows count). Runs of one
    configuration (model size x token budget) are averaged. Configurations are swept in order of compute
    into levels: a level starts at its smallest compute and takes everything within `bin_decades` decades.
    At each level where at least two model sizes compete, the lowest-loss configuration is the frontier
    point. The answer is the median tokens/params over frontier points that are not at the smallest or
    largest ratio of their level (those only bound the optimum), or over all of them when every point is at
    an edge; `exponent` is the slope of log tokens on log params across the frontier (1 means the ratio
    does not drift with scale).

    How rough: the grid's spacing quantises the answer (a factor-of-2 grid can only say "within about 2x");
    configurations in a level differ in compute by up to `bin_decades` decades, which favours the bigger
    one; and noise between close losses can pick the wrong point. Use it to centre the next grid, not as a
    law. Returns None when there are fewer than 2 model sizes or 2 token budgets, or no level where two
    sizes compete."""
    need = {"num_params_M", "total_tokens_M", loss}
    if df is None or not need.issubset(getattr(df, "columns", ())):
        return None
    d = df
    if "status" in d.columns:
        d = d[d["status"] == "ok"]
    p, t, y = (_numbers(d[k]) for k in ("num_params_M", "total_tokens_M", loss))
    size = _numbers(d["depth"]) if "depth" in d.columns else np.full(p.size, np.nan)
    ok = np.isfinite(p) & np.isfinite(t) & np.isfinite(y) & (p > 0) & (t > 0)
    configs: dict[tuple[float, float], list[int]] = {}
    for i in np.flatnonzero(ok):
        s = size[i] if np.isfinite(size[i]) else _key(p[i])
        configs.setdefault((float(s), _key(t[i])), []).append(int(i))
    sizes = {k[0] for k in configs}
    budgets = {k[1] for k in configs}
    if len(sizes) < 2 or len(budgets) < 2:
        return None
    rows = sorted((float(np.mean(6 * p[ix] * t[ix])), float(np.mean(p[ix])), float(np.mean(t[ix])),
                   float(np.mean(y[ix])), k[0]) for k, ix in configs.items())
    levels, start = [], None
    for r in rows:
        if start is None or math.log10(r[0]) - math.log10(start) > bin_decades:
            levels.append([])
            start = r[0]
        levels[-1].append(r)
    frontier, edge = [], []
    for lv in levels:
        if len({r[4] for r in lv}) < 2:
            continue
        best = min(lv, key=lambda r: r[3])
        ratios = [r[2] / r[1] for r in lv]
        frontier.append(best[:4])
        edge.append(best[2] / best[1] in (min(ratios), max(ratios)))
    if not frontier:
        return None
    ratio = np.array([f[2] / f[1] for f in frontier])
    inside = ~np.array(edge)
    median = float(np.median(ratio[inside] if inside.any() else ratio))
    lp = np.log([f[1] for f in frontier])
    lt = np.log([f[2] for f in frontier])
    exponent = float(np.polyfit(lp, lt, 1)[0]) if np.unique(lp).size >= 2 else float("nan")
    return TokenRatio(tokens_per_param=median, exponent=exponent, n_frontier=len(frontier),
                      n_at_edge=int(sum(edge)), frontier=tuple(frontier))


def _runs(variant) -> list[tuple[str, float, float]]:
    """(label, compute, loss) per run, from a sequence of triples or a DataFrame with scale, compute, loss."""
    if hasattr(variant, "columns"):
        missing = {"scale", "compute", "loss"} - set(variant.columns)
        if missing:
            raise ValueError(f"a variant DataFrame needs columns scale, compute, loss; missing {sorted(missing)}")
        variant = zip(variant["scale"], variant["compute"], variant["loss"])
    out = []
    for run in variant:
        if isinstance(run, Mapping):
            run = (run["scale"], run["compute"], run["loss"])
        if len(run) != 3:
            raise ValueError(f"each run must be (scale label, compute, loss); got {run!r}")
        label, c, l = run
        if np.isfinite(float(c)) and np.isfinite(float(l)):
            out.append((str(label), float(c), float(l)))
    return out


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def _figure(width: float = 7, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot(fits_by_variant: Mapping[str, PowerLawFit | None], runs_by_variant: Mapping[str, Iterable],
         path) -> Path:
    """Loss against compute, log-log: each variant's per-scale means (error bars: standard error over
    repeats), its individual runs faintly, and its fitted curve when `fits_by_variant` has one."""
    fig, ax = _figure()
    names = list(dict.fromkeys([*runs_by_variant, *fits_by_variant]))
    cmin, cmax = math.inf, -math.inf
    for k, name in enumerate(names):
        color = f"C{k}"
        runs = _runs(runs_by_variant.get(name, ()))
        if runs:
            c = np.array([r[1] for r in runs])
            l = np.array([r[2] for r in runs])
            cmin, cmax = min(cmin, c.min()), max(cmax, c.max())
            ax.scatter(c, l, s=8, color=color, alpha=0.3, linewidths=0)
            pts = []
            for lab in dict.fromkeys(r[0] for r in runs):
                m = np.array([r[0] == lab for r in runs])
                err = l[m].std(ddof=1) / math.sqrt(m.sum()) if m.sum() > 1 else 0.0
                pts.append((c[m].mean(), l[m].mean(), err, lab))
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o",
                        color=color, capsize=3, label=f"{name} runs")
            if k == 0:  # the scale of each point (e.g. d2-tok100k), once: the variants share the grid
                for x, y, _, lab in pts:
                    ax.annotate(str(lab), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.3")
        fit = fits_by_variant.get(name)
        if fit is not None and np.isfinite(cmin):
            grid = np.geomspace(cmin / 1.5, cmax * 1.5, 200)
            ax.plot(grid, fit.predict(grid), color=color, lw=1.5,
                    label=f"{name}: {fit.E:.3g} + {fit.A:.3g}·C^-{fit.alpha:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    if names:
        ax.legend(fontsize=8)
    return _save(fig, path)
