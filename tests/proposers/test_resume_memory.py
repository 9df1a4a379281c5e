"""An LLM proposer's memory of the run survives `ar-ray run --resume`.

A real run on a real local Ray, the LLM proposer talking through the real `openai` client to a scripted local HTTP
server (tests/llm_server.py) that keeps every prompt: stopped, then resumed. The first prompt after the resume is
the prompt an uninterrupted run would have sent next (the same summary of what was tried, near-misses and recent
experiments), and the driver's history is what its live `_record` had made of the same rows.
"""

from __future__ import annotations

import re
import threading

import pytest
from llm_server import LLMServer, reply
from toys import LUCKY, make_toy

from ar_ray.engine import driver as driver_mod
from ar_ray.engine import run as run_mod
from ar_ray.engine.config import RunConfig
from ar_ray.engine.driver import Driver, attempt
from ar_ray.engine.run import execute, restore, restore_history
from ar_ray.ledger import store as ledger
from ar_ray.ledger.store import Ledger
from ar_ray.search.policy import Policy
from ar_ray.target import load_target
from ar_ray.types import Attempt, Baseline
from proposers.actor import make_proposer

OPTIONS = {"model": "m", "max_tries": 1, "combine_rate": 0}


def responder(log: list):
    """A scripted model: each answer sets the next knob to the next number; every prompt is kept in `log`."""
    counter = iter(range(1, 10_000))
    lock = threading.Lock()

    def respond(body: dict) -> dict:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        current = dict(re.findall(r"^([ABCD]) = (\S+)$", user[user.index("== THE CURRENT BEST"):], flags=re.M))
        with lock:
            log.append(user)
            n = next(counter)
        k = "ABCD"[n % 4]
        return reply(f"DESCRIPTION: set {k} to {n}\n\ntrain.py\n<<<<<<< SEARCH\n{k} = {current[k]}\n=======\n"
                     f"{k} = {n}\n>>>>>>> REPLACE\n", prompt_tokens=900, completion_tokens=40)
    return respond


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def test_the_first_prompt_after_a_resume_is_the_one_an_uninterrupted_run_would_send(ray_local, tmp_path, server,
                                                                                    monkeypatch):
    """The driver shows its proposers the last HISTORY rows (3 here, to keep the run short): the summary and the
    near-misses of rows gone from that window come from the proposer's memory, primed on the resume."""
    monkeypatch.setattr(driver_mod, "HISTORY", 3)
    log: list[str] = []
    server.responder = responder(log)
    target = make_toy(tmp_path / "target", train=LUCKY)

    def config(max_experiments: int, resume: bool = False) -> RunConfig:
        return RunConfig(target=str(target), run_dir=str(tmp_path / "run"), proposer="llm",
                         proposer_options={**OPTIONS, "base_url": server.url}, trainers=1, gpus_per_trainer=1,
                         proposers=1, queue_depth=1, max_experiments=max_experiments, resume=resume)

    live: dict = {"rows": []}

    def watch(kind, driver, row):
        if kind == "row":
            live["rows"].append(attempt(row))  # the Attempt `_record` made of the row
        elif kind == "finished":
            live.update(history=list(driver.history), best=driver.best)

    first = execute(config(4), watch)
    before = ledger.load(tmp_path / "run")
    screens = before[before.role == "screen"]
    assert len(screens) == 4 and (screens.gain > screens.threshold / 2).all(), screens  # near-misses, all four
    assert len(before) == len(live["rows"]) == 7 and len(live["history"]) == 3
    asked = len(log)

    # the driver's history, refilled from the ledger, is what `_record` had made of the same rows
    t = load_target(str(target))
    fresh = Driver(t, Ledger(tmp_path / "run"), first["run_id"], [], [], Policy(config(4).policy(), t.direction),
                   queue_depth=1)
    restore(fresh, str(tmp_path / "run"))
    assert list(fresh.history) == live["history"] == live["rows"][-3:]

    execute(config(5, resume=True))
    after = log[asked]  # the resumed proposer's first prompt
    assert "None yet besides the starting point" not in after  # what it said before the change: nothing was tried
    summary = after[after.index("== WHAT WAS TRIED"):after.index("== NEAR MISSES")]
    assert "(4 experiments of this run" in summary and all(f"- {k} (" in summary for k in "ABCD"), summary
    near_part = after[after.index("== NEAR MISSES"):after.index("== EXPERIMENTS SO FAR")]
    assert all(re.search(rf"^- {e} \[close call at the screen", near_part, flags=re.M)
               for e in screens.experiment_id), near_part
    recent = after[after.index("== EXPERIMENTS SO FAR"):after.index("== THE CURRENT BEST")]
    assert re.findall(r"^- (e\d+) \[", recent, flags=re.M) == before.experiment_id.tolist()[-3:], recent

    # an uninterrupted run's next prompt: the same proposer, shown every row as it landed (it is, while fewer
    # than HISTORY rows land between two of its proposals), then the live driver's history
    ref = make_proposer("llm", "llm-0", t.editable, t.program_text(), 0, {**OPTIONS, "base_url": server.url})
    ref.update(live["best"])
    for k in range(len(live["rows"])):
        ref.memory.ingest(live["rows"][max(0, k - 2):k + 1])  # the windows of 3 the proposer would have been shown
    assert ref.propose(live["history"], []).status == "ok"
    # the same prompt, the best's header included: the shipped target's best is "the target as shipped" in both
    # (a restored driver named it by its baseline row, "from e00000", before)
    assert after == log[-1]
    assert "the target as shipped" in after[after.index("== THE CURRENT BEST"):]


