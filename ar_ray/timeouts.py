"""Hard timeouts: how long one run may take before its whole process tree is killed.

- An explicit timeout (`--timeout`, the target's `timeout_seconds`) always wins.
- A run budgeted in wall-clock seconds may take 2 x its budget + 60 s (compile, evaluation, startup).
- A run budgeted in tokens has no clock to go by: how long 300k tokens take depends on the machine, the
  model and whatever else the node is doing. Its limit is learned from the best's own runs at the same
  scale on the same GPU model: FACTOR x the slowest of them + SLACK. Until one has finished there, and
  for the best's own runs, it is FIRST seconds, so nothing is killed for running on a slow machine.

The run's child gets its limit as AR_TIMEOUT_SECONDS.

Stalls, not slowness (`Limits`, `Stall`). Past that limit a run is not killed while it still makes
progress: a wall-clock limit punishes a loaded machine, not a stuck run. What counts as progress:
- for a target with a `progress_pattern`, a progress line that reports more progress than any before;
- for a target without one, any new output in the log.
A run is killed as `timeout` when it has made no progress for its STALL limit, max(STALL_MIN, STALL_FACTOR x
the longest gap between its progress events so far), with the reason ("no progress for 94 s at 41 % done").
With a progress pattern that rule holds from the first progress line on (a run stuck mid-training dies
early); without one, output only extends the limit above (a target that prints a banner and then trains in
silence is never killed before it). Before its first progress event a run has the limit above. Once a
progress line says 100 % done, the evaluation that follows prints nothing by design: the run may then stay
silent for as long as it took to get there (at least the stall limit). An absolute CEILING always holds:
an explicit timeout, else the wall rule for wall-clock budgets, else max(FIRST, CEILING_FACTOR x the learned
limit) for token budgets.

A candidate that makes training many times slower per token is killed at the ceiling below (status
`timeout`): with a token budget that slowness would otherwise cost nothing in the metric.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

FIRST = 1800.0  # seconds a token-budgeted run may take before any run of the best at its scale finished
FACTOR = 3.0
SLACK = 60.0
STALL_MIN = 60.0  # seconds without progress that always stay allowed
STALL_FACTOR = 5.0  # x the longest gap between progress events so far
CEILING_FACTOR = 3.0  # a progressing token-budgeted run may take this many times its learned limit (at least FIRST)


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


@dataclass(frozen=True)
class Limits:
    """One run's limits (seconds since its start): `soft` applies to a run that shows no progress (see the module
    docstring); `ceiling` to every run; `stall_rule`: whether the stall rule applies before `soft` (progress lines)."""

    soft: float
    ceiling: float
    stall_rule: bool = False

    @classmethod
    def for_run(cls, timeout: float, explicit: bool, token_budgeted: bool, progress_lines: bool) -> "Limits":
        """`timeout`: the run's limit (explicit, learned, or the rule's); `explicit`: it is the user's --timeout."""
        if explicit or not token_budgeted:
            ceiling = timeout
        else:
            ceiling = max(FIRST, CEILING_FACTOR * timeout)
        return cls(soft=timeout, ceiling=max(ceiling, timeout), stall_rule=progress_lines)


class Stall:
    """Tracks one run's progress events and says when to kill it (`verdict`). Times are time.monotonic()."""

    def __init__(self, limits: Limits, start: float):
        self.limits, self.start = limits, start
        self.last: float | None = None  # the last progress event
        self.longest_gap = 0.0
        self.progress: float | None = None  # 0..1, from progress lines

    def progressed(self, now: float, progress: float | None = None) -> None:
        """A progress event at `now` (a progress line's new highest `progress`, or new output without a pattern)."""
        if self.last is not None:
            self.longest_gap = max(self.longest_gap, now - self.last)
        self.last = now
        if progress is not None:
            self.progress = progress

    def limit(self) -> float:
        """Seconds without progress allowed now."""
        return max(STALL_MIN, STALL_FACTOR * self.longest_gap)

    def verdict(self, now: float) -> str | None:
        """None while the run may go on; else why it is killed."""
        elapsed, lim = now - self.start, self.limits
        if elapsed >= lim.ceiling:
            return f"killed after the hard timeout of {lim.ceiling:.0f} s (--timeout sets it)"
        if self.last is None:
            if elapsed >= lim.soft:
                return f"killed after the hard timeout of {lim.soft:.0f} s (--timeout sets it); it showed no progress"
            return None
        quiet = now - self.last
        if self.progress is not None and self.progress >= 1.0:  # training done: evaluating, silent by design
            allowed = max(self.limit(), self.last - self.start)
            if quiet >= allowed:
                return (f"no output for {quiet:.0f} s after training reported 100 % done (evaluation may take as "
                        f"long as the run took to get there, at least {self.limit():.0f} s)")
            return None
        if quiet < self.limit() or not (lim.stall_rule or elapsed >= lim.soft):
            return None
        at = f" at {100 * self.progress:.0f} % done" if self.progress is not None else ""
        what = "progress" if self.progress is not None else "log output"
        return (f"no {what} for {quiet:.0f} s{at} (the limit: max({STALL_MIN:g} s, {STALL_FACTOR:g} x the longest "
                f"gap between progress events, {self.longest_gap:.1f} s){'' if lim.stall_rule else f', past the hard timeout of {lim.soft:.0f} s'})")
