"""The LLM proposer against a real local HTTP server speaking the OpenAI chat API (tests/llm_server.py).

The real `openai` client talks to the server; each test scripts the server's replies in order and
reads back the requests it got. The last tests run proposer actors on a real local Ray: one rate
limit shared by every actor of an endpoint, and a whole `ar-ray run --proposer llm`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import uuid
from email.utils import formatdate
from pathlib import Path

import pytest
from click.testing import CliRunner
from llm_server import LLMServer, error, reply

from ar_ray.code import answers, edits
from ar_ray.types import Attempt, Baseline
from proposers import prompt as prompt_mod
from proposers.llm import REPAIR_TURN_TOKENS, LLMProposer, retry_after
from proposers.llm_config import LLMConfigError, build_options, key_env_vars, price_of
from proposers.ratelimit import RateLimiter

KEY = f"sk-test-{uuid.uuid4().hex}"  # unique: found anywhere it should not be, it came from here

PROGRAM = "# Toy research program\nLower val_bpb. Only train.py may change. MARKER-PROGRAM-7731\n"
TRAIN = '''\
import os

LR = 0.5
WIDTH = 8


def scale(x):
    if x > 0:
        return x * LR
    return 0.0


print("---")
print(f"val_bpb: {abs(LR - 0.3) + 1 + 0 * scale(WIDTH):.6f}")
'''
GOOD = """DESCRIPTION: lower LR to 0.3, the loss curve suggests 0.5 overshoots

train.py
<<<<<<< SEARCH
LR = 0.5
=======
LR = 0.3
>>>>>>> REPLACE
"""
FENCED = """DESCRIPTION: lower LR to 0.3

train.py
```python
<<<<<<< SEARCH
LR = 0.5
=======
LR = 0.3
>>>>>>> REPLACE
```
"""
DRIFTED = """DESCRIPTION: halve the scale inside scale()

train.py
<<<<<<< SEARCH
if x > 0:
    return x * LR
=======
if x > 0:
    return x * LR * 0.5
>>>>>>> REPLACE
"""
NO_MATCH = """DESCRIPTION: lower LR

train.py
<<<<<<< SEARCH
LR = 0.7
=======
LR = 0.3
>>>>>>> REPLACE
"""
READ_ONLY = """DESCRIPTION: a bigger vocabulary

prepare.py
<<<<<<< SEARCH
VOCAB = 42
=======
VOCAB = 43
>>>>>>> REPLACE
"""
BROKEN = """DESCRIPTION: lower LR

