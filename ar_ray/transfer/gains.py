"""Does B's win over A hold as scale grows? Per-scale gains with intervals, their trend, and a verdict.

    from ar_ray.transfer import gains
    cmp = gains.compare(runs_a, runs_b)      # runs: (scale label, compute, loss) per run
    print(cmp.describe())                    # per-scale gains, their trend, and a verdict
    gains.plot_gain(cmp, "gain.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ar_ray.transfer.scaling import Z95, _figure, _runs, _save

VERDICTS = ("holds", "shrinks", "flips", "unclear")



@lru_cache(maxsize=256)
def _t975(df: float) -> float:
    # Solve F(q) = 0.475 for the t density's integral from 0 (Simpson's rule). Newton from q = z never
    # overshoots: F is concave on [0, inf), so each tangent step lands below the root.
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t):
        return np.exp(logc - (df + 1) / 2 * np.log1p(t * t / df))

    q = Z95
    for _ in range(100):
        t = np.linspace(0.0, q, 2001)
        w = np.ones(t.size)
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        step = (0.475 - float((w * density(t)).sum() * (q / 2000) / 3)) / float(density(q))
        q += step
        if abs(step) < 1e-10 * q:
            break
    return q


def t975(df: float) -> float:
    """Two-sided 95 % quantile of Student's t with `df` degrees of freedom (fractional, as Welch's may be;
    below 1 counts as 1; infinite gives the normal 1.96)."""
    if not np.isfinite(df):
        return Z95
    return _t975(round(max(float(df), 1.0), 6))


@dataclass(frozen=True)
class ScaleGain:
    """B's gain over A at one scale: mean(L_a) - mean(L_b), positive = B better (lower loss)."""
    label: str
    compute: float  # mean compute of the scale's runs
    gain: float
    se: float  # Welch standard error; inf when a side has fewer than 2 runs
    lo: float  # 95 % interval (Welch t)
    hi: float
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float

    @property
    def rel(self) -> float:
        """Gain as a fraction of A's loss at this scale."""
        return self.gain / self.mean_a


@dataclass(frozen=True)
class Comparison:
    """B against A across scales; see `compare` for how the verdict is reached."""
    rows: tuple[ScaleGain, ...]  # shared scales, smallest compute first
    slope: float  # gain per decade of compute (weighted least squares); NaN with < 2 usable scales
    slope_se: float
    verdict: str  # one of VERDICTS
    reason: str  # which rule decided, in words

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        lines = [f"B vs A at {len(self.rows)} scales (gain = loss A - loss B, positive = B better):"]
        for r in self.rows:
            lines.append(f"  {r.label:>10}  C={r.compute:.3g}  gain {r.gain:+.4g} [{r.lo:+.4g}, {r.hi:+.4g}]"
                         f"  ({100 * r.rel:+.2f}%)  n={r.n_a}/{r.n_b}")
        if np.isfinite(self.slope):
            lines.append(f"  trend: {self.slope:+.4g} per decade of compute (se {self.slope_se:.3g})")
        lines.append(f"  verdict: {self.verdict}: {self.reason}")
        return "\n".join(lines)


