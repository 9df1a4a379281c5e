"""A scale: the knobs (passed to the child as AR_<NAME>) and the optional wall-clock budget one run uses.

Sweeps run a grid of scales; the promotion ladder's rungs are scales. Plain data: it travels in
candidates and is stored in run.json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class ScaleError(ValueError):
    """A scale that cannot be read; the message says what a scale looks like."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]", "_", str(text))


# Knobs ar-ray sets itself for every run (AR_<NAME>): a scale may not set them (name -> what to use instead).
RESERVED_KNOBS = {"seed": "repeats set the seed", "run_dir": "", "result_file": "", "experiment_id": "",
                  "budget_seconds": "give a budget in seconds instead", "threads": "use --cpus-per-trainer",
                  "timeout_seconds": "use --timeout"}


def reserved_knob(name: str) -> str | None:
    """Why a knob name cannot be used, or None: ar-ray sets it, or it is budget_tokens in other letters."""
    if name.lower() in RESERVED_KNOBS:
        why = RESERVED_KNOBS[name.lower()]
        return f"knob {name!r} is set by ar-ray itself" + (f": {why}" if why else "")
    if name.lower() == "budget_tokens" and name != "budget_tokens":
        return f"write the knob {name!r} as budget_tokens (lower case), the name ar-ray reads token budgets by"
    return None


SHORT = {"depth": "d", "budget_tokens": "tok"}  # the GPT knobs, short in ids and plot labels


def _compact(value: str) -> str:
    """100000 -> 100k, 2000000 -> 2M: whole thousands and millions read at a glance."""
    if re.fullmatch(r"[1-9]\d*", value):
        n = int(value)
        for unit, size in (("M", 10**6), ("k", 10**3)):
            if n % size == 0:
                return f"{n // size}{unit}"
    return value


@dataclass(frozen=True)
class Scale:
    """One grid point: knob -> value (strings, as the child sees them) and an optional budget in seconds."""
    knobs: dict[str, str] = field(default_factory=dict)
    budget_seconds: float | None = None

    @property
    def label(self) -> str:
        """A slug naming this scale in experiment ids and plots, e.g. d2-tok100k (depth 2, budget_tokens 100000),
        lr0.01-10s (knob lr, budget 10 s)."""
        parts = [f"{SHORT.get(k, _slug(k))}{_slug(_compact(v))}" for k, v in self.knobs.items()]
        if self.budget_seconds is not None:
            parts.append(f"{self.budget_seconds:g}s")
        return "-".join(parts)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.knobs.items()]
        if self.budget_seconds is not None:
            parts.append(f"budget {self.budget_seconds:g} s")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"knobs": dict(self.knobs), "budget_seconds": self.budget_seconds}


def as_scale(s) -> Scale:
    if isinstance(s, Scale):
        return s
    if isinstance(s, dict):
        s = dict(s)
        if "knobs" in s and isinstance(s["knobs"], dict):  # Scale.to_dict()
            return Scale({str(k): str(v) for k, v in s["knobs"].items()}, s.get("budget_seconds"))
        budget = s.pop("budget_seconds", None)
        return Scale({str(k): str(v) for k, v in s.items()}, None if budget is None else float(budget))
    raise ScaleError(f"a scale is a dict of knob -> value (plus optional budget_seconds), got {s!r}")
