"""The LLM proposer: asks an OpenAI-compatible chat endpoint for the next experiment.

One proposal is one conversation with one endpoint (picked by weight):

1. the opening prompt (`proposers.prompt`): program, compact history, what runs now, the current
   best files in full, the SEARCH/REPLACE answer format;
2. the answer is parsed and applied (`ar_ray.code.edits`), read-only files refused, the result compiled;
3. if any of that fails, the exact reason goes back as the next user turn of the same conversation,
   up to `max_tries` answers; then the proposal fails with status "invalid_edit".

Every request fits `context_tokens` (estimated from characters), the answer's `max_tokens` included: the
opening prompt's history is trimmed to leave room for the answer and for the repair turns, whose size is
bounded (a long answer is replayed shortened, a long reason cut). Where the current files alone leave no
room for an answer, the proposal fails with "proposer_error" before any request.

Each HTTP request goes through the endpoint's shared rate limiter (`proposers.ratelimit`) and is
bounded by `request_timeout`. 429, 408/409 and 5xx answers, timeouts and connection errors are retried
here (the client itself is built with max_retries=0, so each retry is counted once) with exponential
backoff and jitter, or after the server's Retry-After; after `max_retries` retries, or on any other
error, the proposal fails with status "proposer_error". Tokens, cost and latency go into `usage`.

The API key is read from the environment variable the options name, inside this process; it is
never stored in the options, and every text this proposer returns has it replaced by ***.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import os
import random
import re
import socket
import time
import weakref
from dataclasses import dataclass

import openai

from ar_ray.code import answers, edits
from ar_ray.types import Attempt, Baseline, Proposal
from proposers import history as memory_mod
from proposers import llm_config
from proposers.base import ProposalFailed, ProposerBase
from proposers.prompt import (
    build_prompt,
    looks_like_refusal,
    messages_tokens,
    parse_description,
    repair_message,
)
from proposers.ratelimit import limiter_for

RETRY_STATUSES = {408, 409, 429} | set(range(500, 600))
MAX_BACKOFF = 60.0  # seconds, before jitter
MAX_RETRY_AFTER = 120.0  # a server asking for longer is waited on this long, then asked again
REPLAY_ANSWER_CHARS = 6000  # an unusable answer longer than this is replayed shortened in the next turn
REPAIR_REASON_CHARS = 2500  # a longer reason (an edit error quoting many lines) is cut in the repair turn
DEFAULT_COMPLETION_ESTIMATE = 2000  # tokens booked (and kept free in the context) when max_tokens is not set
# Routing between several endpoints: Thompson sampling on the rate of good proposals (kept 1, screened 0.5)
ROUTE_VALUE = {"keep": 1.0, "screened": 0.5, "promoted": 0.5, "confirming": 0.5}
PRIOR_PROPOSALS = 2.0  # the weights' prior is worth this many proposals of an endpoint
PRIOR_RATE = 0.5  # the prior rate of the heaviest endpoint; the others' in proportion to their weights
_COMBINED = re.compile(r"^combine (e\d+(?: \+ e\d+)+):")  # the description of a combination's proposal


@dataclass
class Reply:
    text: str
    refusal: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None  # the server's count of the prompt it answered (None: not reported)


class LLMProposer(ProposerBase):
    def __init__(self, name: str, editable: tuple[str, ...], program: str = "", seed: int = 0, **options):
        super().__init__(name, editable, program, seed)
        opts = llm_config.normalize(options)
        self.endpoints: list[dict] = opts["endpoints"]
        self.sampling: dict = opts["sampling"]
        self.max_tries: int = opts["max_tries"]
        self.context_tokens: int = opts["context_tokens"]
        self.request_timeout: float = opts["request_timeout"]
        self.max_retries: int = opts["max_retries"]
        self.retry_backoff: float = opts["retry_backoff"]
        self.max_answer_chars: int = opts["max_answer_chars"]
        self.rng = random.Random(seed)
        self._jitter = random.Random(seed + 7919)
        self._limiters = [limiter_for(e) for e in self.endpoints]
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> {endpoint: client}
        labels = [e["model"] for e in self.endpoints]
        self.labels = [m if labels.count(m) == 1 else f"{m}#{k + 1}" for k, m in enumerate(labels)]
        self._outcomes: dict[str, list] = {}  # proposal's experiment_id -> [endpoint, value, cost]: what routes
        self.idea_memory: bool = opts["idea_memory"]
        self.combine_rate: float = opts["combine_rate"]
        self.memory = memory_mod.Memory()  # every candidate this proposer was shown, for the prompt's summary
        self._combine_asked: set[frozenset] = set()
        self._eligible = 0  # proposals made while 2+ near-misses could be combined (combine_rate counts these)

    def __repr__(self) -> str:
        return f"LLMProposer({self.name!r}, models={[e['model'] for e in self.endpoints]})"

    def prime(self, history: list[Attempt]) -> int:
        """A resumed run's earlier attempts: the memory (summary, near-misses), what each endpoint earned, and the
        combinations already proposed (a row whose description starts "combine e.. + e..:", whoever made it) come
        back as if this proposer had been shown every one of them live."""
        history = list(history)
        self._learn(history)
        self.memory.ingest(history)
        for a in history:
            if (m := _COMBINED.match(a.description or "")):
                self._combine_asked.add(frozenset(m.group(1).split(" + ")))
        return len(history)

    # ---- the two ways in: async (the actor) and sync (anything else) ----

    async def apropose(self, history: list[Attempt] = (), in_flight: list[str] = (),
                       baseline: Baseline | None = None) -> Proposal:
        base = self._begin(baseline)
        t0 = time.time()
        usage: dict[str, float] = {}
        try:
            description, new_files = await self.amake_edit(base, list(history), list(in_flight), usage)
        except ProposalFailed as e:
            return self._failed(base, e.status, self.scrub(str(e)), usage, t0)
        except edits.EditError as e:
            return self._failed(base, "invalid_edit", self.scrub(str(e)), usage, t0)
        except Exception as e:  # a bug or an unforeseen client error: one failed proposal, not a dead actor
            return self._failed(base, "proposer_error", self.scrub(f"{type(e).__name__}: {e}"), usage, t0)
        return self._conclude(base, self.scrub(description), new_files, usage, t0)

    def make_edit(self, base: Baseline, history: list[Attempt], in_flight: list[str],
                  usage: dict) -> tuple[str, dict[str, str]]:
        """Synchronous use (outside an event loop): one event loop per call, its clients closed after."""
        async def once():
            try:
                return await self.amake_edit(base, history, in_flight, usage)
            finally:
                await self._close_clients()
        try:
            description, new_files = asyncio.run(once())
            return self.scrub(description), new_files
        except ProposalFailed as e:
            raise ProposalFailed(e.status, self.scrub(str(e))) from None

    # ---- one proposal: a conversation of up to max_tries answers ----

    async def amake_edit(self, base: Baseline, history: list[Attempt], in_flight: list[str],
                         usage: dict) -> tuple[str, dict[str, str]]:
        self._learn(history)
        self.memory.ingest(history)
        i = self._pick_endpoint()
        usage.update(prompt_tokens=0, completion_tokens=0, cost_usd=0.0, requests=0, turns=0, endpoint=i)
        answer = self._answer_tokens()
        parts, combined = self._memory_parts(base)
        # history is trimmed so that the first request and every repair turn leave room for the answer
        prompt = build_prompt(self.program, base.files, self.editable, history, in_flight, base.metric,
                              base.experiment_id, budget_tokens=self.context_tokens,
                              reserve_tokens=answer + (self.max_tries - 1) * REPAIR_TURN_TOKENS, **parts)
        if combined and prompt.tokens + answer > self.context_tokens:  # the combine request does not fit: ask as usual
            self._combine_asked.discard(frozenset(t.experiment_id for t in combined))
            combined, parts["task"] = [], None
            prompt = build_prompt(self.program, base.files, self.editable, history, in_flight, base.metric,
                                  base.experiment_id, budget_tokens=self.context_tokens,
                                  reserve_tokens=answer + (self.max_tries - 1) * REPAIR_TURN_TOKENS, **parts)
        if prompt.tokens + answer > self.context_tokens:  # no history left in it: the files alone are too big
            size = sum(len(t) for t in base.files.values())
            raise ProposalFailed("proposer_error", (
                f"context_tokens = {self.context_tokens} is too small for the target's files: the prompt with no "
                f"history needs about {prompt.tokens} tokens (the files {', '.join(sorted(base.files))} are {size} "
                f"characters), plus {answer} for the answer. Raise context_tokens in the [llm] config if the "
                "model's context window allows, lower max_tokens in [llm.sampling], or use a model with a "
                "longer context."))
        messages = list(prompt.messages)
        reason = ""
        for turn in range(1, self.max_tries + 1):
            usage["turns"] = turn
            reply = await self._chat(i, messages, usage)
            # the server's own count of the prompt: where the estimate from characters falls short (SmolLM2's
            # tokenizer on train.py: 6887 tokens for an estimated 6276), the room for another turn is scaled by it
            scale = max(1.0, reply.prompt_tokens / messages_tokens(messages)) if reply.prompt_tokens else 1.0
            try:  # parsing and compiling are CPU work: off the event loop
                description, changed = await asyncio.to_thread(self._use, base, reply)
                if combined and not description.lower().startswith("combine"):
                    description = f"combine {' + '.join(t.experiment_id for t in combined)}: {description}"
                return description, changed
            except edits.EditError as e:
                reason = self.scrub(str(e))
            messages = messages + [{"role": "assistant", "content": _replayed(reply)},
                                   {"role": "user", "content": repair_message(_cut(reason, REPAIR_REASON_CHARS))}]
            if turn < self.max_tries and messages_tokens(messages) * scale + answer > self.context_tokens:
                tries = f"{turn} tries" if turn > 1 else "1 try"
                raise ProposalFailed("invalid_edit", f"no usable edit after {tries} (no room for another within "
                                                     f"context_tokens = {self.context_tokens}); last problem: {reason}")
        tries = f"{self.max_tries} tries" if self.max_tries > 1 else "1 try"
        raise ProposalFailed("invalid_edit", f"no usable edit after {tries}; last problem: {reason}")

    def _memory_parts(self, base: Baseline) -> tuple[dict, list]:
        """The prompt's summary of what was tried and its near-misses, and now and then (combine_rate of the
        proposals made while two or more near-misses touching different names are known) a request to combine
        some of them; ({}, []) with idea_memory off."""
        if not self.idea_memory:
            return {}, []
        near = self.memory.near_misses(base.files)
        parts = {"summary": self.memory.summary_lines(), "summary_total": self.memory.total(),
                 "near": [(memory_mod.format_near(t, False), memory_mod.format_near(t, True)) for t in near]}
        chosen = memory_mod.pick_combination(near, self._combine_asked) if self.combine_rate > 0 else []
        if chosen:
            self._eligible += 1
            n = self._eligible
            if int(n * self.combine_rate + 1e-9) > int((n - 1) * self.combine_rate + 1e-9):
                self._combine_asked.add(frozenset(t.experiment_id for t in chosen))
                parts["task"] = memory_mod.combine_request(chosen)
                return parts, chosen
        return parts, []

    def _answer_tokens(self) -> int:
        """Tokens the answer may take: max_tokens (or max_completion_tokens), else an estimate."""
        return self.sampling.get("max_tokens") or self.sampling.get("max_completion_tokens") or DEFAULT_COMPLETION_ESTIMATE

    def _use(self, base: Baseline, reply: Reply) -> tuple[str, dict[str, str]]:
        """(description, changed files) from an answer, or EditError saying what to fix."""
        text = reply.text or ""
        if reply.refusal:
            raise edits.EditError(f"the model declined to answer ({_short(reply.refusal)}); the task is an "
                                  "ordinary code change to a training script: propose one")
        if not text.strip():
            cut = " (it was cut off by the token limit)" if reply.finish_reason == "length" else ""
            if reply.finish_reason == "content_filter":
                cut = " (the endpoint's content filter removed it)"
            raise edits.EditError(f"the answer was empty{cut}; answer with the DESCRIPTION line and "
                                  "SEARCH/REPLACE blocks")
        if len(text) > self.max_answer_chars:
            raise edits.EditError(f"the answer is {len(text)} characters long, over the limit of "
                                  f"{self.max_answer_chars}; send only the DESCRIPTION line and short "
                                  "SEARCH/REPLACE blocks, never whole files")
        try:
            parsed = answers.parse_answer(text, base.files, set(self.editable))
        except edits.EditError as e:
            # an answer cut off by the token limit is no refusal, even one opening "I'm sorry for the confusion."
            # (SmolLM2-135M's answer to a repair turn, then 500 tokens of the same sentence)
            if looks_like_refusal(text) and reply.finish_reason != "length":
                raise edits.EditError(f"the model declined instead of proposing an edit ({_short(text)}); the task "
                                      "is an ordinary code change to a training script: propose one") from None
            if reply.finish_reason == "length":
                raise edits.EditError(f"{e} The answer was cut off by the token limit; keep it shorter.") from None
            raise
        new = edits.apply_edits(base.files, parsed, set(self.editable))
        changed = {p: t for p, t in new.items() if base.files.get(p) != t}
        edits.check_syntax(changed)
        description = parse_description(text) or "edit of " + ", ".join(sorted(changed))
        return description, changed

    # ---- one request, with rate limit, timeout and retries ----

    async def _chat(self, i: int, messages: list[dict], usage: dict) -> Reply:
        ep = self.endpoints[i]
        client = await self._client(i)
        limiter = self._limiters[i]
        booked = messages_tokens(messages) + self._answer_tokens()
        where = f"{ep['base_url'] or 'the OpenAI API'} (model {ep['model']})"
        last = ""
        for attempt in range(self.max_retries + 1):
            if limiter is not None:
                await limiter.acquire(booked)
            usage["requests"] = usage.get("requests", 0) + 1
            delay = None
            try:
                resp = await asyncio.wait_for(
                    client.chat.completions.create(model=ep["model"], messages=messages, **self.sampling),
                    timeout=self.request_timeout)
            except (asyncio.TimeoutError, openai.APITimeoutError):
                last = f"timeout: no answer from {where} within the request timeout of {self.request_timeout:g} s"
            except openai.APIStatusError as e:
                code = e.status_code
                last = f"HTTP {code} from {where}: {_error_detail(e)}"
                if code not in RETRY_STATUSES:
                    raise ProposalFailed("proposer_error", self.scrub(last + _hint(code, ep))) from None
                delay = retry_after(e.response.headers)
                if delay is not None and code == 429 and limiter is not None:
                    await limiter.pause(delay)  # every proposer of this endpoint holds back, not just this one
            except openai.APIConnectionError as e:
                last = f"cannot reach {where}: {_short(str(e.__cause__ or e))}"
            except openai.APIError as e:  # a malformed answer and the like: retrying will not help
                raise ProposalFailed("proposer_error", self.scrub(f"bad answer from {where}: {_short(str(e))}")) from None
            else:
                return await self._account(i, resp, booked, messages, usage)
            if attempt < self.max_retries:
                await asyncio.sleep(delay if delay is not None else self._backoff(attempt))
        requests = f"{self.max_retries + 1} requests" if self.max_retries else "1 request"
        raise ProposalFailed("proposer_error", self.scrub(f"{last}; gave up after {requests}"))

    async def _account(self, i: int, resp, booked: int, messages: list[dict], usage: dict) -> Reply:
        ep = self.endpoints[i]
        choice = resp.choices[0] if getattr(resp, "choices", None) else None
        msg = choice.message if choice is not None else None
        reply = Reply(text=(getattr(msg, "content", None) or ""), refusal=getattr(msg, "refusal", None),
                      finish_reason=getattr(choice, "finish_reason", None))
        u = getattr(resp, "usage", None)
        p_tok = getattr(u, "prompt_tokens", None)
        c_tok = getattr(u, "completion_tokens", None)
        reply.prompt_tokens = int(p_tok) if p_tok is not None else None
        if p_tok is None:  # a server that reports no usage: estimate
            p_tok = messages_tokens(messages)
        if c_tok is None:
            c_tok = messages_tokens([{"content": reply.text}])
        usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + int(p_tok)
        usage["completion_tokens"] = usage.get("completion_tokens", 0) + int(c_tok)
        usage["cost_usd"] = usage.get("cost_usd", 0.0) + (p_tok * ep["price_prompt_per_mtok"]
                                                           + c_tok * ep["price_completion_per_mtok"]) / 1e6
        limiter = self._limiters[i]
        if limiter is not None:
            await limiter.settle(p_tok + c_tok - booked)
        return reply

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of base * 2^attempt (capped)."""
        return min(MAX_BACKOFF, self.retry_backoff * 2 ** attempt) * self._jitter.uniform(0.5, 1.0)

    # ---- endpoints, clients, secrets ----

    def _pick_endpoint(self) -> int:
        """One endpoint by weight; with several, by Thompson sampling on what each one's proposals earned (kept or
        screened, per dollar when every endpoint is priced, else per proposal), the weights as the prior."""
        weights = [e["weight"] for e in self.endpoints]
        live = [k for k, w in enumerate(weights) if w > 0]
        if len(live) == 1:
            return live[0]
        stats = self.endpoint_stats()
        heaviest = max(weights)
        per_dollar = all(self.endpoints[k]["price_prompt_per_mtok"] + self.endpoints[k]["price_completion_per_mtok"] > 0
                         for k in live)
        spent = [stats[k]["cost_usd"] / stats[k]["proposals"] for k in live if stats[k]["proposals"]]
        typical = sum(spent) / len(spent) if spent else 1.0
        best, pick = -1.0, live[0]
        for k in live:
            st = stats[k]
            prior = PRIOR_RATE * weights[k] / heaviest
            theta = self.rng.betavariate(PRIOR_PROPOSALS * prior + st["value"] + 0.01,
                                         PRIOR_PROPOSALS * (1 - prior) + st["proposals"] - st["value"] + 0.01)
            if per_dollar:
                cost = st["cost_usd"] / st["proposals"] if st["proposals"] else typical
                theta /= max(cost, 1e-9)
            if theta > best:
                best, pick = theta, k
        return pick

    def _learn(self, history: list[Attempt]) -> None:
        """Remember what each endpoint's proposals earned: their own rows (tagged actor/endpoint, from every proposer
        actor of the run) and the follow-up runs of their group (a confirmation's keep)."""
        index = {label: k for k, label in enumerate(self.labels)}
        for a in history:
            value = ROUTE_VALUE.get(a.decision, 0.0)
            _, slash, label = (a.proposer or "").partition("/")
            if slash and label in index:
                key = a.group or a.experiment_id
                seen = self._outcomes.setdefault(key, [index[label], 0.0, 0.0])
                seen[1], seen[2] = max(seen[1], value), a.cost_usd or 0.0
            elif a.group in self._outcomes:
                self._outcomes[a.group][1] = max(self._outcomes[a.group][1], value)

    def endpoint_stats(self) -> list[dict]:
        """Per endpoint: proposals seen with an outcome, their value (kept 1, screened 0.5), their cost."""
        stats = [{"model": label, "proposals": 0, "value": 0.0, "cost_usd": 0.0} for label in self.labels]
        for k, value, cost in self._outcomes.values():
            stats[k]["proposals"] += 1
            stats[k]["value"] += value
            stats[k]["cost_usd"] += cost
        return stats

    def _tagged(self, proposal: Proposal) -> Proposal:
        """The proposal named actor/endpoint when there are several endpoints (the ledger's proposer column)."""
        i = proposal.usage.pop("endpoint", None)
        if i is None or len(self.endpoints) == 1:
            return proposal
        return dataclasses.replace(proposal, proposer=f"{self.name}/{self.labels[int(i)]}")

    def _conclude(self, *args, **kwargs) -> Proposal:
        return self._tagged(super()._conclude(*args, **kwargs))

    def _failed(self, *args, **kwargs) -> Proposal:
        return self._tagged(super()._failed(*args, **kwargs))

    async def _client(self, i: int) -> openai.AsyncOpenAI:
        """This event loop's client for endpoint i (made once, in a thread: building one takes a while)."""
        per_loop = self._clients.setdefault(asyncio.get_running_loop(), {})
        if i not in per_loop:
            ep = self.endpoints[i]
            if ep["api_key_env"] and not os.environ.get(ep["api_key_env"]):
                raise ProposalFailed("proposer_error", (
                    f"the environment variable {ep['api_key_env']} (the API key for {ep['model']}) is not set in the "
                    f"proposer's process on {socket.gethostname()}. Set it in the environment of the driver "
                    "(`ar-ray run`), which hands it to the proposer actors in memory."))
            per_loop[i] = asyncio.ensure_future(asyncio.to_thread(self._new_client, ep))
        try:
            return await asyncio.shield(per_loop[i])
        except Exception:
            per_loop.pop(i, None)  # let the next proposal try again
            raise

    def _new_client(self, ep: dict) -> openai.AsyncOpenAI:
        # a server named without api_key_env gets a placeholder key, never OPENAI_API_KEY
        key = os.environ.get(ep["api_key_env"]) if ep["api_key_env"] else "no-key"
        return openai.AsyncOpenAI(api_key=key, base_url=ep["base_url"], max_retries=0,
                                  timeout=self.request_timeout + 5)  # asyncio.wait_for is the real bound

    async def _close_clients(self) -> None:
        for made in self._clients.pop(asyncio.get_running_loop(), {}).values():
            try:
                await (await made).close()
            except Exception:
                pass

    def scrub(self, text: str) -> str:
        """`text` with every API key this proposer may use replaced by ***."""
        for ep in self.endpoints:
            key = os.environ.get(ep["api_key_env"] or "")
            if key and len(key) >= 4:
                text = text.replace(key, "***")
        return text


