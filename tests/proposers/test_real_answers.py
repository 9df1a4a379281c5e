"""Real answers of a real tiny model, replayed on the scripted local server (tests/llm_server.py).

The answers below were written by SmolLM2-135M-Instruct (Q4_1 GGUF) behind llama.cpp's llama-server, asked by
`ar-ray run --proposer llm` on the bundled GPT target (bench/real_llm.sh, transcript.jsonl of its run). The proposer
here is configured as that run was (context_tokens 8192 = the server's context, max_tokens 512, the target's real
train.py and program.md), so the conversations have the same sizes. What must hold: no such answer reaches a
trainer, each one's reason goes back in the same conversation, and the proposal ends as a clear invalid_edit row.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from llm_server import LLMServer, reply

from ar_ray.code import answers
from ar_ray.types import Baseline
from proposers.llm import LLMProposer

GPT = Path(__file__).resolve().parents[2] / "trainers" / "gpt"
TRAIN = (GPT / "train.py").read_text()
PROGRAM = (GPT / "program.md").read_text()

# real answers (run of 2026-12-05, bench/real_llm.sh), verbatim
ECHO_TASK = ("I propose one idea that is different from everything above and that is different from what is running "
             "now.\n\nI will propose a new idea that is different from everything above and that is different from "
             "what is running now.\n\nThis new idea is different from everything above and that is different from "
             "what is running now.\n\nThis new idea is different from everything above and that is different from "
             "what is running now.\n\nThis new idea is different from everything above and that is different from "
             "what is running now.")
VAGUE_IDEA = ("In a future experiment, the next idea could be to optimize a neural network for the use of 40000x40000, "
              "where the use of 40000x40000 is a feature that is being added to the current Neural Nets. The next "
              "idea could be to use a different type of neural network that is based on the idea of using "
              "40000x40000 to optimize the use of the current Neural Nets. The next idea could be to use a different "
              "type of neural network that uses 40000x40000 to optimize the use of the current Neural Nets. The next "
              "idea could be to use a different type of neural network that is based on the idea of using the "
              "current Neural Nets to optimize the use of the current Neural Nets.\n\nSo on and so forth.")
ECHO_REPAIR = "Your edit could not be used.\n\nSo, just what you requested."  # its answer to a repair turn

_S = "The next idea is to use a different type of neural network that uses 40000x40000 to optimize the use of the current Neural Nets."
# its answer to a repair turn, cut off at max_tokens = 512 (finish_reason "length"); rebuilt from its parts, verbatim
APOLOGY_CUT = ("I'm sorry for the confusion.\n\n" + "\n\n".join([" ".join([_S] * 3)] * 4) + "\n\n" + _S + " "
               + _S[: _S.index(" 40000x40000")])

# its answer to a repair turn: the repair message echoed, its format help garbled into a SEARCH block
ECHO_FORMAT = 'Your edit could not be used, so nothing was changed:\n\nno SEARCH/REPLACE block, unified diff or whole file found in the answer. Answer with SEARCH/REPLACE blocks: the file path on its own line, then\n<<<<<<< SEARCH\n(exact lines copied from the current file)\n=======\n(the new lines)\n>>>>>>> REPLACE\n(the complete file copied from the current file)\n(the complete file copied to a new file)\n(the complete file copied to a new file)\n(the full file copied)\n(the complete file copied to a new file)\n\nThe files are still exactly as shown in my first message. Answer again in the same format: the DESCRIPTION line, then SEARCH/REPLACE blocks whose SEARCH parts copy the current lines exactly.'

REAL = [ECHO_TASK, VAGUE_IDEA, ECHO_REPAIR]


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def make(server, **opts) -> LLMProposer:
    options = {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "base_url": server.url, "max_retries": 0,
               "request_timeout": 10.0, "context_tokens": 8192, "sampling": {"max_tokens": 512}, **opts}
    p = LLMProposer("llm-0", ("train.py",), PROGRAM, 0, **options)
    p.update(Baseline(0, {"train.py": TRAIN}, "e00000", 1.481787))
    return p


@pytest.mark.parametrize("text", REAL, ids=["echo-task", "vague-idea", "echo-repair"])
def test_each_real_answer_is_refused_with_a_reason_that_says_what_to_write(text):
    with pytest.raises(answers.EditError) as e:
        answers.parse_answer(text, {"train.py": TRAIN}, {"train.py"})
    reason = answers.short_reason(str(e.value))
    assert reason.startswith("no SEARCH/REPLACE block, unified diff or whole file found")
    assert "<<<<<<< SEARCH" in str(e.value)  # the format help goes back to the model


def test_a_conversation_of_real_answers_ends_invalid_with_its_reason_and_nothing_to_train(server):
    server.script(*[reply(t, prompt_tokens=6887, completion_tokens=100) for t in REAL])
    p = make(server).propose()
    bodies = server.bodies()
    assert p.status == "invalid_edit" and p.files == {} and p.diff == ""
    assert "no SEARCH/REPLACE block" in p.error and "no usable edit after" in p.error
    # three tries fit the 8192-token context; every answer but the last went back verbatim, with its reason
    assert len(bodies) == 3 and p.error.startswith("no usable edit after 3 tries")
    for k in (1, 2):
        before, now = bodies[k - 1]["messages"], bodies[k]["messages"]
        assert now[: len(before)] == before and len(now) == len(before) + 2
        assert now[-2] == {"role": "assistant", "content": REAL[k - 1]}
        assert now[-1]["role"] == "user" and "no SEARCH/REPLACE block" in now[-1]["content"]
    assert p.usage["prompt_tokens"] == 6887 * 3 and p.usage["turns"] == 3


def test_repair_turns_stay_within_the_servers_context_by_its_own_token_count(server):
    """SmolLM2's tokenizer counted 6887 tokens for the opening prompt that ar-ray estimates from characters at
    6276 (the run's server log): 9.7 % more. A long unusable answer (here the real vague idea, three times over:
    ~1,900 characters, ~500 tokens) then left an estimated room for a second turn that the server would not
    have: the proposer now scales its room check by the server's own count of the prompt it was sent."""
    from proposers.prompt import messages_tokens

    ratio = 6887 / 6276
    long_answer = "\n\n".join([VAGUE_IDEA] * 3)
    server.responder = lambda body: reply(long_answer, prompt_tokens=round(messages_tokens(body["messages"]) * ratio),
                                          completion_tokens=500, finish_reason="length")
    p = make(server).propose()
    bodies = server.bodies()
    assert p.status == "invalid_edit" and "no room for another" in p.error, p.error
    for body in bodies:  # every request sent fits the server's context by the server's count, the answer included
        assert messages_tokens(body["messages"]) * ratio + 512 <= 8192
    # by the estimate alone there was room for the next turn: the request the old check would have sent
    grown = bodies[-1]["messages"] + [{"role": "assistant", "content": long_answer}, {"role": "user", "content": "x" * 900}]
    assert messages_tokens(grown) + 512 <= 8192 < messages_tokens(grown) * ratio + 512