train.py
<<<<<<< SEARCH
LR = 0.5
=======
LR = (0.3
>>>>>>> REPLACE
"""


@pytest.fixture(scope="module", autouse=True)
def api_key():
    """The fake key in OPENAI_API_KEY for the whole module (Ray workers started here inherit it)."""
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = KEY
    yield KEY
    if old is None:
        os.environ.pop("OPENAI_API_KEY", None)
    else:
        os.environ["OPENAI_API_KEY"] = old


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def make(server, **opts) -> LLMProposer:
    options = {"model": "gpt-4o-mini", "base_url": server.url, "api_key_env": "OPENAI_API_KEY", "max_retries": 2,
               "retry_backoff": 0.05,
               "request_timeout": 10.0, **opts}
    p = LLMProposer("llm-0", ("train.py",), PROGRAM, 0, **options)
    p.update(Baseline(0, {"train.py": TRAIN}, None, 1.2))
    return p


def user_turns(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


HISTORY = [
    Attempt("e00000", "baseline", "ok", "baseline", 1.2),
    Attempt("e00001", "raise WIDTH to 12 HIST-KEEP", "ok", "keep", 1.1,
            diff="--- a/train.py\n+++ b/train.py\n@@ -4 +4 @@\n-WIDTH = 8\n+WIDTH = 12\n"),
    Attempt("e00002", "use a huge LR HIST-CRASH", "crash", "discard", None,
            diff="--- a/train.py\n+++ b/train.py\n@@ -3 +3 @@\n-LR = 0.5\n+LR = 50\n",
            error_tail="Traceback (most recent call last):\nValueError: loss is nan HIST-TAIL"),
    Attempt("e00003", "swap the activation HIST-DISCARD", "ok", "discard", 1.25),
]


# ---------------------------------------------------------------------------------------------- edits


def test_a_well_formed_edit_becomes_a_proposal_with_tokens_and_cost(server):
    server.script(reply(GOOD, prompt_tokens=1200, completion_tokens=300))
    p = make(server).propose(HISTORY, ["try SwiGLU IN-FLIGHT-ONE"])
    assert p.status == "ok", p.error
    assert "LR = 0.3" in p.files["train.py"] and "LR = 0.5" not in p.files["train.py"]
    assert p.description == "lower LR to 0.3, the loss curve suggests 0.5 overshoots"
    assert p.lines_added == 1 and p.lines_removed == 1 and p.edit_hash
    assert p.usage["prompt_tokens"] == 1200 and p.usage["completion_tokens"] == 300
    assert p.usage["cost_usd"] == pytest.approx((1200 * 0.15 + 300 * 0.60) / 1e6)  # built-in gpt-4o-mini price
    assert p.usage["latency_s"] > 0

    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions" and req["headers"]["authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == "gpt-4o-mini" and [m["role"] for m in body["messages"]] == ["system", "user"]
    text = "\n".join(m["content"] for m in body["messages"])
    assert "MARKER-PROGRAM-7731" in text and TRAIN in text  # the program, and the current file in full
    for needle in ("HIST-KEEP", "+WIDTH = 12", "HIST-CRASH", "HIST-TAIL", "HIST-DISCARD", "IN-FLIGHT-ONE"):
        assert needle in text
    assert "<<<<<<< SEARCH" in text and "DESCRIPTION:" in text and KEY not in text


@pytest.mark.parametrize("answer", [FENCED, GOOD.replace("\n", "\r\n"), DRIFTED], ids=["fenced", "crlf", "indent-drift"])
def test_fenced_crlf_and_indentation_drifted_edits_apply(server, answer):
    server.script(reply(answer))
    p = make(server).propose()
    assert p.status == "ok", p.error
    new = p.files["train.py"]
    if answer is DRIFTED:
        assert "        return x * LR * 0.5\n" in new  # re-indented to the function body
    else:
        assert "\nLR = 0.3\n" in new and "\r" not in new
    assert len(server.requests) == 1


def test_an_edit_that_does_not_apply_is_asked_again_in_the_same_conversation(server):
    server.script(reply(NO_MATCH, prompt_tokens=100, completion_tokens=10),
                  reply(GOOD, prompt_tokens=150, completion_tokens=20))
    p = make(server).propose()
    assert p.status == "ok", p.error
    assert "LR = 0.3" in p.files["train.py"]
    first, second = server.bodies()
    with pytest.raises(edits.EditError) as reason:  # the exact reason edits gives for this answer
        edits.apply_edits({"train.py": TRAIN}, answers.parse_answer(NO_MATCH, {"train.py": TRAIN}, {"train.py"}),
                          {"train.py"})
    assert second["messages"][:2] == first["messages"]  # same conversation, continued
    assert second["messages"][2] == {"role": "assistant", "content": NO_MATCH}
    assert second["messages"][3]["role"] == "user" and str(reason.value) in second["messages"][3]["content"]
    assert p.usage["prompt_tokens"] == 250 and p.usage["completion_tokens"] == 30  # both turns are paid for


def test_an_edit_of_a_read_only_file_is_refused_after_the_tries(server):
    server.script(reply(READ_ONLY), reply(READ_ONLY), reply(READ_ONLY))
    p = make(server).propose()  # max_tries defaults to 3
    assert p.status == "invalid_edit" and p.files == {}
    assert "prepare.py" in p.error and "you may only edit: train.py" in p.error and "after 3 tries" in p.error
    assert len(server.requests) == 3
    assert "prepare.py" in user_turns(server.bodies()[1])[-1]


def test_a_syntax_error_is_caught_before_training_and_asked_again(server):
    server.script(reply(BROKEN), reply(BROKEN))
    p = make(server, max_tries=2).propose()
    assert p.status == "invalid_edit" and "does not compile" in p.error
    assert len(server.requests) == 2
    assert "does not compile" in user_turns(server.bodies()[1])[-1] and "LR = (0.3" in user_turns(server.bodies()[1])[-1]


def test_empty_and_refusing_answers_fail_with_a_clear_reason(server):
    server.script(reply(""), reply(None))
    p = make(server, max_tries=2).propose()
    assert p.status == "invalid_edit" and "the answer was empty" in p.error
    assert user_turns(server.bodies()[1])[-1].count("the answer was empty") == 1

    server.script(reply("I'm sorry, but I can't help with modifying this script."),
                  reply(None, refusal="I cannot assist with that request."))
    p = make(server, max_tries=2).propose()
    assert p.status == "invalid_edit" and "declined" in p.error and "I cannot assist" in p.error
    assert "declined" in user_turns(server.bodies()[3])[-1]


READY = "I am ready.\n\n```\n# Refining this\n```"  # a real small model's answer (SmolLM2-135M on llama.cpp)


def test_a_bare_code_block_without_a_path_is_refused_and_repaired_never_taken_as_the_file(server):
    server.script(reply(READY), reply(GOOD))
    p = make(server).propose()
    assert p.status == "ok", p.error
    assert p.files["train.py"] == TRAIN.replace("LR = 0.5", "LR = 0.3")  # the repaired answer, not two comment lines
    first, second = server.bodies()
    assert second["messages"][2] == {"role": "assistant", "content": READY}
    repair = user_turns(second)[-1]
    assert "no file path before it" in repair and "preceded by its path" in repair and "train.py" in repair
    server.script(*[reply(READY)] * 3)
    q = make(server).propose()
    assert q.status == "invalid_edit" and q.files == {} and "no file path before it" in q.error
    # the whole file rewritten without a path still counts (it keeps most of the file's lines)
    server.script(reply("```python\n" + TRAIN.replace("WIDTH = 8", "WIDTH = 16") + "```\n"))
    r = make(server).propose()
    assert r.status == "ok" and "WIDTH = 16" in r.files["train.py"]


def test_a_very_large_answer_is_refused_quickly_and_the_conversation_goes_on(server):
    huge = GOOD + "\n# " + "x" * 2_000_000 + "\n"
    server.script(reply(huge), reply(GOOD))
    t0 = time.monotonic()
    p = make(server).propose()
    assert time.monotonic() - t0 < 15
    assert p.status == "ok", p.error
    second = server.bodies()[1]["messages"]
    assert len(second[2]["content"]) < 10_000  # the replayed answer is cut, not resent whole
    assert "characters long, over the limit" in second[3]["content"]


# ------------------------------------------------------------------------------------- HTTP failures


def test_429_with_retry_after_is_waited_out_and_retried_once(server):
    server.script(error(429, "slow down", retry_after="1"), reply(GOOD))
    p = make(server, max_retries=3).propose()
    assert p.status == "ok", p.error
    assert len(server.requests) == 2  # the client does not retry on its own: our loop counts each request once
    t = server.times()
    assert t[1] - t[0] >= 0.95
    assert p.usage["requests"] == 2


def test_5xx_until_the_retries_run_out_is_a_proposer_error(server):
    server.script(*[error(500, "upstream exploded")] * 3)
    t0 = time.monotonic()
    p = make(server, max_retries=2).propose()
    assert p.status == "proposer_error"
    assert "HTTP 500" in p.error and "upstream exploded" in p.error and "gave up after 3 requests" in p.error
    assert len(server.requests) == 3 and time.monotonic() - t0 < 5


def test_a_reply_slower_than_the_request_timeout_is_a_proposer_error(server):
    server.script(reply(GOOD, delay=30), reply(GOOD, delay=30))
    t0 = time.monotonic()
    p = make(server, request_timeout=0.5, max_retries=1).propose()
    assert time.monotonic() - t0 < 5
    assert p.status == "proposer_error" and "timeout" in p.error and "0.5 s" in p.error
    assert len(server.requests) == 2


def test_the_api_key_appears_nowhere(server):
    # a server that echoes the key in its error (real ones echo parts of it), then one that does in a 500
    server.script(error(401, f"Incorrect API key provided: {KEY}"))
    p = make(server).propose()
    assert p.status == "proposer_error" and "HTTP 401" in p.error and "OPENAI_API_KEY" in p.error
    assert "***" in p.error
    server.script(*[error(503, f"overloaded for key {KEY}")] * 2, reply(GOOD))
    proposer = make(server, max_retries=1)
    q = proposer.propose()
    r = proposer.propose()
    assert q.status == "proposer_error" and r.status == "ok"
    for thing in (p, q, r, proposer):
        assert KEY not in repr(thing)
    assert all(KEY not in json.dumps(b) for b in server.bodies())  # never in a prompt
    assert len(server.requests) == 4 and all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)


def test_retry_after_accepts_seconds_and_http_dates():
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert 25 <= retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)}) <= 30
    assert retry_after({"retry-after": formatdate(time.time() - 30, usegmt=True)}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None
    assert retry_after({"retry-after": "100000"}) == 120.0  # capped


def test_the_token_buckets_book_requests_and_tokens():
    now = [100.0]
    rl = RateLimiter(rpm=120, tpm=6000, burst=2, clock=lambda: now[0])
    assert [rl.reserve(10) for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]  # 2 at once, then one per 0.5 s
    now[0] += 10  # refilled (to the burst, no more)
    assert [rl.reserve(0) for _ in range(3)] == [0.0, 0.0, 0.5]
    now[0] += 60
    assert rl.reserve(6000) == 0.0 and rl.reserve(3000) == pytest.approx(30.0)  # 100 tokens/s
    rl.settle(-3000)  # the second request used fewer tokens than booked: the bucket gets them back
    now[0] += 60
    rl.pause(5)
    assert rl.reserve(0) == pytest.approx(5.0)


def test_proposers_in_one_process_share_one_limiter_without_ray(server):
    import ray
    assert not ray.is_initialized()
    server.responder = lr_responder()
    ep = {"model": "inproc-model", "base_url": server.url, "api_key_env": "OPENAI_API_KEY", "rpm": 300, "burst": 1}  # one every 0.2 s
    a, b = (LLMProposer(f"llm-{k}", ("train.py",), PROGRAM, k, endpoints=[ep]) for k in range(2))
    base = Baseline(0, {"train.py": TRAIN}, None, 1.2)

    async def both():
        await asyncio.gather(a.apropose([], [], base), b.apropose([], [], base))  # warm up both HTTP clients
        with server._lock:
            server.requests.clear()
        return await asyncio.gather(*[p.apropose([], [], base) for p in (a, b, a, b, a, b)])
    assert [p.status for p in asyncio.run(both())] == ["ok"] * 6
    t = server.times()
    assert len(t) == 6 and t[-1] - t[0] >= 5 * 0.2 - 0.1  # one bucket for both: at least five intervals apart


# --------------------------------------------------------------------------------------------- routing


def two_endpoints(good, bad, weights=(1, 1)):
    price = {"price_prompt_per_mtok": 1.0, "price_completion_per_mtok": 2.0}
    return [{"model": "bad-model", "base_url": bad.url, "weight": weights[0], **price},
            {"model": "good-model", "base_url": good.url, "weight": weights[1], **price}]


def test_the_bandit_sends_most_proposals_to_the_endpoint_whose_proposals_pay(server):
    with LLMServer() as bad:
        server.responder = lr_responder("0.3")  # the good endpoint: valid edits, half of them pass the screen
        bad.responder = lambda body: reply(READY)  # the bad one: never a usable edit
        p = LLMProposer("llm-0", ("train.py",), PROGRAM, 7, endpoints=two_endpoints(server, bad), max_tries=1)
        p.update(Baseline(0, {"train.py": TRAIN}, None, 1.2))
        history, picks = [], []
        for n in range(40):
            prop = p.propose(history[-30:])  # the driver's window of recent rows
            actor, _, model = prop.proposer.partition("/")
            assert actor == "llm-0" and model in ("good-model", "bad-model")  # the ledger says which endpoint
            picks.append(model)
            decision = "skip" if prop.status != "ok" else ("screened" if n % 2 else "discard")
            history.append(Attempt(f"e{n:05d}", prop.description, prop.status, decision, None,
                                   proposer=prop.proposer, cost_usd=prop.usage["cost_usd"]))
        assert picks.count("bad-model") >= 1  # it was tried
        assert picks[-20:].count("good-model") >= 17, picks  # then the good one takes most of the traffic
        stats = {s["model"]: s for s in p.endpoint_stats()}
        assert stats["bad-model"]["value"] == 0 and stats["good-model"]["value"] > 0
        # older rows than the window of 30 are remembered (the 40th is not back yet)
        assert stats["good-model"]["proposals"] + stats["bad-model"]["proposals"] == 39
        # a keep arrives on a follow-up run (proposer "policy") of the good endpoint's candidate: it counts for it
        screened = next(a for a in history if a.decision == "screened")
        before = stats["good-model"]["value"]
        p.propose([Attempt("e00100", "confirm", "ok", "keep", 1.0, proposer="policy", group=screened.experiment_id)])
        assert {s["model"]: s for s in p.endpoint_stats()}["good-model"]["value"] == before + 0.5
        assert len(server.requests) + len(bad.requests) == 41


def test_without_outcomes_the_weights_are_the_prior_and_weight_zero_is_never_asked(server):
    with LLMServer() as other:
        p = LLMProposer("llm-0", ("train.py",), PROGRAM, 3, endpoints=two_endpoints(server, other, weights=(1, 4)))
        picks = [p.labels[p._pick_endpoint()] for _ in range(400)]
        assert picks.count("good-model") > 0.65 * len(picks) and "bad-model" in picks
        p = LLMProposer("llm-0", ("train.py",), PROGRAM, 3, endpoints=two_endpoints(server, other, weights=(0, 1)))
        assert {p._pick_endpoint() for _ in range(50)} == {1}


# --------------------------------------------------------------------------------------------- prompt


def test_the_prompt_holds_program_files_history_and_in_flight():
    pr = prompt_mod.build_prompt(PROGRAM, {"train.py": TRAIN}, ("train.py",), HISTORY, ["try SwiGLU", "depth 6"],
                                 best_metric=1.1, best_id="e00001", budget_tokens=50_000)
    system, user = (m["content"] for m in pr.messages)
    assert "train.py" in system and "<<<<<<< SEARCH" in system and ">>>>>>> REPLACE" in system
    assert "DESCRIPTION:" in system
    assert PROGRAM.strip() in user and TRAIN in user
    assert "- try SwiGLU" in user and "- depth 6" in user
    assert "HIST-TAIL" in user and "+WIDTH = 12" in user and "e00001" in user
    assert user.index("HIST-KEEP") < user.index("HIST-CRASH") < user.index("HIST-DISCARD")  # oldest first
    assert pr.dropped == [] and pr.tokens <= 50_000


def test_trimming_drops_history_first_and_never_the_files():
    big = TRAIN + "".join(f"X{i} = {i}  # padding to make the file large\n" for i in range(400))
    many = [Attempt(f"e{i:05d}", f"idea number {i} " + "words " * 30, "crash" if i % 3 else "ok",
                    "keep" if i == 5 else "discard", 1.0 + i / 100, diff=f"+++ b/train.py\n-LR = 0.5\n+LR = 0.{i}\n",
                    error_tail="Traceback\nRuntimeError: boom " * 5)
            for i in range(30)]
    args = (PROGRAM, {"train.py": big}, ("train.py",), many, ["in flight one"])
    roomy = prompt_mod.build_prompt(*args, budget_tokens=100_000)
    assert roomy.dropped == [] and len(roomy.shown_full) == 30
    bare = prompt_mod.build_prompt(*args[:3], [], ["in flight one"], budget_tokens=100_000).tokens
    tight = prompt_mod.build_prompt(*args, budget_tokens=bare + 400)
    assert tight.tokens <= bare + 400
    assert big in tight.messages[1]["content"] and "in flight one" in tight.messages[1]["content"]
    assert tight.dropped and len(tight.dropped) + len(tight.shown_short) + len(tight.shown_full) == 30
    kept_first = tight.shown_full + tight.shown_short
    assert "e00005" in kept_first and "e00029" in kept_first  # the kept one and the newest survive
    none = prompt_mod.build_prompt(*args, budget_tokens=10)  # far too small: history goes, the files stay
    assert len(none.dropped) == 30 and big in none.messages[1]["content"]


BIG_TRAIN = TRAIN + "".join(f"X{i} = {i}  # padding to make the file large enough to matter\n" for i in range(200))
# an answer longer than the replay limit whose SEARCH part is not in the file (characters that are not in it
# either: ar_ray.code.edits' search for the closest lines is slow when many characters match)
NOT_THERE = ("DESCRIPTION: change the padding\n\ntrain.py\n<<<<<<< SEARCH\n" + "ÆØÅ" * 12 + "\n" + "ÅØÆ" * 12 + "\n"
             + "=======\n" + "".join(f"Z{i} = {i}  # a long replacement, longer than the replay limit\n" for i in range(150))
             + ">>>>>>> REPLACE\n")
LONG_HISTORY = [Attempt(f"e{i:05d}", f"idea number {i} HIST-{i}-END " + "words " * 40, "crash" if i % 2 else "ok",
                        "discard", 1.0 + i / 100, diff="--- a/train.py\n+++ b/train.py\n" + "".join(
                            f"-X{k} = {k}\n+X{k} = {k + i}\n" for k in range(10)),
                        error_tail="Traceback\nRuntimeError: boom " * 8) for i in range(60)]


def make_big(server, **opts) -> LLMProposer:
    p = make(server, **opts)
    p.update(Baseline(1, {"train.py": BIG_TRAIN}, None, 1.2))
    return p


def test_every_request_fits_the_context_with_the_answer_and_the_repair_turns(server):
    context, max_tokens = 12000, 1500
    server.script(*[reply(NOT_THERE)] * 3)
    p = make_big(server, context_tokens=context, sampling={"max_tokens": max_tokens}).propose(LONG_HISTORY)
    assert p.status == "invalid_edit" and "after 3 tries" in p.error
    bodies = server.bodies()
    assert [len(b["messages"]) for b in bodies] == [2, 4, 6]  # the first answer, then two repair turns
    for b in bodies:
        assert b["max_tokens"] == max_tokens
        assert prompt_mod.messages_tokens(b["messages"]) + max_tokens <= context
    first = bodies[0]["messages"][1]["content"]
    assert BIG_TRAIN in first and "HIST-59-END" in first  # the files whole, the newest history kept
    assert "HIST-0-END" not in first  # the oldest dropped to make room
    # the repair turns are as large as they get: the room kept for them is used, not a guess far off
    grown = prompt_mod.messages_tokens(bodies[2]["messages"]) - prompt_mod.messages_tokens(bodies[0]["messages"])
    assert REPAIR_TURN_TOKENS < grown <= 2 * REPAIR_TURN_TOKENS


def test_files_too_big_for_the_context_fail_before_any_request(server):
    max_tokens = 1500
    bare = prompt_mod.build_prompt(PROGRAM, {"train.py": BIG_TRAIN}, ("train.py",), LONG_HISTORY,
                                   budget_tokens=10).tokens  # no history fits: the files and the rest only
    p = make_big(server, context_tokens=bare + max_tokens - 1, sampling={"max_tokens": max_tokens}).propose(LONG_HISTORY)
    assert p.status == "proposer_error" and "too small for the target's files" in p.error
    assert "context_tokens" in p.error and not server.requests
    # room for the first answer but not for a repair turn: one request, then the edit is refused
    server.script(reply(NOT_THERE), reply(GOOD))
    p = make_big(server, context_tokens=bare + max_tokens + 100, sampling={"max_tokens": max_tokens}).propose(LONG_HISTORY)
    assert p.status == "invalid_edit" and "no room for another" in p.error and "after 1 try" in p.error
    (body,) = server.bodies()
    assert prompt_mod.messages_tokens(body["messages"]) + max_tokens <= bare + max_tokens + 100


def test_descriptions_and_refusals_are_recognized():
    assert prompt_mod.parse_description(GOOD) == "lower LR to 0.3, the loss curve suggests 0.5 overshoots"
    assert prompt_mod.parse_description("**Description:** use SwiGLU\n\ntrain.py\n<<<<<<< SEARCH") == "use SwiGLU"
    assert prompt_mod.parse_description("Try a warmup.\ntrain.py\n<<<<<<< SEARCH\n") == "Try a warmup."
    assert prompt_mod.parse_description("train.py\n<<<<<<< SEARCH\n") == ""
    assert prompt_mod.looks_like_refusal("I'm sorry, I can't help with that.")
    assert not prompt_mod.looks_like_refusal(GOOD)


# --------------------------------------------------------------------------------------------- config


def test_config_from_flags_names_the_key_variable_and_never_holds_the_key():
    opts = build_options(model="gpt-4o", base_url="http://127.0.0.1:9/v1/", api_key_env="OPENAI_API_KEY")
    assert json.loads(json.dumps(opts)) == opts and KEY not in json.dumps(opts)
    (ep,) = opts["endpoints"]
    assert ep["api_key_env"] == "OPENAI_API_KEY" and ep["base_url"] == "http://127.0.0.1:9/v1"
    assert (ep["price_prompt_per_mtok"], ep["price_completion_per_mtok"]) == price_of("gpt-4o") == (2.5, 10.0)
    assert opts["max_tries"] == 3 and price_of("my-local-llama") == (0.0, 0.0)
    assert key_env_vars(opts) == ["OPENAI_API_KEY"]


def test_openais_key_goes_to_openai_only(server):
    """A self-hosted server named without api_key_env gets a placeholder key, never OPENAI_API_KEY."""
    (ep,) = build_options(model="gpt-4o")["endpoints"]
    assert ep["api_key_env"] == "OPENAI_API_KEY" and ep["base_url"] is None  # api.openai.com: its own key
    opts = build_options(model="my-llama", base_url=server.url)
    assert opts["endpoints"][0]["api_key_env"] is None and key_env_vars(opts) == []
    server.script(reply(GOOD))
    p = LLMProposer("llm-0", ("train.py",), PROGRAM, 0, **opts)
    p.update(Baseline(0, {"train.py": TRAIN}, None, 1.2))
    assert p.propose().status == "ok"
    (req,) = server.requests
    assert req["headers"]["authorization"] == "Bearer no-key" and KEY not in json.dumps(req)
    server.script(error(401, "who are you"))
    p = p.propose()
    assert p.status == "proposer_error" and "name the variable holding its key with --api-key-env" in p.error


def test_config_file_with_weighted_endpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("AR_TEST_OTHER_KEY", "sk-other-secret")
    cfg = tmp_path / "run.toml"
    cfg.write_text("""
[llm]
max_tries = 2
context_tokens = 12000
request_timeout = 60
max_retries = 4

[llm.sampling]
temperature = 0.7
top_p = 0.95
max_tokens = 2048

[[llm.endpoints]]
model = "gpt-4o-mini"
weight = 3
rpm = 500
tpm = 100000

[[llm.endpoints]]
model = "local-coder"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = "AR_TEST_OTHER_KEY"
weight = 1
price_prompt_per_mtok = 0.1
price_completion_per_mtok = 0.2
""")
    opts = build_options(config_file=str(cfg))
    assert [e["model"] for e in opts["endpoints"]] == ["gpt-4o-mini", "local-coder"]
    assert [e["weight"] for e in opts["endpoints"]] == [3.0, 1.0]
    assert opts["endpoints"][0]["rpm"] == 500 and opts["endpoints"][1]["price_completion_per_mtok"] == 0.2
    assert opts["sampling"] == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 2048}
    assert (opts["max_tries"], opts["context_tokens"], opts["request_timeout"], opts["max_retries"]) == (2, 12000, 60.0, 4)
    assert "sk-other-secret" not in json.dumps(opts)
    LLMProposer("x", ("train.py",), "", 0, **opts)  # the proposer takes them as they are


@pytest.mark.parametrize("kwargs, toml, message", [
    ({}, None, "no model"),
    ({"model": "m", "api_key_env": "AR_TEST_UNSET_KEY_VAR"}, None, "export AR_TEST_UNSET_KEY_VAR=<your key>"),
    ({}, "[llm\nmodel = 'm'", "is not valid TOML"),
    ({}, "[[llm.endpoints]]\nmodel = 'a'\nweight = -1\n", "weight of endpoint 1 (a) must be a number >= 0"),
    ({}, "[[llm.endpoints]]\nmodel = 'a'\nweight = 'heavy'\n", "must be a number >= 0, got 'heavy'"),
    ({}, "[[llm.endpoints]]\nmodel = 'a'\nweight = 0\n", "weights add up to 0"),
    ({}, "[llm]\nmax_tries = 0\n[[llm.endpoints]]\nmodel = 'a'\n", "max_tries must be"),
    ({}, "[llm]\ntemprature = 1\nmodel = 'a'\n", "unknown key(s) ['temprature']"),
    ({"model": "m"}, "[[llm.endpoints]]\nmodel = 'a'\n", "conflicts with the [[llm.endpoints]]"),
    ({"model": "m", "api_key_env": "sk-abc123"}, None, "NAME of an environment variable"),
])
def test_config_errors_say_what_to_do(tmp_path, kwargs, toml, message):
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        kwargs = {**kwargs, "config_file": str(tmp_path / "c.toml")}
    os.environ.pop("AR_TEST_UNSET_KEY_VAR", None)
    with pytest.raises(LLMConfigError) as e:
        build_options(**kwargs)
    assert message in str(e.value)
    assert KEY not in str(e.value)


def test_prices_match_exact_names_and_dated_snapshots_only():
    assert price_of("o1-pro") == (150.0, 600.0) != price_of("o1")  # not o1's price, 10x too cheap
    assert price_of("o3-pro") == (20.0, 80.0) != price_of("o3")
    assert price_of("gpt-5-pro") == (15.0, 120.0) != price_of("gpt-5")
    assert price_of("gpt-4.1-mini-2025-04-14") == price_of("gpt-4.1-mini") == (0.4, 1.6)
    assert price_of("gpt-4o-mini-2024-07-18") == (0.15, 0.6) and price_of("gpt-3.5-turbo-0125") == (0.5, 1.5)
    assert price_of("gpt-4") == (30.0, 60.0) and price_of("gpt-4-0613") == (30.0, 60.0)
    assert price_of("openai/gpt-4o") == price_of("gpt-4o")
    for unknown in ("gpt-4o-audio-preview", "gpt-4.1-mini-fast", "o1-preview", "my-llama", "gpt-5-codex"):
        assert price_of(unknown) == (0.0, 0.0), unknown


def test_max_cost_refuses_an_endpoint_whose_price_is_unknown(tmp_path, server):
    for model in ("my-llama", "gpt-4o-audio-preview", "router/some-model"):
        assert build_options(model=model, base_url=server.url)  # no --max-cost: fine, spend counts as 0
        with pytest.raises(LLMConfigError) as e:
            build_options(model=model, base_url=server.url, max_cost=5.0)
        for needle in ("--max-cost", model, "price_prompt_per_mtok and price_completion_per_mtok", "[[llm.endpoints]]"):
            assert needle in str(e.value)
    assert build_options(model="gpt-4.1-mini-2025-04-14", max_cost=5.0)["endpoints"][0]["price_prompt_per_mtok"] == 0.4
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[[llm.endpoints]]
model = "gpt-4o-mini"

[[llm.endpoints]]
model = "local-coder"
base_url = "{server.url}"
price_prompt_per_mtok = 0

[[llm.endpoints]]
model = "never-picked"
base_url = "{server.url}"
weight = 0
""")
    with pytest.raises(LLMConfigError, match=r"local-coder \(endpoint 2\).*Set price_completion_per_mtok \("):
        build_options(config_file=str(cfg), max_cost=5.0)
    cfg.write_text(cfg.read_text().replace("price_prompt_per_mtok = 0\n", "price_prompt_per_mtok = 0\nprice_completion_per_mtok = 0\n"))
    opts = build_options(config_file=str(cfg), max_cost=5.0)  # priced as free by the config: fine
    assert [e["price_completion_per_mtok"] for e in opts["endpoints"]] == [0.6, 0.0, 0.0]
    from ar_ray.cli.main import main
    r = CliRunner().invoke(main, ["run", "--proposer", "llm", "--model", "my-llama", "--base-url", server.url,
                                  "--max-cost", "5", "--run-dir", str(tmp_path / "run")])
    assert r.exit_code != 0 and "price of my-llama" in r.output and not (tmp_path / "run").exists()