def retry_after(headers) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms; None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(MAX_RETRY_AFTER, max(0.0, float(ms) / 1000.0))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - time.time()))


def _error_detail(e: openai.APIStatusError) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return _short(str(err["message"]))
        if isinstance(err, str):
            return _short(err)
    return _short(getattr(e, "message", "") or str(e))


def _hint(code: int, ep: dict) -> str:
    if code in (401, 403):
        return (f". Check the API key in the environment variable {ep['api_key_env']}" if ep["api_key_env"] else
                ". This server was given no key: name the variable holding its key with --api-key-env (or api_key_env)")
    if code == 404:
        return ". Check the model name (--model) and the endpoint URL (--base-url, which usually ends in /v1)"
    if code in (400, 413, 422):
        return ". If the prompt is too long for the model, lower context_tokens in the [llm] config"
    return ""


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _cut(text: str, n: int) -> str:
    """`text`, its first n characters and a note if longer (the note at most 50 characters)."""
    if len(text) > n:
        return text[:n] + f"\n[... {len(text) - n} more characters cut ...]"
    return text


def _replayed(reply: Reply) -> str:
    """The assistant turn as sent back in the repair conversation (a huge answer shortened)."""
    text = reply.text or reply.refusal or ""
    if not text.strip():
        return "(empty answer)"
    return _cut(text, REPLAY_ANSWER_CHARS)


# the most one repair turn (the replayed answer and the repair message) adds to a conversation, estimated
REPAIR_TURN_TOKENS = messages_tokens([{"content": "x" * (REPLAY_ANSWER_CHARS + 50)},
                                      {"content": repair_message("x" * (REPAIR_REASON_CHARS + 50))}])
