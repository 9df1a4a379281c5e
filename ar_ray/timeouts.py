"""Hard timeouts: how long one run may take before its whole process tree is killed.

- An explicit timeout (`--timeout`, the target's `timeout_seconds`) always wins.
- A run budgeted in wall-clock seconds may take 2 x its budget + 60 s (compile, evaluation, startup).
- A run budgeted in tokens has no clock to go by: how long 300k tokens take depends on the machine, the
  model and whatever else the node is doing. Its limit is learned from the best's own runs at the same
  scale on the same GPU model: FACTOR x the slowest of them + SLACK. Until one has finished there, and
  for the best's own runs, it is FIRST seconds, so nothing is killed for running on a slow machine.

The run's child gets its limit as AR_TIMEOUT_SECONDS.

A candidate that makes training several times slower per token is killed (status `timeout`): with a
token budget that slowness would otherwise cost nothing in the metric.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

FIRST = 1800.0  # seconds a token-budgeted run may take before any run of the best at its scale finished
FACTOR = 3.0
SLACK = 60.0


def wall_rule(budget_seconds: float | None) -> float:
    return 2 * (budget_seconds or 300.0) + 60.0


def token_budgeted(target_budget_tokens: int | None, knobs: Mapping[str, str]) -> bool:
    return bool(target_budget_tokens) or "budget_tokens" in knobs


class Timeouts:
    """The hard timeout for each run. `observe` the best's finished runs; ask `for_run` at dispatch."""

    def __init__(self, explicit: float | None, budget_tokens: int | None):
        self.explicit, self.budget_tokens = explicit, budget_tokens
        self.slowest: dict[Hashable, float] = {}  # scale -> the slowest ok run of the best's code there

    def observe(self, scale: Hashable, seconds: float) -> None:
        """One ok run of the best's code (a baseline repeat) at this scale took `seconds`."""
        if seconds > 0:
            self.slowest[scale] = max(seconds, self.slowest.get(scale, 0.0))

    def learned(self, scale: Hashable, knobs: Mapping[str, str]) -> float | None:
        """The driver's part: a token-budgeted run's limit once the best has finished a run at its scale
        (None: the trainer applies `for_run`, which knows the budget it runs with)."""
        if self.explicit is None and token_budgeted(self.budget_tokens, knobs) and scale in self.slowest:
            return FACTOR * self.slowest[scale] + SLACK
        return None

    def for_run(self, budget_seconds: float | None, knobs: Mapping[str, str]) -> float:
        """The trainer's rule, with nothing learned: explicit, else FIRST for token budgets, else the wall rule."""
        if self.explicit is not None:
            return self.explicit
        return FIRST if token_budgeted(self.budget_tokens, knobs) else wall_rule(budget_seconds)