def test_api_key_env_must_be_named_like_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("FOO", "sk-foo")
    monkeypatch.setenv("VLLM_KEY", "sk-vllm")
    with pytest.raises(LLMConfigError) as e:
        build_options(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="FOO")
    assert "api_key_env 'FOO'" in str(e.value) and "could reach candidate code" in str(e.value)
    assert "FOO_API_KEY" in str(e.value) and "sk-foo" not in str(e.value)
    (tmp_path / "c.toml").write_text("[[llm.endpoints]]\nmodel = 'a'\nbase_url = 'http://127.0.0.1:9/v1'\n"
                                     "api_key_env = 'FOO'\n")
    with pytest.raises(LLMConfigError, match="does not look like a secret's name"):
        build_options(config_file=str(tmp_path / "c.toml"))
    with pytest.raises(LLMConfigError, match="does not look like a secret's name"):  # hand-written options too
        LLMProposer("x", ("train.py",), "", 0, model="m", base_url="http://127.0.0.1:9/v1", api_key_env="FOO")
    assert key_env_vars(build_options(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="VLLM_KEY")) == ["VLLM_KEY"]


# ------------------------------------------------------------------------------------- on a real Ray


@pytest.fixture(scope="module")
def ray_llm(api_key):
    import ray
    if ray.is_initialized():
        ray.shutdown()
    ray.init("local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def lr_responder(prefix: str = "0.3"):
    """Replies with a valid edit of whatever LR the prompt's current train.py has: a new value each time."""
    counter = iter(range(1, 10_000))
    lock = threading.Lock()

    def respond(body: dict) -> dict:
        first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        current = re.search(r"^LR = (\S+)$", first_user, flags=re.MULTILINE).group(1)
        with lock:
            n = next(counter)
        return reply(f"DESCRIPTION: set LR to {prefix}{n:04d}\n\ntrain.py\n<<<<<<< SEARCH\nLR = {current}\n=======\n"
                     f"LR = {prefix}{n:04d}\n>>>>>>> REPLACE\n", prompt_tokens=800, completion_tokens=60)
    return respond


def test_one_actor_has_several_requests_in_flight(ray_llm, server):
    from proposers.actor import ProposerActor
    respond = lr_responder()
    server.responder = lambda body: {**respond(body), "delay": 2.0}
    actor = ray_llm.remote(ProposerActor).options(max_concurrency=8, num_cpus=0).remote(
        "llm", "llm-0", ("train.py",), PROGRAM, 0, {"model": "conc-model", "base_url": server.url,
                                                          "api_key_env": "OPENAI_API_KEY"})
    base = Baseline(0, {"train.py": TRAIN}, None, 1.2)
    results = ray_llm.get([actor.propose.remote([], [], base) for _ in range(4)], timeout=60)
    assert [r.status for r in results] == ["ok"] * 4
    t = server.times()
    assert len(t) == 4 and t[-1] - t[0] < 1.5  # all four asked before the first (2 s) answer came back
    ray_llm.kill(actor)


def test_one_rate_limit_is_shared_by_every_proposer_actor_of_an_endpoint(ray_llm, server):
    from proposers.actor import ProposerActor
    server.responder = lr_responder()
    rpm, burst, n_actors, per_actor = 120, 2, 3, 4
    options = {"endpoints": [{"model": "rl-model", "base_url": server.url, "api_key_env": "OPENAI_API_KEY", "rpm": rpm,
                              "burst": burst}],
               "max_retries": 0, "request_timeout": 30.0}
    actors = [ray_llm.remote(ProposerActor).options(max_concurrency=8, num_cpus=0).remote(
        "llm", f"llm-{k}", ("train.py",), PROGRAM, k, options) for k in range(n_actors)]
    base = Baseline(0, {"train.py": TRAIN}, None, 1.2)
    # one proposal each first, so that starting an actor's HTTP client delays none of the measured requests
    assert all(r.status == "ok" for r in ray_llm.get([a.propose.remote([], [], base) for a in actors], timeout=60))
    with server._lock:
        server.requests.clear()
    refs = [a.propose.remote([], [], base) for a in actors for _ in range(per_actor)]
    results = ray_llm.get(refs, timeout=60)
    assert [r.status for r in results] == ["ok"] * len(refs), [r.error for r in results]
    t = server.times()
    assert len(t) == n_actors * per_actor
    # In any window [t_i, t_j] the bucket lets through at most burst + rate * width requests. Slack covers
    # the jitter between a grant and the request's arrival; without a shared limit, 12 would arrive at once.
    rate, slack = rpm / 60, 0.3
    for i in range(len(t)):
        for j in range(i + 1, len(t)):
            assert j - i + 1 <= burst + rate * (t[j] - t[i] + slack), (i, j, t[j] - t[i])
    for a in actors:
        ray_llm.kill(a)


def test_ar_ray_run_with_the_llm_proposer_end_to_end(ray_llm, server, tmp_path):
    from ar_ray.cli.main import main
    from ar_ray.ledger import store as ledger
    target = tmp_path / "target"
    target.mkdir()
    (target / "train.py").write_text('LR = 0.5\nprint("---")\nprint(f"val_bpb: {abs(LR - 0.3) + 1:.6f}")\n')
    (target / "prepare.py").write_text("VOCAB = 42\n")
    server.responder = lr_responder("0.3")
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", "--proposer", "llm", "--base-url", server.url, "--api-key-env", "OPENAI_API_KEY",
                                  "--model", "gpt-4o-mini",
                                  "--target", str(target), "--run-dir", str(run_dir), "--max-experiments", "3",
                                  "--trainers", "1", "--proposers", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    df = ledger.load(run_dir)
    llm_rows = df[df.proposer.str.startswith("llm")]
    assert len(llm_rows[llm_rows.status == "ok"]) >= 3
    assert (llm_rows.prompt_tokens == 800).all() and (llm_rows.completion_tokens == 60).all()
    assert (llm_rows.cost_usd > 0).all() and (llm_rows.proposer_seconds > 0).all()
    assert llm_rows.description.str.startswith("set LR to 0.3").all()
    assert "proposer spend: $" in r.output
    assert KEY not in r.output
    for path in Path(run_dir).rglob("*"):  # run.json, ledger parts, logs, status
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["config"]["proposer_options"]["endpoints"][0]["api_key_env"] == "OPENAI_API_KEY"
    # nor in Ray's session folder (logs, runtime_env_agent.log, sockets' neighbours): the key reached the
    # proposer actors in memory, never through a runtime_env that Ray writes down
    session = Path(ray_llm._private.worker.global_worker.node.get_session_dir_path())
    files = [p for p in session.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name.startswith("runtime_env_agent") for p in files), "no Ray logs here: the check proves nothing"
    assert [str(p) for p in files if KEY.encode() in p.read_bytes()] == []


def test_a_run_whose_proposals_are_never_usable_stops_with_the_reason(ray_llm, server, tmp_path):
    """--max-experiments counts candidates that ran; a model whose answers never apply must still end the run."""
    from ar_ray.cli.main import main
    from ar_ray.ledger import store as ledger
    target = tmp_path / "target"
    target.mkdir()
    train = 'LR = 0.5\nprint("---")\nprint(f"val_bpb: {abs(LR - 0.3) + 1:.6f}")\n'
    (target / "train.py").write_text(train)
    server.responder = lambda body: reply(READY)  # never usable: a bare block without a path
    args = ["run", "--proposer", "llm", "--base-url", server.url, "--model", "tiny-model", "--target", str(target),
            "--max-experiments", "5", "--trainers", "1", "--proposers", "1"]
    bad = CliRunner().invoke(main, args + ["--run-dir", str(tmp_path / "bad"), "--max-unusable-in-a-row", "0"])
    assert bad.exit_code != 0 and "--max-unusable-in-a-row must be at least 1" in bad.output
    assert not (tmp_path / "bad").exists()  # refused before Ray or the run dir
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, args + ["--run-dir", str(run_dir), "--max-unusable-in-a-row", "4"])
    assert r.exit_code != 0
    out = " ".join(r.output.split())
    assert "4 proposals in a row could not be used" in out and "no file path before it" in out
    assert "check the model, the endpoint (--base-url) and the prompt" in out
    df = ledger.load(run_dir)
    proposals = df[df.proposer.str.startswith("llm")]
    assert (proposals.status == "invalid_edit").sum() >= 4
    assert set(proposals.status) <= {"invalid_edit", "unused"}  # unused: asked for, landed after the stop
    trained = df[~df.status.isin(["invalid_edit", "unused"])]
    assert (trained.decision == "baseline").all()  # nothing but the baseline reached a trainer