def test_an_apology_cut_off_by_the_token_limit_is_no_refusal_and_says_it_was_cut(server):
    """The real answer opened "I'm sorry for the confusion." and rambled to the token limit: it was sent back as "the
    model declined", which told the model (and the ledger) the wrong reason. It is an answer without an edit, cut off."""
    assert len(APOLOGY_CUT) == 1779
    server.script(reply(APOLOGY_CUT, completion_tokens=512, finish_reason="length"), reply(ECHO_REPAIR))
    p = make(server, max_tries=2).propose()
    repair = server.bodies()[1]["messages"][-1]["content"]
    assert "declined" not in repair
    assert "no SEARCH/REPLACE block" in repair and "cut off by the token limit" in repair
    assert p.status == "invalid_edit" and p.files == {}
    # a short refusal that ends on its own is still named one
    server.script(reply("I'm sorry, I cannot help with modifying this script."))
    q = make(server, max_tries=1).propose()
    assert q.status == "invalid_edit" and "declined" in q.error


def test_the_echoed_format_help_is_a_search_block_that_matches_nothing_and_goes_back(server):
    server.script(reply(ECHO_TASK), reply(ECHO_FORMAT), reply(ECHO_REPAIR))
    p = make(server).propose()
    bodies = server.bodies()
    assert len(bodies) == 3 and p.status == "invalid_edit" and p.files == {}
    assert "SEARCH block 1 for train.py did not match any lines" in bodies[2]["messages"][-1]["content"]
