"""The hard-timeout rule (pure): explicit, wall-clock, and learned for token budgets."""

import pytest

from ar_ray.timeouts import FACTOR, FIRST, SLACK, Timeouts


def test_an_explicit_timeout_always_wins():
    t = Timeouts(explicit=7.0, budget_tokens=1000)
    t.observe(0, 100.0)
    assert t.for_run(300.0, {}) == 7.0 and t.for_run(None, {"budget_tokens": "5"}) == 7.0
    assert t.learned(0, {}) is None  # the trainer applies the explicit one


def test_wall_clock_runs_get_twice_their_budget_plus_a_minute():
    t = Timeouts(explicit=None, budget_tokens=None)
    t.observe(0, 1000.0)  # learning does not apply to wall-clock budgets
    assert t.learned(0, {}) is None
    assert t.for_run(20.0, {}) == 100.0 and t.for_run(None, {}) == 660.0


@pytest.mark.parametrize("budget_tokens, knobs", [(1000, {}), (None, {"budget_tokens": "1000"})])
def test_token_runs_learn_from_the_slowest_run_of_the_best_at_their_scale(budget_tokens, knobs):
    t = Timeouts(explicit=None, budget_tokens=budget_tokens)
    assert t.learned(0, knobs) is None and t.for_run(20.0, knobs) == FIRST  # generous, not the 100 s wall rule
    t.observe(0, 40.0)
    t.observe(0, 30.0)
    t.observe(0, 0.0)  # a run that reported no time teaches nothing
    assert t.learned(0, knobs) == FACTOR * 40.0 + SLACK
    assert t.learned(1, knobs) is None  # another rung is another scale
