"""The LLM prompt's memory: what was tried (by knob), the near-misses, and combine requests.

Pure tests of `proposers.history`, then the real `openai` client against a real local HTTP server
(tests/llm_server.py): what the prompt sent holds, how often a combine request goes out, and a whole
`ar-ray run` in which a combine answer is applied and trained. No API key may appear in a prompt or a row.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from llm_server import LLMServer, reply
from toys import LUCKY

from ar_ray.types import Attempt, Baseline
from proposers import history as H
from proposers.llm import LLMProposer
from proposers.llm_config import LLMConfigError, build_options

KEY = f"sk-hist-{uuid.uuid4().hex}"
KEY_ENV = "HISTTEST_API_KEY"
TRAIN = "A = 0\nB = 0\nC = 0\nD = 0\nprint(f'val_bpb: {1.0 - 0.001 * (A + B + C + D):.6f}')\n"


@pytest.fixture(autouse=True, scope="module")
def api_key():
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = KEY
    yield
    if old is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = old


def diff(name: str, old, new) -> str:
    return f"--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-{name} = {old}\n+{name} = {new}\n"


def row(i: int, name: str, value, decision: str, gain=None, threshold=None, status="ok", **kw) -> Attempt:
    return Attempt(f"e{i:05d}", f"set {name} to {value}", status, decision, 1.0, diff=diff(name, 0, value),
                   proposer="llm-0", gain=gain, threshold=threshold, **kw)


def follow(i: int, group: str, decision: str, gain=None, threshold=None) -> Attempt:
    return Attempt(f"e{i:05d}", f"confirm of {group}", "ok", decision, 1.0, proposer="policy", group=group,
                   gain=gain, threshold=threshold)


# ------------------------------------------------------------------------------------------ the memory


def test_touched_names_the_assigned_knobs_else_the_first_changed_line():
    assert H.touched(diff("LR", 0.1, 0.2)) == (("LR",), ("LR = 0.2",))
    d = "--- a/t.py\n+++ b/t.py\n@@\n-    return x * LR\n+    return x * LR * 0.5\n"
    assert H.touched(d) == (("~ return x * LR",), ("return x * LR * 0.5",))
    d = "--- a/t.py\n+++ b/t.py\n@@\n-p.add_argument('--n-embd', type=int, default=64)\n" \
        "+p.add_argument('--n-embd', type=int, default=128)\n"
    assert H.touched(d) == (("n_embd",), ("n_embd = 128",))


def test_the_summary_groups_by_knob_and_follow_ups_turn_screens_into_near_misses():
    m = H.Memory()
    rows = [Attempt("e00000", "baseline", "ok", "baseline", 1.0),
            row(1, "A", 1, "discard", gain=-0.01, threshold=0.02),
            row(2, "A", 2, "screened", gain=0.03, threshold=0.02),
            row(3, "B", 5, "discard", gain=0.015, threshold=0.02),  # a close call at the screen
            row(4, "C", 7, "discard", status="crash"),
            row(5, "D", 9, "keep", gain=0.05, threshold=0.02),
            row(8, "A", 1, "skip", status="duplicate"),  # a repeat of e00001: not a candidate of its own
            Attempt("e00009", "", "invalid_edit", "skip", None, proposer="llm-0")]  # never became an edit
    m.ingest(rows)
    m.ingest(rows[3:] + [follow(6, "e00002", "confirming"), follow(7, "e00002", "reject", 0.004, 0.012)])
    assert m.total() == 5  # a row shown twice counts once; baselines and follow-ups are no candidates
    lines = m.summary_lines()
    assert lines[0] == "- A (2 tried): near miss: 2 (e00002); worse: 1"
    assert "- C (1 tried): failed: 7" in lines and "- D (1 tried): kept: 9 (e00005)" in lines
    near = m.near_misses({"train.py": "A = 0\nB = 0\n"})
    assert [t.experiment_id for t in near] == ["e00003", "e00002"]  # by gain over the bar: 0.75, then 0.33
    assert near[1].detail == "screened, then rejected by its confirmation runs" and near[1].gain == 0.004
    assert [t.experiment_id for t in m.near_misses({"train.py": "A = 0\nB = 5\n"})] == ["e00002"]  # B = 5 adopted
    text = H.format_near(near[0])
    assert "gain 0.015 vs bar 0.02" in text and "\n    -B = 0\n    +B = 5" in text


def test_combinations_touch_different_knobs_and_are_not_asked_twice():
    m = H.Memory()
    m.ingest([row(1, "A", 1, "discard", 0.018, 0.02), row(2, "A", 2, "discard", 0.017, 0.02),
              row(3, "B", 1, "discard", 0.016, 0.02)])
    near = m.near_misses({})
    asked: set = set()
    first = H.pick_combination(near, asked)
    assert [t.experiment_id for t in first] == ["e00001", "e00003"]  # e00002 touches A again
    asked.add(frozenset(t.experiment_id for t in first))
    assert [t.experiment_id for t in H.pick_combination(near, asked)] == ["e00002", "e00003"]
    asked.add(frozenset({"e00002", "e00003"}))
    assert H.pick_combination(near, asked) == []
    text = H.combine_request(first)
    assert text.startswith(H.COMBINE_TITLE) and '"combine e00001 + e00003:"' in text and "+B = 1" in text


def test_the_switches_are_checked():
    assert build_options(model="m", base_url="http://127.0.0.1:9/v1")["idea_memory"] is True
    with pytest.raises(LLMConfigError, match="idea_memory must be true or false"):
        LLMProposer("x", ("train.py",), "", 0, model="m", base_url="http://127.0.0.1:9/v1", idea_memory="no")
    with pytest.raises(LLMConfigError, match="combine_rate is a share of proposals"):
        LLMProposer("x", ("train.py",), "", 0, model="m", base_url="http://127.0.0.1:9/v1", combine_rate=2)


# ---------------------------------------------------------------------------- through the real client


def responder(log: list):
    """A scripted model: a combine request gets every +NAME = value of its near-misses applied; anything else
    sets the next knob value of a counter. Every prompt it gets is kept in `log`."""
    counter = iter(range(1, 10_000))
    lock = threading.Lock()

    def respond(body: dict) -> dict:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        log.append(user)
        current = dict(re.findall(r"^([ABCD]) = (\S+)$", user[user.index("== THE CURRENT BEST"):], flags=re.M))
        if H.COMBINE_TITLE in user:
            section = user[user.index(H.COMBINE_TITLE):]
            changes = dict(re.findall(r"^\s+\+([ABCD]) = (\S+)\s*$", section, flags=re.M))
            text = "DESCRIPTION: the near-misses together\n\n"
        else:
            with lock:
                n = next(counter)
            changes = {"ABCD"[n % 4]: str(n)}
            text = f"DESCRIPTION: set {'ABCD'[n % 4]} to {n}\n\n"
        text += "".join(f"train.py\n<<<<<<< SEARCH\n{k} = {current[k]}\n=======\n{k} = {v}\n>>>>>>> REPLACE\n\n"
                        for k, v in changes.items() if current.get(k) != v)
        return reply(text, prompt_tokens=900, completion_tokens=50)
    return respond


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def proposer(server, **opts) -> LLMProposer:
    p = LLMProposer("llm-0", ("train.py",), "Lower val_bpb.", 0, model="m", base_url=server.url,
                    api_key_env=KEY_ENV, max_tries=1, **opts)
    p.update(Baseline(0, {"train.py": TRAIN}, None, 1.0))
    return p


def test_the_prompt_remembers_rows_gone_from_the_window_and_shows_near_misses(server):
    log: list[str] = []
    server.responder = responder(log)
    old = [row(i, "C", 100 + i, "discard", -0.01, 0.02) for i in range(1, 31)]  # 30 rows of C, then others
    recent = [row(31, "A", 3, "discard", 0.016, 0.02), row(32, "B", 4, "screened", 0.03, 0.02),
              follow(33, "e00032", "reject", 0.005, 0.01)] + [row(i, "D", i, "discard", -0.02, 0.02)
                                                               for i in range(34, 60)]
    p = proposer(server)
    assert p.propose(old).status == "ok"
    assert p.propose(recent[-30:]).status == "ok"  # the driver's window: the C rows are gone from it
    prompt = log[-1]
    assert "e00001" not in prompt.split("== EXPERIMENTS SO FAR")[1]  # not in the recent history...
    summary = prompt[prompt.index("== WHAT WAS TRIED"):prompt.index("== NEAR MISSES")]
    assert "(58 experiments of this run" in summary  # ...but in the summary: 30 of C, then A, B and 26 of D
    assert re.search(r"- C \(30 tried\): worse: (\d+, ){7}130 \+22 more", summary), summary
    near = prompt[prompt.index("== NEAR MISSES"):prompt.index("== EXPERIMENTS SO FAR")]
    assert "- e00031 [close call at the screen, gain 0.016 vs bar 0.02]: set A to 3\n    -A = 0\n    +A = 3" in near
    assert "- e00032 [screened, then rejected by its confirmation runs, gain 0.005 vs bar 0.01]" in near
    assert p.memory.total() == 58

    off = proposer(server, idea_memory=False)  # the switch: neither part, the same history
    off.propose(old)
    off.propose(recent[-30:])
    assert "== WHAT WAS TRIED" not in log[-1] and "== NEAR MISSES" not in log[-1]
    assert all(KEY not in json.dumps(b) for b in server.bodies())


def test_the_summary_and_near_misses_give_way_to_fit_the_context(server):
    log: list[str] = []
    server.responder = responder(log)
    many = [row(i, f"K{i}", i, "discard", 0.015, 0.02) for i in range(1, 200)]  # 199 knobs, all close calls
    p = proposer(server, context_tokens=3000, sampling={"max_tokens": 300})
    assert p.propose(many[-30:]).status == "ok"
    assert p.propose(many).status == "ok"
    body = server.bodies()[-1]
    assert sum(len(m["content"]) for m in body["messages"]) / 3.5 + 300 <= 3000
    prompt = log[-1]
    assert "== NEAR MISSES" in prompt and "more groups not shown" in prompt and TRAIN in prompt


def test_a_combine_request_goes_out_at_the_configured_rate_and_its_answer_is_applied(server):
    log: list[str] = []
    server.responder = responder(log)
    near = [row(1, "A", 1, "discard", 0.018, 0.02), row(2, "B", 2, "discard", 0.017, 0.02),
            row(3, "C", 3, "discard", 0.016, 0.02)]
    p = proposer(server, combine_rate=0.5)
    props = [p.propose(near) for _ in range(8)]
    combined = [k for k, text in enumerate(log) if H.COMBINE_TITLE in text]
    # every second proposal made while an unasked combination exists; there are three ({A,B,C}, {A,B}, {B,C})
    assert combined == [1, 3, 5]
    assert props[1].description == "combine e00001 + e00002 + e00003: the near-misses together"
    assert "A = 1\nB = 2\nC = 3\n" in props[1].files["train.py"]  # the merged edit, applied to the best
    assert props[3].description.startswith("combine e00001 + e00002:") and "A = 1\nB = 2\nC = 0\n" in props[3].files["train.py"]
    assert [pr.status for pr in props] == ["ok"] * 8
    p0 = proposer(server, combine_rate=0)
    log.clear()
    for _ in range(3):
        p0.propose(near)
    assert not any(H.COMBINE_TITLE in text for text in log)


# ---------------------------------------------------------------------------------------- ar-ray run




def test_ar_ray_run_trains_a_combination_of_near_misses_and_no_key_reaches_a_prompt_or_row(server, tmp_path):
    import ray

    from ar_ray.cli.main import main
    from ar_ray.ledger import load
    log: list[str] = []
    server.responder = responder(log)
    target = tmp_path / "target"
    target.mkdir()
    (target / "train.py").write_text(LUCKY)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[llm]\nmax_tries = 1\ncombine_rate = 1.0\n[[llm.endpoints]]\nmodel = "m"\nbase_url = "{server.url}"\n'
                   f'api_key_env = "{KEY_ENV}"\nprice_prompt_per_mtok = 1\nprice_completion_per_mtok = 2\n')
    run_dir = tmp_path / "run"
    if ray.is_initialized():
        ray.shutdown()
    ray.init("local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        r = CliRunner().invoke(main, ["run", "--proposer", "llm", "--config", str(cfg), "--target", str(target),
                                      "--run-dir", str(run_dir), "--max-experiments", "7", "--trainers", "1",
                                      "--proposers", "1", "--sandbox", "none", "--budget", "5"],
                               catch_exceptions=False)
    finally:
        ray.shutdown()
    assert r.exit_code == 0, r.output
    df = load(run_dir)
    combos = df[df.description.fillna("").str.startswith("combine ")]
    assert len(combos), list(df.description)
    c = combos.iloc[0]
    ids = re.match(r"combine (e\d+(?: \+ e\d+)+):", c.description).group(1).split(" + ")
    assert c.status == "ok" and c.role == "screen" and c.decision != "skip"  # it reached a trainer and ran
    parts = df.set_index("experiment_id").loc[ids]
    added = {line for d in parts["diff"] for line in d.splitlines() if line.startswith("+") and "=" in line}
    assert added and all(line in c["diff"].splitlines() for line in added)  # every near-miss's change is in it
    combine_prompts = [text for text in log if H.COMBINE_TITLE in text]
    assert combine_prompts and all("== NEAR MISSES" in text and "== WHAT WAS TRIED" in text for text in combine_prompts)
    assert all(KEY not in text for text in log)
    for path in Path(run_dir).rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
