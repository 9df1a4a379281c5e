"""Early stopping of hopeless runs (`--prune`): stop a screening run whose training loss is clearly worse
than the best's at the same point of its budget, and give its trainer the rest of the budget for the
next candidate.

The curve is read from the run's log with the target's `progress_pattern`, a regex with a named group
`loss` (lower is better) and `progress` (0..1) or `percent` (0..100). The best's own runs give the
reference curve at each scale; a candidate's run is checked at a few checkpoints of progress (by
default 50 % and 75 %): the mean of its losses logged in the WINDOW of progress before the checkpoint
against the reference's mean there. It is stopped (status `pruned`) only when it is worse by more than
`margin` (relative); a mid-run loss can still turn around (a longer warmdown, a higher learning rate),
so the margin is wide and no run is stopped before half its budget (docs/BENCHMARKS.md measures what
the rule saves and what it would have wrongly stopped on real curves).

Everything here fails open: no pattern, no reference yet, a log without progress lines, a candidate that
changes its log format: the run goes to the end and the metric decides. Only new candidates are checked;
confirmation, promotion and baseline runs always run to the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

WINDOW = 0.1  # progress averaged before each checkpoint (single logged losses are noisy)
MAX_POINTS = 64  # points of a curve kept in the ledger
Curve = tuple[tuple[float, float], ...]  # (progress 0..1, loss), progress ascending


@dataclass(frozen=True)
class PruneRule:
    checkpoints: tuple[float, ...] = (0.5, 0.75)
    margin: float = 0.05  # stop when the loss is above the reference by more than this fraction

    def __post_init__(self):
        if not self.checkpoints or any(not 0 < p < 1 for p in self.checkpoints):
            raise ValueError(f"prune checkpoints must be fractions of the budget between 0 and 1, got {self.checkpoints}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"the prune margin must be a finite fraction >= 0, got {self.margin}")


def compile_pattern(pattern: str) -> re.Pattern:
    """The target's progress_pattern, checked: it needs a `loss` group and a `progress` or `percent` group."""
    try:
        rx = re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise ValueError(f"progress_pattern {pattern!r} is not a valid regex: {e}") from None
    if "loss" not in rx.groupindex or not {"progress", "percent"} & set(rx.groupindex):
        raise ValueError(f"progress_pattern {pattern!r} needs the named groups (?P<loss>...) and (?P<progress>...) "
                         "(0..1) or (?P<percent>...) (0..100), e.g. 'loss (?P<loss>\\S+) .* (?P<percent>\\d+)% done'")
    return rx


def parse_points(text: str, rx: re.Pattern) -> list[tuple[float, float]]:
    """(progress, loss) of every line the pattern matches; lines with non-numbers or a non-finite loss are skipped."""
    points = []
    for m in rx.finditer(text):
        try:
            loss = float(m["loss"])
            progress = float(m["progress"]) if "progress" in rx.groupindex and m["progress"] else float(m["percent"]) / 100
        except (TypeError, ValueError):
            continue
        if math.isfinite(loss) and math.isfinite(progress):
            points.append((min(max(progress, 0.0), 1.0), loss))
    return points


def downsample(points: Sequence[tuple[float, float]], n: int = MAX_POINTS) -> Curve:
    """At most n points, evenly spread over the list, the first and last kept."""
    if len(points) <= n:
        return tuple(points)
    step = (len(points) - 1) / (n - 1)
    return tuple(points[round(i * step)] for i in range(n))


def window_mean(points: Iterable[tuple[float, float]], at: float) -> float | None:
    """Mean loss of the points logged in (at - WINDOW, at]; None when there are none."""
    losses = [loss for p, loss in points if at - WINDOW < p <= at]
    return sum(losses) / len(losses) if losses else None


def thresholds(rule: PruneRule, reference: Sequence[Curve]) -> tuple[tuple[float, float], ...]:
    """(checkpoint, highest loss allowed there) from the best's curves; checkpoints they do not cover are left out."""
    out = []
    for at in rule.checkpoints:
        means = [m for c in reference if (m := window_mean(c, at)) is not None]
        if means:
            ref = sum(means) / len(means)
            out.append((at, ref + rule.margin * abs(ref)))
    return tuple(out)


def verdict(points: Sequence[tuple[float, float]], limits: Sequence[tuple[float, float]]) -> str | None:
    """Why the run should stop, or None. Checked once the run's progress passed a checkpoint."""
    if not points:
        return None
    reached = points[-1][0]
    for at, limit in limits:
        if reached < at:
            break
        mean = window_mean(points, at)
        if mean is not None and mean > limit:
            return (f"pruned at {at:.0%} of its budget: training loss {mean:.4g} against at most {limit:.4g} "
                    f"(the best's runs there, plus the margin)")
    return None


class References:
    """The best's curves per scale (rung, GPU model), for the driver. Only the current best's are kept."""

    def __init__(self):
        self.version = -1
        self.curves: dict[tuple[int, str], list[Curve]] = {}

    def observe(self, version: int, scale: tuple[int, str], curve: Curve) -> None:
        """A finished run of the best (version `version`) at scale (rung, GPU model) had this curve."""
        if version < self.version or not curve:
            return
        if version > self.version:
            self.version, self.curves = version, {}
        self.curves.setdefault(scale, []).append(tuple(curve))

    def limits(self, rule: PruneRule, version: int, scale: tuple[int, str | None]) -> tuple[tuple[float, float], ...]:
        """The limits for a new candidate at this scale: against the best's runs on the same GPU model when there
        are any, else on every model at that rung (as the policy compares metrics); () while there are none."""
        if version != self.version:
            return ()
        rung, gpu = scale
        curves = self.curves.get((rung, gpu)) or [c for (r, _), cs in self.curves.items() if r == rung for c in cs]
        return thresholds(rule, curves)
