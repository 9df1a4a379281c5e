"""--ladder: the rungs it accepts, and a one-line error saying what to write for the ones it does not."""

from __future__ import annotations

import pytest

from ar_ray.errors import ConfigError
from ar_ray.search.ladder import parse_ladder
from ar_ray.search.scale import Scale

EXAMPLE = "write rungs like 60,300 or budget_tokens=100000,budget_tokens=400000"


@pytest.mark.parametrize("text, scales", [
    (None, ()),
    ("", ()),
    ("60,300", (Scale({}, 60.0), Scale({}, 300.0))),
    (" 60 , 300 ", (Scale({}, 60.0), Scale({}, 300.0))),
    ("60:,300", (Scale({}, 60.0), Scale({}, 300.0))),  # an empty item inside a rung is ignored
    ("budget_tokens=100000,budget_tokens=400000,budget_tokens=400000:depth=12",
     (Scale({"budget_tokens": "100000"}), Scale({"budget_tokens": "400000"}),
      Scale({"budget_tokens": "400000", "depth": "12"}))),
    ("budget_tokens=1e5,budget_tokens=4e5:depth=12", (Scale({"budget_tokens": "1e5"}),
                                                      Scale({"budget_tokens": "4e5", "depth": "12"}))),
    ("60:depth=2,300:depth=2", (Scale({"depth": "2"}, 60.0), Scale({"depth": "2"}, 300.0))),
    # not decidable which rung is cheaper: other knobs differ, or a rung runs at the trainer's budget
    ("60:depth=4,30:depth=2", (Scale({"depth": "4"}, 60.0), Scale({"depth": "2"}, 30.0))),
    ("depth=2,60:depth=2", (Scale({"depth": "2"}), Scale({"depth": "2"}, 60.0))),
    ("300:budget_tokens=100,60:budget_tokens=400", (Scale({"budget_tokens": "100"}, 300.0),
                                                    Scale({"budget_tokens": "400"}, 60.0))),
])
def test_accepted_ladders(text, scales):
    assert parse_ladder(text) == scales


@pytest.mark.parametrize("text, message", [
    ("nan,300", "--ladder: budgets must be a positive number of seconds, got 'nan'"),
    ("inf,300", "--ladder: budgets must be a positive number of seconds, got 'inf'"),
    ("60,-inf", "--ladder: budgets must be a positive number of seconds, got '-inf'"),
    ("0,300", "--ladder: budgets must be a positive number of seconds, got '0'"),
    ("abc,300", f"--ladder: 'abc' is neither a budget in seconds nor NAME=VALUE; {EXAMPLE}"),
    ("60,", f"--ladder: rung 2 is empty (a comma too many?); {EXAMPLE}"),
    ("60,,300", f"--ladder: rung 2 is empty (a comma too many?); {EXAMPLE}"),
    (",60,300", "--ladder: rung 1 is empty"),
    ("60, : ,300", "--ladder: rung 2 is empty"),
    ("60:depth=2:depth=3,300", "--ladder: rung '60:depth=2:depth=3' sets depth twice; give each knob once per rung"),
    ("60:300,600", "--ladder: rung '60:300' has two budgets; give one budget in seconds per rung"),
    ("depth=,300", "--ladder: 'depth=' is not NAME=VALUE (e.g. depth=12)"),
    ("budget_tokens=nan,budget_tokens=100", "--ladder: budget_tokens must be a positive number of tokens, got 'nan'"),
    ("budget_tokens=lots,budget_tokens=100", "--ladder: budget_tokens must be a positive number of tokens, got 'lots'"),
    ("60", "--ladder needs at least two rungs, cheapest first (e.g. 60,300)"),
    ("60,60", "--ladder '60,60' repeats a rung"),
    ("300,60", "--ladder '300,60': rung '60' is cheaper than rung '300' before it; list rungs cheapest first (e.g. 60,300)"),
    ("60,300,120", "rung '120' is cheaper than rung '300' before it"),
    ("300:depth=2,60:depth=2", "rung '60:depth=2' is cheaper than rung '300:depth=2' before it"),
    ("budget_tokens=400000,budget_tokens=100000",
     "rung 'budget_tokens=100000' is cheaper than rung 'budget_tokens=400000' before it"),
    ("budget_tokens=4e5:depth=12,budget_tokens=100000:depth=12",
     "rung 'budget_tokens=100000:depth=12' is cheaper than rung 'budget_tokens=4e5:depth=12' before it"),
    ("60:budget_tokens=400,60:budget_tokens=100", "rung '60:budget_tokens=100' is cheaper"),
    ("60:seed=3,300", "--ladder: knob 'seed' is set by ar-ray itself: repeats set the seed"),
    ("60,budget_seconds=300", "--ladder: knob 'budget_seconds' is set by ar-ray itself"),
    ("BUDGET_TOKENS=100,BUDGET_TOKENS=400", "write the knob 'BUDGET_TOKENS' as budget_tokens (lower case)"),
    ("300:budget_tokens=400,60:budget_tokens=100", "rung '60:budget_tokens=100' is cheaper"),
])
def test_bad_ladders_say_what_to_write(text, message):
    with pytest.raises(ConfigError) as e:
        parse_ladder(text)
    assert message in str(e.value) and "\n" not in str(e.value)
