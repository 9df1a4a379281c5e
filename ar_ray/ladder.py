"""The scales of a promotion ladder: what rung N means for a run (its budget and scale knobs).

`--ladder 60,300` screens new candidates with a 60 s budget and accepts only at 300 s;
`--ladder budget_tokens=100000,budget_tokens=400000,budget_tokens=400000:depth=12`
adds a larger model as the last rung. The policy only counts rungs; this module turns
a rung into the budget and knobs of a `Candidate`, and a ledger row back into its rung.
"""

from __future__ import annotations

import re

from ar_ray.config import ConfigError
from ar_ray.scale import Scale

KNOB = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_ladder(text: str | None) -> tuple[Scale, ...]:
    """'60,300' or 'budget_tokens=1e5,budget_tokens=4e5:depth=12' -> scales, cheapest first. None/'' -> no ladder."""
    if not text:
        return ()
    scales = []
    for rung in text.split(","):
        budget, knobs = None, {}
        for item in filter(None, (part.strip() for part in rung.split(":"))):
            if "=" in item:
                name, value = (x.strip() for x in item.split("=", 1))
                if not KNOB.match(name) or not value:
                    raise ConfigError(f"--ladder: {item!r} is not NAME=VALUE (e.g. depth=12)")
                knobs[name] = value
            else:
                try:
                    budget = float(item)
                except ValueError:
                    raise ConfigError(f"--ladder: {item!r} is neither a budget in seconds nor NAME=VALUE; "
                                      "write rungs like 60,300 or budget_tokens=100000,budget_tokens=400000") from None
                if budget <= 0:
                    raise ConfigError(f"--ladder: budgets must be positive, got {item!r}")
        scales.append(Scale(knobs=knobs, budget_seconds=budget))
    if len(scales) < 2:
        raise ConfigError("--ladder needs at least two rungs, cheapest first (e.g. 60,300)")
    if len(set(scales_key(s) for s in scales)) < len(scales):
        raise ConfigError(f"--ladder {text!r} repeats a rung; each rung must be a different scale")
    return tuple(scales)


def scales_key(s: Scale) -> tuple:
    return (s.budget_seconds, tuple(sorted(s.knobs.items())))


def rung_of(scales: tuple[Scale, ...], budget_seconds: float | None, knobs: dict | None, default_budget=None) -> int:
    """The rung a ledger row ran at (by its budget and knobs); the top rung when nothing matches."""
    knobs = dict(knobs or {})
    for i, s in enumerate(scales):
        if s.knobs == knobs and (s.budget_seconds or default_budget) == budget_seconds:
            return i
    for i, s in enumerate(scales):  # a rung without a budget of its own ran at the trainer's (CPU or GPU) budget
        if s.knobs == knobs and s.budget_seconds is None:
            return i
    return max(0, len(scales) - 1)
