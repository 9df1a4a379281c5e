"""Configuration of the LLM proposer: CLI flags or a run-config TOML become one JSON-able options dict.

Flags describe one endpoint:

    ar-ray run --proposer llm --model gpt-4o-mini [--base-url URL] [--api-key-env VAR]

A run config (`--config run.toml`) can describe several, chosen per proposal by weight:

    [llm]
    max_tries = 3            # edit turns per proposal (the first answer + repairs)
    context_tokens = 32000   # prompt budget; history is trimmed to fit, the current files never are
    request_timeout = 300    # seconds for one HTTP request, all of it
    max_retries = 5          # retries of one request on 429 / 5xx / timeouts, with backoff
    idea_memory = true       # the prompt's summary of what was tried, by knob, and its near-misses
    combine_rate = 0.2       # share of proposals asking to merge 2-3 near-misses (when there are 2+); 0: never

    [llm.sampling]
    temperature = 0.8
    top_p = 1.0
    max_tokens = 4096        # or max_completion_tokens, for reasoning models

    [[llm.endpoints]]
    model = "gpt-4o-mini"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"
    weight = 3
    price_prompt_per_mtok = 0.15       # USD per million tokens; default: the built-in table, else 0
    price_completion_per_mtok = 0.60   # (with --max-cost, a model the table lacks must be priced here)
    rpm = 500                          # requests per minute, shared by every proposer actor of this endpoint
    tpm = 200000                       # tokens per minute, likewise
    burst = 20                         # requests allowed back to back (default: 6 seconds' worth of rpm)

The options dict names the environment variable holding each key, never the key:
it is written to the run's run.json, and the proposer reads the key inside its actor.
"""

from __future__ import annotations

import math
import os
import re

from ar_ray.errors import read_config_toml

DEFAULT_KEY_ENV = "OPENAI_API_KEY"

# USD per million (prompt, completion) tokens, OpenAI list prices for common models when this was written.
# A model matches its exact name or the name plus a dated snapshot suffix ("gpt-4.1-mini-2025-04-14",
# "gpt-3.5-turbo-0125"); any other suffix ("-pro", "-mini", "-preview") names another model. Anything
# else costs 0 unless priced in the config (and --max-cost refuses to run with such an endpoint).
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "gpt-5-pro": (15.00, 120.00),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-pro": (20.00, 80.00),
    "o1-mini": (1.10, 4.40),
    "o1": (15.00, 60.00),
    "o1-pro": (150.00, 600.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
# what may follow a table name and still be that model: a snapshot date (-2024-08-06, -20240806) or -MMDD (-0613)
_SNAPSHOT_RE = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})")

DEFAULTS = {
    "max_tries": 3,
    "context_tokens": 32000,
    "request_timeout": 300.0,
    "max_retries": 5,
    "retry_backoff": 1.0,  # first backoff in seconds; doubles per retry, with jitter, capped at 60
    "max_answer_chars": 200_000,  # longer answers are refused unread (and asked again)
    "combine_rate": 0.2,  # share of proposals that ask to merge near-misses, when 2 or more are known; 0: never
}
BOOL_DEFAULTS = {"idea_memory": True}  # the prompt's what-was-tried summary, near-misses and combine requests
ENDPOINT_KEYS = ("model", "base_url", "api_key_env", "weight", "price_prompt_per_mtok", "price_completion_per_mtok",
                 "rpm", "tpm", "burst")
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens")
LLM_KEYS = set(DEFAULTS) | set(BOOL_DEFAULTS) | {"sampling", "endpoints", "model", "base_url", "api_key_env"}


class LLMConfigError(ValueError):
    """The LLM proposer cannot be configured as asked; the message says what to change."""


def table_price(model: str) -> tuple[float, float] | None:
    """(prompt, completion) USD per million tokens from the built-in table; None when the table lacks the model.

    Only the exact name, or the name plus a snapshot date, matches: "o1-pro" is not "o1"."""
    name = model.split("/")[-1].lower()  # "openai/gpt-4o" as some routers spell it
    if name in PRICES:
        return PRICES[name]
    for known, price in PRICES.items():
        if name.startswith(known) and _SNAPSHOT_RE.fullmatch(name[len(known):]):
            return price
    return None


def price_of(model: str) -> tuple[float, float]:
    """(prompt, completion) USD per million tokens from the built-in table; (0, 0) when unknown."""
    return table_price(model) or (0.0, 0.0)


