"""The research decisions, as pure functions of the best so far and a new result."""

from __future__ import annotations

from ar_ray.target import Target
from ar_ray.types import Result


def decide(target: Target, best_metric: float | None, result: Result) -> str:
    """Greedy acceptance (upstream autoresearch's rule): keep a run that beats the best, discard the rest."""
    if result.status != "ok" or result.metric is None:
        return "discard"
    return "keep" if target.better(result.metric, best_metric) else "discard"
