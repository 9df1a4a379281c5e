"""The scales of a promotion ladder: what rung N means for a run (its budget and scale knobs).

`--ladder 60,300` screens new candidates with a 60 s budget and accepts only at 300 s;
`--ladder budget_tokens=100000,budget_tokens=400000,budget_tokens=400000:depth=12`
adds a larger model as the last rung. The policy only counts rungs; this module turns
a rung into the budget and knobs of a `Candidate`, and a ledger row back into its rung.
"""

from __future__ import annotations

import math
import re

from ar_ray.errors import ConfigError
from ar_ray.search.scale import Scale, reserved_knob

KNOB = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXAMPLE = "write rungs like 60,300 or budget_tokens=100000,budget_tokens=400000"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _parse_rung(rung: str, number: int) -> Scale:
    budget, knobs = None, {}
    items = [part.strip() for part in rung.split(":") if part.strip()]
    if not items:
        raise ConfigError(f"--ladder: rung {number} is empty (a comma too many?); {EXAMPLE}")
    for item in items:
        if "=" in item:
            name, value = (x.strip() for x in item.split("=", 1))
            if not KNOB.match(name) or not value:
                raise ConfigError(f"--ladder: {item!r} is not NAME=VALUE (e.g. depth=12)")
            if why := reserved_knob(name):
                raise ConfigError(f"--ladder: {why}")
            if name in knobs:
                raise ConfigError(f"--ladder: rung {rung.strip()!r} sets {name} twice; give each knob once per rung")
            if name == "budget_tokens" and not _positive(_number(value)):
                raise ConfigError(f"--ladder: budget_tokens must be a positive number of tokens, got {value!r}")
            knobs[name] = value
        elif budget is not None:
            raise ConfigError(f"--ladder: rung {rung.strip()!r} has two budgets; give one budget in seconds per rung")
        else:
            budget = _number(item)
            if budget is None:
                raise ConfigError(f"--ladder: {item!r} is neither a budget in seconds nor NAME=VALUE; {EXAMPLE}")
            if not _positive(budget):
                raise ConfigError(f"--ladder: budgets must be a positive number of seconds, got {item!r}")
    return Scale(knobs=knobs, budget_seconds=budget)


def _cheaper(a: Scale, b: Scale) -> bool:
    """Is rung `a` surely cheaper than rung `b`: the same other knobs, and budgets (seconds, tokens) that are
    all comparable, none larger and one smaller?"""
    def others(s):
        return {k: v for k, v in s.knobs.items() if k != "budget_tokens"}

    def tokens(s):
        return None if "budget_tokens" not in s.knobs else float(s.knobs["budget_tokens"])

    if others(a) != others(b):
        return False
    pairs = [(x, y) for x, y in ((a.budget_seconds, b.budget_seconds), (tokens(a), tokens(b)))
             if x is not None or y is not None]
    if any(x is None or y is None for x, y in pairs):
        return False  # a rung without a budget of its own runs at the trainer's: not comparable
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def parse_ladder(text: str | None) -> tuple[Scale, ...]:
    """'60,300' or 'budget_tokens=1e5,budget_tokens=4e5:depth=12' -> scales, cheapest first. None/'' -> no ladder."""
    if not text:
        return ()
    rungs = text.split(",")
    scales = [_parse_rung(rung, i + 1) for i, rung in enumerate(rungs)]
    if len(scales) < 2:
        raise ConfigError("--ladder needs at least two rungs, cheapest first (e.g. 60,300)")
    if len({scales_key(s) for s in scales}) < len(scales):
        raise ConfigError(f"--ladder {text!r} repeats a rung; each rung must be a different scale")
    for i, later in enumerate(scales):
        for j in range(i):
            if _cheaper(later, scales[j]):
                raise ConfigError(f"--ladder {text!r}: rung {rungs[i].strip()!r} is cheaper than rung {rungs[j].strip()!r} "
                                  "before it; list rungs cheapest first (e.g. 60,300)")
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