def build_options(model: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                  config_file: str | None = None, check_env: bool = True, max_cost: float | None = None) -> dict:
    """The LLMProposer options from flags and/or a config file; raises LLMConfigError with a fix.

    `check_env` (default on) requires each endpoint's key variable to be set in this process. With
    `max_cost` (the run's --max-cost), every endpoint that may be picked needs a known price: the built-in
    table's or the config's."""
    table: dict = {}
    where = "the flags"
    if config_file:
        where = str(config_file)
        table = read_config_toml(config_file, LLMConfigError).get("llm", {})
        if not isinstance(table, dict):
            raise LLMConfigError(f"{config_file}: 'llm' must be a table ([llm]), not {type(table).__name__}")
    unknown = set(table) - LLM_KEYS
    if unknown:
        raise LLMConfigError(f"{where}: unknown key(s) {sorted(unknown)} under [llm]; known keys: {sorted(LLM_KEYS)}")

    defaults = {"model": table.get("model"), "base_url": table.get("base_url"), "api_key_env": table.get("api_key_env")}
    flags = {"model": model, "base_url": base_url, "api_key_env": api_key_env}
    raw_endpoints = table.get("endpoints")
    if raw_endpoints is not None:
        if not isinstance(raw_endpoints, list) or not raw_endpoints or not all(isinstance(e, dict) for e in raw_endpoints):
            raise LLMConfigError(f"{where}: endpoints must be a non-empty array of tables ([[llm.endpoints]] ...)")
        if model:
            raise LLMConfigError(f"--model {model!r} conflicts with the [[llm.endpoints]] of {where}, which name their "
                                 "own models; drop --model or the endpoints")
        # flags --base-url / --api-key-env fill in what an endpoint leaves out
        fallback = {k: flags[k] or defaults[k] for k in ("base_url", "api_key_env")}
        raw = [{**{k: v for k, v in fallback.items() if v is not None}, **e} for e in raw_endpoints]
    else:
        raw = [{k: flags[k] or defaults[k] for k in ("model", "base_url", "api_key_env")}]

    endpoints = [_endpoint(e, i, where, check_env) for i, e in enumerate(raw)]
    if sum(e["weight"] for e in endpoints) <= 0:
        raise LLMConfigError(f"{where}: the endpoint weights add up to 0; give at least one endpoint a positive weight")
    if max_cost is not None:
        for i, (e, ep) in enumerate(zip(raw, endpoints)):
            unpriced = [k for k in ("price_prompt_per_mtok", "price_completion_per_mtok") if k not in e]
            if ep["weight"] > 0 and unpriced and table_price(ep["model"]) is None:
                label = f"endpoint {i + 1}" if raw_endpoints is not None else "the endpoint"
                raise LLMConfigError(
                    f"--max-cost is set, but the price of {ep['model']} ({label}) is unknown: the built-in price "
                    f"table lacks it, so its spend would count as $0 and --max-cost would never stop the run. Set "
                    f"{' and '.join(unpriced)} (USD per million tokens; 0 for a free local server) for it in a "
                    "[[llm.endpoints]] table of a run config (--config run.toml), or drop --max-cost.")

    options: dict = {"endpoints": endpoints, "sampling": _sampling(table.get("sampling", {}), where)}
    for key, default in DEFAULTS.items():
        options[key] = _number(table.get(key, default), key, where, integer=isinstance(default, int),
                               minimum=0 if key in _FROM_ZERO else None)
    options.update(_switches(table, where, options["combine_rate"]))
    if options["max_tries"] < 1:
        raise LLMConfigError(f"{where}: max_tries must be at least 1, got {options['max_tries']}")
    return options


_FROM_ZERO = ("max_retries", "retry_backoff", "combine_rate")


def _switches(table: dict, where: str, rate: float) -> dict:
    """The on/off options (idea_memory), checked; and combine_rate (`rate`) at most 1."""
    out = {}
    for key, default in BOOL_DEFAULTS.items():
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise LLMConfigError(f"{where}: {key} must be true or false, got {value!r}")
        out[key] = value
    if rate > 1:
        raise LLMConfigError(f"{where}: combine_rate is a share of proposals, between 0 and 1; got {rate!r}")
    return out