def test_the_console_shows_why_a_proposal_failed_and_the_outcomes_count_every_status(ray_llm, server, tmp_path):
    from ar_ray.cli.main import main
    from ar_ray.cli.progress import row_line
    target = tmp_path / "target"
    target.mkdir()
    (target / "train.py").write_text('LR = 0.5\nprint("---")\nprint(f"val_bpb: {abs(LR - 0.3) + 1:.6f}")\n')
    fresh = lr_responder("0.3")
    firsts = iter(range(1, 10_000))
    lock = threading.Lock()
    same = "DESCRIPTION: LR 0.31\n\ntrain.py\n<<<<<<< SEARCH\nLR = 0.5\n=======\nLR = 0.31\n>>>>>>> REPLACE\n"

    def respond(body):
        if any(m["content"] == READY for m in body["messages"]):
            return reply(READY)  # the unusable conversation stays unusable
        with lock:
            k = next(firsts)
        return reply(READY) if k == 1 else reply(same) if k in (2, 3) else fresh(body)  # 3: a duplicate of 2
    server.responder = respond
    r = CliRunner().invoke(main, ["run", "--proposer", "llm", "--base-url", server.url, "--model", "tiny-model",
                                  "--target", str(target), "--run-dir", str(tmp_path / "run"), "--max-experiments", "2",
                                  "--trainers", "1", "--proposers", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    outcomes = next(line for line in r.output.splitlines() if line.startswith("outcomes:"))
    assert "invalid_edit 1" in outcomes and "duplicate 1" in outcomes and "ok " in outcomes
    out = " ".join(r.output.split())  # the console wraps at 80 columns here
    invalid = out[out.index(" invalid_edit "):][:250]
    assert "skip a code block of 1 line(s) has no file path before it" in invalid  # the reason, not the format help
    assert "fenced code block preceded by its path" not in out
    row = {"experiment_id": "e00009", "status": "invalid_edit", "decision": "skip", "description": None,
           "error": "no usable edit after 2 tries; last problem: prepare.py is read-only; you may only edit: "
                    "train.py\nAnswer with SEARCH/REPLACE blocks: the file path on its own line, then\n"
                    "or with the complete new file in a fenced code block preceded by its path."}
    assert "prepare.py is read-only; you may only edit: train.py (2 tries)" in row_line(row).plain


def test_a_run_with_two_endpoints_learns_from_the_driver_and_status_shows_each(ray_llm, server, tmp_path):
    from ar_ray.cli.main import main
    from ar_ray.ledger import store as ledger
    target = tmp_path / "target"
    target.mkdir()
    (target / "train.py").write_text('LR = 0.5\nprint("---")\nprint(f"val_bpb: {abs(LR - 0.3) + 1:.6f}")\n')
    with LLMServer() as bad:
        server.responder = lr_responder("0.3")
        bad.responder = lambda body: reply(READY)
        cfg = tmp_path / "run.toml"
        cfg.write_text("[llm]\nmax_tries = 1\n" + "".join(
            f'[[llm.endpoints]]\nmodel = "{m}"\nbase_url = "{u}"\nprice_prompt_per_mtok = 1\nprice_completion_per_mtok = 2\n'
            for m, u in (("bad-model", bad.url), ("good-model", server.url))))
        run_dir = tmp_path / "run"
        r = CliRunner().invoke(main, ["run", "--proposer", "llm", "--config", str(cfg), "--target", str(target),
                                      "--run-dir", str(run_dir), "--max-experiments", "12", "--trainers", "1",
                                      "--proposers", "1", "--acceptance", "greedy"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    df = ledger.load(run_dir)
    tags = df[df.proposer.str.startswith("llm")].proposer
    assert set(tags) <= {"llm-0/good-model", "llm-0/bad-model"} and "llm-0/good-model" in set(tags)
    assert (tags == "llm-0/good-model").sum() > 2 * (tags == "llm-0/bad-model").sum(), list(tags)
    s = CliRunner().invoke(main, ["status", str(run_dir)], catch_exceptions=False)
    out = " ".join(s.output.split())
    assert "endpoint bad-model:" in out and "(0 usable)" in out and "endpoint good-model:" in out, out
