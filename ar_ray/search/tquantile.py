"""Student-t quantiles without SciPy: how much wider a k-sigma bar must be when the noise is estimated.

A bar of k standard errors assumes the noise is known. With the noise estimated from `dof` degrees of
freedom, the same one-sided error rate needs the Student-t quantile at Phi(k) instead: 2.0 becomes 4.3 with
2 degrees of freedom (3 baseline runs), 2.6 with 6, and tends to 2.0 as evidence accumulates.
"""

from __future__ import annotations

import functools
import math


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with `dof` degrees of freedom."""
    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=4096)
def t_factor(k: float, dof: int) -> float:
    """The t quantile with the one-sided level of a k-sigma normal bar: t such that P(T > t) = P(Z > k)."""
    if dof <= 0 or k <= 0:
        return k
    level = 0.5 * (1.0 + math.erf(k / math.sqrt(2.0)))
    lo, hi = k, k
    while t_cdf(hi, dof) < level:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < level:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