def _number(value, key: str, where: str, integer: bool = False, minimum: float | None = None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        kind = "a whole number" if integer else "a number"
        raise LLMConfigError(f"{where}: {key} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise LLMConfigError(f"{where}: {key} must be finite, got {value!r}")
    if minimum is None and value <= 0:
        raise LLMConfigError(f"{where}: {key} must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise LLMConfigError(f"{where}: {key} must be at least {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def _endpoint(e: dict, i: int, where: str, check_env: bool) -> dict:
    label = f"endpoint {i + 1}" if where != "the flags" else "the endpoint"
    unknown = set(e) - set(ENDPOINT_KEYS)
    if unknown:
        raise LLMConfigError(f"{where}: unknown key(s) {sorted(unknown)} in {label}; known keys: {list(ENDPOINT_KEYS)}")
    model = e.get("model")
    if not model or not isinstance(model, str):
        raise LLMConfigError(f"no model for {label}: pass --model NAME (e.g. --model gpt-4o-mini), or set model = \"...\" "
                             f"in [[llm.endpoints]] of a --config file")
    base_url = e.get("base_url")
    if base_url is not None and (not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))):
        raise LLMConfigError(f"{where}: base_url of {label} must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                             f"got {base_url!r}")
    # OPENAI_API_KEY goes to OpenAI only: another server gets a key only from a variable named for it
    key_env = e.get("api_key_env") or (DEFAULT_KEY_ENV if _is_openai(base_url) else None)
    if key_env is not None and (not isinstance(key_env, str) or not key_env.replace("_", "").isalnum()):
        raise LLMConfigError(f"{where}: api_key_env of {label} must be the NAME of an environment variable "
                             "(like OPENAI_API_KEY), not the key itself")
    if key_env is not None:
        from trainers.trainer import is_secret_name  # the rule that keeps a variable from candidate code
        if not is_secret_name(key_env):
            raise LLMConfigError(f"{where}: api_key_env {key_env!r} of {label} does not look like a secret's name, so "
                                 "it could reach candidate code (names such as AR_* or CUDA_* are on the allowlist training "
                                 "runs get, and a target can pass any name through); name the variable with KEY, TOKEN or SECRET in it (e.g. "
                                 f"{key_env}_API_KEY)")
    if check_env and key_env and not os.environ.get(key_env):
        raise LLMConfigError(f"the API key for {label} ({model}) is read from the environment variable {key_env}, "
                             f"which is not set. Set it before starting the run: export {key_env}=<your key> "
                             "(a local server that needs no key accepts any value), or name another variable with "
                             "--api-key-env / api_key_env in the config.")
    weight = e.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise LLMConfigError(f"{where}: weight of {label} ({model}) must be a number >= 0, got {weight!r}")
    table_prices = price_of(model)
    out = {"model": model, "base_url": base_url.rstrip("/") if base_url else None, "api_key_env": key_env,
           "weight": float(weight)}
    for k, default in (("price_prompt_per_mtok", table_prices[0]), ("price_completion_per_mtok", table_prices[1])):
        out[k] = _number(e.get(k, default), f"{k} of {label}", where, minimum=0)
    for k in ("rpm", "tpm", "burst"):
        out[k] = _number(e.get(k), f"{k} of {label}", where, allow_none=True)
    if out["burst"] is not None and out["rpm"] is None:
        raise LLMConfigError(f"{where}: burst of {label} only means something with rpm; set rpm too")
    return out


def _sampling(s, where: str) -> dict:
    if not isinstance(s, dict):
        raise LLMConfigError(f"{where}: [llm.sampling] must be a table")
    unknown = set(s) - set(SAMPLING_KEYS)
    if unknown:
        raise LLMConfigError(f"{where}: unknown key(s) {sorted(unknown)} in [llm.sampling]; known keys: {list(SAMPLING_KEYS)}")
    out = {}
    if "temperature" in s:
        out["temperature"] = _number(s["temperature"], "temperature", where, minimum=0)
    if "top_p" in s:
        out["top_p"] = _number(s["top_p"], "top_p", where)
        if out["top_p"] > 1:
            raise LLMConfigError(f"{where}: top_p must be in (0, 1], got {s['top_p']!r}")
    for k in ("max_tokens", "max_completion_tokens"):  # the latter for reasoning models, which refuse max_tokens
        if k in s:
            out[k] = _number(s[k], k, where, integer=True)
    return out


def key_env_vars(options: dict) -> list[str]:
    """The NAMES of the environment variables the proposer reads its keys from (for a runtime_env)."""
    return sorted({e["api_key_env"] for e in normalize(options)["endpoints"] if e.get("api_key_env")})


def _is_openai(base_url: str | None) -> bool:
    return base_url is None or base_url.rstrip("/").startswith("https://api.openai.com")


def normalize(options: dict) -> dict:
    """Options as given to LLMProposer (the output of build_options, or a hand-written shortcut such as
    {"model": "m", "base_url": "..."}) checked and completed, without requiring the key in this process."""
    options = dict(options)
    if "endpoints" in options:
        endpoints = [_endpoint(dict(e), i, "the proposer options", False) for i, e in enumerate(options.pop("endpoints"))]
    else:
        endpoints = [_endpoint({k: options.pop(k) for k in ("model", "base_url", "api_key_env") if k in options}, 0,
                               "the proposer options", False)]
    if sum(e["weight"] for e in endpoints) <= 0:
        raise LLMConfigError("the proposer options: the endpoint weights add up to 0")
    out = {"endpoints": endpoints, "sampling": _sampling(options.pop("sampling", {}), "the proposer options")}
    for key, default in DEFAULTS.items():
        out[key] = _number(options.pop(key, default), key, "the proposer options", integer=isinstance(default, int),
                           minimum=0 if key in _FROM_ZERO else None)
    out.update(_switches(options, "the proposer options", out["combine_rate"]))
    for key in BOOL_DEFAULTS:
        options.pop(key, None)
    if options:
        raise LLMConfigError(f"unknown LLM proposer option(s) {sorted(options)}")
    return out