def _gain_row(label: str, ca: list, la: list, cb: list, lb: list) -> ScaleGain:
    a, b = np.asarray(la), np.asarray(lb)
    gain = float(a.mean() - b.mean())
    if a.size >= 2 and b.size >= 2:
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        se = math.sqrt(va + vb)
        den = (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
        dof = (va + vb) ** 2 / den if den > 0 else float("inf")
        half = t975(dof) * se
    else:
        se = half = float("inf")
    return ScaleGain(label=label, compute=float(np.mean(ca + cb)), gain=gain, se=se, lo=gain - half,
                     hi=gain + half, n_a=int(a.size), n_b=int(b.size), mean_a=float(a.mean()), mean_b=float(b.mean()))


def _trend(rows: Sequence[ScaleGain]) -> tuple[float, float]:
    """Weighted least squares of gain on log10(compute), weights 1/se^2. The slope's standard error is
    the one implied by the per-scale errors, inflated by sqrt(reduced chi-square) when the points scatter
    more than their errors say (never deflated)."""
    use = [r for r in rows if np.isfinite(r.se)]
    if len({r.compute for r in use}) < 2:
        return float("nan"), float("nan")
    x = np.log10([r.compute for r in use])
    g = np.array([r.gain for r in use])
    se = np.array([r.se for r in use])
    floor = max(1e-12, 1e-9 * float(np.abs(g).max()))  # identical repeats give se = 0
    w = 1.0 / np.maximum(se, floor) ** 2
    xm = (w * x).sum() / w.sum()
    sxx = (w * (x - xm) ** 2).sum()
    slope = float((w * (x - xm) * g).sum() / sxx)
    inter = (w * g).sum() / w.sum() - slope * xm
    slope_se = 1.0 / math.sqrt(sxx)
    if len(use) > 2:
        chi2 = float((w * (g - inter - slope * x) ** 2).sum()) / (len(use) - 2)
        slope_se *= math.sqrt(max(chi2, 1.0))
    return slope, float(slope_se)


def compare(variant_a, variant_b) -> Comparison:
    """Does B's advantage over A (lower loss) hold as scale grows?

    Each variant is its runs: (scale label, compute, loss) triples (or mappings / a DataFrame with columns
    scale, compute, loss); runs with non-finite values are dropped. For each label both variants ran:
    gain = mean(L_a) - mean(L_b) (positive = B better), Welch standard error and 95 % t interval (lo, hi);
    a side with a single run gives an infinite interval. Then the trend: weighted least squares of gain on
    log10(compute), `slope` per decade with `slope_se`.

    With s the smallest-compute and l the largest-compute shared scale, rel = gain / mean(L_a) at a scale:
      - B clear at a scale: lo > 0; A clear: hi < 0.
      - falling: the slope is significantly negative, slope + 1.96 * slope_se < 0.
      - halved: rel(l) < 0.5 * rel(s).
    Rules, first that applies:
      1. fewer than 2 shared scales                          -> "unclear" (no trend to judge)
      2. A clear at l and B clear at s                        -> "flips"
      3. B clear at l, and not (falling and halved)           -> "holds"
      4. gain(l) > 0 and falling                              -> "shrinks"
         (B clear at l lands here only when also halved)
      5. otherwise                                            -> "unclear" (intervals too wide to say, or the
         win is gone at l without A being clearly better)
    Raises ValueError when the variants share no scale label."""
    ra, rb = _runs(variant_a), _runs(variant_b)
    labels = sorted({r[0] for r in ra} & {r[0] for r in rb})
    if not labels:
        raise ValueError("the two variants share no scale label: run both at the same scales "
                         f"(A has {sorted({r[0] for r in ra})}, B has {sorted({r[0] for r in rb})})")
    rows = []
    for lab in labels:
        a = [r for r in ra if r[0] == lab]
        b = [r for r in rb if r[0] == lab]
        rows.append(_gain_row(lab, [r[1] for r in a], [r[2] for r in a], [r[1] for r in b], [r[2] for r in b]))
    rows.sort(key=lambda r: (r.compute, r.label))
    slope, slope_se = _trend(rows)
    verdict, reason = _verdict(rows, slope, slope_se)
    return Comparison(rows=tuple(rows), slope=slope, slope_se=slope_se, verdict=verdict, reason=reason)


def _verdict(rows: Sequence[ScaleGain], slope: float, slope_se: float) -> tuple[str, str]:
    if len(rows) < 2:
        return "unclear", "only one shared scale: no trend to judge"
    s, l = rows[0], rows[-1]
    falling = bool(np.isfinite(slope) and np.isfinite(slope_se) and slope + Z95 * slope_se < 0)
    halved = l.rel < 0.5 * s.rel
    if l.hi < 0 and s.lo > 0:
        return "flips", f"B was better at {s.label} but A is better at {l.label} (both intervals exclude 0)"
    if l.lo > 0 and not (falling and halved):
        why = "the gain does not fall significantly with scale" if not falling else \
            "the gain falls with scale but keeps more than half its relative size"
        return "holds", f"B is better at the largest scale {l.label} (interval excludes 0) and {why}"
    if l.gain > 0 and falling:
        return "shrinks", (f"B is still ahead at {l.label} ({l.gain:+.4g}) but the gain falls significantly "
                           f"with scale ({slope:+.4g} per decade)")
    if s.lo > 0 and l.gain <= 0:
        return "unclear", (f"B is better at {s.label}, but at {l.label} its gain is gone ({l.gain:+.4g}) "
                           f"without A being clearly better (interval [{l.lo:+.4g}, {l.hi:+.4g}])")
    return "unclear", (f"intervals too wide to say: at {s.label} [{s.lo:+.4g}, {s.hi:+.4g}], at {l.label} "
                       f"[{l.lo:+.4g}, {l.hi:+.4g}], trend not significantly negative or the win not clear")


def plot_gain(comparison: Comparison, path) -> Path:
    """B's gain over A against compute with 95 % intervals, a zero line and the verdict in the title."""
    fig, ax = _figure()
    rows = [r for r in comparison.rows]
    c = np.array([r.compute for r in rows])
    g = np.array([r.gain for r in rows])
    lo = np.array([r.gain - r.lo if np.isfinite(r.lo) else 0.0 for r in rows])
    hi = np.array([r.hi - r.gain if np.isfinite(r.hi) else 0.0 for r in rows])
    ax.axhline(0.0, color="0.4", lw=1)
    ax.errorbar(c, g, yerr=[lo, hi], fmt="o-", capsize=3)
    for r in rows:
        ax.annotate(r.label, (r.compute, r.gain), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("gain = loss A - loss B (positive: B better)")
    ax.set_title(f"verdict: {comparison.verdict}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