def test_priming_is_bounded_and_leaves_out_the_proposals_a_stop_left_unused(tmp_path, monkeypatch):
    """A long ledger primes with its newest PRIME_ROWS rows only; an `unused` row (queued again by the resume) is
    no attempt. Plain rows appended to a real ledger; a driver without proposers (no Ray needed)."""
    rows = [{"run_id": "r", "experiment_id": f"e{i:05d}", "description": f"set A to {i}", "status": "ok",
             "decision": "discard", "metric": 1.0 + i / 1000, "diff": f"-A = 0\n+A = {i}\n", "proposer": "llm-0",
             "group_id": f"e{i:05d}", "gain": -0.01, "threshold": 0.02, "cost_usd": 0.001} for i in range(40)]
    rows[-1].update(status="unused", decision="skip", error="the run stopped before it ran")
    lg = Ledger(tmp_path)
    lg.append(rows[:25])  # two parts, as appended in two rounds
    lg.append(rows[25:])
    monkeypatch.setattr(run_mod, "PRIME_ROWS", 12)
    t = load_target(str(make_toy(tmp_path / "target", train=LUCKY)))
    d = Driver(t, Ledger(tmp_path), "r", [], [], Policy(RunConfig(target=str(t.root)).policy(), t.direction),
               queue_depth=1)
    assert restore_history(d, str(tmp_path)) == 11  # the newest 12 rows, less the unused one
    assert [a.experiment_id for a in d.history] == [f"e{i:05d}" for i in range(28, 39)]
    assert d.history[-1] == attempt(rows[-2])  # the same Attempt `_record` made of the row


def test_priming_restores_the_memory_and_the_combinations_already_asked():
    """`prime` folds rows in as `propose` does; a combination a row's description names is not asked again."""
    diff = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-{0} = 0\n+{0} = {1}\n"
    rows = [Attempt(f"e0000{i}", f"set {k} to {i}", "ok", "discard", 1.0, diff=diff.format(k, i), proposer="llm-0",
                    gain=0.018 - i / 1000, threshold=0.02) for i, k in ((1, "A"), (2, "B"), (3, "C"))]
    rows.append(Attempt("e00004", "combine e00001 + e00002 + e00003: the three together", "ok", "discard", 1.0,
                        diff="--- a/train.py\n+++ b/train.py\n@@\n-A = 0\n+A = 1\n", proposer="llm-0",
                        gain=-0.01, threshold=0.02))
    opts = {**OPTIONS, "base_url": "http://127.0.0.1:9/v1", "combine_rate": 1.0}  # no request is made
    live, primed = (make_proposer("llm", "llm-0", ("train.py",), "", 0, opts) for _ in range(2))
    live.memory.ingest(rows)
    assert primed.prime(rows) == 4
    assert primed.memory.summary_lines() == live.memory.summary_lines() and primed.memory.total() == 4
    base = Baseline(0, {"train.py": "A = 0\nB = 0\nC = 0\n"}, None, 1.0)
    _, chosen = primed._memory_parts(base)
    assert {t.experiment_id for t in chosen} == {"e00001", "e00002"}  # not the three again
    assert make_proposer("mutate", "mutate-0", ("train.py",), "", 0, {}).prime(rows) == 0  # nothing to remember
