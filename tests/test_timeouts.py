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


def test_stall_rule_pace_eval_allowance_and_ceiling():
    from ar_ray.timeouts import STALL_MIN, Limits, Stall
    lim = Limits.for_run(100.0, explicit=False, token_budgeted=True, progress_lines=True)
    assert lim.ceiling == max(FIRST, 300.0) and lim.stall_rule
    s = Stall(lim, start=0.0)
    assert s.verdict(99.0) is None and "hard timeout of 100 s" in s.verdict(100.0)  # no progress yet: the limit
    s = Stall(lim, start=0.0)
    for t, p in ((10, 0.1), (30, 0.2), (50, 0.41)):  # longest gap 20 s: the limit is max(60, 100) = 100 s
        s.progressed(t, p)
    assert s.verdict(149.0) is None  # past the learned 100 s, but progressed 99 s ago
    assert s.verdict(150.0).startswith("no progress for 100 s at 41 % done")
    s = Stall(Limits(soft=100.0, ceiling=1000.0, stall_rule=True), start=0.0)
    for t, p in ((100, 0.5), (110, 0.9), (200, 1.0)):  # training done at 200 s: evaluation may take as long again
        s.progressed(t, p)
    assert s.limit() == 450.0 and s.verdict(399.0) is None
    assert s.verdict(650.0).startswith("no output for 450 s after training reported 100 % done")
    s = Stall(lim, start=0.0)
    for t in range(10, 1800, 10):  # the ceiling holds in any case, even for a run that keeps progressing
        s.progressed(t, t / 2000)
    assert s.verdict(1799.0) is None and "hard timeout of 1800 s" in s.verdict(1800.0)
    explicit = Limits.for_run(50.0, explicit=True, token_budgeted=True, progress_lines=False)
    assert explicit.ceiling == 50.0 and STALL_MIN == 60.0
